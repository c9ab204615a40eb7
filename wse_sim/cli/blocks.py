"""`wse-sim gemm`, `wse-sim gemv`, `wse-sim collective` and `compare gemm`: the building blocks
(one distributed matmul, one decode GEMV, one collective) simulated on their own.

With --json each prints exactly one JSON object (INTERFACES.md keys plus the block's own);
with --functional the real product is computed through the kernels and checked against numpy.
"""

from __future__ import annotations

import time

import numpy as np

from wse_sim.cli.common import (
    effective_hardware,
    hardware_args,
    positive_int,
    print_json,
    with_interface_keys,
)
from wse_sim.cli.outputs import check_output_args, write_file, write_json, write_requested

DTYPES = ("fp32", "fp16", "bf16")


def register(sub) -> dict:
    from mapper.gemm import gemm_algos  # the registered algorithms, a user's too
    g = sub.add_parser("gemm", help="one distributed GEMM C = A B on a grid x grid region")
    hardware_args(g)
    g.add_argument("--algo", required=True, choices=gemm_algos("gemm"))
    _size_args(g, gemm=True)
    g.add_argument("--layout", default="square", choices=("square", "line"),
                   help="1d only: the grid x grid region flattened, or a line of grid cores")
    g.add_argument("--no-skew", action="store_true",
                   help="cannon/meshgemm: inputs loaded pre-aligned (no alignment phase)")
    g.add_argument("--flow-control", action="store_true",
                   help="cannon/meshgemm: a shift waits for its destination's last read "
                        "under flow control, not for every core's (docs/gemm.md)")

    v = sub.add_parser("gemv", help="one decode GEMV y = x W (chain or tree reduce)")
    hardware_args(v)
    v.add_argument("--algo", required=True, choices=gemm_algos("gemv"))
    _size_args(v, gemm=False)

    c = sub.add_parser("collective", help="one collective (broadcast, reduce, allreduce, ...)")
    hardware_args(c)
    c.add_argument("--kind", required=True, help="see mapper.collectives.KINDS")
    c.add_argument("--pes", type=positive_int, help="a line of N cores (row 0)")
    c.add_argument("--rows", type=positive_int, help="a rows x cols region (with --cols)")
    c.add_argument("--cols", type=positive_int)
    c.add_argument("--wavelets", type=positive_int, required=True,
                   help="vector length per core in 32-bit wavelets")
    c.add_argument("--root", default="corner", choices=("corner", "centre", "center"))
    c.add_argument("--dtype", default="fp32", choices=DTYPES)
    return {"gemm": cmd_gemm, "gemv": cmd_gemv, "collective": cmd_collective}


def _size_args(p, gemm: bool) -> None:
    p.add_argument("--grid", type=positive_int, required=True, help="grid x grid cores")
    if gemm:
        p.add_argument("--m", type=positive_int, required=True)
    p.add_argument("--k", type=positive_int, required=True)
    p.add_argument("--n", type=positive_int, required=True)
    p.add_argument("--dtype", default="fp32", choices=DTYPES)
    p.add_argument("--functional", action="store_true",
                   help="compute the real product and check it against numpy")
    p.add_argument("--seed", type=int, default=None,
                   help="random inputs of --functional (default 0)")


# ---- one block ---------------------------------------------------------------------------------

def _block_keys(program, result) -> dict:
    """The block's own figures on top of the SimResult summary."""
    meta = program.meta
    out = {k: meta[k] for k in ("algo", "grid", "m", "k", "n", "dtype", "tiles", "padded_sizes",
                                "steps", "useful_flops", "padded_flops", "padding_waste",
                                "closed_form_cycles", "records", "sram_buffers") if k in meta}
    if meta.get("kind") == "gemm":
        out["skew"] = meta["skew"]
        out["flow_control"] = meta.get("flow_control", False)
        if meta["algo"] == "1d":
            out["layout"] = meta["layout"]
    cf = meta.get("closed_form") or {}
    for key in ("lower_bound", "steady_state_cycles", "step_cycles", "compute_bound", "note"):
        if key in cf:
            out[f"closed_form_{key}"] = cf[key]
    if "combine_flops" in meta:
        out["combine_flops"] = meta["combine_flops"]
    peak = result.peak_flops_per_s
    out["useful_efficiency"] = (meta["useful_flops"] / result.seconds / peak
                                if result.cycles and peak else 0.0)
    return out


def functional_check(program, hw, seed: int = 0) -> dict:
    """Run the program functionally on random inputs; compare with numpy (float64 of the
    dtype-rounded inputs)."""
    from mapper.gemm import gemm_inputs, gemm_output
    from wse_sim import kernels
    from wse_sim.functional import error_report, run_functional
    meta = program.meta
    dtype = meta["dtype"]
    rng = np.random.default_rng(seed)
    rows = meta["m"] if meta["kind"] == "gemm" else 1
    a = rng.uniform(-1, 1, (rows, meta["k"])).astype(np.float32)
    b = rng.uniform(-1, 1, (meta["k"], meta["n"])).astype(np.float32)
    t0 = time.perf_counter()
    buffers = run_functional(program, hw, gemm_inputs(program, a, b))
    got = gemm_output(program, buffers)
    wall = time.perf_counter() - t0
    if dtype != "fp32":
        a, b = kernels.round_to(a, dtype), kernels.round_to(b, dtype)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    rep = error_report(got, ref, dtype)
    rep["wall_seconds"] = wall
    return rep


def _check_block_args(args, hw) -> None:
    """Refuse what would be dropped: --seed without --functional, a bad --trace-region."""
    if args.seed is not None and not args.functional:
        raise ValueError(f"--seed: got {args.seed}, which applies only with --functional "
                         "(the random inputs of the real product)")
    args.seed = args.seed or 0
    check_output_args(args, hw)


def _run_block(args, program, hw, title: str) -> int:
    from wse_sim.cli.program import save_requested
    from wse_sim.engine import simulate
    from wse_sim.report.text import format_report
    save_requested(program, args)
    result = simulate(program, hw, engine=args.engine)
    out = with_interface_keys(result.summary(), args, hw)
    out.update(_block_keys(program, result))
    out.update(write_requested(result, args, program=program, title=title))
    if args.functional:
        out["functional"] = functional_check(program, hw, args.seed)
    failed = bool(args.functional and not out["functional"]["ok"])
    if args.json:
        print_json(out)
        return 1 if failed else 0
    print(format_report(result, title))
    cf = out.get("closed_form_cycles")
    lines = [f"  closed form       {cf if cf is not None else 'none (see docs/gemm.md)'}"
             + ("" if cf is None else f" cycles ({'equal' if cf == result.cycles else 'differs'})"),
             f"  useful FLOPs      {out['useful_flops']:,} (padded {out['padded_flops']:,}, "
             f"waste {100 * out['padding_waste']:.1f}%)",
             f"  records           {out['records']}"]
    if args.functional:
        f = out["functional"]
        lines.append(f"  functional        {'ok' if f['ok'] else 'WRONG'}: max abs error "
                     f"{f['max_abs_error']:.3g}, max rel error {f['max_rel_error']:.3g} "
                     f"(tolerance {f['tolerance']:g}, vs numpy)")
    print("\n".join(lines))
    return 1 if failed else 0


def cmd_gemm(args) -> int:
    from mapper.gemm import build_gemm, gemm_algo
    hw = effective_hardware(args)
    _check_block_args(args, hw)
    entry = gemm_algo(args.algo, "gemm")
    if args.layout != "square" and entry.family != "whole":
        raise ValueError(f"--layout: got {args.layout!r} with --algo {args.algo}, which applies "
                         "only to --algo 1d (the others tile a square grid)")
    if args.no_skew and not entry.aligns:
        raise ValueError(f"--no-skew: applies only to --algo cannon or meshgemm (their "
                         f"alignment phase), not {args.algo}")
    if args.flow_control and not entry.flow_control:
        raise ValueError(f"--flow-control: applies only to --algo cannon or meshgemm (their "
                         f"shifts), not {args.algo}")
    program = build_gemm(args.algo, hw, grid=args.grid, m=args.m, k=args.k, n=args.n,
                         dtype=args.dtype, functional=args.functional, layout=args.layout,
                         skew=not args.no_skew, flow_control=args.flow_control)
    return _run_block(args, program, hw, f"gemm {args.algo} M={args.m} K={args.k} N={args.n} "
                      f"{args.dtype} on {args.grid} x {args.grid} of {args.preset}")


def cmd_gemv(args) -> int:
    from mapper.gemm import build_gemv
    hw = effective_hardware(args)
    _check_block_args(args, hw)
    program = build_gemv(args.algo, hw, grid=args.grid, k=args.k, n=args.n, dtype=args.dtype,
                         functional=args.functional)
    return _run_block(args, program, hw, f"gemv {args.algo} K={args.k} N={args.n} {args.dtype} "
                      f"on {args.grid} x {args.grid} of {args.preset}")


# ---- compare gemm (registered by wse_sim.cli.strategies' `compare`) ----------------------------

def compare_gemm(hw, *, grid: int, m: int, k: int, n: int, dtype: str, engine: str) -> dict:
    """Every GEMM algorithm on the same problem: {algo: row dict, or the reason it does not
    run}."""
    from mapper.gemm import build_gemm, gemm_algos
    from wse_sim.engine import simulate
    rows = {}
    for algo in gemm_algos("gemm"):
        try:
            program = build_gemm(algo, hw, grid=grid, m=m, k=k, n=n, dtype=dtype)
        except ValueError as e:
            rows[algo] = str(e).splitlines()[0]
            continue
        r = simulate(program, hw, engine=engine)
        s = r.summary()
        row = {"algo": algo}
        row.update({key: s[key] for key in ("cycles", "seconds", "engine", "wall_seconds",
                                            "compute_cycles", "comm_cycles", "efficiency",
                                            "peak_fraction", "flops", "comm_bytes", "bytes_hops",
                                            "sram_bytes_per_core", "colors_per_core")})
        row.update(_block_keys(program, r))
        rows[algo] = row
    return rows


def cmd_compare_gemm(args) -> int:
    missing = [f"--{a}" for a in ("grid", "m", "k", "n") if getattr(args, a, None) is None]
    if missing:
        raise ValueError(f"compare gemm: {', '.join(missing)} required "
                         "(e.g. --grid 8 --m 256 --k 256 --n 256)")
    hw = effective_hardware(args)
    args.dtype = args.dtype or "fp16"  # compare's --dtype is a run spec option: None if not given
    rows = compare_gemm(hw, grid=args.grid, m=args.m, k=args.k, n=args.n, dtype=args.dtype,
                        engine=args.engine)
    ok = [r for r in rows.values() if isinstance(r, dict)]
    if not ok:
        raise ValueError(f"compare gemm: no algorithm fits ({next(iter(rows.values()))})")
    table = {"preset": args.preset, "hardware": hw.to_dict(), "grid": args.grid,
             "m": args.m, "k": args.k, "n": args.n, "dtype": args.dtype, "algorithms": ok,
             "rejected": {a: r for a, r in rows.items() if isinstance(r, str)}}
    if args.out:  # the table as JSON, and as text
        from pathlib import Path
        out = Path(args.out)
        write_json(out / "compare_gemm.json", table)
        write_file(out / "compare_gemm.txt", format_compare(rows) + "\n")
        table["out"] = str(out)
    if args.json:
        print_json(table)
        return 0
    print(f"GEMM M={args.m} K={args.k} N={args.n} {args.dtype} on {args.grid} x {args.grid} "
          f"of {args.preset} ({hw.clock_ghz} GHz)")
    print(format_compare(rows))
    return 0


def format_compare(rows: dict) -> str:
    head = (f"{'algo':9} {'cycles':>10} {'time':>10} {'% peak':>7} {'comm %':>7} "
            f"{'closed form':>11} {'SRAM/core':>10} {'colors':>6} {'records':>8}")
    lines = [head, "-" * len(head)]
    for algo, r in rows.items():
        if isinstance(r, str):
            lines.append(f"{algo:9} does not run: {r}")
            continue
        cf = r.get("closed_form_cycles")
        lines.append(f"{algo:9} {r['cycles']:>10,} {r['seconds'] * 1e6:>8.2f}µs "
                     f"{100 * r['peak_fraction']:>7.2f} "
                     f"{100 * r['comm_cycles'] / max(1, r['cycles']):>7.1f} "
                     f"{'-' if cf is None else f'{cf:,}':>11} {r['sram_bytes_per_core']:>10,} "
                     f"{r['colors_per_core']:>6} {r['records']:>8,}")
    return "\n".join(lines)


# ---- collective ----------------------------------------------------------------------------

def cmd_collective(args) -> int:
    from mapper.collectives import KINDS, build_collective
    from wse_sim.engine import simulate
    from wse_sim.report.text import format_report
    if args.kind not in KINDS:
        raise ValueError(f"--kind: got {args.kind!r}, must be one of {', '.join(KINDS)}")
    if args.pes is not None and (args.rows is not None or args.cols is not None):
        raise ValueError("collective: give --pes N or --rows R --cols C, not both")
    if args.pes is None and (args.rows is None or args.cols is None):
        raise ValueError("collective: give --pes N (a line) or both --rows R and --cols C")
    hw = effective_hardware(args)
    check_output_args(args, hw)
    kw = {"pes": args.pes} if args.pes is not None else {"rows": args.rows, "cols": args.cols}
    program = build_collective(args.kind, hw, wavelets=args.wavelets, root=args.root,
                               dtype=args.dtype, **kw)
    from wse_sim.cli.program import save_requested
    save_requested(program, args)
    result = simulate(program, hw, engine=args.engine)
    out = with_interface_keys(result.summary(), args, hw)
    out.update(write_requested(result, args, program=program, title=f"collective {args.kind}"))
    meta = dict(program.meta)
    out.update({"kind": args.kind, "wavelets": args.wavelets, "root": args.root,
                "closed_form_cycles": meta.get("closed_form_cycles"),
                "records": len(program.tasks)})
    out.update({k: v for k, v in meta.items() if k in ("P", "rows", "cols", "group", "arity",
                                                       "block_wavelets")})
    if args.json:
        print_json(out)
        return 0
    what = f"{args.pes} cores" if args.pes else f"{args.rows} x {args.cols} cores"
    print(format_report(result, f"collective {args.kind}, {args.wavelets} wavelets on {what} "
                                f"of {args.preset}"))
    cf = out["closed_form_cycles"]
    print(f"  closed form       {'none' if cf is None else f'{cf:,} cycles'}")
    return 0
