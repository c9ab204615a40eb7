"""Readable text reports of a SimResult, in human units."""

from __future__ import annotations


def human(value: float, unit: str) -> str:
    """1234567 'FLOP/s' -> '1.23 MFLOP/s'; seconds get ns/µs/ms."""
    if unit == "s":
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {name}"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_report(result, title: str = "") -> str:
    """A short aligned report: throughput, where the time went, communication, resources."""
    s = result.summary()
    hw = result.hardware
    cyc = max(1, s["cycles"])
    rows = [
        ("hardware", f"{hw.name}: {hw.mesh_cols} x {hw.mesh_rows} cores at {hw.clock_ghz} GHz"),
        ("program", f"{s['program']} ({s['instances']:,} task instances, {s['engine']} engine)"),
        ("time", f"{s['cycles']:,} cycles = {human(s['seconds'], 's')}"),
    ]
    if s["tokens"]:
        rows.append(("throughput", f"{s['tokens_per_s']:,.0f} tokens/s ({s['tokens']:,} tokens)"))
    rows += [
        ("compute", f"{human(s['flops_per_s'], 'FLOP/s')} = {100 * s['peak_fraction']:.2f} % of "
                    f"the {s['cores_used']:,} cores' {s['dtype']} peak"),
        ("critical path", f"computing {100 * s['compute_cycles'] / cyc:.1f} %, on the fabric "
                          f"{100 * s['comm_cycles'] / cyc:.1f} %"),
        ("core busy", f"{100 * s['busy_core_fraction']:.2f} % of core-cycles"),
        ("communication", f"{human(s['comm_bytes'], 'B')} injected, "
                          f"{human(s['bytes_hops'], 'B')} x hops"),
        ("SRAM", f"{s['sram_bytes_per_core']:,} of {hw.sram_bytes:,} bytes on the fullest core"),
        ("colors", f"{s['colors_per_core']} of {hw.colors_per_core} on the busiest router"),
        ("energy", f"{human(s['energy_joules'], 'J')}, average {human(s['average_power_w'], 'W')}"
         + (f", {human(s['energy_per_token_j'], 'J')}/token" if s["tokens"] else "")),
    ]
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
