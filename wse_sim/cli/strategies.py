"""`wse-sim compare` and `wse-sim search`, and the extended forms of `run` (`--strategy auto`,
`--generate`, `--wafers`): whole-model mapping strategies side by side."""

from __future__ import annotations

from pathlib import Path

from mapper.reduce_algos import LAYER_REDUCE_ALGOS
from wse_sim.cli.common import (
    effective_hardware,
    hardware_args,
    one_of,
    positive_int,
    print_json,
    with_interface_keys,
    write_requested,
)
from wse_sim.cli.outputs import check_output_args, write_file, write_json
from wse_sim.cli.run import add_spec_args, spec_from_args

# the run spec fields `compare` and `search` offer (`wse_sim.spec`, declared there once)
MODEL_FIELDS = ("model", "phase", "batch", "prompt", "context", "grid", "dtype", "sparsity",
                "model_set", "weights_dtype", "kv_dtype", "accum_dtype", "sparse_format",
                "sparsity_file")
PRECISION_FIELDS = ("weights_dtype", "kv_dtype", "accum_dtype", "sparse_format",
                    "sparsity_file")  # passed on only when given
# MoE's placement, the layout, GEMM algorithm and checkpointing: fixed when given
SEARCH_FIELDS = MODEL_FIELDS + ("wafers", "routing", "moe_layout", "layout", "gemm_algo",
                                "recompute")


def _reduce_arg(p, default, help_text: str) -> None:
    p.add_argument("--reduce-algo", type=one_of(LAYER_REDUCE_ALGOS), default=default,
                   metavar="|".join(LAYER_REDUCE_ALGOS), help=help_text)


def register(sub) -> dict:
    cmp = sub.add_parser("compare", help="every strategy that fits, side by side (or: compare gemm)")
    cmp.add_argument("what", nargs="?", default="model", choices=("model", "gemm"),
                     help="'model' (default): whole-model strategies; 'gemm': GEMM algorithms")
    hardware_args(cmp)
    add_spec_args(cmp, only=MODEL_FIELDS + ("reduce_algo",), files=False)
    for name in ("--m", "--k", "--n"):
        cmp.add_argument(name, type=positive_int, default=None, help="GEMM size (compare gemm)")
    srch = sub.add_parser("search", help="choose the mapping by simulated cost, and say why")
    hardware_args(srch)
    add_spec_args(srch, only=SEARCH_FIELDS, files=False)
    srch.add_argument("--budget", type=positive_int, default=64, help="most mappings to simulate")
    _reduce_arg(srch, None, "fix the GEMMs' reduce algorithm (default: search them)")
    return {"compare": cmd_compare, "search": cmd_search}


def _kw(args) -> dict:
    kw = {"phase": args.phase, "batch": args.batch, "prompt": args.prompt,
          "context": args.context, "dtype": args.dtype, "grid": args.grid,
          "sparsity": args.sparsity}
    if args.model_set:
        kw["model_set"] = args.model_set
    kw |= {k: getattr(args, k) for k in PRECISION_FIELDS if getattr(args, k, None) is not None}
    if getattr(args, "reduce_algo", None):
        kw["reduce_algo"] = args.reduce_algo
    return kw


def scorecard_row(name: str, r) -> dict:
    s = r.summary()
    return {"strategy": name, "layout": r.meta.get("layout", "top-row"), "engine": r.engine,
            "cycles": s["cycles"], "seconds": s["seconds"],
            "tokens_per_s": s["tokens_per_s"], "peak_fraction": s["peak_fraction"],
            "useful_peak_fraction": s["useful_peak_fraction"],
            "comm_share": s["comm_cycles"] / max(1, s["cycles"]),
            "sram_bytes_per_core": s["sram_bytes_per_core"],
            "colors_per_core": s["colors_per_core"], "io_bytes": s["io_bytes"],
            "energy_per_token_j": s["energy_per_token_j"]}


def format_scorecard(rows: list[dict], rejected: dict) -> str:
    head = (f"{'strategy':18} {'layout':7} {'time':>11} {'tokens/s':>13} {'% peak':>7} "
            f"{'model %':>7} {'comm %':>7} {'SRAM/core':>10} {'colors':>6} {'J/token':>10}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: r["seconds"]):
        lines.append(f"{r['strategy']:18} {r.get('layout', 'top-row'):7} "
                     f"{r['seconds'] * 1e6:>9.2f}µs {r['tokens_per_s']:>13,.0f} "
                     f"{100 * r['peak_fraction']:>7.2f} "
                     f"{100 * r['useful_peak_fraction']:>7.2f} "
                     f"{100 * r['comm_share']:>7.1f} "
                     f"{r['sram_bytes_per_core']:>10,} {r['colors_per_core']:>6} "
                     f"{r['energy_per_token_j']:>10.3g}")
    for name, why in rejected.items():
        lines.append(f"{name:18} does not run: {why}")
    return "\n".join(lines)


def _write_each(args, runs: list) -> dict:
    """--out DIR / --trace FILE for several runs: DIR/<name>/ and FILE.<name>.json each;
    returns {"outputs": {name: what was written}} (empty when nothing was asked)."""
    if not (getattr(args, "out", None) or getattr(args, "trace", None)):
        return {}
    return {"outputs": {name: write_requested(r, args, title=title, tag=name)
                        for name, r, title in runs}}


def _write_scorecard(out: Path, card: dict) -> None:
    """DIR/scorecard.json (the --json object) and DIR/scorecard.csv (a row per strategy)."""
    import csv
    import io
    write_json(out / "scorecard.json", card)
    buf = io.StringIO()
    cols = ["strategy", "layout", "engine", "cycles", "seconds", "tokens_per_s", "peak_fraction",
            "useful_peak_fraction", "comm_share", "sram_bytes_per_core", "colors_per_core",
            "io_bytes", "energy_per_token_j", "rejected"]
    w = csv.DictWriter(buf, cols)
    w.writeheader()
    for r in card["strategies"]:
        w.writerow(r | {"rejected": ""})
    for name, why in card["rejected"].items():
        w.writerow({"strategy": name, "rejected": why})
    write_file(out / "scorecard.csv", buf.getvalue())


def cmd_compare(args) -> int:
    sizes = [f"--{a}" for a in ("m", "k", "n") if getattr(args, a, None) is not None]
    if args.what == "model" and sizes:
        raise ValueError(f"compare: {sizes[0]}: a GEMM size, for `compare gemm`; it does not "
                         "apply to comparing a model's strategies")
    if args.what == "gemm":
        if args.model:
            raise ValueError("compare gemm: --model: it times GEMM algorithms (--grid, --m, --k, "
                             "--n); `compare --model M` compares a model's strategies")
        if args.trace:
            raise ValueError("compare gemm: --trace: it times several GEMMs; trace one with "
                             "`wse-sim gemm --algo A ... --trace FILE`")
        import importlib.util
        if importlib.util.find_spec("wse_sim.cli.blocks") is None:
            raise NotImplementedError("compare gemm: the GEMM algorithms are not built yet")
        from wse_sim.cli.blocks import cmd_compare_gemm
        return cmd_compare_gemm(args)
    if not args.model:
        raise ValueError("compare: --model is required (or use `wse-sim compare gemm`)")
    from wse_sim.experiment import compare_strategies
    spec_from_args(args, only=MODEL_FIELDS + ("reduce_algo",))
    hw = effective_hardware(args)
    check_output_args(args, hw)
    results = compare_strategies(hw, args.model, engine=args.engine, **_kw(args))
    rows = [scorecard_row(n, r) for n, r in results.items() if not isinstance(r, str)]
    rejected = {n: r for n, r in results.items() if isinstance(r, str)}
    card = {"model": args.model, "phase": args.phase, "preset": args.preset,
            "strategies": rows, "rejected": rejected}
    written = _write_each(args, [(n, r, f"{args.model} {args.phase}, {n}")
                                 for n, r in results.items() if not isinstance(r, str)])
    if args.out:
        _write_scorecard(Path(args.out), card)
        written["scorecard"] = str(Path(args.out) / "scorecard.csv")
    if args.json:
        print_json(card | written)
    else:
        print(f"{args.model} {args.phase} on {args.preset} ({hw.mesh_cols} x {hw.mesh_rows})")
        print(format_scorecard(rows, rejected))
    return 0


def cmd_search(args) -> int:
    from mapper.search import pruned
    from wse_sim.engine import AUTO_REFERENCE_MAX_CORES
    from wse_sim.search_mappings import LAYOUT_DEFAULTS, search_mapping
    args.strategy = "auto"  # searched
    spec_from_args(args, only=SEARCH_FIELDS + ("strategy",))
    hw = effective_hardware(args)
    check_output_args(args, hw)
    kw = _kw(args) | {k: getattr(args, k) for k in ("routing", "moe_layout", *LAYOUT_DEFAULTS)
                      if getattr(args, k, None) is not None}
    if args.wafers > 1:
        return _search_wafers(args, hw, kw)
    grid = kw.pop("grid")
    # beyond 32 x 32 cores (the fast engine's meshes, where one simulation takes seconds) a
    # candidate whose lower bound is above the best simulated cost is pruned, not simulated;
    # on small meshes every candidate is simulated, for the full table
    prune = hw.cores > AUTO_REFERENCE_MAX_CORES
    found, best = search_mapping(hw, args.model, engine=args.engine, budget=args.budget,
                                 grids=(grid,) if grid else None, progress=not args.json,
                                 prune=prune, **kw)
    if best is None:
        raise ValueError(f"search: no strategy fits {args.model} on {args.preset}")
    written = write_requested(best, args, title=f"{args.model} {args.phase}: search's choice")
    tried = [{"candidate": c, "seconds_per_token": cost,
              "rejected": None if pruned(why) else why or None,
              "pruned": why if pruned(why) else None} for c, cost, why in found.tried]
    if args.out:
        write_json(Path(args.out) / "search.json", {"choice": found.best, "tried": tried})
    moe = found.best.get("moe_layout") is not None
    if args.json:
        out = with_interface_keys(best.summary(), args, hw) | written
        out["choice"] = found.best
        out["reduce_algo"] = found.best["reduce_algo"]
        out["reduce_algo_why"] = found.why("reduce_algo")
        out["attention"] = found.best["attention"]
        out["attention_why"] = found.why("attention")
        if moe:
            out["moe_layout"] = found.best["moe_layout"]
            out["moe_layout_why"] = found.why("moe_layout")
        out["tried"] = tried
        out["candidates_not_tried"] = found.left_out  # beyond --budget
        print_json(out)
    else:
        g = found.best["grid"]
        lay = " in the 2-D layout" if found.best.get("layout") == "2d" else ""
        print(f"chosen: {found.best['strategy']} on {f'a {g} x {g} grid' if g else 'the whole mesh'}"
              f"{lay} — least simulated time per token "
              f"({found.best_cost * 1e6:.3f} µs/token)")
        print(f"reduce: {found.why('reduce_algo')}")
        print(f"attention: {found.why('attention')}")
        if moe:
            print(f"expert placement: {found.why('moe_layout')}")
        print(found.explain())
    return 0


def _search_wafers(args, hw, kw: dict) -> int:
    """`search --wafers N`: the reduce algorithm and (MoE) the expert placement of the
    multi-wafer pipeline, by simulated latency per token (search_mappings.search_multi_wafer)."""
    from wse_sim.search_mappings import LAYOUT_DEFAULTS, search_multi_wafer
    if kw.pop("grid", None) is not None:
        raise ValueError(f"--grid: got {args.grid} with --wafers {args.wafers}; search over "
                         "wafers maps each wafer's whole mesh (leave --grid out)")
    for name, default in LAYOUT_DEFAULTS.items():
        v = kw.pop(name, default)
        if v != default:  # each wafer's slice is layer-pipelined: top-row
            raise ValueError(f"--{name.replace('_', '-')}: got {v!r} with --wafers "
                             f"{args.wafers}; each wafer's slice is layer-pipelined, in the "
                             "top-row layout")
    found, best = search_multi_wafer(hw, args.model, wafers=args.wafers, engine=args.engine,
                                     budget=args.budget, progress=not args.json, **kw)
    if best is None:
        why = found.tried[0][2] if found.tried else "no candidate tried"
        raise ValueError(f"search: nothing fits {args.model} on {args.wafers} x {args.preset}: "
                         f"{why}")
    stages = best.pop("stages")
    tried = [{"candidate": c, "seconds_per_token": cost, "rejected": why or None}
             for c, cost, why in found.tried]
    if args.out:
        write_json(Path(args.out) / "search.json", {"choice": found.best, "tried": tried})
    moe = found.best["moe_layout"] is not None
    if args.json:
        out = with_interface_keys(best, args, hw) | {
            "engine": stages[0].engine, "choice": found.best, "tried": tried,
            "reduce_algo": found.best["reduce_algo"], "reduce_algo_why": found.why("reduce_algo")}
        if moe:
            out |= {"moe_layout": found.best["moe_layout"],
                    "moe_layout_why": found.why("moe_layout")}
        print_json(out)
        return 0
    print(f"chosen: layer-pipelined over {args.wafers} x {args.preset} — least simulated "
          f"latency per token ({found.best_cost * 1e6:.3f} µs/token; "
          f"{best['pipelined_tokens_per_s']:,.0f} tokens/s with every wafer busy)")
    print(f"reduce: {found.why('reduce_algo')}")
    if moe:
        print(f"expert placement: {found.why('moe_layout')}")
    print(found.explain())
    return 0


def run_extended(args) -> int:
    """`run` with --strategy auto, --generate or --wafers."""
    from wse_sim.experiment import run_generate, run_multi_wafer
    from wse_sim.report.text import format_report
    from wse_sim.search_mappings import LAYOUT_DEFAULTS, search_mapping
    hw = effective_hardware(args)
    kw = {"batch": args.batch, "dtype": args.dtype, "sparsity": args.sparsity,
          "reduce_algo": args.reduce_algo, "attention": args.attention,
          "routing": getattr(args, "routing", None), "moe_layout": getattr(args, "moe_layout", None)}
    kw |= {k: getattr(args, k) for k in PRECISION_FIELDS if getattr(args, k, None) is not None}
    if args.model_set:
        kw["model_set"] = args.model_set
    if args.wafers > 1:
        if args.strategy not in ("layer-pipelined", "auto"):
            raise ValueError(f"--wafers: got {args.wafers} with strategy {args.strategy}; "
                             "a multi-wafer pipeline is layer-pipelined on every wafer")
        extra = {"micro_batches": args.micro_batches} if args.micro_batches > 1 else {}
        extra |= {"chunks": args.chunks, "region_shape": args.region_shape}  # refused if set
        out = run_multi_wafer(hw, args.model, wafers=args.wafers, engine=args.engine,
                              phase=args.phase, prompt=args.prompt, context=args.context,
                              grid=args.grid, **kw, **extra)
        stages = out.pop("stages")
        out["engine"] = stages[0].engine
        out |= _write_each(args, [(f"wafer{i}", r, f"{args.model} {args.phase}, wafer {i}")
                                  for i, r in enumerate(stages)])
        if args.json:
            print_json(with_interface_keys(out, args, hw))
        else:
            print(f"{args.model} {args.phase} on {args.wafers} x {args.preset}: "
                  f"{out['seconds'] * 1e6:.2f} µs latency, {out['tokens_per_s']:,.0f} tokens/s "
                  f"(one batch in flight), {out['pipelined_tokens_per_s']:,.0f} tokens/s with "
                  "every wafer busy")
            for i, r in enumerate(stages):
                print(format_report(r, f"wafer {i}"))
        return 0
    strategy = args.strategy
    if strategy == "auto":
        kw.pop("reduce_algo")  # searched
        if kw["attention"] == "auto":
            kw.pop("attention")  # searched too
        fixed = {k: getattr(args, k) for k in LAYOUT_DEFAULTS
                 if getattr(args, k, None) is not None}  # searched unless given
        found, _ = search_mapping(hw, args.model, engine=args.engine, phase=args.phase,
                                  prompt=args.prompt, context=args.context, grids=(args.grid,),
                                  progress=False, prune=True, **kw, **fixed)  # its choice
        if found.best is None:
            raise ValueError(f"strategy auto: no strategy fits {args.model} on {args.preset}")
        strategy = found.best["strategy"]
        args.chunks = found.best.get("chunks", 1)
        args.micro_batches = found.best.get("micro_batches", 1)
        args.region_shape = found.best.get("region_shape", 0)
        args.reduce_algo = kw["reduce_algo"] = found.best.get("reduce_algo", "chain")
        args.attention = kw["attention"] = found.best.get("attention", "auto")
        args.moe_layout = kw["moe_layout"] = found.best.get("moe_layout")
        args.layout = found.best.get("layout", "top-row")
        args.gemm_algo = found.best.get("gemm_algo", "auto")
        args.recompute = found.best.get("recompute", args.recompute)
    if args.generate:
        if args.micro_batches != 1:
            raise ValueError(f"micro_batches: got {args.micro_batches} with --generate, must be "
                             "1; only a training step runs in micro-batches")
        out = run_generate(hw, args.model, generate=args.generate, prompt=args.prompt,
                           engine=args.engine, strategy=strategy,
                           prefill_grid=args.prefill_grid or args.grid,
                           decode_grid=args.decode_grid or args.grid,
                           layout=args.layout or "auto", gemm_algo=args.gemm_algo or "auto",
                           **kw)
        res = out.pop("results")
        out.update({"strategy": strategy, "reduce_algo": args.reduce_algo,
                    "engine": res["prefill"].engine})
        out |= _write_each(args, [(k, r, f"{args.model} {k.replace('_', ' ')}")
                                  for k, r in res.items()])
        if args.json:
            print_json(with_interface_keys(out, args, hw))
        else:
            print(f"{args.model}: prefill {args.prompt} tokens + generate {args.generate} with "
                  f"{strategy} ({args.reduce_algo} reduces) on {args.preset}")
            print(f"  time to first token  {out['time_to_first_token_s'] * 1e6:.2f} µs")
            if out["kv_handoff"] != "in place":
                print("  KV cache             the prefill leaves it in another layout than the "
                      f"decode's: its move ({out['kv_handoff_bytes']:,} bytes) is not "
                      "simulated and not in these times")
            print(f"  total                {out['seconds'] * 1e6:.2f} µs, "
                  f"{out['tokens_per_s']:,.0f} generated tokens/s end to end "
                  f"({out['decode_tokens_per_s']:,.0f} tokens/s while decoding)")
        return 0
    args.strategy = strategy
    from wse_sim.cli.run import run_one
    return run_one(args)
