"""The `wse-sim` command. Every simulating sub-command takes --json (one JSON object on
stdout) and --engine; bad input gives one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time

from mapper.attention import ATTENTION_SPLITS
from mapper.reduce_algos import LAYER_REDUCE_ALGOS
from wse_sim.cli_common import (
    Parser,
    effective_hardware,
    fail,
    fraction,
    hardware_args,
    one_of,
    positive_int,
    with_interface_keys,
)
from wse_sim.hardware import FIELD_EFFECTS

# Sub-command modules: each has `register(sub) -> {name: function}`; missing ones are skipped.
COMMAND_MODULES = ("wse_sim.cli_blocks", "wse_sim.cli_outputs", "wse_sim.cli_sweep",
                   "wse_sim.cli_validate", "wse_sim.cli_strategies", "wse_sim.cli_program",
                   "wse_sim.cli_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wse-sim", description="Simulate GPT models on a wafer-scale engine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    demo = sub.add_parser("demo", help="a small model on a small mesh, in seconds")
    demo.add_argument("--json", action="store_true")

    pre = sub.add_parser("presets", help="list hardware presets and their aggregates")
    pre.add_argument("--show", metavar="NAME_OR_FILE",
                     help="print one preset resolved: every field, its value and where it came "
                          "from (its file, a base, default or --set), as a TOML preset")
    pre.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                     help="with --show: override a hardware field (repeatable)")
    pre.add_argument("--json", action="store_true")

    mod = sub.add_parser("models", help="list the model zoo")
    mod.add_argument("--json", action="store_true")

    run = sub.add_parser("run", help="map a GPT model onto the mesh and simulate it")
    hardware_args(run)
    run.add_argument("--model", required=True, help="zoo name (see `wse-sim models`) or TOML file")
    run.add_argument("--phase", default="prefill", choices=("prefill", "decode", "train"))
    run.add_argument("--strategy", default="layer-pipelined",
                     help="layer-pipelined, layer-sequential, weight-streaming, or auto "
                          "(the fastest by simulation)")
    run.add_argument("--region-shape", type=int, default=0, metavar="K",
                     help="layer-pipelined: the K-th best region shape that fits (0: the most "
                          "cores per layer); `search` tries a few")
    run.add_argument("--attention", type=one_of(ATTENTION_SPLITS), default="auto",
                     help="attention over a region's rows: heads (one row per head group), "
                          "rows (a group's rows split the keys too), auto (heads when it fits)")
    run.add_argument("--reduce-algo", type=one_of(LAYER_REDUCE_ALGOS), default="chain",
                     metavar="|".join(LAYER_REDUCE_ALGOS),
                     help="how the GEMMs' partial sums reduce: one pipelined chain per line, a "
                          "two-level tree (wins on long lines and short vectors: decode), or "
                          "the tree only for the row / column reduces; `search` tries them")
    run.add_argument("--chunks", type=positive_int, default=1,
                     help="prefill: run the prompt through the layers in at least N chunks")
    run.add_argument("--micro-batches", type=positive_int, default=1, metavar="N",
                     help="train (layer-pipelined): split the batch into N equal micro-batches "
                          "that pipeline through the layer regions (N divides --batch)")
    run.add_argument("--generate", type=positive_int, default=None,
                     help="prefill the prompt, then decode N tokens: end-to-end tokens/s")
    run.add_argument("--wafers", type=positive_int, default=1,
                     help="split the layers over N wafers joined by the system I/O")
    run.add_argument("--prefill-grid", type=positive_int, default=None,
                     help="with --generate: the grid for the prefill")
    run.add_argument("--decode-grid", type=positive_int, default=None,
                     help="with --generate: the grid for the decode steps")
    run.add_argument("--batch", type=positive_int, default=1)
    run.add_argument("--prompt", type=positive_int, default=128, help="prompt tokens (prefill)")
    run.add_argument("--context", type=positive_int, default=128,
                     help="tokens already in the KV cache (decode)")
    run.add_argument("--grid", type=positive_int, default=None,
                     help="use only an N x N corner of the mesh")
    run.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"))
    run.add_argument("--sparsity", type=fraction, default=0.0,
                     help="fraction of zero weights the cores skip")
    run.add_argument("--routing", default=None, metavar="SPEC",
                     help="MoE: uniform (default), skewed:ALPHA, router or a .csv/.json file")
    run.add_argument("--moe-layout", default=None, choices=("blocks", "strips", "bands"))
    run.add_argument("--show-program", action="store_true",
                     help="print the Program IR instead of simulating it")
    run.add_argument("--functional", action="store_true",
                     help="also compute the real forward pass through the mapped program "
                          "(random weights and tokens, seed 0) and check the logits against "
                          "the numpy reference (a training step: the loss and every gradient); "
                          "exit 1 if they differ")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            COMMANDS.update(importlib.import_module(name).register(sub))
    return parser


def cmd_presets(args) -> int:
    from wse_sim.hardware import parse_set, preset_names, resolve_preset
    from wse_sim.report import human
    if args.show:
        return _show_preset(resolve_preset(args.show, parse_set(args.set)), args)
    if args.set:
        raise ValueError(f"--set: got {args.set[0]!r}, must come with --show NAME_OR_FILE")
    data = {}
    for name in preset_names():
        r = resolve_preset(name)
        hw = r.hardware
        data[name] = {"fields": hw.to_dict(), "aggregates": hw.aggregates(), "sources": hw.sources,
                      "chain": list(r.chain)}
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(f"{'preset':8} {'mesh':>11} {'GHz':>5} {'cores':>9} {'SRAM':>9} {'SRAM BW':>11} "
          f"{'fabric':>11} {'fp16 peak':>12} {'static':>9}  base")
    for name, d in data.items():
        f, a = d["fields"], d["aggregates"]
        print(f"{name:8} {f['mesh_cols']:>5} x {f['mesh_rows']:<4}{f['clock_ghz']:>5} "
              f"{a['cores']:>9,} {human(a['total_sram_bytes'], 'B'):>9} "
              f"{human(a['sram_bandwidth_bytes_per_s'], 'B/s'):>11} "
              f"{human(a['fabric_bandwidth_bits_per_s'], 'b/s'):>11} "
              f"{human(a['peak_flops_per_s']['fp16'], 'FLOP/s'):>12} "
              f"{human(a['static_power_w'], 'W'):>9}  {' <- '.join(d['chain'][1:]) or '-'}")
    return 0


def _show_preset(resolved, args) -> int:
    """One preset, resolved, as a TOML file that loads to the same fields; each field's origin
    in a comment (--json: one object with `fields`, `origins`, `chain`, `sources`)."""
    hw = resolved.hardware
    fields = hw.to_dict()
    if args.json:
        print(json.dumps({"preset": args.show, "chain": list(resolved.chain), "fields": fields,
                          "origins": resolved.origins, "sources": hw.sources,
                          "acts_on": {k: FIELD_EFFECTS[k] for k in fields},
                          "aggregates": hw.aggregates()}, indent=1))
        return 0
    lines = {k: f"{k} = {json.dumps(v)}" for k, v in fields.items()}
    width = max(len(t) for t in lines.values())
    print(f"# {args.show} resolved: {' <- '.join(resolved.chain)}"
          + (f", then --set {' '.join(args.set)}" if args.set else ""))
    print("# each field's comment: the preset or file it came from (default or --set), then "
          "what it acts on\n[hardware]")
    for k, text in lines.items():
        print(f"{text:<{width}}  # {resolved.origins[k]:<10} acts on: {FIELD_EFFECTS[k]}")
    print("\n[sources]")
    for k, text in hw.sources.items():  # a key that is not a bare TOML key is quoted
        bare = k.isascii() and k.replace("_", "a").replace("-", "a").isalnum()
        print(f"{k if bare else json.dumps(k)} = {json.dumps(text)}")
    return 0


def cmd_models(args) -> int:
    from workloads.models import list_models, model_info
    infos = {n: model_info(n) for n in list_models()}
    if args.json:
        print(json.dumps(infos, indent=1, default=str))
        return 0
    print(f"{'model':20} {'params':>16} {'active':>16} {'layers':>6} {'d_model':>7} {'heads':>5} "
          f"{'kv':>3} {'ffn':>6} {'experts':>9}")
    for n, i in infos.items():
        moe = i["moe"]  # experts: top_k/n_experts(+n_shared_experts), "-" when dense
        experts = "-" if not moe else f"{moe['top_k']}/{moe['n_experts']}" + (
            f"+{moe['n_shared_experts']}" if moe["n_shared_experts"] else "")
        print(f"{n:20} {i['param_count']:>16,} {i['active_param_count']:>16,} {i['n_layers']:>6} "
              f"{i['d_model']:>7} {i['n_heads']:>5} {i['n_kv_heads']:>3} {i['d_ffn']:>6} "
              f"{experts:>9}")
    return 0


def cmd_run(args) -> int:
    if args.strategy == "auto" or args.generate or args.wafers > 1:
        if args.functional:
            raise ValueError("--functional: runs one mapping (not with --strategy auto, "
                             "--generate or --wafers)")
        if getattr(args, "save_program", None):
            raise ValueError("--save-program: saves one mapping (not with --strategy auto, "
                             "--generate or --wafers)")
        from wse_sim.cli_strategies import run_extended
        return run_extended(args)
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.report import format_report
    hw = effective_hardware(args)
    program = build_program(hw, args.model, phase=args.phase, strategy=args.strategy,
                            batch=args.batch, prompt=args.prompt, context=args.context,
                            dtype=args.dtype, grid=args.grid, sparsity=args.sparsity,
                            functional=args.functional, chunks=args.chunks,
                            micro_batches=args.micro_batches, region_shape=args.region_shape,
                            reduce_algo=args.reduce_algo, attention=args.attention,
                            routing=args.routing, moe_layout=args.moe_layout)
    if getattr(args, "save_program", None):
        from wse_sim.cli_program import save_requested
        save_requested(program, args)
    if args.show_program:
        print(program.describe())
        return 0
    from wse_sim.cli_outputs import check_output_args, write_requested
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


def cmd_demo(args) -> int:
    """GPT 'tiny' on a 16 x 16 mesh: prefill of 32 tokens, then decode one token."""
    from wse_sim.cli_outputs import check_output_args, write_requested
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    from wse_sim.report import format_report
    hw = load_preset("mesh16")
    check_output_args(args, hw)
    out = {}
    t0 = time.perf_counter()
    for phase in ("prefill", "decode"):
        program = build_program(hw, "tiny", phase=phase, prompt=32, context=32)
        result = simulate(program, hw, engine="reference")
        title = f"demo: model 'tiny' {phase} on preset mesh16"
        written = write_requested(result, args, program=program, title=title, tag=phase)
        out[phase] = result.summary() | written
        if not args.json:
            print(format_report(result, title))
            print()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"done in {time.perf_counter() - t0:.1f} s. Next: `wse-sim run --preset wse2 "
              "--model cerebras-gpt-111m --phase decode --engine reference --grid 128`")
    return 0


COMMANDS = {"demo": cmd_demo, "presets": cmd_presets, "models": cmd_models, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    from mapper.placement import MappingError
    from wse_sim.hardware import ConfigError
    from wse_sim.program import ProgramError
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ProgramError, MappingError, ValueError) as e:
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except NotImplementedError as e:
        return fail(f"not implemented: {e}")
    except KeyboardInterrupt:
        return fail("interrupted")
    except BrokenPipeError:  # e.g. `wse-sim ... | head`: the reader left; not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
