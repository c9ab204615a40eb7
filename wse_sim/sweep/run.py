"""What-if sweeps: a grid of hardware x workload x strategy points, run locally in a spawn
process pool or on a Dask cluster, each finished point appended durably to DIR/sweep.csv.

    spec = load_sweep("examples/sweeps/sram_clock.toml")
    summary = run_sweep(spec, "out/sram_clock", workers=2)   # or dask="local" / "tcp://..."
    rows = load_table("out/sram_clock")

The sweep file format and its validation live in `sweep.spec`, the table in `sweep.table`,
the plots in `sweep.plots`; docs/sweeps.md describes all three. A sweep killed at any moment
and started again with the same arguments skips the points already in the table.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from pathlib import Path

from wse_sim.sweep.spec import (
    MAX_POINTS,
    Point,
    SweepError,
    SweepSpec,
    load_sweep,
    parse_sweep_text,
)
from wse_sim.sweep.table import METRICS, SPEC, TABLE, Table, load_table, write_atomic

__all__ = ["MAX_POINTS", "METRICS", "Point", "SweepError", "SweepSpec", "load_sweep",
           "load_table", "parse_sweep_text", "run_point", "run_sweep"]

LOCK = ".sweep.lock"
DASK_HINT = "pip install -e '.[dask]'"


# ---- one point (runs in a worker) --------------------------------------------------------
_parent_pid: int | None = None


def _init_worker() -> None:
    """Pool initializer: one numba (and BLAS/OpenMP) thread per worker, set before numba and
    numpy are imported here; and exit if the sweep process dies (a SIGKILLed parent would
    otherwise leave its workers blocked on their queue)."""
    global _parent_pid
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if "numba" in sys.modules:  # imported anyway (e.g. by a Dask worker): cap it at runtime
        try:
            sys.modules["numba"].set_num_threads(1)
        except (ValueError, AttributeError):
            pass
    if _parent_pid is None:
        _parent_pid = os.getppid()
        threading.Thread(target=_watch_parent, args=(_parent_pid,), daemon=True).start()
    import wse_sim.engine.reference  # noqa: F401 - import now, not in the first point's time
    import wse_sim.experiment  # noqa: F401


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(3)


def _one_line(e: BaseException) -> str:
    from mapper.placement import MappingError
    from wse_sim.hardware import ConfigError
    from wse_sim.program import ProgramError
    text = " ".join(str(e).split("\n", 1)[0].split()) or type(e).__name__
    if isinstance(e, ConfigError | MappingError | ProgramError):
        return text
    if isinstance(e, NotImplementedError):
        return f"not implemented: {text}"
    return f"{type(e).__name__}: {text}"


def run_point(params: dict, overrides: dict) -> dict:
    """Map and simulate one point; returns status, error and the METRICS (never raises for a
    point that fails: a failure is a row with status 'failed' and the one-line error)."""
    t0 = time.perf_counter()
    try:
        from wse_sim.engine import simulate
        from wse_sim.experiment import build_program
        from wse_sim.hardware import load_preset
        from wse_sim.spec import FIELDS, RunSpec
        hw = load_preset(params["preset"], overrides or None)
        values = {k: params[k] for k in FIELDS if k in params and params[k] is not None}
        if values.get("grid") == "full":
            del values["grid"]
        spec = RunSpec.from_values(values, preset=params["preset"], overrides=overrides,
                                   engine=params["engine"], given=params.get("given", ()))
        spec.check_applies()
        for key in ("generate", "wafers"):
            if values.get(key) not in (None, 1):
                raise NotImplementedError(f"{key}: a sweep point runs one mapping; {key} runs "
                                          "are `wse-sim run` only")
        if values.get("strategy") == "auto":
            raise NotImplementedError("strategy auto: a sweep point runs one mapping; "
                                      "`wse-sim search` chooses")
        kw = {k: v for k, v in values.items()
              if k not in ("model", "generate", "wafers", "prefill_grid", "decode_grid")}
        program = build_program(hw, params["model"], **kw)
        s = simulate(program, hw, engine=params["engine"]).summary()
        row = {m: s[m] for m in METRICS if m != "wall_seconds"}
        row.update(status="ok", error="")
    except Exception as e:  # noqa: BLE001 - a failed point is data, not a crash
        row = {"status": "failed", "error": _one_line(e)}
    row["wall_seconds"] = time.perf_counter() - t0
    return row


def _failed(message: str) -> dict:
    return {"status": "failed", "error": message, "wall_seconds": 0.0}


# ---- executors: each calls record(point, row) in this process, one point at a time --------
def _run_inline(todo, record) -> None:
    for p in todo:
        record(p, run_point(p.params, p.overrides))


def _run_pool(todo, record, workers: int, fn=run_point) -> None:
    """A spawn ProcessPoolExecutor (a forked child of a process that ran a numba parallel
    kernel dies). If a worker dies, the points that were in flight are rerun one at a time in
    a fresh pool, so the one that kills its worker is recorded as failed and no other is."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    queue, suspects = deque(todo), deque()
    window = 2 * workers
    while queue or suspects:
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
        pending: dict = {}
        broken = False
        try:
            while not broken and (queue or suspects or pending):
                if suspects:
                    if not pending:
                        p = suspects.popleft()
                        pending[ex.submit(fn, p.params, p.overrides)] = p
                else:
                    while queue and len(pending) < window:
                        p = queue.popleft()
                        pending[ex.submit(fn, p.params, p.overrides)] = p
                isolated = len(pending) == 1  # if the pool breaks now, this point did it
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: pending[f].index):
                    p = pending.pop(f)
                    try:
                        row = f.result()
                    except BrokenProcessPool:
                        broken = True
                        if isolated:
                            record(p, _failed("the worker process died running this point"))
                        else:
                            suspects.append(p)
                        continue
                    except Exception as e:  # noqa: BLE001 - e.g. a result that won't pickle
                        row = _failed(_one_line(e))
                    record(p, row)
            if broken:
                suspects.extend(sorted(pending.values(), key=lambda p: p.index))
                pending.clear()
        finally:
            ex.shutdown(wait=not pending and not broken, cancel_futures=True)


def _run_dask(todo, record, address: str, workers: int) -> None:
    """On dask.distributed: a LocalCluster of `workers` single-threaded processes for 'local',
    else the scheduler at `address`."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError(f"--dask needs dask.distributed, an optional extra: {DASK_HINT}") \
            from None
    import logging
    cluster = None
    try:
        if address == "local":
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR,
                                   env={"NUMBA_NUM_THREADS": "1"})
            client = Client(cluster)
        else:
            client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise SweepError(f"--dask: cannot reach the scheduler at {address} ({e})") from None
    try:
        try:
            client.run(_init_worker)
        except Exception as e:  # noqa: BLE001 - e.g. wse_sim not installed on the workers
            raise SweepError(f"--dask: the workers cannot run wse-sim points ({_one_line(e)})") \
                from None
        window = max(2, 2 * sum(client.nthreads().values()))
        it = iter(todo)
        futures = {}

        def submit(p):
            f = client.submit(run_point, p.params, p.overrides, pure=False)
            futures[f] = p
            return f

        batch = as_completed([submit(p) for _, p in zip(range(window), it, strict=False)])
        for f in batch:
            p = futures.pop(f)
            try:
                row = f.result()
            except Exception as e:  # noqa: BLE001 - e.g. KilledWorker
                row = _failed(_one_line(e))
            f.release()
            record(p, row)
            nxt = next(it, None)
            if nxt is not None:
                batch.add(submit(nxt))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _have_dask() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        return False


# ---- the sweep -----------------------------------------------------------------------------
class _Lock:
    """An exclusive lock on DIR (released by the kernel if this process dies)."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise SweepError(f"{self.path.parent}: another sweep is running in this folder")\
                from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _write_spec(directory: Path, spec: SweepSpec, force: bool) -> bool:
    """Write DIR/sweep.json; refuse (unless force) a folder that holds a different sweep.
    Returns whether an existing, different spec was replaced."""
    path = directory / SPEC
    new = json.loads(json.dumps(spec.resolved()))
    replaced = False
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (ValueError, OSError):
            old = {}
        if old == new:
            return False
        if not force:
            keys = [k for k in new if old.get(k) != new[k]] if isinstance(old, dict) else []
            what = f"differs in {', '.join(keys)}" if keys else "is unreadable"
            raise SweepError(f"{path}: this folder holds another sweep ({what}); use --force to "
                             "replace it (rows of points still in the sweep are kept) or "
                             "another --out")
        replaced = True
    write_atomic(path, (json.dumps(new, indent=1) + "\n").encode())
    return replaced


def run_sweep(sweep: str | Path | SweepSpec, out: str | Path, *, workers: int | None = None,
              dask: str | None = None, force: bool = False, retry_failed: bool = False,
              progress: bool = True) -> dict:
    """Run every point of `sweep` not yet in OUT/sweep.csv; returns the counts.

    workers: processes (default os.cpu_count(); 0 runs the points in this process).
    dask: 'local' or a scheduler address to run on dask.distributed instead of a local pool.
    force: replace a different OUT/sweep.json. retry_failed: run failed points again.
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SweepError(f"workers: got {workers!r}, must be an integer >= 0")
    if dask and not _have_dask():
        raise SweepError(f"--dask needs dask.distributed, an optional extra: {DASK_HINT}")
    directory = Path(out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SweepError(f"{directory}: cannot create the output folder ({e.strerror})") \
            from None
    table_path = directory / TABLE
    with _Lock(directory):
        replaced = _write_spec(directory, spec, force)
        by_id = {p.id: p for p in spec.points}

        def convert(row: dict) -> dict | None:
            p = by_id.get(row.get("point_id", ""))
            if p is None or (retry_failed and row.get("status") != "ok"):
                return None
            return {**row, **p.values}

        if replaced and table_path.exists():
            shutil.copy2(table_path, directory / f"{TABLE}.bak")
        table = Table(table_path, spec.columns, convert if (force or retry_failed) else None)
        todo = [p for p in spec.points if p.id not in table.rows]
        skipped = len(spec.points) - len(todo)
        counts = {"ok": 0, "failed": 0}
        from tqdm import tqdm
        bar = tqdm(total=len(spec.points), initial=skipped, unit="pt", file=sys.stderr,
                   desc="sweep", disable=not progress, dynamic_ncols=True, smoothing=0.1)

        def record(p: Point, row: dict) -> None:
            table.append({**p.values, "point_id": p.id, **row})  # durable before it counts
            counts["ok" if row["status"] == "ok" else "failed"] += 1
            bar.set_postfix(failed=counts["failed"], refresh=False)
            bar.update(1)

        try:
            if not todo:
                pass
            elif dask:
                _run_dask(todo, record, dask, workers or os.cpu_count() or 1)
            elif workers == 0:
                _run_inline(todo, record)
            else:
                _run_pool(todo, record, min(workers, len(todo)))
        finally:
            bar.close()
            table.close()
        failed_total = sum(1 for r in table.rows.values() if r.get("status") != "ok")
    return {"points": len(spec.points), "done": counts["ok"] + counts["failed"],
            "failed": counts["failed"], "skipped": skipped, "failed_total": failed_total,
            "duplicates": spec.duplicates, "table": str(table_path),
            "spec": str(directory / SPEC)}
