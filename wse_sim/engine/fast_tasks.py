"""The fast engine's instances, generated on the fly from one table row per task.

Nothing is expanded per core in Python. Every task is one row of an int64 table `td` (the
`F_*` columns below); the instances of a task, their reservations, events and needs are
computed from that row by arithmetic when the scheduler needs them, in exactly the order
`engine.reference.expand` builds them. Signals are addressed as (task, core) -> one slot by
rectangle arithmetic: a task's events cover its region plus at most one more rectangle
(a unicast's destinations, a multicast's source), and the whole-task signal has its own slot.

Instance i of a task: Compute and Unicast: the i-th core of the region, row-major; Multicast
and IoTransfer: the only one (i = 0); LineStream: the i-th line. An instance waits for its
dependencies at its anchors: one core (the core, the source, the first core of the line), or
every core of the line (reduce) or of the region (IoTransfer), in the reference's order.
"""

from __future__ import annotations

from collections import namedtuple

import numba.core.cpu
from numba import njit

# The scheduler's kernels allocate nothing, so they run without numba's reference counting
# (NRT): with it, every array handed to a helper costs two atomic operations, which was half
# of the scheduler's time. `_nrt` is numba's own jit option; without it, plain njit.
_NO_NRT = {"_nrt": False} if hasattr(numba.core.cpu.CPUTargetOptions, "_nrt") else {}


def kernel(fn=None, *, inline=False):
    """A cached, NRT-free numba function (for code that allocates no arrays); `inline` for
    the small helpers of the scheduler's inner loop (numba inlines them into their callers)."""
    opts = dict(cache=True, **_NO_NRT)
    if inline:
        opts["inline"] = "always"
    return njit(**opts) if fn is None else njit(**opts)(fn)

# The scheduler kernels take their arrays in a few named groups (numba passes a namedtuple of
# arrays as one argument): the program's tables, the counters a run accumulates, the scratch
# buffers of one instance's reservations and events, and each path's own state.
ProgramArrays = namedtuple("ProgramArrays", "td deps rdeps ib tblk hwc")
Counters = namedtuple("Counters", "busy lbytes lbusy tacc")
Scratch = namedtuple("Scratch", "rrid roff rlen ex ey eoff")
EventQueue = namedtuple("EventQueue", "free owner start blk pend sig_time sig_prod sig_pend "
                                      "head wheel batch tmp tscr")
StepArrays = namedtuple("StepArrays", "groups off res sig rgs preds order tmp count pc starts")

# task kinds
K_COMPUTE, K_UNICAST, K_MULTICAST, K_BCAST, K_REDUCE, K_IO = 0, 1, 2, 3, 4, 5
# dependency rules ('same' is an offset of (0, 0))
R_OFFSET, R_AT, R_ALL = 0, 1, 2
# unicast destination modes (ring: P = mode, axis 0 x / 1 y, places moved modulo the line)
U_OFFSET, U_WRAP, U_TO, U_RING = 0, 1, 2, 3
# columns of the task table
F_KIND = 0
F_RX, F_RY, F_RC, F_RR = 1, 2, 3, 4          # region
F_NI, F_IB = 5, 6                            # instances, first global instance id
F_SB, F_S2X, F_S2Y, F_S2C, F_S2R = 7, 8, 9, 10, 11   # signal slots: base, second rectangle
F_SA = 12                                    # slot of the whole-task signal
F_B = 13                                     # wavelets (bytes / 4 on the fabric)
F_P = 14                                     # 9 kind-specific parameters, F_P .. F_P + 8:
#   compute: cycles of the FMAC / SRAM-read / SRAM-write parts as (more, fewer, first ranks
#            with more); unicast: mode, dx, dy, to-x, to-y; multicast: src x, src y;
#   line: axis (0 x, 1 y), direction, pace, length; io: channel cycles, 1 for 'in'
F_D0, F_DN = 23, 24                          # dependency rows [F_D0, F_DN)
F_RD0, F_RDN = 25, 26                        # rows of the reverse-dependency list
F_PEND = 27                                  # needs per instance (its pending count)
F_NRES, F_NEV = 28, 29                       # most reservations / events of one instance
F_SLOTS = 30                                 # 1: has per-core signal slots (someone needs them)
F_BT = 31                                    # beats: cycles the stream holds a link (timing.stream_beats)
F_DH = 32                                    # head dependencies: rows [F_DH, F_DN) (flow control)
NF = 33
# columns of the dependency table (a task's head dependencies come after its others)
D_TASK, D_RULE, D_DX, D_DY, D_OWNER, D_HEAD = 0, 1, 2, 3, 4, 5
ND = 6
# hardware constants; with defects (H_DET = 1) the detour prefix sums follow from H_PX:
# `defects.Repair.px` at H_PX + y * cols + x, then `py` at H_PX + N + y * cols + x
H_COLS, H_ROWS, H_N, H_TR, H_HOP, H_OP, H_SEND, H_RECV, H_DET, H_PX = range(10)
EAST, WEST, SOUTH, NORTH = 0, 1, 2, 3


@kernel(inline=True)
def xhops(hwc, y, xa, xb):
    """Physical hops between logical columns xa and xb of row y (defects.Repair.xhops)."""
    h = abs(xb - xa)
    if hwc[H_DET]:
        b = H_PX + y * hwc[H_COLS]
        h += abs(hwc[b + xb] - hwc[b + xa])
    return h


@kernel(inline=True)
def yhops(hwc, x, ya, yb):
    """Physical hops between logical rows ya and yb of column x (defects.Repair.yhops)."""
    h = abs(yb - ya)
    if hwc[H_DET]:
        b, c = H_PX + hwc[H_N] + x, hwc[H_COLS]
        h += abs(hwc[b + yb * c] - hwc[b + ya * c])
    return h


@kernel(inline=True)
def route_hops(hwc, x0, y0, x1, y1):
    """Physical hops of the dimension-order route from (x0, y0) to (x1, y1)."""
    return xhops(hwc, y0, x0, x1) + yhops(hwc, x1, y0, y1)


@kernel(inline=True)
def io_col(hwc, x, y):
    """Hops from the west edge to logical core (x, y): its physical column."""
    return x + hwc[H_PX + y * hwc[H_COLS] + x] if hwc[H_DET] else x


@kernel(inline=True)
def line_hops(hwc, x0, y0, sx, sy, j):
    """Physical hops from the first core of a line (step sx, sy) to its j-th core."""
    if sx != 0:
        return xhops(hwc, y0, x0, x0 + j * sx)
    return yhops(hwc, x0, y0, y0 + j * sy)


@kernel(inline=True)
def sig_slot(td, t, x, y):
    """Signal slot of (task t, core (x, y)), or -1 when the task has no event there."""
    rx, ry, rc, rr = td[t, F_RX], td[t, F_RY], td[t, F_RC], td[t, F_RR]
    if rx <= x < rx + rc and ry <= y < ry + rr:
        return td[t, F_SB] + (y - ry) * rc + (x - rx)
    sc = td[t, F_S2C]
    if sc > 0:
        sx, sy, sr = td[t, F_S2X], td[t, F_S2Y], td[t, F_S2R]
        if sx <= x < sx + sc and sy <= y < sy + sr:
            return td[t, F_SB] + rc * rr + (y - sy) * sc + (x - sx)
    return -1


@kernel(inline=True)
def line(td, t, i):
    """Line i of a line stream: first core, step (x, y), length, direction of its hops."""
    step = td[t, F_P + 1]
    if td[t, F_P] == 0:
        x0 = td[t, F_RX] if step > 0 else td[t, F_RX] + td[t, F_RC] - 1
        return x0, td[t, F_RY] + i, step, 0, td[t, F_RC], EAST if step > 0 else WEST
    y0 = td[t, F_RY] if step > 0 else td[t, F_RY] + td[t, F_RR] - 1
    return td[t, F_RX] + i, y0, 0, step, td[t, F_RR], SOUTH if step > 0 else NORTH


@kernel(inline=True)
def n_anchors(td, t):
    k = td[t, F_KIND]
    if k == K_REDUCE:
        return td[t, F_P + 3]
    if k == K_IO:
        return td[t, F_RC] * td[t, F_RR]
    return 1


@kernel(inline=True)
def anchor(td, t, i, a):
    """Anchor a (0 <= a < n_anchors) of instance i: a core whose dependencies it waits for."""
    k = td[t, F_KIND]
    rc = td[t, F_RC]
    if k == K_COMPUTE or k == K_UNICAST:
        return td[t, F_RX] + i % rc, td[t, F_RY] + i // rc
    if k == K_MULTICAST:
        return td[t, F_P], td[t, F_P + 1]
    if k == K_IO:
        return td[t, F_RX] + a % rc, td[t, F_RY] + a // rc
    x0, y0, sx, sy, _n, _d = line(td, t, i)
    return x0 + a * sx, y0 + a * sy


@kernel(inline=True)
def anchor_inverse(td, t, x, y):
    """The instance of task t with an anchor at core (x, y), or -1."""
    k = td[t, F_KIND]
    rx, ry, rc, rr = td[t, F_RX], td[t, F_RY], td[t, F_RC], td[t, F_RR]
    if k == K_MULTICAST:
        return 0 if (x == td[t, F_P] and y == td[t, F_P + 1]) else -1
    if not (rx <= x < rx + rc and ry <= y < ry + rr):
        return -1
    if k == K_COMPUTE or k == K_UNICAST:
        return (y - ry) * rc + (x - rx)
    if k == K_IO:
        return 0
    axis_x = td[t, F_P] == 0
    if k == K_REDUCE:
        return y - ry if axis_x else x - rx
    step = td[t, F_P + 1]
    if axis_x:
        first = rx if step > 0 else rx + rc - 1
        return y - ry if x == first else -1
    first = ry if step > 0 else ry + rr - 1
    return x - rx if y == first else -1


@kernel(inline=True)
def need_slot(td, deps, d, x, y):
    """Signal slot that dependency row d names for an anchor at (x, y)."""
    t = deps[d, D_TASK]
    rule = deps[d, D_RULE]
    if rule == R_ALL:
        return td[t, F_SA]
    if rule == R_AT:
        return sig_slot(td, t, deps[d, D_DX], deps[d, D_DY])
    return sig_slot(td, t, x + deps[d, D_DX], y + deps[d, D_DY])


@kernel(inline=True)
def head_lead0(td, t, hwc):
    """What a destination's event offset adds after the stream's first wavelet reaches it:
    the rest of the stream's beats and the receipt (lead = event offset - this)."""
    return td[t, F_BT] - 1 + hwc[H_RECV]


@kernel(inline=True)
def ready_pred(td, deps, t, i, sig_time, hwc, ex, ey, eoff):
    """(ready time, first needed slot with the latest time) of an instance; (0, -1) without
    needs. Needs are visited in the reference's order: anchors, then dependencies; then the
    head dependencies at every destination, each met `lead` cycles before its event (where
    the named task has one). The clamp of a head need to its producer's grant is not here:
    the critical path follows the latest need."""
    d0, dh, d1 = td[t, F_D0], td[t, F_DH], td[t, F_DN]
    best, pred = -1, -1
    if d0 == d1:
        return 0, -1
    if d0 < dh:
        for a in range(n_anchors(td, t)):
            x, y = anchor(td, t, i, a)
            for d in range(d0, dh):
                s = need_slot(td, deps, d, x, y)
                if sig_time[s] > best:
                    best, pred = sig_time[s], s
    if dh < d1:
        nev = fill_events(td, t, i, hwc, ex, ey, eoff)
        lead0 = head_lead0(td, t, hwc)
        for e in range(1, nev):
            for d in range(dh, d1):
                s = need_slot(td, deps, d, ex[e], ey[e])
                if s >= 0 and sig_time[s] >= 0 and sig_time[s] - (eoff[e] - lead0) > best:
                    best, pred = sig_time[s] - (eoff[e] - lead0), s
    return max(best, 0), pred


@kernel(inline=True)
def head_dest(td, t, ux, uy, j):
    """Instances of stream task t that deliver to core (ux, uy): the j-th of them (j = 0,
    1, ...) as (instance, source x, source y), or (-1, 0, 0) past the last."""
    k = td[t, F_KIND]
    rx, ry, rc, rr = td[t, F_RX], td[t, F_RY], td[t, F_RC], td[t, F_RR]
    if k == K_UNICAST:
        mode = td[t, F_P]
        if mode == U_TO:
            if ux != td[t, F_P + 3] or uy != td[t, F_P + 4] or j >= rc * rr:
                return -1, 0, 0
            return j, rx + j % rc, ry + j // rc
        if j > 0:
            return -1, 0, 0
        if mode == U_RING:  # the source: k places back along the ring
            if not (rx <= ux < rx + rc and ry <= uy < ry + rr):
                return -1, 0, 0
            k = td[t, F_P + 2]
            sx, sy = ux, uy
            if td[t, F_P + 1] == 0:
                sx = rx + ring_core((ring_position(ux - rx, rc) - k + rc) % rc, rc)
            else:
                sy = ry + ring_core((ring_position(uy - ry, rr) - k + rr) % rr, rr)
            return (sy - ry) * rc + sx - rx, sx, sy
        sx, sy = ux - td[t, F_P + 1], uy - td[t, F_P + 2]
        if mode == U_WRAP:  # destinations lie in the region
            if not (rx <= ux < rx + rc and ry <= uy < ry + rr):
                return -1, 0, 0
            sx += rc if sx < rx else 0
            sy += rr if sy < ry else 0
        if not (rx <= sx < rx + rc and ry <= sy < ry + rr):
            return -1, 0, 0
        return (sy - ry) * rc + sx - rx, sx, sy
    if j > 0 or not (rx <= ux < rx + rc and ry <= uy < ry + rr):
        return -1, 0, 0
    if k == K_MULTICAST:
        sx, sy = td[t, F_P], td[t, F_P + 1]
        return (-1, 0, 0) if (ux == sx and uy == sy) else (0, sx, sy)
    # a broadcast line: the line through (ux, uy), unless (ux, uy) is its source
    i = uy - ry if td[t, F_P] == 0 else ux - rx
    x0, y0, _sx, _sy, _cnt, _d = line(td, t, i)
    return (-1, 0, 0) if (ux == x0 and uy == y0) else (i, x0, y0)


@kernel(inline=True)
def compute_cycles(td, t, i):
    p = F_P
    w = td[t, p] if i < td[t, p + 2] else td[t, p + 1]
    r = td[t, p + 3] if i < td[t, p + 5] else td[t, p + 4]
    v = td[t, p + 6] if i < td[t, p + 8] else td[t, p + 7]
    return max(w, r, v)


@kernel(inline=True)
def ring_core(p, n):
    """program.ring_core: the core at ring position p (0 <= p < n) of a line of n."""
    return 2 * p if p < (n + 1) // 2 else 2 * (n - 1 - p) + 1


@kernel(inline=True)
def ring_position(c, n):
    """program.ring_position: the ring position of core c (0 <= c < n) of a line of n."""
    return c // 2 if c % 2 == 0 else n - 1 - (c - 1) // 2


@kernel(inline=True)
def unicast_ends(td, t, i):
    rx, ry, rc, rr = td[t, F_RX], td[t, F_RY], td[t, F_RC], td[t, F_RR]
    x, y = rx + i % rc, ry + i // rc
    mode = td[t, F_P]
    if mode == U_RING:
        k = td[t, F_P + 2]
        if td[t, F_P + 1] == 0:
            return x, y, rx + ring_core((ring_position(x - rx, rc) + k) % rc, rc), y
        return x, y, x, ry + ring_core((ring_position(y - ry, rr) + k) % rr, rr)
    if mode == U_TO:
        return x, y, td[t, F_P + 3], td[t, F_P + 4]
    dx, dy = td[t, F_P + 1], td[t, F_P + 2]
    if mode == U_WRAP:  # dx, dy are stored reduced modulo the region's cols, rows
        tx, ty = x + dx, y + dy
        return x, y, tx - rc if tx >= rx + rc else tx, ty - rr if ty >= ry + rr else ty
    return x, y, x + dx, y + dy


@kernel(inline=True)
def fill_res(td, t, i, hwc, rid, off, ln):
    """Reservations (resource, offset, length) of instance i, in the reference's order; a
    stream's windows start `message_start_cycles` late (the core starting the message)."""
    m = _res(td, t, i, hwc, rid, off, ln)
    k = td[t, F_KIND]
    if k != K_COMPUTE and k != K_IO and hwc[H_SEND] != 0:
        for j in range(m):
            off[j] += hwc[H_SEND]
    return m


@kernel(inline=True)
def _res(td, t, i, hwc, rid, off, ln):
    cols, n = hwc[H_COLS], hwc[H_N]
    tr, hop = hwc[H_TR], hwc[H_HOP]
    k = td[t, F_KIND]
    b = td[t, F_BT]
    if k == K_COMPUTE:
        rc = td[t, F_RC]
        c = (td[t, F_RY] + i // rc) * cols + td[t, F_RX] + i % rc
        rid[0], off[0], ln[0] = 6 * n + c, 0, compute_cycles(td, t, i)
        return 1
    if k == K_UNICAST:
        x, y, tx, ty = unicast_ends(td, t, i)
        rid[0], off[0], ln[0] = 4 * n + y * cols + x, 0, b
        m = 1
        x0, y0 = x, y
        d, s = (EAST, 1) if tx > x else (WEST, -1)
        while x != tx:
            rid[m], off[m], ln[m] = (y * cols + x) * 4 + d, tr + xhops(hwc, y, x0, x) * hop, b
            m += 1
            x += s
        hx = xhops(hwc, y0, x0, tx)
        d, s = (SOUTH, 1) if ty > y else (NORTH, -1)
        while y != ty:
            h = hx + yhops(hwc, tx, y0, y)
            rid[m], off[m], ln[m] = (y * cols + x) * 4 + d, tr + h * hop, b
            m += 1
            y += s
        h = hx + yhops(hwc, tx, y0, ty)
        rid[m], off[m], ln[m] = 5 * n + ty * cols + tx, tr + h * hop, b
        return m + 1
    if k == K_IO:
        rid[0], off[0], ln[0] = 7 * n, 0, td[t, F_P]
        return 1
    if k == K_MULTICAST:
        return _multicast_res(td, t, hwc, rid, off, ln)
    x0, y0, sx, sy, cnt, d = line(td, t, i)
    if k == K_BCAST:
        rid[0], off[0], ln[0] = 4 * n + y0 * cols + x0, 0, b
        m = 1
        for j in range(cnt - 1):
            c = (y0 + j * sy) * cols + x0 + j * sx
            rid[m], off[m], ln[m] = c * 4 + d, tr + line_hops(hwc, x0, y0, sx, sy, j) * hop, b
            c2 = (y0 + (j + 1) * sy) * cols + x0 + (j + 1) * sx
            h2 = line_hops(hwc, x0, y0, sx, sy, j + 1)
            rid[m + 1], off[m + 1], ln[m + 1] = 5 * n + c2, tr + h2 * hop, b
            m += 2
        return m
    # reduce: every stage takes the stream off the fabric, adds, puts it back on
    length = b * td[t, F_P + 2]
    stage = 2 * tr + hop + hwc[H_OP]
    rid[0], off[0], ln[0] = 4 * n + y0 * cols + x0, 0, length
    m = 1
    h_prev = 0  # physical hops from the first core to core j - 1 (a stage's detour: hops)
    for j in range(1, cnt):
        h = line_hops(hwc, x0, y0, sx, sy, j)
        sp = (j - 1) * stage + (h_prev - (j - 1)) * hop
        lh = (h - h_prev) * hop  # this stage's link: 1 + its detour hops
        cp = (y0 + (j - 1) * sy) * cols + x0 + (j - 1) * sx
        c = (y0 + j * sy) * cols + x0 + j * sx
        rid[m], off[m], ln[m] = cp * 4 + d, sp + tr, length
        rid[m + 1], off[m + 1], ln[m + 1] = 5 * n + c, sp + tr + lh, length
        rid[m + 2], off[m + 2], ln[m + 2] = 6 * n + c, sp + 2 * tr + lh, length
        m += 3
        if j < cnt - 1:
            rid[m], off[m], ln[m] = 4 * n + c, j * stage + (h - j) * hop, length
            m += 1
        h_prev = h
    return m


@kernel
def _multicast_res(td, t, hwc, rid, off, ln):
    """Ramp on, the row-then-column tree (fabric.multicast_tree order), then every ramp off."""
    cols, n = hwc[H_COLS], hwc[H_N]
    tr, hop = hwc[H_TR], hwc[H_HOP]
    b = td[t, F_BT]
    sx, sy = td[t, F_P], td[t, F_P + 1]
    x0, y0 = td[t, F_RX], td[t, F_RY]
    x1, y1 = x0 + td[t, F_RC] - 1, y0 + td[t, F_RR] - 1
    rid[0], off[0], ln[0] = 4 * n + sy * cols + sx, 0, b
    m = 1
    for x in range(sx, max(x1, sx)):
        rid[m], off[m], ln[m] = (sy * cols + x) * 4 + EAST, tr + xhops(hwc, sy, sx, x) * hop, b
        m += 1
    for x in range(sx, min(x0, sx), -1):
        rid[m], off[m], ln[m] = (sy * cols + x) * 4 + WEST, tr + xhops(hwc, sy, sx, x) * hop, b
        m += 1
    south_end, north_end = max(y1, sy), min(y0, sy)
    for x in range(x0, x1 + 1):
        base = xhops(hwc, sy, sx, x)
        for y in range(sy, south_end):
            h = base + yhops(hwc, x, sy, y)
            rid[m], off[m], ln[m] = (y * cols + x) * 4 + SOUTH, tr + h * hop, b
            m += 1
        for y in range(sy, north_end, -1):
            h = base + yhops(hwc, x, sy, y)
            rid[m], off[m], ln[m] = (y * cols + x) * 4 + NORTH, tr + h * hop, b
            m += 1
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            if x != sx or y != sy:
                h = route_hops(hwc, sx, sy, x, y)
                rid[m], off[m], ln[m] = 5 * n + y * cols + x, tr + h * hop, b
                m += 1
    return m


@kernel(inline=True)
def fill_events(td, t, i, hwc, ex, ey, eoff):
    """Events (core x, core y, offset) of instance i, in the reference's order; a stream's
    events come `message_start_cycles` late, and each receiver's `message_receive_cycles`
    later still (event 0 is the source's, but a reduce's last event is its root's)."""
    m = _events(td, t, i, hwc, ex, ey, eoff)
    k = td[t, F_KIND]
    if k == K_COMPUTE or k == K_IO:
        return m
    for j in range(m):
        eoff[j] += hwc[H_SEND]
    if k == K_REDUCE:
        eoff[m - 1] += hwc[H_RECV]
    else:
        for j in range(1, m):
            eoff[j] += hwc[H_RECV]
    return m


@kernel(inline=True)
def _events(td, t, i, hwc, ex, ey, eoff):
    tr, hop = hwc[H_TR], hwc[H_HOP]
    k = td[t, F_KIND]
    b = td[t, F_BT]
    if k == K_COMPUTE:
        rc = td[t, F_RC]
        ex[0], ey[0] = td[t, F_RX] + i % rc, td[t, F_RY] + i // rc
        eoff[0] = compute_cycles(td, t, i)
        return 1
    if k == K_UNICAST:
        x, y, tx, ty = unicast_ends(td, t, i)
        ex[0], ey[0], eoff[0] = x, y, tr + b - 1
        h = route_hops(hwc, x, y, tx, ty)
        ex[1], ey[1], eoff[1] = tx, ty, 2 * tr + h * hop + b - 1
        return 2
    if k == K_MULTICAST or k == K_IO:
        sx, sy = td[t, F_P], td[t, F_P + 1]
        x0, y0 = td[t, F_RX], td[t, F_RY]
        m = 0
        if k == K_MULTICAST:
            ex[0], ey[0], eoff[0] = sx, sy, tr + b - 1
            m = 1
        for y in range(y0, y0 + td[t, F_RR]):
            for x in range(x0, x0 + td[t, F_RC]):
                if k == K_IO:  # P = (channel cycles, inward)
                    ex[m], ey[m] = x, y
                    eoff[m] = sx + 2 * tr + io_col(hwc, x, y) * hop if sy else sx
                    m += 1
                elif x != sx or y != sy:
                    h = route_hops(hwc, sx, sy, x, y)
                    ex[m], ey[m], eoff[m] = x, y, 2 * tr + h * hop + b - 1
                    m += 1
        return m
    x0, y0, sx, sy, cnt, _d = line(td, t, i)
    for j in range(cnt):
        ex[j], ey[j] = x0 + j * sx, y0 + j * sy
    if k == K_BCAST:
        eoff[0] = tr + b - 1
        for j in range(1, cnt):
            eoff[j] = 2 * tr + line_hops(hwc, x0, y0, sx, sy, j) * hop + b - 1
        return cnt
    pace = td[t, F_P + 2]
    stage = 2 * tr + hop + hwc[H_OP]
    eoff[0] = tr + (b - 1) * pace
    for j in range(1, cnt):
        detour = (line_hops(hwc, x0, y0, sx, sy, j) - j) * hop
        eoff[j] = j * stage + detour + (tr if j < cnt - 1 else 0) + (b - 1) * pace
    return cnt
