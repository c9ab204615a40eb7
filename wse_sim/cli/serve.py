"""`wse-sim serve`: a stream of requests under continuous batching (docs/serving.md).

    wse-sim serve --preset mesh16 --model tiny --arrivals poisson:2000 --requests 200 \\
        --prompt-dist uniform:8-48 --output-dist fixed:16 --slo-ttft-ms 0.5 --slo-tpot-ms 0.05
"""

from __future__ import annotations

import argparse
import math
import time

from wse_sim.cli.common import int_at_least, one_of, positive_int, print_json
from wse_sim.cli.run import add_spec_args, spec_from_args

MODES = ("time-shared", "disaggregated")
MODE_CHOICES = MODES + ("auto",)


def _dist(option: str):
    def parse(text: str):
        from wse_sim.serving.requests import parse_dist
        try:
            return parse_dist(option, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None
    return parse


def _arrivals(text: str) -> str:
    if text.startswith("poisson:"):
        from wse_sim.serving.requests import parse_rate
        try:
            parse_rate(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None
    return text


def _bucket(text: str):
    from wse_sim.serving.costs import parse_bucket
    try:
        return parse_bucket(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None


def _ms(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"got {text!r}, must be a number of milliseconds > 0")
    return v


def register(sub) -> dict:
    from wse_sim.serving.costs import PREFILL_KINDS
    p = sub.add_parser("serve", help="simulate a stream of requests under continuous batching")
    p.add_argument("--preset", required=True, help="preset name or TOML file (the serving "
                   "region; with --mode disaggregated the prefill region)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a hardware field (repeatable; both regions)")
    p.add_argument("--decode-preset", default=None, metavar="P",
                   help="--mode disaggregated: the decode region's preset (default --preset)")
    p.add_argument("--model", required=True, help="zoo name or TOML file")
    p.add_argument("--arrivals", type=_arrivals, default=None, metavar="poisson:RATE|FILE",
                   help="Poisson arrivals at RATE requests/s, or a CSV with column arrival_s "
                        "(and optionally prompt_tokens, output_tokens)")
    p.add_argument("--trace", default=None, metavar="CSV",
                   help="a request trace: columns arrival_s, prompt_tokens, output_tokens "
                        "(instead of --arrivals and the length distributions)")
    p.add_argument("--requests", type=positive_int, default=None, metavar="N",
                   help="number of requests (with a CSV: its first N rows)")
    p.add_argument("--prompt-dist", type=_dist("--prompt-dist"), default=None,
                   metavar="SPEC", help="fixed:N, uniform:A-B or lognormal:MEAN,SIGMA")
    p.add_argument("--output-dist", type=_dist("--output-dist"), default=None,
                   metavar="SPEC", help="fixed:N, uniform:A-B or lognormal:MEAN,SIGMA")
    p.add_argument("--mode", type=one_of(MODE_CHOICES), default="time-shared",
                   help="time-shared (one region runs prefill and decode steps), "
                        "disaggregated (prefill and decode regions, KV over the I/O link) or "
                        "auto (both on the same requests; the most goodput, or output "
                        "tokens/s without SLO targets, per wafer wins)")
    p.add_argument("--seed", type=int_at_least(0, "an integer >= 0"), default=0)
    p.add_argument("--slo-ttft-ms", type=_ms, default=None, help="TTFT target (goodput)")
    p.add_argument("--slo-tpot-ms", type=_ms, default=None, help="TPOT target (goodput)")
    p.add_argument("--max-batch", type=positive_int, default=32,
                   help="most sequences in a decode step")
    p.add_argument("--max-prefill-batch", type=positive_int, default=1, metavar="K",
                   help="most prompts prefilled together in one step (default 1)")
    p.add_argument("--bucket", type=_bucket, default="pow2", metavar="pow2|N",
                   help="prompt/context rounded up to a power of two or a multiple of N "
                        "tokens (1: exact) before their costs are simulated")
    p.add_argument("--prefill", type=one_of(PREFILL_KINDS), default="whole",
                   help="whole: a prefill is one prefill step of the prompt; per-token: it "
                        "runs as one decode step per prompt position (for a mapping whose "
                        "prefill does not fit, e.g. an MoE model over several wafers)")
    add_spec_args(p, only=SPEC_FIELDS, files=False)  # the mapping, as `run` takes it
    p.add_argument("--engine", type=one_of(("auto", "reference", "fast")), default="auto")
    p.add_argument("--cost-cache", default=None, metavar="FILE",
                   help="keep the per-shape costs in this JSON file across runs")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write requests.csv, summary.json and serving.png/.svg")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return {"serve": cmd_serve}


def _check(args) -> None:
    if (args.slo_ttft_ms is None) != (args.slo_tpot_ms is None):
        raise ValueError(f"--slo-ttft-ms/--slo-tpot-ms: got {args.slo_ttft_ms}/"
                         f"{args.slo_tpot_ms}, must be given together")
    if args.decode_preset and args.mode == "time-shared":
        raise ValueError(f"--decode-preset: got {args.decode_preset!r} with --mode "
                         f"{args.mode}, must come with --mode disaggregated or auto")


def _costs(args, cache, mode: str):
    """The ShapeCosts of the serving region (and of the decode region when disaggregated)."""
    from wse_sim.cli.common import effective_hardware
    from wse_sim.hardware import load_preset, parse_set
    from wse_sim.serving.costs import Buckets, Mapping, ShapeCosts
    mapping = Mapping(args.strategy, args.dtype, args.grid, args.reduce_algo, args.attention,
                      args.engine, args.wafers, args.moe_layout, args.routing, args.prefill)
    buckets = Buckets(args.max_batch, args.bucket, args.max_prefill_batch)
    hw = effective_hardware(args)
    first = ShapeCosts(hw, args.model, mapping, buckets, cache)
    first.check_maps()
    if mode != "disaggregated" or not args.decode_preset:
        return first, first  # the decode region is the same hardware: the same costs
    dec_hw = load_preset(args.decode_preset, parse_set(args.set))
    if args.grid is not None and args.grid <= min(dec_hw.mesh_cols, dec_hw.mesh_rows):
        dec_hw = dec_hw.with_overrides({"mesh_cols": args.grid, "mesh_rows": args.grid})
    second = ShapeCosts(dec_hw, args.model, mapping, buckets, cache)
    second.check_maps()
    return first, second


def _serve_mode(args, mode: str, requests: list, costs: tuple) -> tuple:
    """(ServeResult, summary, the prefill and decode ShapeCosts) of one mode; `costs`: the
    (prefill or shared, decode) ShapeCosts of `_costs`."""
    from wse_sim.serving.report import summarize
    from wse_sim.serving.scheduler import run_disaggregated, run_time_shared
    pre, dec = costs
    t0 = time.perf_counter()
    if mode == "disaggregated":
        io = min(pre.hw.io_bits_per_s, dec.hw.io_bits_per_s)
        result = run_disaggregated(requests, pre, dec, args.max_batch, io,
                                   args.max_prefill_batch)
    else:
        result = run_time_shared(requests, pre, args.max_batch, args.max_prefill_batch)
    wall = time.perf_counter() - t0
    ms = 1e-3
    summary = summarize(result, args.slo_ttft_ms and args.slo_ttft_ms * ms,
                        args.slo_tpot_ms and args.slo_tpot_ms * ms)
    summary["wall_seconds"] = wall
    return result, summary, pre, dec


def serve(args) -> tuple:
    """Run the serving simulation of the parsed arguments; returns (result, summary). With
    --mode auto both modes serve the same requests and the summary is the winner's, with
    every candidate under `mode_search` (wse_sim.serving.choose)."""
    from dataclasses import asdict

    from wse_sim.serving.choose import ModeCandidate, choose_mode
    from wse_sim.serving.costs import CostCache
    from wse_sim.serving.requests import StreamSpec, make_requests
    spec_from_args(args, only=SPEC_FIELDS + ("model",))  # validated, defaults filled
    if args.strategy == "auto":
        raise ValueError("strategy: got 'auto'; serve maps every shape with one strategy: "
                         "choose one (`wse-sim search` says which is fastest)")
    _check(args)
    spec = StreamSpec(args.arrivals, args.trace, args.requests, args.prompt_dist,
                      args.output_dist, args.seed)
    cache = CostCache(args.cost_cache)
    requests = make_requests(spec)
    modes = MODES if args.mode == "auto" else (args.mode,)
    pre, dec = _costs(args, cache, "disaggregated" if "disaggregated" in modes else modes[0])
    runs = {m: _serve_mode(args, m, requests, (pre, dec if m == "disaggregated" else pre))
            for m in modes}
    cache.save()
    cands = [ModeCandidate(m, args.wafers * (2 if m == "disaggregated" else 1), runs[m][1])
             for m in modes]
    best, why = choose_mode(cands)
    result, summary, pre, dec = runs[best.mode]
    if args.mode == "auto":
        summary["mode_search"] = {"choice": best.mode, "why": why,
                                  "candidates": [c.row() for c in cands],
                                  "lines": [c.line() for c in cands]}
    disagg = best.mode == "disaggregated"
    summary |= {
        "preset": args.preset, "decode_preset": (args.decode_preset or args.preset)
        if disagg else None, "model": args.model, "seed": args.seed, "wafers": args.wafers,
        "wafers_used": best.wafers, "mapping": asdict(pre.mapping),
        "max_batch": args.max_batch, "max_prefill_batch": args.max_prefill_batch,
        "bucket": args.bucket, "hardware": pre.hw.to_dict(), "engine": args.engine,
        "seconds": summary["span_s"], "cycles": round(summary["span_s"] * pre.hw.clock_hz),
        "kv_bytes_per_token": dec.kv_bytes_per_token, "kv_pool_bytes": dec.kv_pool_bytes,
        "kv_pool_bytes_per_wafer": dec.kv_pool_bytes_per_wafer,
        "cost_shapes_simulated": cache.simulated, "cost_cache_hits": cache.hits,
        "cost_wall_s": cache.wall_s,
    }
    return result, summary


def _print_report(s: dict, title: str) -> None:
    def ms(d: dict) -> str:
        return ", ".join(f"{k} {v * 1e3:.4g} ms" if v is not None else f"{k} -"
                         for k, v in d.items())
    print(title)
    if "mode_search" in s:
        for line in s["mode_search"]["lines"]:
            print(f"  candidate     {line}")
        print(f"  chosen        {s['mode_search']['why']}")
    print(f"  requests      {s['requests']} ({s['served']} served, {s['refused']} refused"
          + (f": {s['refused_reasons']}" if s["refused"] else "") + ")")
    print(f"  TTFT          {ms(s['ttft_s'])}")
    print(f"  TPOT          {ms(s['tpot_s'])}")
    print(f"  throughput    {s['output_tokens_per_s']:.4g} output tokens/s, "
          f"{s['requests_per_s']:.4g} requests/s over {s['span_s']:.4g} s")
    if "slo" in s:
        print(f"  goodput       {s['goodput_requests_per_s']:.4g} requests/s, "
              f"{s['goodput_tokens_per_s']:.4g} tokens/s ({s['slo_attainment']:.1%} meet "
              "the SLO)")
    for region, u in s["utilization"].items():
        print(f"  {region:13} busy {u['busy_fraction']:.1%}, FLOP utilization "
              f"{u['flop_utilization']:.2%}, {u['prefill_steps']} prefills, "
              f"{u['decode_steps']} decode steps (mean batch {u['mean_decode_batch']:.3g})")
    per_wafer = s["kv_pool_bytes_per_wafer"]
    each = f"; per wafer {', '.join(f'{b} B' for b in per_wafer)}" if len(per_wafer) > 1 else ""
    print(f"  KV            {s['kv_bytes_per_token']} B/token, pool {s['kv_pool_tokens']} "
          f"tokens ({s['kv_pool_bytes']} B{each})")
    print(f"  costs         {s['cost_shapes_simulated']} shapes simulated "
          f"({s['cost_wall_s']:.2f} s), scheduler {s['wall_seconds']:.2f} s")


SPEC_FIELDS = ("strategy", "grid", "dtype", "reduce_algo", "attention", "wafers", "moe_layout",
               "routing")


def cmd_serve(args) -> int:
    result, summary = serve(args)
    where = f"{args.wafers} x {args.preset}" if args.wafers > 1 else args.preset
    title = f"serve {args.model} on {where} ({summary['mode']})"
    if args.out:
        from wse_sim.serving.report import write_outputs
        summary |= write_outputs(result, summary, args.out, title)
    if args.json:
        print_json(summary)
    else:
        _print_report(summary, title)
        for f in summary.get("files", []):
            print(f"  wrote         {f}")
    return 0
