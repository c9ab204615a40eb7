"""Serving figures: latency percentiles, throughput, goodput, utilization over time; the
per-request table (CSV), the summary (JSON) and a figure (docs/serving.md, "Report").

Percentiles are numpy's linear interpolation over the served requests (TPOT over those with
two or more output tokens). The span of the run is from the first arrival to the last
finish; throughput is served tokens (or requests) over the span. Goodput counts the served
requests whose TTFT <= the TTFT target and whose TPOT <= the TPOT target (a request with one
output token has no TPOT and meets that target).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from wse_sim.serving.scheduler import ServeResult

PERCENTILES = (50, 90, 99)
CSV_COLUMNS = ("id", "arrival_s", "prompt", "output", "first_token_s", "finish_s", "ttft_s",
               "tpot_s", "refused")
TIMELINE_BINS = 50


def percentiles(values: list) -> dict:
    """{p50, p90, p99, mean} of `values` (None when empty)."""
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    a = np.asarray(values, dtype=float)
    return {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES} | {"mean": float(a.mean())}


def _meets(o, slo_ttft_s: float, slo_tpot_s: float) -> bool:
    return (not o.refused and o.ttft_s <= slo_ttft_s
            and (o.tpot_s is None or o.tpot_s <= slo_tpot_s))


def utilization(result: ServeResult, start_s: float, span_s: float,
                bins: int = TIMELINE_BINS) -> dict:
    """Per region: busy fraction and FLOP utilization (FLOPs / (peak FLOP/s x time)) over
    the span and in `bins` equal windows, step counts and the mean decode batch."""
    out = {}
    edges = start_s + (np.linspace(0.0, span_s, bins + 1) if span_s > 0 else
                       np.zeros(bins + 1))
    for region in sorted({s.region for s in result.steps}):
        st = [s for s in result.steps if s.region == region]
        start = np.array([s.start_s for s in st])
        end = np.array([s.end_s for s in st])
        dur = end - start
        flop_rate = np.array([s.flops / (s.peak_flops_per_s * (s.end_s - s.start_s))
                              if s.peak_flops_per_s else 0.0 for s in st])
        overlap = np.clip(np.minimum(end[:, None], edges[None, 1:])
                          - np.maximum(start[:, None], edges[None, :-1]), 0, None)
        width = np.diff(edges)
        width[width == 0] = 1.0
        decode = [s.batch for s in st if s.kind == "decode"]
        out[region] = {
            "busy_fraction": float(dur.sum() / span_s) if span_s else 0.0,
            "flop_utilization": float((flop_rate * dur).sum() / span_s) if span_s else 0.0,
            "prefill_steps": sum(s.kind == "prefill" for s in st),
            "decode_steps": len(decode),
            "mean_decode_batch": float(np.mean(decode)) if decode else 0.0,
            "timeline": {"t_s": [float(x) for x in edges[:-1]],
                         "busy_fraction": [float(x) for x in overlap.sum(0) / width],
                         "flop_utilization": [float(x) for x in
                                              (overlap * flop_rate[:, None]).sum(0) / width]},
        }
    return out


def summarize(result: ServeResult, slo_ttft_s: float | None = None,
              slo_tpot_s: float | None = None) -> dict:
    """The summary figures of a serving run (JSON-able)."""
    served = [o for o in result.outcomes if not o.refused]
    refused = [o for o in result.outcomes if o.refused]
    start = min((o.request.arrival_s for o in result.outcomes), default=0.0)
    span = max((o.finish_s - start for o in served), default=0.0)
    out_tokens = sum(o.request.output_tokens for o in served)
    in_tokens = sum(o.request.prompt_tokens for o in served)
    reasons = Counter(o.refused.split(":")[0].split(" (")[0] for o in refused)
    s = {
        "mode": result.mode, "requests": len(result.outcomes), "served": len(served),
        "refused": len(refused), "refused_reasons": dict(reasons.most_common()),
        "start_s": start, "span_s": span, "output_tokens": out_tokens, "prompt_tokens": in_tokens,
        "ttft_s": percentiles([o.ttft_s for o in served]),
        "tpot_s": percentiles([o.tpot_s for o in served if o.tpot_s is not None]),
        "output_tokens_per_s": out_tokens / span if span else 0.0,
        "tokens_per_s": (out_tokens + in_tokens) / span if span else 0.0,
        "requests_per_s": len(served) / span if span else 0.0,
        "kv_pool_tokens": result.kv_pool_tokens,
    }
    if slo_ttft_s is not None and slo_tpot_s is not None:
        good = [o for o in served if _meets(o, slo_ttft_s, slo_tpot_s)]
        s["slo"] = {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s}
        s["goodput_requests_per_s"] = len(good) / span if span else 0.0
        s["goodput_tokens_per_s"] = (sum(o.request.output_tokens for o in good) / span
                                     if span else 0.0)
        s["slo_attainment"] = len(good) / len(result.outcomes)
    s["utilization"] = utilization(result, start, span)
    return s


def _fmt(v) -> str:
    return "" if v is None else (repr(v) if isinstance(v, float) else str(v))


def write_table(result: ServeResult, path: Path) -> Path:
    """One row per request: CSV_COLUMNS (times in seconds; empty when not applicable)."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for o in result.outcomes:
            r = o.request
            w.writerow([r.id, _fmt(r.arrival_s), r.prompt_tokens, r.output_tokens,
                        _fmt(o.first_token_s), _fmt(o.finish_s), _fmt(o.ttft_s),
                        _fmt(o.tpot_s), o.refused or ""])
    return Path(path)


def write_figure(result: ServeResult, summary: dict, out_dir: Path, title: str) -> list:
    """serving.png/.svg: TTFT and TPOT against arrival time; utilization over time."""
    from wse_sim.report.plots import new_figure, save, style
    served = [o for o in result.outcomes if not o.refused]
    with style():
        fig = new_figure(7.0, 5.6)
        lat, use = fig.subplots(2, 1)
        t = [o.request.arrival_s for o in served]
        lat.scatter(t, [o.ttft_s for o in served], s=4, label="TTFT")
        tp = [(o.request.arrival_s, o.tpot_s) for o in served if o.tpot_s is not None]
        if tp:
            lat.scatter(*zip(*tp, strict=True), s=4, label="TPOT")
        if served:
            lat.set_yscale("log")
        lat.set_xlabel("arrival (s)")
        lat.set_ylabel("seconds")
        lat.set_title(title)
        lat.legend(loc="upper left")
        for region, u in summary["utilization"].items():
            tl = u["timeline"]
            use.step(tl["t_s"], tl["busy_fraction"], where="post", label=f"{region}: busy")
            use.step(tl["t_s"], tl["flop_utilization"], where="post", linestyle="--",
                     label=f"{region}: FLOP utilization")
        use.set_xlabel("time (s)")
        use.set_ylabel("fraction")
        use.set_ylim(0, 1.05)
        use.legend(loc="upper right")
        return save(fig, out_dir, "serving", ("png", "svg"))


def write_outputs(result: ServeResult, summary: dict, out_dir: str, title: str) -> dict:
    """requests.csv, summary.json and the figure under `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_table(result, out / "requests.csv")]
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    files.append(path)
    files += write_figure(result, summary, out, title)
    return {"files": [str(f) for f in files]}
