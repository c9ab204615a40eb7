"""`wse-sim validate`: run the published validation cases and print the table."""

from __future__ import annotations

from wse_sim.cli.common import print_json


def register(sub) -> dict:
    p = sub.add_parser("validate", help="check wse-sim against published results")
    p.add_argument("--fast", action="store_true", help="skip the cases marked slow")
    p.add_argument("--engine", default="auto", choices=("auto", "reference", "fast"))
    p.add_argument("--case", action="append", metavar="ID", help="only this case (repeatable)")
    p.add_argument("--json", action="store_true")
    return {"validate": cmd_validate}


def cmd_validate(args) -> int:
    """Exit 0 when every case is within its tolerance, 1 otherwise (the table says which)."""
    from wse_sim.validate import format_table, run_validation
    rows = run_validation(fast_only=args.fast, engine=args.engine, cases=args.case)
    passed = all(r["passed"] for r in rows)
    if args.json:
        print_json({"cases": rows, "passed": sum(r["passed"] for r in rows),
                    "failed": sum(not r["passed"] for r in rows), "ok": passed})
    else:
        print(format_table(rows))
    return 0 if passed else 1
