"""`wse-sim run-program FILE`: simulate a program file (docs/programs.md), and the
`--save-program FILE` option of `run`, `gemm`, `gemv` and `collective`.

    wse-sim run --preset mesh16 --model tiny --save-program out/tiny.json
    wse-sim run-program out/tiny.json --preset mesh16 --json
    wse-sim run-program prog.json --preset mesh8 --kernels my_kernels.py --inputs in.npz \
        --save-buffers out.npz
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np

from wse_sim.cli.common import effective_hardware, hardware_args, print_json, with_interface_keys
from wse_sim.program import ProgramError


def register(sub) -> dict:
    p = sub.add_parser("run-program", help="simulate a program file (see docs/programs.md)")
    p.add_argument("file", metavar="FILE", help="a program file written by --save-program or "
                                                "by hand (JSON, docs/programs.md)")
    hardware_args(p)
    p.add_argument("--show-program", action="store_true",
                   help="print the program, one line per task, instead of simulating it")
    p.add_argument("--kernels", action="append", metavar="FILE.py", default=[],
                   help="a Python file that registers functional kernels "
                        "(wse_sim.kernels.registry.register_kernel); repeatable")
    p.add_argument("--inputs", metavar="FILE.npz", default=None,
                   help="run the arithmetic too: the buffers' starting tiles by name, each "
                        "(rows, cols, *tile) (other buffers start at zero)")
    p.add_argument("--save-buffers", metavar="FILE.npz", default=None,
                   help="run the arithmetic too and write every buffer's final tiles "
                        "(float32, (rows, cols, *tile))")
    for name in ("run", "gemm", "gemv", "collective"):
        if name in sub.choices:
            sub.choices[name].add_argument(
                "--save-program", metavar="FILE", default=None,
                help="also write the program this command simulates (JSON, "
                     "`wse-sim run-program` reads it)")
    return {"run-program": cmd_run_program}


def save_requested(program, args) -> None:
    """Write the program if --save-program asked for it (a note on stderr)."""
    path = getattr(args, "save_program", None)
    if not path:
        return
    from wse_sim.program_io import save_program
    written = save_program(program, path)
    print(f"wrote program {written} ({len(program.tasks)} tasks)", file=sys.stderr)


def load_kernels(files: list) -> None:
    """Run each Python file (it registers its kernels); a failure names the file."""
    for f in files:
        if not Path(f).is_file():
            raise ProgramError(f"--kernels: {f}: no such file")
        try:
            runpy.run_path(str(f), run_name="wse_sim_kernels")
        except ProgramError as e:
            raise ProgramError(f"--kernels {f}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's file: say which and why, one line
            raise ProgramError(f"--kernels {f}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from None


def load_inputs(path) -> dict:
    if path is None:
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ProgramError(f"--inputs {path}: cannot read an .npz file "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def save_buffers(program, buffers: dict, path) -> None:
    from wse_sim.functional import decode
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{name: decode(program, buffers, name) for name in buffers})
    except OSError as e:
        raise ProgramError(f"--save-buffers {path}: cannot write ({e.strerror or e})") from None
    print(f"wrote {len(buffers)} buffers to {path}", file=sys.stderr)


def cmd_run_program(args) -> int:
    from wse_sim.cli.outputs import check_output_args, write_requested
    from wse_sim.engine import simulate
    from wse_sim.program_io import load_program
    from wse_sim.report.text import format_report
    program = load_program(args.file)
    if args.show_program:
        print(program.describe())
        return 0
    hw = effective_hardware(args)
    check_output_args(args, hw)
    load_kernels(args.kernels)
    functional = args.inputs is not None or args.save_buffers is not None
    inputs = load_inputs(args.inputs) if functional else None
    result = simulate(program, hw, engine=args.engine, functional=inputs)
    title = f"program {program.name} ({args.file}) on {args.preset}"
    written = write_requested(result, args, program=program, title=title)
    if args.save_buffers:
        save_buffers(program, result.buffers, args.save_buffers)
        written["buffers"] = str(args.save_buffers)
    if args.json:
        print_json(with_interface_keys(result.summary(), args, hw) | written
                   | {"file": str(args.file), "tasks": len(program.tasks)})
    else:
        print(format_report(result, title))
    return 0
