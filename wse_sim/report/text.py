"""Readable text reports of a SimResult, in human units, and the roll-ups behind them.

`format_report` is the short aligned text a run prints. `op_rows` and `phase_rows` are the
per-op and per-phase tables that `wse_sim.report.outputs` writes as CSV and `wse_sim.report.plots` draws:
a phase is the op name's first dotted part (`L3.q_proj` -> `L3`, `lm_head.0` -> `lm_head`),
a family the name without its layer prefix (`L3.q_proj` -> `q_proj`).
"""

from __future__ import annotations

import re

COMPUTE_KINDS = ("Compute",)
_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
             (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"))
_LAYER = re.compile(r"^L\d+\.")


def human(value: float, unit: str) -> str:
    """1234567 'FLOP/s' -> '1.23 MFLOP/s'; 8.7e-6 'J' -> '8.7 µJ'; seconds get ns/µs/ms."""
    if unit == "s":
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {name}"
    if value == 0:
        return f"0 {unit}"
    small_ok = unit not in ("B", "b", "FLOP", "cycles")  # no millibytes
    for scale, prefix in _PREFIXES:
        if scale < 1 and not small_ok:
            break
        if abs(value) >= scale * 0.9995:
            return f"{value / scale:.3g} {prefix}{unit}"
    if small_ok:
        return f"{value / 1e-12:.3g} p{unit}"
    return f"{value:.3g} {unit}"


# ---- roll-ups ------------------------------------------------------------------------------
def phase_of(op: str) -> str:
    """The phase an op belongs to: its name up to the first dot (`L3.q_proj` -> `L3`)."""
    return op.split(".", 1)[0]


def family_of(op: str) -> str:
    """The op with its layer prefix removed (`L3.ffn.reduce` -> `ffn.reduce`)."""
    return _LAYER.sub("", op)


def is_compute(kind: str) -> bool:
    return kind in COMPUTE_KINDS


def _union_length(intervals) -> int:
    """Total length covered by half-open [start, end) intervals."""
    total = 0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def op_rows(result, op_info: dict | None = None) -> list[dict]:
    """One row per op, in start order: the ops.csv table.

    `op_info` (from `wse_sim.report.tasks.op_info`) adds what the SimResult does not carry: the
    op's SRAM traffic, dtype, compute kind (fmac / vector) and core count."""
    op_info = op_info or {}
    cyc = max(1, int(result.cycles))
    clock = result.hardware.clock_hz
    rows = []
    for name, o in sorted(result.ops.items(), key=lambda kv: (kv[1]["start"], kv[1]["end"])):
        info = op_info.get(name, {})
        span = int(o["end"]) - int(o["start"])
        sram = o.get("sram_bytes", info.get("sram_bytes"))
        busy = int(o["busy_cycles"])
        flops = int(o["flops"])
        rows.append({
            "op": name, "phase": phase_of(name), "kind": o.get("kind", ""),
            "flops": flops, "busy_cycles": busy, "bytes": int(o["bytes"]),
            "start": int(o["start"]), "end": int(o["end"]), "span": span,
            "share": span / cyc,
            "cores": info.get("cores", ""), "dtype": info.get("dtype", ""),
            "compute": info.get("compute", ""),
            "sram_bytes": "" if sram is None else int(sram),
            "flops_per_sram_byte": (flops / sram) if sram else "",
            "flops_per_core_s": (flops / busy * clock) if busy and flops else "",
        })
    return rows


def _group_row(level: str, name: str, ops: list, cycles: int) -> dict:
    start = min(int(o["start"]) for o in ops)
    end = max(int(o["end"]) for o in ops)
    comp = [(int(o["start"]), int(o["end"])) for o in ops if is_compute(o.get("kind", ""))]
    allv = [(int(o["start"]), int(o["end"])) for o in ops]
    c = _union_length(comp)
    a = _union_length(allv)
    span = end - start
    return {
        "level": level, "name": name, "ops": len(ops), "start": start, "end": end,
        "span_cycles": span, "compute_cycles": c, "comm_cycles": a - c, "idle_cycles": span - a,
        "compute_core_cycles": sum(int(o["busy_cycles"]) for o in ops
                                   if is_compute(o.get("kind", ""))),
        "stream_core_cycles": sum(int(o["busy_cycles"]) for o in ops
                                  if not is_compute(o.get("kind", ""))),
        "flops": sum(int(o["flops"]) for o in ops),
        "fabric_bytes": sum(int(o["bytes"]) for o in ops),
        "active_share": a / max(1, cycles),
    }


def phase_rows(result) -> list[dict]:
    """Where the wall-clock cycles go, per phase, per op family and for the whole run.

    Within a group's window [start, end): `compute_cycles` are the cycles in which at least
    one of its compute ops is in progress, `comm_cycles` those in which only its transfers
    and streams are, `idle_cycles` the rest (compute + comm + idle = span). An op is in
    progress from its first instance's start to its last instance's end."""
    ops = [dict(o, name=n) for n, o in result.ops.items()]
    if not ops:
        return []
    cycles = int(result.cycles)
    groups: dict[tuple, list] = {}
    for o in sorted(ops, key=lambda o: (o["start"], o["end"])):
        groups.setdefault(("phase", phase_of(o["name"])), []).append(o)
    fams: dict[tuple, list] = {}
    for o in sorted(ops, key=lambda o: (o["start"], o["end"])):
        fams.setdefault(("family", family_of(o["name"])), []).append(o)
    rows = [_group_row(lv, nm, g, cycles) for (lv, nm), g in groups.items()]
    rows += [_group_row(lv, nm, g, cycles) for (lv, nm), g in fams.items()]
    total = _group_row("total", "run", ops, cycles)
    total["start"], total["end"] = 0, cycles
    total["span_cycles"] = cycles
    total["idle_cycles"] = cycles - total["compute_cycles"] - total["comm_cycles"]
    rows.append(total)
    return rows


# ---- energy --------------------------------------------------------------------------------
def busy_core_power(hw, dtype: str = "fp16") -> dict:
    """Dynamic power of one fully busy core from the preset's per-unit costs, in watts (static
    power is apart: `wafer_power`): every FMAC lane
    of `dtype` every cycle, SRAM read + write at full bandwidth, and all 4 outgoing links
    carrying a wavelet every cycle. `wafer_w` scales it to the chip's cores."""
    clock = hw.clock_hz
    pj = {
        "compute": hw.peak_flops_per_core_cycle(dtype) * getattr(hw, f"energy_pj_per_flop_{dtype}"),
        "sram": (hw.sram_read_bytes_per_cycle + hw.sram_write_bytes_per_cycle)
        * hw.energy_pj_per_sram_byte,
        "fabric": 4 * hw.link_bits_per_cycle * hw.energy_pj_per_bit_hop,
    }
    out = {k: v * 1e-12 * clock for k, v in pj.items()}
    out["total"] = sum(out.values())
    out["pj_per_cycle"] = sum(pj.values())
    out["cores"] = hw.chip_cores or hw.cores
    out["wafer_w"] = out["total"] * out["cores"]
    return out


def wafer_power(hw, dtype: str = "fp16") -> dict:
    """The chip's power in watts when idle (static only: every core and router leaks and is
    clocked) and when busy (static + every core's dynamic power of `busy_core_power`)."""
    busy = busy_core_power(hw, dtype)
    static = hw.static_power_w_per_core + hw.static_power_w_per_router
    return {"cores": hw.static_cores, "static_w_per_core": static,
            "dynamic_w_per_core": busy["total"], "idle_w": hw.static_power_w,
            "busy_w": hw.static_power_w + busy["wafer_w"], "busy_dynamic_w": busy["wafer_w"]}


# ---- text ----------------------------------------------------------------------------------
def _energy_lines(result, s: dict) -> list[tuple[str, str]]:
    e = result.energy_joules()
    total = e["total"]
    head = (f"{human(total, 'J')} = static {human(e['static'], 'J')} + dynamic "
            f"{human(e['dynamic'], 'J')}")
    if s["tokens"]:
        head += f", {human(s['energy_per_token_j'], 'J')}/token"
    parts = []
    for key, label in (("static", "static"), ("compute", "compute"), ("sram", "SRAM"),
                       ("fabric", "fabric"), ("io", "I/O")):
        share = 100 * e[key] / total if total else 0.0
        parts.append(f"{label} {human(e[key], 'J')} ({share:.0f} %)")
    hw = result.hardware
    power = (f"average {human(s['average_power_w'], 'W')} = static "
             f"{human(s['power_static_w'], 'W')} ({hw.static_cores:,} cores and routers) + "
             f"dynamic {human(s['power_dynamic_w'], 'W')}")
    return [("energy", head), ("", ", ".join(parts)), ("power", power)]


def mapping_line(meta: dict) -> str:
    """How a whole-model program is laid out (from its meta); '' for other programs."""
    if "strategy" not in meta:
        return ""
    parts = [meta["strategy"]]
    if "region_cols" in meta:
        n = meta.get("regions", 1)
        parts.append(f"{n} region{'s' if n != 1 else ''} of {meta['region_cols']} x "
                     f"{meta['region_rows']} cores")
    if meta.get("chunks", 1) > 1:
        parts.append(f"{meta['chunks']} chunks" + (
            " (the 2-D layout fits this prompt whole: --layout 2d; wse-sim search compares "
            "them)" if meta.get("layout_2d_fits") else ""))
    if meta.get("layout") == "2d":  # the GEMMs' algorithms
        algo = meta.get("gemm_algo")
        parts.append("2-D layout, GEMMs " + (
            ", ".join(f"{k} {v}" for k, v in meta["gemm_algos"].items())
            if algo == "per-projection" else str(algo)))
    two_d_step = meta.get("layout") == "2d" and meta.get("phase") == "train"
    if two_d_step:
        parts.append("Adam " + ("on the wafer" if meta.get("optimizer") == "onwafer"
                                else "off the wafer"))
    if "reduce_algo" in meta and not two_d_step:  # the top-row GEMVs' (a 2-D prefill's head)
        parts.append(f"GEMM reduce {meta['reduce_algo']}")
    return ", ".join(parts)


def _useful(s: dict) -> str:
    """'; the model's FLOPs ...' where the tasks execute more FLOPs than the model has."""
    if not s["flops"] or s["useful_flops"] >= s["flops"]:
        return ""
    extra = 1 - s["useful_flops"] / s["flops"]
    return (f"; the model's FLOPs {100 * s['useful_peak_fraction']:.2f} % ({100 * extra:.1f} % "
            "of those executed are padding, recomputation or reduce combines)")


def _loops(s: dict) -> str:
    """', loops: N iterations, K fast-forwarded' for a program with loops."""
    n = s.get("loop_iterations", 0)
    if not n:
        return ""
    k = s.get("loop_iterations_skipped", 0)
    return f"; loops: {n:,} iterations, {n - k:,} simulated, {k:,} fast-forwarded"


def format_report(result, title: str = "") -> str:
    """A short aligned report: throughput, where the time went, communication, resources."""
    s = result.summary()
    hw = result.hardware
    cyc = max(1, s["cycles"])
    secs = s["seconds"] or 1.0
    rows = [
        ("hardware", f"{hw.name}: {hw.mesh_cols} x {hw.mesh_rows} cores at {hw.clock_ghz} GHz"),
        ("program", f"{s['program']} ({s['instances']:,} task instances, {s['engine']} engine"
                    + (f", {result.fast_path} path" if getattr(result, "fast_path", None)
                       else "") + _loops(s) + ")"),
        ("time", f"{s['cycles']:,} cycles = {human(s['seconds'], 's')}"),
    ]
    if "defects" in s:
        d = s["defects"]
        rows.insert(1, ("defects", f"{d['defective_cores']:,} of {d['physical_mesh'][0]} x "
                                   f"{d['physical_mesh'][1]} physical cores, {d['rows_retired']} "
                                   f"rows retired, {d['spare_cores_used']:,} spare-column cores "
                                   f"and {d['spare_rows_used']} spare rows used; usable "
                                   f"{d['usable_mesh'][0]} x {d['usable_mesh'][1]}"))
    mapping = mapping_line(result.meta or {})
    if mapping:
        rows.insert(2, ("mapping", mapping))
    if s["tokens"]:
        rows.append(("throughput", f"{s['tokens_per_s']:,.0f} tokens/s ({s['tokens']:,} tokens)"))
    rows += [
        ("compute", f"{human(s['flops_per_s'], 'FLOP/s')} = {100 * s['peak_fraction']:.2f} % of "
                    f"the {s['cores_used']:,} cores' {s['dtype']} peak" + _useful(s)),
        ("critical path", f"computing {100 * s['compute_cycles'] / cyc:.1f} %, on the fabric "
                          f"{100 * s['comm_cycles'] / cyc:.1f} %"),
        ("core busy", f"{100 * s['busy_core_fraction']:.2f} % of core-cycles"),
        ("communication", f"{human(s['comm_bytes'], 'B')} injected "
                          f"({human(s['comm_bytes'] / secs, 'B/s')}), "
                          f"{human(s['bytes_hops'], 'B')} x hops"),
    ]
    if result.link_busy_cycles.size and s["cycles"]:
        util = result.link_busy_cycles / s["cycles"]
        rows.append(("links", f"busiest {100 * float(util.max()):.1f} % busy, "
                              f"mean of used links {100 * float(util[util > 0].mean()):.1f} %"
                     if (util > 0).any() else "no fabric traffic"))
    rows += [
        ("SRAM", f"{s['sram_bytes_per_core']:,} of {hw.sram_bytes:,} bytes on the fullest core"),
        ("colors", f"{s['colors_per_core']} of {hw.colors_per_core} on the busiest router"),
    ]
    rows += _energy_lines(result, s)
    width = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    top = sorted(result.ops.items(), key=lambda kv: kv[1]["end"] - kv[1]["start"], reverse=True)
    if top:
        lines.append(f"  {'longest ops':<{width}}  (span in cycles, share of the run)")
        for name, o in top[:5]:
            span = o["end"] - o["start"]
            lines.append(f"  {'':<{width}}  {name:<22} {span:>10,}  {100 * span / cyc:5.1f} %")
    return "\n".join(lines)
