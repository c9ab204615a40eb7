"""`wse-sim run` for one mapping: map, simulate, report (text or --json), write the requested
outputs and, with --functional, check the arithmetic against numpy."""

from __future__ import annotations

import json
import time

from wse_sim.cli.common import (
    effective_hardware,
    fraction,
    int_at_least,
    one_of,
    with_interface_keys,
)
from wse_sim.spec import FIELDS, RunSpec, load_spec


def _choices(name: str, option) -> tuple:
    if option.choices:
        return option.choices
    if name == "reduce_algo":
        from mapper.reduce_algos import LAYER_REDUCE_ALGOS
        return tuple(LAYER_REDUCE_ALGOS)
    if name == "attention":
        from mapper.attention import ATTENTION_SPLITS
        return tuple(ATTENTION_SPLITS)
    if name == "strategy":
        from mapper.strategies import NAMES
        return tuple(NAMES) + ("auto",)
    return ()


def _field_value(text: str) -> tuple:
    """FIELD=VALUE, the value as an integer, a number or text."""
    import argparse
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"got {text!r}, must be FIELD=VALUE")
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), raw


def add_spec_args(p, only: tuple | None = None, files: bool = True) -> None:
    """One option per run spec field (`wse_sim.spec.FIELDS`, or those in `only`), default None
    (not given), then (`files`) --spec FILE and --save-spec FILE."""
    for name, (_section, f) in FIELDS.items():
        if only is not None and name not in only:
            continue
        o = f.metadata["option"]
        flag = "--" + name.replace("_", "-")
        kw = {"default": None, "help": o.help}
        if o.kind is dict:
            p.add_argument(flag, action="append", metavar="FIELD=VALUE", type=_field_value,
                           default=None, help=o.help)
            continue
        if o.kind is int:
            kw["type"] = int_at_least(int(o.minimum or 0), f"an integer >= {int(o.minimum or 0)}")
            kw["metavar"] = "N"
        elif o.kind is float:
            kw["type"] = fraction
        elif _choices(name, o):
            kw["type"] = one_of(_choices(name, o))
            kw["metavar"] = "|".join(_choices(name, o))
        if f.default not in (None, "") and name != "context":
            kw["help"] += f" (default {f.default})"
        p.add_argument(flag, **kw)
    if not files:
        return
    p.add_argument("--spec", metavar="FILE", default=None,
                   help="a run spec TOML file (`--save-spec` writes one); options given on the "
                        "command line override its values")
    p.add_argument("--save-spec", metavar="FILE", default=None,
                   help="write this run's spec as TOML (then run it)")


def spec_from_args(args, only: tuple | None = None) -> RunSpec:
    """The run spec of `run` (or of the fields `only` that another command offers): the --spec
    file's values, then the options given; refused if a given option does not apply. Fills
    `args` with the spec's values for the rest of the command."""
    spec_file = getattr(args, "spec", None)
    base = load_spec(spec_file) if spec_file else None
    values = base.values() if base else {}
    given = set(base.given) if base else set()
    for name in FIELDS:
        if only is not None and name not in only:
            continue
        v = getattr(args, name)
        if v is not None:
            if name == "model_set":  # repeated FIELD=VALUE pairs, over the file's own
                v = dict(values.get(name) or {}) | dict(v)
            values[name] = v
            given.add(name)
    values = {k: v for k, v in values.items() if v is not None}
    if not values.get("model"):
        raise ValueError("--model: required (or a --spec file that names one)")
    args.preset = args.preset or (base.preset if base else "wse2")
    args.engine = args.engine or (base.engine if base else "auto")
    if base and base.overrides:
        args.set = [f"{k}={v}" for k, v in base.overrides.items()] + list(args.set)
    from wse_sim.hardware import load_preset, parse_set
    overrides = parse_set(args.set)
    if overrides:  # typed as the fields are (--set gives text), so a saved spec reads back
        hw = load_preset(args.preset, overrides)
        overrides = {k: getattr(hw, k) for k in overrides}
    spec = RunSpec.from_values(values, preset=args.preset, overrides=overrides,
                               engine=args.engine, given=given)
    spec.check_applies()
    for name, v in spec.values().items():
        if only is None or name in only:
            setattr(args, name, v)
    if getattr(args, "context", 0) is None:
        from workloads.models import load_model
        args.context = min(128, load_model(args.model).max_context - 1)
    if getattr(args, "save_spec", None):
        from pathlib import Path
        try:
            Path(args.save_spec).write_text(spec.to_toml())
        except OSError as e:
            raise ValueError(f"--save-spec: {args.save_spec}: cannot write "
                             f"({e.strerror or e})") from None
    return spec


def run_one(args) -> int:
    """Map the model with the given strategy, simulate it and report."""
    from mapper.placement import MappingError
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.report.text import format_report
    hw = effective_hardware(args)
    kw = dict(phase=args.phase, strategy=args.strategy, batch=args.batch, prompt=args.prompt,
              context=args.context, dtype=args.dtype, grid=args.grid, sparsity=args.sparsity,
              functional=args.functional, chunks=args.chunks, micro_batches=args.micro_batches,
              region_shape=args.region_shape, reduce_algo=args.reduce_algo,
              attention=args.attention, model_set=args.model_set or None,
              routing=args.routing, moe_layout=args.moe_layout,
              weights_dtype=args.weights_dtype, kv_dtype=args.kv_dtype,
              accum_dtype=args.accum_dtype, sparse_format=args.sparse_format,
              sparsity_file=args.sparsity_file, layout=args.layout, gemm_algo=args.gemm_algo,
              recompute=args.recompute, optimizer=args.optimizer)
    try:
        program = build_program(hw, args.model, **kw)
    except MappingError:
        whole = effective_hardware(args, whole_mesh=True)
        if whole == hw:
            raise
        # the mesh was cut to the grid (`effective_hardware`): map on the whole one, whose
        # error can name a larger grid that fits
        program = build_program(whole, args.model, **kw)
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
    check = _functional_check(program, hw, args.model, args.model_set) if args.functional else None
    if args.json:
        extra = {"functional": check} if check else {}
        mapping = {k: program.meta[k] for k in ("strategy", "reduce_algo", "chunks",
                                                "micro_batches", "layout", "gemm_algo",
                                                "recompute", "optimizer", "layout_2d_fits")
                   if k in program.meta}
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
            if "float_rel_error" in check:
                print(f"  quantization   {check['quantized']}: logits max rel error "
                      f"{check['float_rel_error']:.3g} vs the unquantized float reference "
                      "(informative; the check above is against the reference that quantizes "
                      "the same way)")
    return 1 if check and not check["ok"] else 0


def _functional_check(program, hw, model: str, model_set: dict | None = None) -> dict:
    """Random weights (init_weights(cfg, seed=0)) and tokens (seed 0) through the mapped
    program; the logits (a training step: the loss and the worst weight gradient) against
    workloads.reference (float64, dtype-rounded weights)."""
    from mapper.strategies import functional_model as fm
    from workloads.models import load_model
    from wse_sim.functional import error_report, run_functional
    cfg = load_model(model, model_set)
    t0 = time.perf_counter()
    if program.meta.get("phase") == "train" and program.meta.get("layout") == "2d":
        from mapper.strategies import layout2d_train_data as td
        inputs, tokens, want_loss, want = td.random_train_case(program, cfg, seed=0)
        held = None
        if program.meta.get("optimizer") == "onwafer":  # Adam's state: master weights, moments
            from mapper.strategies import layout2d_optimizer as opt
            from workloads.reference import init_weights
            tiles, held = opt.adam_inputs(program, cfg, init_weights(cfg, 0), want, seed=0)
            inputs |= tiles
        buffers = run_functional(program, hw, inputs)
        loss, got = td.train_grads(program, buffers, cfg, tokens)
        reps = [error_report(got[k], want[k], program.dtype) | {"gradient": k} for k in want]
        if held is not None:  # and each layer's updated weights against numpy's Adam
            reps += opt.adam_check(program, buffers, cfg, want, held)
        report = max(reps, key=lambda r: r["max_rel_error"])
        report["loss_error"] = abs(loss - want_loss) / abs(want_loss)
    elif program.meta.get("phase") == "train":
        inputs, want_loss, want = fm.random_train_case(program, cfg, seed=0)
        buffers = run_functional(program, hw, inputs)
        got = fm.model_grads(program, buffers, cfg)
        reps = [error_report(got[k], want[k], program.dtype) | {"gradient": k} for k in want]
        report = max(reps, key=lambda r: r["max_rel_error"])
        loss = fm.model_loss(program, buffers)
        report["loss_error"] = abs(loss - want_loss) / abs(want_loss)
    elif program.meta.get("layout") == "2d":
        from mapper.strategies import layout2d_data
        inputs, want = layout2d_data.random_case(program, cfg, seed=0)
        got = layout2d_data.model_logits(program, run_functional(program, hw, inputs))
        report = error_report(got, want, program.dtype)
    else:
        inputs, want = fm.random_case(program, cfg, seed=0)
        got = fm.model_output(program, run_functional(program, hw, inputs))
        report = error_report(got, want, program.dtype)
        quantized = fm.quantized_tensors(program)
        if quantized:  # what the 8-bit (or per-tensor) storage costs, against float
            _, want_float = fm.random_case(program, cfg, seed=0, quantized=False)
            report["quantized"] = quantized
            report["float_rel_error"] = error_report(got, want_float,
                                                     program.dtype)["max_rel_error"]
    report["wall_seconds"] = time.perf_counter() - t0
    return report
