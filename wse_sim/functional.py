"""Functional execution of a Program: the real tensors, through the batched kernels.

`run_functional(program, hw, inputs)` executes the `DataOp` of every task in a topological
order of the task dependencies (ties broken by task index, so runs are deterministic) and
returns the final buffers. Timing is not involved: a task's data effect is applied whole.

Buffers. Every `Alloc` with a non-empty `shape` is a per-core tile array of shape
(region.rows, region.cols, *shape): float32 for fp32, uint16 bit patterns for fp16/bf16 (the
hardware's storage; arithmetic is fp32 and a result is rounded where it is stored), uint8 codes
for int8 / fp8_e4m3 / fp8_e5m2 (`wse_sim.kernels.quant`). An 8-bit tile means nothing without
its scales, which sit in an fp32 tile of their own: flows move its bytes as they are, and only
the kernels that take the scales as an input read it (`gemm` with a weight's scales,
`attn_scores` / `attn_av` with the KV cache's; docs/precision.md); decoding it anywhere else
is an error. `inputs`
pre-fills buffers by name with full per-core arrays; everything else starts at zero.

Views. A shaped Alloc of 0 bytes is a view: `program.meta["views"][name] = (arena, offset)`
places its tile at byte `offset` of the unshaped allocation named `arena` (its region covers
the view's, and offset + tile bytes fit its bytes_per_core). SRAM then counts the arena
once, and views that share bytes really overwrite each other, so a memory plan that reuses a
buffer while it is still needed computes wrong numbers. Offsets are multiples of 4.

Semantics (DataOp `kernel`, `inputs`, `output`):
- Compute, once per task over all cores of its region: the kernel `kernel` names in the
  registry of `wse_sim.kernels.registry`, where users add their own. Built in: `gemm`,
  `gemm_acc`, `add`, `copy`, `zero` (`wse_sim.kernels.basic`) and the transformer kernels
  of `wse_sim.kernels.gpt` (`norm_stats`, `norm_apply`, `rope`, `attn_scores`, ...; see
  there; `attn_scores` also appends to its KV-cache input in place).
- Unicast: the `inputs[0]` tile of every source core lands in `output` at its destination
  (offset, wrap or fixed `to`); all sources are read before any destination is written.
- Multicast: the source's tile lands in `output` at every core of the region.
- LineStream broadcast: the first core's tile lands in `output` at every core of its line
  (the first core included); reduce: the sum of the line's tiles, in stream order with fp32
  accumulation, lands in `output` at the line's last core. A reduce with parameters
  `combine="softmax"`, `heads=h` merges instead: each tile holds, per head, a partial
  attention output over disjoint keys [o (n values), m (row max), l (sum of exp)]; the
  triples are merged in stream order with the online-softmax rule (fp32) and the last core
  receives o / l, a tile with n values per head (0 for a head that saw no key); with
  `stats=name` (and `stats_offset=o`) the merged (m, l) of every head also land at the last
  core, in columns [o, o + 2 h) of tile `name` (the backward's softmax statistics). A reduce
  with `out_offset=o` delivers its (m, n) sum into columns [o, o + n) of a wider output tile.
Tasks with `data=None` are skipped. Every problem is a one-line `ProgramError`.
"""

from __future__ import annotations

import math

import numpy as np

from wse_sim import kernels as K
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.kernels import gpt as G
from wse_sim.kernels.base import use_parallel
from wse_sim.kernels.registry import get_kernel, run_kernel
from wse_sim.program import (
    Compute,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
    check_fits,
    ring_core,
    ring_position,
    topological_order,
)

DEFAULT_MAX_BYTES = 8 << 30  # 8 GiB of buffers


# Relative error (max |C - ref| / max |ref|) accepted against numpy in float64 of the
# dtype-rounded inputs. fp32: accumulation order only. fp16/bf16: products are exact in fp32,
# but partial sums a program stores in the dtype (GEMV partials, reduce streams) are rounded.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


class Buffer:
    """One shaped Alloc: a tile per core of its region."""

    __slots__ = ("name", "region", "shape", "dtype", "data")

    def __init__(self, name: str, region: Region, shape: tuple, dtype: str, data=None):
        self.name, self.region, self.shape, self.dtype = name, region, shape, dtype
        self.data = np.zeros((region.rows, region.cols, *shape), _storage(dtype)) \
            if data is None else data

    @property
    def lp(self) -> bool:
        """fp16 / bf16: uint16 bit patterns."""
        return self.dtype in LP_DTYPES

    @property
    def q8(self) -> bool:
        """int8 / fp8: uint8 codes, scaled by a separate fp32 tile."""
        return self.dtype in Q8_DTYPES

    def _no_q8(self, what: str) -> None:
        if self.q8:
            raise ProgramError(f"buffer {self.name!r} holds {self.dtype} codes, which only a "
                               f"kernel given their scales can {what} (gemm, attn_scores, "
                               "attn_av)")

    def rel(self, xs: np.ndarray, ys: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Indices into `data` of cores (xs, ys); a core outside the region is an error."""
        r = self.region
        bad = (xs < r.x) | (xs > r.x1) | (ys < r.y) | (ys > r.y1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ProgramError(f"{what}: buffer {self.name!r} has no tile at core "
                               f"({int(xs[i])},{int(ys[i])}); it lives on {r}")
        return ys - r.y, xs - r.x

    def block(self, reg: Region, what: str) -> np.ndarray:
        """View of the tiles of a sub-region (rows, cols, *shape)."""
        r = self.region
        if not (r.contains(reg.x, reg.y) and r.contains(reg.x1, reg.y1)):
            raise ProgramError(f"{what}: buffer {self.name!r} lives on {r}, which does not "
                               f"cover {reg}")
        return self.data[reg.y - r.y:reg.y1 - r.y + 1, reg.x - r.x:reg.x1 - r.x + 1]

    def as_f32(self, tiles: np.ndarray) -> np.ndarray:
        self._no_q8("decode")
        if self.lp:
            return K.from_bits(np.ascontiguousarray(tiles), self.dtype, parallel=use_parallel(tiles.size))
        return np.ascontiguousarray(tiles, dtype=np.float32)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """fp32 values -> this buffer's storage (rounded to nearest even for fp16/bf16)."""
        self._no_q8("encode")
        values = np.ascontiguousarray(values, dtype=np.float32)
        if not self.lp:
            return values
        return K.to_bits(values, self.dtype, parallel=use_parallel(values.size))


LP_DTYPES = ("fp16", "bf16")
Q8_DTYPES = ("int8", "fp8_e4m3", "fp8_e5m2")


def _storage(dtype: str):
    if dtype in Q8_DTYPES:
        return np.uint8
    return np.float32 if dtype == "fp32" else np.uint16


def _views(program: Program) -> dict:
    return dict((program.meta or {}).get("views") or {})


def estimate_bytes(program: Program) -> int:
    """Host bytes of every shaped buffer of a functional run (views: their arenas)."""
    views = _views(program)
    arenas = {arena for arena, _ in views.values()}
    total = 0
    for a in program.allocs:
        if a.name in arenas:
            total += a.region.size * -(-a.bytes_per_core // 8) * 8
        elif a.shape and a.name not in views:
            total += a.region.size * math.prod(a.shape) * DTYPE_BYTES.get(a.dtype, 4)
    return total


def _view(a, arena, offset, store: dict, what: str) -> np.ndarray:
    """The per-core array of view `a` inside `arena` (bytes shared with the arena's storage)."""
    r, ar = a.region, arena.region
    nbytes = math.prod(a.shape) * DTYPE_BYTES[a.dtype]
    if not (ar.contains(r.x, r.y) and ar.contains(r.x1, r.y1)):
        raise ProgramError(f"{what}: view on {r} is outside its arena {arena.name!r} on {ar}")
    if not isinstance(offset, int) or offset < 0 or offset % 4 or \
            offset + nbytes > arena.bytes_per_core:
        raise ProgramError(f"{what}: a {nbytes}-byte tile at offset {offset!r} does not fit the "
                           f"{arena.bytes_per_core} bytes of {arena.name!r} (offsets are "
                           "multiples of 4)")
    if arena.name not in store:
        store[arena.name] = np.zeros((ar.rows, ar.cols, -(-arena.bytes_per_core // 8) * 8),
                                     np.uint8)
    raw = store[arena.name][r.y - ar.y:r.y1 - ar.y + 1, r.x - ar.x:r.x1 - ar.x + 1,
                            offset:offset + nbytes]
    return raw.view(_storage(a.dtype)).reshape(r.rows, r.cols, *a.shape)


def make_buffers(program: Program, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Buffer]:
    """Check the shaped allocations and allocate them (zeroed)."""
    need = estimate_bytes(program)
    if need > max_bytes:
        raise ProgramError(f"functional run needs about {need:,} bytes ({need / 2**30:.3g} GiB) "
                           f"of buffers > the limit of {max_bytes:,} bytes "
                           f"({max_bytes / 2**30:.3g} GiB); use a smaller problem or raise "
                           "max_bytes")
    views = _views(program)
    by_name = {a.name: a for a in program.allocs}
    store: dict[str, np.ndarray] = {}
    bufs: dict[str, Buffer] = {}
    for a in program.allocs:
        if not a.shape:
            continue
        if a.name in bufs:
            raise ProgramError(f"buffer {a.name!r}: declared twice with a shape; a functional "
                               "run needs one Alloc per named tile")
        if a.dtype not in DTYPE_BYTES:
            raise ProgramError(f"buffer {a.name!r}: dtype {a.dtype!r} is not one of "
                               f"{', '.join(DTYPE_BYTES)}")
        shape = tuple(int(s) for s in a.shape)
        if any(s < 1 for s in shape):
            raise ProgramError(f"buffer {a.name!r}: shape {shape} must have sizes >= 1")
        tile = math.prod(shape) * DTYPE_BYTES[a.dtype]
        data = None
        if a.bytes_per_core == 0 and a.name in views:
            arena, offset = views[a.name]
            if arena not in by_name or by_name[arena].shape:
                raise ProgramError(f"view {a.name!r}: its arena {arena!r} is not an unshaped "
                                   "allocation")
            data = _view(a, by_name[arena], offset, store, f"view {a.name!r}")
        elif tile > a.bytes_per_core:
            raise ProgramError(f"buffer {a.name!r}: a {shape} {a.dtype} tile is {tile} bytes "
                               f"> its bytes_per_core {a.bytes_per_core} (SRAM counts real bytes)")
        bufs[a.name] = Buffer(a.name, a.region, shape, a.dtype, data)
    return bufs


def _fill(bufs: dict[str, Buffer], inputs: dict) -> None:
    for name, arr in (inputs or {}).items():
        if name not in bufs:
            raise ProgramError(f"inputs: no shaped buffer named {name!r} (known: "
                               f"{', '.join(sorted(bufs)) or 'none'})")
        b = bufs[name]
        arr = np.asarray(arr)
        if arr.shape != b.data.shape:
            raise ProgramError(f"inputs[{name!r}]: shape {arr.shape}, expected {b.data.shape} "
                               "(rows, cols, *tile)")
        if b.q8:
            if arr.dtype != np.uint8:
                raise ProgramError(f"inputs[{name!r}]: a {b.dtype} buffer takes uint8 codes, got "
                                   f"{arr.dtype} (quantize with wse_sim.kernels.quantize)")
            b.data[...] = arr
        elif b.lp and arr.dtype == np.uint16:
            b.data[...] = arr
        elif arr.dtype.kind in "fiu" and arr.dtype != np.uint16:
            b.data[...] = b.encode(arr.astype(np.float32))
        else:
            raise ProgramError(f"inputs[{name!r}]: dtype {arr.dtype} does not fit a "
                               f"{b.dtype} buffer (give floats, or uint16 bits for fp16/bf16)")


class _Runner:
    def __init__(self, program: Program, bufs: dict[str, Buffer]):
        self.program, self.bufs = program, bufs

    def buf(self, name: str, what: str) -> Buffer:
        try:
            return self.bufs[name]
        except KeyError:
            raise ProgramError(f"{what}: DataOp names buffer {name!r}, which no Alloc with a "
                               f"shape declares (known: {', '.join(sorted(self.bufs)) or 'none'})"
                               ) from None

    def run(self, i: int) -> None:
        t = self.program.tasks[i]
        d = t.data
        what = f"task {i} ({t.op})"
        if isinstance(t, Compute):
            self.compute(t, d, what)
            return
        if isinstance(t, IoTransfer):
            raise ProgramError(f"{what}: functional IoTransfer is not supported")
        if len(d.inputs) != 1 or not d.output:
            raise ProgramError(f"{what}: a flow's DataOp needs one input and an output, got "
                               f"inputs {d.inputs!r} output {d.output!r}")
        src, dst = self.buf(d.inputs[0], what), self.buf(d.output, what)
        combine = d.param("combine")
        if combine is not None:
            if not (isinstance(t, LineStream) and t.reduce) or combine != "softmax":
                raise ProgramError(f"{what}: combine={combine!r} needs a reduce LineStream and "
                                   "'softmax'")
            self.combine(t, src, dst, int(d.param("heads", 1)), what, d)
            return
        off = d.param("out_offset")
        if off is not None and isinstance(t, LineStream) and t.reduce:
            self.reduce(t, src, dst, what, int(off))
            return
        if d.param("gather") or d.param("scatter"):
            if not isinstance(t, LineStream) or t.reduce != bool(d.param("gather")):
                raise ProgramError(f"{what}: gather needs a reduce LineStream, scatter a "
                                   "broadcast one")
            (self.gather if t.reduce else self.scatter)(t, src, dst, what, d)
            return
        if src.shape != dst.shape or src.dtype != dst.dtype:
            raise ProgramError(f"{what}: moves {src.name!r} {src.shape} {src.dtype} into "
                               f"{dst.name!r} {dst.shape} {dst.dtype}; tiles must match")
        tile_bytes = math.prod(src.shape) * DTYPE_BYTES[src.dtype]
        if tile_bytes > 4 * t.wavelets:
            raise ProgramError(f"{what}: its tile of {tile_bytes} bytes needs "
                               f"{-(-tile_bytes // 4)} wavelets, the task carries {t.wavelets}")
        if isinstance(t, Unicast):
            self.unicast(t, src, dst, what)
        elif isinstance(t, Multicast):
            sx, sy = (np.array([v]) for v in t.src)
            tile = src.data[src.rel(sx, sy, what)][0].copy()
            dst.block(t.region, what)[...] = tile
        elif t.reduce:
            self.reduce(t, src, dst, what)
        else:
            self.broadcast(t, src, dst, what)

    # ---- flows -----------------------------------------------------------------------------
    def unicast(self, t: Unicast, src: Buffer, dst: Buffer, what: str) -> None:
        r = t.region
        ys, xs = np.mgrid[r.y:r.y1 + 1, r.x:r.x1 + 1]
        xs, ys = xs.ravel(), ys.ravel()
        if t.ring == "x":
            tx, ty = r.x + ring_core(ring_position(xs - r.x, r.cols) + t.dx, r.cols), ys
        elif t.ring == "y":
            tx, ty = xs, r.y + ring_core(ring_position(ys - r.y, r.rows) + t.dy, r.rows)
        elif t.to is not None:
            tx, ty = np.full_like(xs, int(t.to[0])), np.full_like(ys, int(t.to[1]))
        elif t.wrap:
            tx = r.x + (xs - r.x + t.dx) % r.cols
            ty = r.y + (ys - r.y + t.dy) % r.rows
        else:
            tx, ty = xs + t.dx, ys + t.dy
        tiles = src.data[src.rel(xs, ys, what)]  # fancy indexing: a copy, read before writing
        dst.data[dst.rel(tx, ty, what)] = tiles

    def _lines(self, t: LineStream, buf: Buffer, what: str) -> np.ndarray:
        """Tiles as (position along the line in stream order, line, *shape)."""
        blk = buf.block(t.region, what)
        lines = blk if t.axis == "y" else np.swapaxes(blk, 0, 1)  # (along, across, ...)
        return lines if t.direction > 0 else lines[::-1]

    def broadcast(self, t: LineStream, src: Buffer, dst: Buffer, what: str) -> None:
        first = self._lines(t, src, what)[0].copy()
        out = self._lines(t, dst, what)
        out[...] = first[None]

    def reduce(self, t: LineStream, src: Buffer, dst: Buffer, what: str,
               offset: int | None = None) -> None:
        tiles = self._lines(t, src, what)
        if offset is not None:
            tile_bytes = math.prod(src.shape) * DTYPE_BYTES[src.dtype]
            if len(src.shape) != 2 or len(dst.shape) != 2 or src.shape[0] != dst.shape[0] or \
                    not 0 <= offset <= dst.shape[1] - src.shape[1] or src.dtype != dst.dtype \
                    or tile_bytes > 4 * t.wavelets:
                raise ProgramError(f"{what}: reduce of {src.name!r} {src.shape} {src.dtype} "
                                   f"into columns {offset}.. of {dst.name!r} {dst.shape} "
                                   f"{dst.dtype} ({t.wavelets} wavelets)")
        vals = src.as_f32(tiles)
        total = K.sum_tiles(vals, axis=0, parallel=use_parallel(vals.size))  # ((x0 + x1) + x2) + ...
        last = self._lines(t, dst, what)[-1]
        if offset is None:
            last[...] = dst.encode(total)
        else:
            last[..., offset:offset + src.shape[1]] = dst.encode(total)

    def _carries(self, t, buf: Buffer, what: str) -> None:
        tile_bytes = math.prod(buf.shape) * DTYPE_BYTES[buf.dtype]
        if tile_bytes > 4 * t.wavelets:
            raise ProgramError(f"{what}: its tile of {tile_bytes} bytes needs "
                               f"{-(-tile_bytes // 4)} wavelets, the task carries {t.wavelets}")

    def gather(self, t: LineStream, src: Buffer, dst: Buffer, what: str, d) -> None:
        """The line's (..., w) tiles side by side in region order (first core's first) land
        in the last core's (..., n) tile: its first n of the L w columns, zeros past them."""
        self._carries(t, dst, what)
        blk = src.block(t.region, what)
        tiles = blk if t.axis == "y" else np.swapaxes(blk, 0, 1)  # (along, across, ...)
        L, w, n = tiles.shape[0], src.shape[-1], dst.shape[-1]
        if src.shape[:-1] != dst.shape[:-1] or src.dtype != dst.dtype or n > L * w:
            raise ProgramError(f"{what}: gather of {L} tiles {src.name!r} {src.shape} "
                               f"{src.dtype} into {dst.name!r} {dst.shape} {dst.dtype}")
        side = np.moveaxis(np.array(src.as_f32(tiles)), 0, -2)  # (across, ..., L, w)
        side = side.reshape(*side.shape[:-2], L * w)[..., :n]
        self._lines(t, dst, what)[-1] = dst.encode(side)

    def scatter(self, t: LineStream, src: Buffer, dst: Buffer, what: str, d) -> None:
        """A broadcast of the first core's (..., n) tile of which the core at position i of
        the line in region order keeps columns [i w, (i + 1) w) (`scatter` = w; zeros past
        n)."""
        self._carries(t, src, what)
        w = int(d.param("scatter"))
        first = np.array(src.as_f32(self._lines(t, src, what)[0]))  # (across, ..., n)
        L = t.length
        if src.shape[:-1] != dst.shape[:-1] or dst.shape[-1] != w or src.dtype != dst.dtype \
                or src.shape[-1] > L * w:
            raise ProgramError(f"{what}: scatter of {src.name!r} {src.shape} {src.dtype} in "
                               f"slices of {w} to {L} tiles {dst.name!r} {dst.shape} {dst.dtype}")
        pad = np.zeros((*first.shape[:-1], L * w), np.float32)
        pad[..., :first.shape[-1]] = first
        parts = np.moveaxis(pad.reshape(*first.shape[:-1], L, w), -2, 0)  # (L, across, ..., w)
        blk = dst.block(t.region, what)
        out = blk if t.axis == "y" else np.swapaxes(blk, 0, 1)
        out[...] = dst.encode(parts)

    def combine(self, t: LineStream, src: Buffer, dst: Buffer, heads: int, what: str,
                d=None) -> None:
        self._carries(t, src, what)
        if d is not None and d.param("partial"):
            if dst.shape != src.shape or src.dtype != dst.dtype:
                raise ProgramError(f"{what}: partial combine of {src.name!r} {src.shape} into "
                                   f"{dst.name!r} {dst.shape}; tiles must match")
            vals = np.array(src.as_f32(self._lines(t, src, what)))
            self._lines(t, dst, what)[-1] = dst.encode(G.combine_softmax_partial(vals, heads,
                                                                                 what))
            return
        want = (*src.shape[:-1], src.shape[-1] - 2 * heads)
        if dst.shape != want or src.dtype != dst.dtype:
            raise ProgramError(f"{what}: combine of {src.name!r} {src.shape} {src.dtype} into "
                               f"{dst.name!r} {dst.shape} {dst.dtype}; expected {want}")
        vals = np.array(src.as_f32(self._lines(t, src, what)))  # a copy: dst may share bytes
        stats = d.param("stats") if d is not None else None
        if stats is None:
            self._lines(t, dst, what)[-1] = dst.encode(G.combine_softmax(vals, heads, what))
            return
        res, ml = G.combine_softmax_stats(vals, heads, what)
        self._lines(t, dst, what)[-1] = dst.encode(res)
        sb, off = self.buf(stats, what), int(d.param("stats_offset", 0))
        if len(sb.shape) != 2 or sb.shape[0] != dst.shape[0] or \
                not 0 <= off <= sb.shape[1] - 2 * heads:
            raise ProgramError(f"{what}: softmax stats of {heads} heads do not fit columns "
                               f"{off}.. of {sb.name!r} {sb.shape}")
        last = self._lines(t, sb, what)[-1]
        last[..., off:off + 2 * heads] = sb.encode(ml.reshape(*ml.shape[:-2], 2 * heads))

    # ---- compute ---------------------------------------------------------------------------
    def compute(self, t: Compute, d, what: str) -> None:
        """The kernel `d.kernel` names in the registry (`wse_sim.kernels.registry`)."""
        get_kernel(d.kernel, what)
        if not d.output:
            raise ProgramError(f"{what}: DataOp has no output buffer")
        out = self.buf(d.output, what)
        ins = [self.buf(n, what) for n in d.inputs]
        run_kernel(t, out, ins, what)


def validate_data(program: Program, bufs: dict[str, Buffer]) -> None:
    """Every kernel is known and every buffer a DataOp names exists (before anything runs)."""
    for i, t in enumerate(program.tasks):
        d = t.data
        if d is None:
            continue
        if isinstance(t, Compute):
            get_kernel(d.kernel, f"task {i} ({t.op})")
        for name in (*d.inputs, d.output):
            if name and name not in bufs:
                raise ProgramError(f"task {i} ({t.op}): DataOp names buffer {name!r}, which no "
                                   f"Alloc with a shape declares (known: "
                                   f"{', '.join(sorted(bufs)) or 'none'})")


def run_functional(program: Program, hw: HardwareConfig, inputs: dict | None = None, *,
                   max_bytes: int = DEFAULT_MAX_BYTES, check: bool = True) -> dict[str, np.ndarray]:
    """Execute the DataOps of `program`; return {buffer name: per-core array}.

    `inputs` pre-fills buffers (full (rows, cols, *tile) arrays; floats are rounded into
    fp16/bf16 buffers, uint16 arrays are taken as bit patterns). With `check` the program is
    first checked against `hw` (regions, SRAM and colors, as the engines do). Buffers above
    `max_bytes` in total are refused before anything is allocated.
    """
    if check:
        check_fits(program, hw)
    bufs = make_buffers(program, max_bytes)
    validate_data(program, bufs)
    _fill(bufs, inputs)
    runner = _Runner(program, bufs)
    for i in topological_order(program):
        if program.tasks[i].data is not None:
            runner.run(i)
    return {name: b.data for name, b in bufs.items()}


def decode(program: Program, buffers: dict, name: str) -> np.ndarray:
    """A buffer's per-core array as float32 values (fp16/bf16 bit patterns decoded)."""
    for a in program.allocs:
        if a.name == name and a.shape:
            arr = buffers[name]
            if a.dtype in Q8_DTYPES:
                raise ProgramError(f"buffer {name!r} holds {a.dtype} codes; decode them with "
                                   "their scales (wse_sim.kernels.dequantize)")
            return K.from_bits(np.ascontiguousarray(arr), a.dtype) if a.dtype != "fp32" \
                else np.asarray(arr, np.float32)
    raise ProgramError(f"no shaped buffer named {name!r}")


def error_report(result: np.ndarray, reference: np.ndarray, dtype: str,
                 tolerance: float | None = None) -> dict:
    """Compare a functional result with a float64 reference: max absolute error, relative error
    max |result - ref| / max |ref|, and whether it is within the dtype's tolerance."""
    result = np.asarray(result, np.float64)
    reference = np.asarray(reference, np.float64)
    if result.shape != reference.shape:
        raise ProgramError(f"functional result has shape {result.shape}, reference "
                           f"{reference.shape}")
    tol = TOLERANCE[dtype] if tolerance is None else tolerance
    err = float(np.max(np.abs(result - reference))) if result.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    rel = err / scale if scale > 0 else err
    ok = bool(np.all(np.isfinite(result))) and rel <= tol
    return {"checked_against": "numpy", "max_abs_error": err, "max_rel_error": rel,
            "tolerance": tol, "ok": ok}
