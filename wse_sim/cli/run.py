"""`wse-sim run` for one mapping: map, simulate, report (text or --json), write the requested
outputs and, with --functional, check the arithmetic against numpy."""

from __future__ import annotations

import json
import time

from wse_sim.cli.common import effective_hardware, with_interface_keys


def run_one(args) -> int:
    """Map the model with the given strategy, simulate it and report."""
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.report.text import format_report
    hw = effective_hardware(args)
    program = build_program(hw, args.model, phase=args.phase, strategy=args.strategy,
                            batch=args.batch, prompt=args.prompt, context=args.context,
                            dtype=args.dtype, grid=args.grid, sparsity=args.sparsity,
                            functional=args.functional, chunks=args.chunks,
                            micro_batches=args.micro_batches, region_shape=args.region_shape,
                            reduce_algo=args.reduce_algo, attention=args.attention)
    if getattr(args, "save_program", None):
        from wse_sim.cli.program import save_requested
        save_requested(program, args)
    if args.show_program:
        print(program.describe())
        return 0
    from wse_sim.cli.outputs import check_output_args, write_requested
    check_output_args(args, hw)
    result = simulate(program, hw, engine=args.engine)
    title = f"{args.model} {args.phase} on {args.preset}"
    for key, what in (("chunks", "chunks"), ("micro_batches", "micro-batches")):
        if program.meta.get(key, 1) > 1:
            title += f", {program.meta[key]} {what}"
    written = write_requested(result, args, program=program, title=title)
    check = _functional_check(program, hw, args.model) if args.functional else None
    if args.json:
        extra = {"functional": check} if check else {}
        mapping = {k: program.meta[k] for k in ("strategy", "reduce_algo", "chunks",
                                                "micro_batches") if k in program.meta}
        print(json.dumps(with_interface_keys(result.summary(), args, hw) | mapping | written
                         | extra))
    else:
        print(format_report(result, title))
        if check:
            what = (f"worst gradient ({check['gradient']}, loss off by "
                    f"{check['loss_error']:.2g})" if "gradient" in check else "logits")
            print(f"  functional     {'ok' if check['ok'] else 'WRONG'}: {what} max abs error "
                  f"{check['max_abs_error']:.3g}, max rel error {check['max_rel_error']:.3g} "
                  f"(tolerance {check['tolerance']:g}, vs numpy; {check['wall_seconds']:.2f} s)")
    return 1 if check and not check["ok"] else 0


def _functional_check(program, hw, model: str) -> dict:
    """Random weights (init_weights(cfg, seed=0)) and tokens (seed 0) through the mapped
    program; the logits (a training step: the loss and the worst weight gradient) against
    workloads.reference (float64, dtype-rounded weights)."""
    from mapper.strategies import functional_model as fm
    from workloads.models import load_model
    from wse_sim.functional import error_report, run_functional
    cfg = load_model(model)
    t0 = time.perf_counter()
    if program.meta.get("phase") == "train":
        inputs, want_loss, want = fm.random_train_case(program, cfg, seed=0)
        buffers = run_functional(program, hw, inputs)
        got = fm.model_grads(program, buffers, cfg)
        reps = [error_report(got[k], want[k], program.dtype) | {"gradient": k} for k in want]
        report = max(reps, key=lambda r: r["max_rel_error"])
        loss = fm.model_loss(program, buffers)
        report["loss_error"] = abs(loss - want_loss) / abs(want_loss)
    else:
        inputs, want = fm.random_case(program, cfg, seed=0)
        got = fm.model_output(program, run_functional(program, hw, inputs))
        report = error_report(got, want, program.dtype)
    report["wall_seconds"] = time.perf_counter() - t0
    return report
