"""The fast engine's view of a Program: one integer row per task, built without per-core loops.

`Tables` holds the task table (`fast_tasks.F_*` columns), the dependency table and the id
spaces of instances and signal slots; its construction is a Python loop over tasks, never over
cores. The helpers below are small numba loops over the table: how many events feed each
signal slot, the static dependency check (rectangle arithmetic per dependency record; the
exact per-instance scan of `fast_sched.check_needs` runs only when something is wrong, to name
the first offender as the reference does) and the source core of each instance for spans.
"""

from __future__ import annotations

import numpy as np

from wse_sim.engine import fast_tasks as K
from wse_sim.engine.fast_tasks import kernel
from wse_sim.hardware import HardwareConfig
from wse_sim.program import (
    SPARSITY_ONE,
    Compute,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    Unicast,
    iteration_roots,
)
from wse_sim.timing import compute_cycles, io_cycles, reduce_pace, stream_beats

_RULES = {"same": K.R_OFFSET, "offset": K.R_OFFSET, "at": K.R_AT, "all": K.R_ALL}
_MOVED = ("offset", "at")  # rules whose dx, dy count ("same" and "all": 0, 0)


def _cycles(hw, t, q, f=0, rd=0, wr=0) -> int:
    """One part of a compute instance's cycles (the instance takes the longest part)."""
    return compute_cycles(hw, f, t.dtype, t.kind, q, rd, wr)


def hardware_constants(hw: HardwareConfig) -> np.ndarray:
    """The kernels' hardware constants (`fast_tasks.H_*`); with defects that detour some
    route, the repair's detour prefix sums after them (`fast_tasks.xhops`, `yhops`)."""
    cols, rows = hw.mesh_cols, hw.mesh_rows
    head = [cols, rows, cols * rows, hw.ramp_latency_cycles, hw.hop_latency_cycles,
            hw.stream_op_latency_cycles, hw.message_start_cycles, hw.message_receive_cycles]
    rep = hw.repair()
    if rep is None or not rep.has_detours:
        return np.array(head + [0], np.int64)
    return np.concatenate([np.array(head + [1], np.int64), rep.px.ravel(), rep.py.ravel()])


def _per_core(tasks, loops) -> np.ndarray:
    """Per task: does someone wait for it core by core (its signals are kept per core)? In a
    loop, every iteration's task j alike when one is (`fast_loops` compares iterations'
    slots); loops in program order (an inner loop's before its enclosing one's), each seeing
    the tasks the loops before it marked."""
    flag = np.zeros(len(tasks), bool)
    flag[[d.task for t in tasks for d in t.deps if d.rule != "all"]] = True
    for lp in loops:
        view = flag[lp.first:lp.end].reshape(lp.count, lp.size)
        view[:, view.any(axis=0)] = True
    return flag


def _move_rows(td, ib, moved: list, roots: np.ndarray, starts: list) -> None:
    """The rows of loop iterations' tasks (`moved`, each iteration 0's row moved): their
    root task's row (`iteration_roots`) with their own instance base,
    signal rows (`starts`: (first signal row, first dependency row, end of dependency rows)
    per moved task) and dependency rows; the template's pending count stands."""
    if not moved:
        return
    ti = np.array(moved, np.int64)
    tp = roots[ti]
    sb, d0, dn = np.array(starts, np.int64).T
    td[ti] = td[tp]
    td[ti, K.F_IB] = ib[ti]
    td[ti, K.F_SA] = sb + td[tp, K.F_SA] - td[tp, K.F_SB]
    td[ti, K.F_SB] = sb
    td[ti, K.F_DH] = d0 + td[tp, K.F_DH] - td[tp, K.F_D0]
    td[ti, K.F_D0], td[ti, K.F_DN] = d0, dn


def _dep_rows(t, ti: int, dep_rows: list) -> None:
    """Append task ti's dependency rows, head dependencies last."""
    heads = []
    for d in t.deps:
        row = (d.task, _RULES[d.rule], d.dx if d.rule in _MOVED else 0,
               d.dy if d.rule in _MOVED else 0, ti, int(d.head))
        (heads if d.head else dep_rows).append(row)
    dep_rows.extend(heads)


def _add_deps(t, ti: int, dep_rows: list, per_rule: int) -> int:
    """`_dep_rows`, and task ti's pending count: the needs taken at its anchors, `per_rule`
    for an offset rule (head ones: per instance). A loop iteration's task keeps its
    template's count."""
    _dep_rows(t, ti, dep_rows)
    return sum(per_rule if _RULES[d.rule] == K.R_OFFSET else 1 for d in t.deps if not d.head)


class Tables:
    """A program as the scheduler sees it: task table, dependency table, id spaces."""

    def deps_on(self, first: int, end: int) -> np.ndarray:
        """Dependency rows whose target is one of tasks first .. end - 1, by target (the
        reverse-dependency index)."""
        if end <= first:
            return self.deps[:0]
        return self.deps[self.rdeps[self.td[first, K.F_RD0]:self.td[end - 1, K.F_RDN]]]

    def __init__(self, program: Program, hw: HardwareConfig):
        tasks = program.tasks
        nt = len(tasks)
        cols = hw.mesh_cols
        td = np.zeros((nt, K.NF), np.int64)
        dep_rows = []
        ib = np.zeros(nt + 1, np.int64)
        sig = 0
        per_core = _per_core(tasks, program.loops)
        self.roots = iteration_roots(nt, program.loops)  # (also read by `fast_counts`)
        moved, starts, nsig, nis = [], [], [0] * nt, [0] * nt  # (loop iterations' rows)
        for ti, t in enumerate(tasks):
            tp = int(self.roots[ti])
            if tp != ti:  # a loop iteration's record: iteration 0's row, moved (_move_rows)
                d0 = len(dep_rows)
                _dep_rows(t, ti, dep_rows)
                moved.append(ti)
                starts.append((sig, d0, len(dep_rows)))
                nsig[ti], nis[ti] = nsig[tp], nis[tp]
                sig += nsig[ti]
                ib[ti + 1] = ib[ti] + nis[ti]
                continue
            row = td[ti]
            r = t.region
            row[K.F_RX:K.F_RR + 1] = r.x, r.y, r.cols, r.rows
            s2 = (0, 0, 0, 0)
            p = [0] * 9
            if isinstance(t, Compute):
                row[K.F_KIND] = K.K_COMPUTE
                ni = r.size
                q = t.density_q20 if t.kind == "fmac" else SPARSITY_ONE
                parts = ((t.flops, "f"), (t.sram_read_bytes, "rd"), (t.sram_write_bytes, "wr"))
                for j, (total, key) in enumerate(parts):
                    lo, extra = divmod(int(total), ni)
                    p[3 * j:3 * j + 3] = (_cycles(hw, t, q, **{key: lo + 1}),
                                          _cycles(hw, t, q, **{key: lo}), extra)
                nres, nev = 1, 1
            elif isinstance(t, Unicast):
                row[K.F_KIND] = K.K_UNICAST
                ni = r.size
                if t.ring:
                    n, k = (r.cols, t.dx) if t.ring == "x" else (r.rows, t.dy)
                    p[:3] = K.U_RING, 0 if t.ring == "x" else 1, k % n
                    far = n - 1
                elif t.to is not None:
                    tx, ty = int(t.to[0]), int(t.to[1])
                    p[:5] = K.U_TO, 0, 0, tx, ty
                    s2 = (tx, ty, 1, 1)
                    far = max(abs(tx - x) + abs(ty - y) for x in (r.x, r.x1) for y in (r.y, r.y1))
                elif t.wrap:
                    p[:3] = K.U_WRAP, t.dx % r.cols, t.dy % r.rows
                    far = r.cols + r.rows
                else:
                    p[:3] = K.U_OFFSET, t.dx, t.dy
                    s2 = (r.x + t.dx, r.y + t.dy, r.cols, r.rows)
                    far = abs(t.dx) + abs(t.dy)
                nres, nev = far + 2, 2
            elif isinstance(t, Multicast):
                row[K.F_KIND] = K.K_MULTICAST
                ni = 1
                sx, sy = int(t.src[0]), int(t.src[1])
                p[:2] = sx, sy
                s2 = (sx, sy, 1, 1)
                links = (max(r.x1, sx) - sx) + (sx - min(r.x, sx)) + r.cols * (
                    (max(r.y1, sy) - sy) + (sy - min(r.y, sy)))
                nres, nev = 1 + links + r.size, 1 + r.size
            elif isinstance(t, IoTransfer):
                row[K.F_KIND] = K.K_IO
                ni = 1
                p[:2] = io_cycles(hw, t.bytes), 1 if t.direction == "in" else 0
                nres, nev = 1, r.size
            else:
                assert isinstance(t, LineStream)
                row[K.F_KIND] = K.K_REDUCE if t.reduce else K.K_BCAST
                ni = r.rows if t.axis == "x" else r.cols
                pace = reduce_pace(hw, t.dtype) if t.reduce else 1
                p[:4] = 0 if t.axis == "x" else 1, t.direction, pace, t.length
                nres, nev = 1 + (4 if t.reduce else 2) * (t.length - 1), t.length
            if isinstance(t, Unicast | Multicast | LineStream):
                row[K.F_B] = t.wavelets
                row[K.F_BT] = stream_beats(hw, t.wavelets)
            row[K.F_P:K.F_P + 9] = p
            row[K.F_NI], row[K.F_IB] = ni, ib[ti]
            ib[ti + 1] = ib[ti] + ni
            row[K.F_SB] = sig
            row[K.F_S2X:K.F_S2R + 1] = s2
            if per_core[ti]:  # per-core signals only for tasks someone waits for per core
                row[K.F_SLOTS] = 1
                sig += r.size + s2[2] * s2[3]
            row[K.F_SA] = sig
            sig += 1
            row[K.F_NRES], row[K.F_NEV] = nres, nev
            row[K.F_D0] = len(dep_rows)
            row[K.F_DH] = row[K.F_D0] + sum(not d.head for d in t.deps)
            per_rule = (t.length if isinstance(t, LineStream) and t.reduce
                        else r.size if isinstance(t, IoTransfer) else 1)
            row[K.F_PEND] = _add_deps(t, ti, dep_rows, per_rule)
            row[K.F_DN] = len(dep_rows)
            nsig[ti], nis[ti] = sig - int(row[K.F_SB]), ni
        _move_rows(td, ib, moved, self.roots, starts)
        deps = np.array(dep_rows, np.int64).reshape(-1, K.ND)
        self.has_heads = bool(len(deps) and deps[:, K.D_HEAD].any())
        order = np.argsort(deps[:, K.D_TASK], kind="stable")
        counts = np.bincount(deps[:, K.D_TASK], minlength=nt)
        td[:, K.F_RD0] = np.concatenate(([0], np.cumsum(counts)[:-1]))
        td[:, K.F_RDN] = np.cumsum(counts)
        self.td, self.deps, self.rdeps, self.ib = td, deps, order.astype(np.int64), ib
        self.n_signals = sig
        self.n_instances = int(ib[-1])
        self.hwc = hardware_constants(hw)
        self.cols = cols
        self.loops = program.loops
        # A link carries 4 bytes per wavelet; its bytes follow its busy cycles (4 per cycle)
        # unless a stream holds it for other than one cycle per wavelet: a reduce slower than
        # a beat per cycle, or links wider than one wavelet. Only then count bytes apart.
        streams = td[:, K.F_KIND] != K.K_COMPUTE
        paced = (td[:, K.F_KIND] == K.K_REDUCE) & (td[:, K.F_P + 2] > 1)
        self.link_bytes_apart = bool(paced.any() or (streams & (td[:, K.F_BT] != td[:, K.F_B])).any())


@kernel(inline=True)
def _rect_in(ax, ay, ac, ar, bx, by, bc, br):
    """Rectangle a (x, y, cols, rows) inside rectangle b (an empty a is inside anything)."""
    if ac <= 0 or ar <= 0:
        return True
    return bc > 0 and br > 0 and bx <= ax and ax + ac <= bx + bc and by <= ay and ay + ar <= by + br


@kernel
def _rect_in_union(ax, ay, ac, ar, r1x, r1y, r1c, r1r, r2x, r2y, r2c, r2r):
    """a inside r1 | r2: the parts of a outside r1 (at most four rectangles) inside r2."""
    x1, y1 = ax + ac, ay + ar
    ix0, iy0 = max(ax, r1x), max(ay, r1y)
    ix1, iy1 = min(x1, r1x + r1c), min(y1, r1y + r1r)
    if ix0 >= ix1 or iy0 >= iy1:
        return _rect_in(ax, ay, ac, ar, r2x, r2y, r2c, r2r)
    return (_rect_in(ax, ay, ac, iy0 - ay, r2x, r2y, r2c, r2r)
            and _rect_in(ax, iy1, ac, y1 - iy1, r2x, r2y, r2c, r2r)
            and _rect_in(ax, iy0, ix0 - ax, iy1 - iy0, r2x, r2y, r2c, r2r)
            and _rect_in(ix1, iy0, x1 - ix1, iy1 - iy0, r2x, r2y, r2c, r2r))


@kernel
def _anchor_rect(td, t):
    """Rectangle of every core where some instance of task t takes its dependencies."""
    kind = td[t, K.F_KIND]
    rx, ry, rc, rr = td[t, K.F_RX], td[t, K.F_RY], td[t, K.F_RC], td[t, K.F_RR]
    if kind == K.K_MULTICAST:
        return td[t, K.F_P], td[t, K.F_P + 1], 1, 1
    if kind == K.K_BCAST:  # the first cores of the lines
        step = td[t, K.F_P + 1]
        if td[t, K.F_P] == 0:
            return (rx if step > 0 else rx + rc - 1), ry, 1, rr
        return rx, (ry if step > 0 else ry + rr - 1), rc, 1
    return rx, ry, rc, rr


@kernel
def deps_valid_nb(td, deps, cols, rows):
    """Whether every need names a core inside the mesh where its task has an event
    (rectangle arithmetic per dependency record)."""
    for d in range(deps.shape[0]):
        rule = deps[d, K.D_RULE]
        if rule == K.R_ALL or deps[d, K.D_HEAD]:  # head needs: where the task has an event
            continue
        if rule == K.R_AT:
            nx, ny, nc, nr = deps[d, K.D_DX], deps[d, K.D_DY], 1, 1
        else:
            ax, ay, nc, nr = _anchor_rect(td, deps[d, K.D_OWNER])
            nx, ny = ax + deps[d, K.D_DX], ay + deps[d, K.D_DY]
        t = deps[d, K.D_TASK]
        if not _rect_in(nx, ny, nc, nr, 0, 0, cols, rows):
            return False
        if not _rect_in_union(nx, ny, nc, nr, td[t, K.F_RX], td[t, K.F_RY], td[t, K.F_RC],
                              td[t, K.F_RR], td[t, K.F_S2X], td[t, K.F_S2Y], td[t, K.F_S2C],
                              td[t, K.F_S2R]):
            return False
    return True


def deps_valid(tables: Tables) -> bool:
    """Whether every need names a core inside the mesh where its task has an event;
    `fast_sched.check_needs` finds the first offender when not."""
    return bool(deps_valid_nb(tables.td, tables.deps, tables.hwc[K.H_COLS],
                              tables.hwc[K.H_ROWS]))


@kernel
def _signal_counts(td, out):
    for t in range(td.shape[0]):
        out[td[t, K.F_SA]] = td[t, K.F_NI]
        if td[t, K.F_SLOTS] == 0:
            continue
        base, kind, ni = td[t, K.F_SB], td[t, K.F_KIND], td[t, K.F_NI]
        rx, ry, rc, rr = td[t, K.F_RX], td[t, K.F_RY], td[t, K.F_RC], td[t, K.F_RR]
        s2x, s2y, s2c, s2r = td[t, K.F_S2X], td[t, K.F_S2Y], td[t, K.F_S2C], td[t, K.F_S2R]
        n1 = rc * rr
        mode = td[t, K.F_P] if kind == K.K_UNICAST else -1
        # a wrapped or ring shift: every core a source and (a bijection) a destination
        each = 2 if (mode == K.U_WRAP or mode == K.U_RING) else 1
        for j in range(n1):  # every region core has one event, except as below
            out[base + j] = each
        if mode == K.U_TO:  # every source sends to one core
            tx, ty = td[t, K.F_P + 3], td[t, K.F_P + 4]
            if rx <= tx < rx + rc and ry <= ty < ry + rr:
                out[base + (ty - ry) * rc + tx - rx] += ni
            else:
                out[base + n1] = ni
        elif mode == K.U_OFFSET:  # destinations: the shifted region (where it overlaps, r1)
            for y in range(s2y, s2y + s2r):
                for x in range(s2x, s2x + s2c):
                    if rx <= x < rx + rc and ry <= y < ry + rr:
                        out[base + (y - ry) * rc + x - rx] += 1
                    else:
                        out[base + n1 + (y - s2y) * s2c + x - s2x] = 1
        elif kind == K.K_MULTICAST:  # the source's own event, unless it is a region core
            sx, sy = td[t, K.F_P], td[t, K.F_P + 1]
            if not (rx <= sx < rx + rc and ry <= sy < ry + rr):
                out[base + n1] = 1


def signal_counts(tables: Tables) -> np.ndarray:
    """Events feeding each signal slot (the slot fires when all have been granted)."""
    out = np.zeros(tables.n_signals, np.int32)
    _signal_counts(tables.td, out)
    return out


@kernel
def _span_cores(td, cols, out):
    g = 0
    for t in range(td.shape[0]):
        for i in range(td[t, K.F_NI]):
            if td[t, K.F_KIND] == K.K_IO:
                out[g] = td[t, K.F_RY] * cols + td[t, K.F_RX]
            else:
                x, y = K.anchor(td, t, i, 0)
                out[g] = y * cols + x
            g += 1


@kernel
def _head_counts(td, deps, hwc, counts, pend, ex, ey, eoff):
    """Add to every instance's pending count its head needs: per destination and head
    dependency, one where the named task has an event (`counts[slot] > 0`)."""
    for t in range(td.shape[0]):
        dh, d1 = td[t, K.F_DH], td[t, K.F_DN]
        if dh == d1:
            continue
        for i in range(td[t, K.F_NI]):
            nev = K.fill_events(td, t, i, hwc, ex, ey, eoff)
            for e in range(1, nev):
                for d in range(dh, d1):
                    s = K.need_slot(td, deps, d, ex[e], ey[e])
                    if s >= 0 and counts[s] > 0:
                        pend[td[t, K.F_IB] + i] += 1


def head_counts(tables: Tables, counts: np.ndarray, pend: np.ndarray) -> None:
    """`pend` (per instance) += its head needs (`_head_counts`); `counts`: `signal_counts`."""
    if not tables.has_heads:
        return
    nev = max(1, int(tables.td[:, K.F_NEV].max()))
    ex, ey, eoff = (np.empty(nev, np.int64) for _ in range(3))
    _head_counts(tables.td, tables.deps, tables.hwc, counts, pend, ex, ey, eoff)


def span_cores(tables: Tables) -> np.ndarray:
    """The core the reference names for each instance (a flow's source, a line's first core,
    an I/O transfer's region corner), in (task, index) order."""
    out = np.empty(tables.n_instances, np.int64)
    _span_cores(tables.td, tables.cols, out)
    return out
