"""Shared helpers for the benchmark scripts: arguments, machine description, timing, output.

Every script runs as ``python benchmarks/NAME.py [--quick] [--json]``. With ``--json`` it prints
exactly one JSON object ``{"benchmark", "machine", "figures", "targets"}`` on stdout; otherwise a
readable table. Targets are ``{"min": x}`` or ``{"max": x}`` per figure that has a goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable


def parse_args(description: str, argv=None, parents=()) -> argparse.Namespace:
    """The common command line: ``--quick`` (under a minute) and ``--json``; `parents`: parsers
    (``add_help=False``) of a benchmark's own options, listed by ``--help`` too."""
    parser = argparse.ArgumentParser(description=description, parents=list(parents))
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in < 1 min")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def machine_info() -> dict:
    """Platform, CPU count and library versions, so figures can be compared across runs."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["loadavg_1min"] = os.getloadavg()[0]  # others' work on the machine skews timings
    except (AttributeError, OSError):
        pass
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    for mod in ("numpy", "numba", "scipy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        import numba

        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        import numpy as np

        info["blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # purely informational
        pass
    return info


def best_of(fn: Callable[[], object], repeats: int = 5, min_time: float = 0.001) -> float:
    """Best seconds per call of ``fn`` over ``repeats`` timed runs, after a warm-up call.

    The warm-up absorbs compilation; the first timed call counts as a run and calibrates how
    many calls make each further run last at least ``min_time`` seconds. Runs are kept short so
    that a preempted run (shared or virtual machines stall for milliseconds) is not the best.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    number = max(1, math.ceil(min_time / max(once, 1e-9)))
    best = once
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def met(value: float, target: dict | None) -> bool | None:
    """Whether ``value`` meets ``target`` (None when there is no target)."""
    if not target:
        return None
    ok = True
    if "min" in target:
        ok &= value >= target["min"]
    if "max" in target:
        ok &= value <= target["max"]
    return bool(ok)


def emit(name: str, figures: dict, targets: dict, as_json: bool, machine: dict | None = None):
    """Print the result as one JSON object or as a table (figure, value, target, ok)."""
    machine = machine_info() if machine is None else machine
    if as_json:
        json.dump({"benchmark": name, "machine": machine, "figures": figures,
                   "targets": targets}, sys.stdout)
        sys.stdout.write("\n")
        return
    print(f"{name}  ({machine.get('platform')}, {machine.get('cpu_count')} CPUs)")
    width = max((len(k) for k in figures), default=10)
    for key, value in figures.items():
        target = targets.get(key)
        goal = " ".join(f"{'>=' if k == 'min' else '<='} {v:g}" for k, v in (target or {}).items())
        ok = met(value, target)
        flag = "" if ok is None else ("ok" if ok else "MISS")
        shown = f"{value:12.4g}" if isinstance(value, float) else f"{value!s:>12}"
        print(f"  {key:<{width}}  {shown}  {goal:>10}  {flag}")


def _worker(q, fn, args) -> None:
    q.put(fn(*args))


def timed_call(limit_s: int, fn: Callable, *args) -> dict:
    """fn(*args) (a dict) in a spawned process (NUMBA_NUM_THREADS=1), given up after
    `limit_s` seconds: a row that does not finish says so, with the limit."""
    import multiprocessing as mp
    import os
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(q, fn, args))
    proc.start()
    proc.join(limit_s)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"runs": False, "why": f"does not finish in {limit_s} s of simulation on this "
                                      "machine (engine time, issue 16)"}
    return q.get() if not q.empty() else {"runs": False, "why": "the worker died"}
