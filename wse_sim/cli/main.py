"""The `wse-sim` command. Every simulating sub-command takes --json (one JSON object on
stdout) and --engine; bad input gives one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time

from wse_sim.cli.common import (
    Parser,
    fail,
    hardware_args,
)
from wse_sim.cli.run import add_spec_args, run_one, spec_from_args
from wse_sim.hardware import FIELD_EFFECTS

# Sub-command modules: each has `register(sub) -> {name: function}`; missing ones are skipped.
COMMAND_MODULES = ("wse_sim.cli.blocks", "wse_sim.cli.outputs", "wse_sim.cli.sweep",
                   "wse_sim.cli.validate", "wse_sim.cli.strategies", "wse_sim.cli.program",
                   "wse_sim.cli.serve")


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
    hardware_args(run, default_preset=None, default_engine=None)
    add_spec_args(run)
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
    from wse_sim.report.text import human
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
    """`run`: one mapping (`cli.run.run_one`), or --strategy auto, --generate and --wafers
    (`cli.strategies.run_extended`, which runs its chosen mapping through run_one). The
    options and a --spec file make one validated run spec first (`wse_sim.spec`)."""
    spec_from_args(args)
    if args.strategy == "auto" or args.generate or args.wafers > 1:
        if args.functional:
            raise ValueError("--functional: runs one mapping (not with --strategy auto, "
                             "--generate or --wafers)")
        if getattr(args, "save_program", None):
            raise ValueError("--save-program: saves one mapping (not with --strategy auto, "
                             "--generate or --wafers)")
        from wse_sim.cli.strategies import run_extended
        return run_extended(args)
    return run_one(args)


def cmd_demo(args) -> int:
    """GPT 'tiny' on a 16 x 16 mesh: prefill of 32 tokens, then decode one token."""
    from wse_sim.cli.outputs import check_output_args, write_requested
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    from wse_sim.report.text import format_report
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
