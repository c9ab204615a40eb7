"""`wse-sim sweep FILE --out DIR` and `wse-sim sweep-plot DIR`: what-if grids (docs/sweeps.md)."""

from __future__ import annotations

from wse_sim.cli.common import int_at_least, print_json

_workers = int_at_least(0, "an integer >= 0")


def register(sub) -> dict:
    p = sub.add_parser("sweep", help="run a what-if grid from a TOML sweep file (resumable)")
    p.add_argument("file", help="sweep file: [base], [base.set], [axes], [[points]]")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for sweep.json and the result table sweep.csv")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="worker processes (default: CPU count; 0: run in this process)")
    p.add_argument("--dask", metavar="ADDRESS|local", default=None,
                   help="run on dask.distributed: a scheduler address, or 'local' for a "
                        "local cluster of --workers processes (needs pip install -e '.[dask]')")
    p.add_argument("--force", action="store_true",
                   help="reuse DIR even if it holds a different sweep.json")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the points recorded as failed again")
    p.add_argument("--json", action="store_true",
                   help="no progress bar; print one JSON object with the counts")

    q = sub.add_parser("sweep-plot", help="plot a sweep table: one curve per combination of "
                                          "the other axes")
    q.add_argument("dir", help="a sweep's --out folder (holds sweep.csv)")
    q.add_argument("--metric", default=None, help="y: a table column (default tokens_per_s)")
    q.add_argument("--x", default=None, help="x: an axis (default the first numeric axis)")
    q.add_argument("--out", default=None, help="folder for the PNG and SVG (default DIR)")
    q.add_argument("--json", action="store_true", help="print {'files': [...]} as JSON")
    return {"sweep": cmd_sweep, "sweep-plot": cmd_sweep_plot}


def cmd_sweep(args) -> int:
    from wse_sim.sweep.run import run_sweep
    summary = run_sweep(args.file, args.out, workers=args.workers, dask=args.dask,
                        force=args.force, retry_failed=args.retry_failed,
                        progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['points']} points: {summary['done']} run now "
              f"({summary['failed']} failed), {summary['skipped']} already done; "
              f"{summary['failed_total']} failed in all. Table: {summary['table']}")
    return 0


def cmd_sweep_plot(args) -> int:
    from wse_sim.sweep.plots import plot_sweep
    files = plot_sweep(args.dir, metric=args.metric, x=args.x, out=args.out)
    if args.json:
        print_json({"files": [str(f) for f in files]})
    else:
        for f in files:
            print(f)
    return 0
