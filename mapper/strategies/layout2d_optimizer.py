"""Where a 2-D weight-streaming training step runs its optimizer (issue 18 item 2).

- `offwafer` (the default; how a wafer trains with weight streaming: Cerebras' MemoryX): each
  micro-batch streams every layer's weight gradients out (in the activations' dtype); the host,
  where the weights and Adam's state live, accumulates them and runs the update. Its FLOPs are
  the result's `offwafer_flops`.
- `onwafer`: the layers' updates run on the wafer. A layer's fp32 gradients stay in SRAM
  (accumulated over the micro-batches: with more than one, every layer's); after the last
  micro-batch's backward of layer i, its Adam state (fp32 master weights and both moments,
  `ADAM_STATE_BYTES` per parameter) streams in, every core of the region updates its tiles
  (the graph's `L{i}.*.adam` ops: 10 FLOPs per parameter, fp32) and the state streams back out.
  Per parameter that is 24 bytes over the I/O instead of the gradient's 2 (fp16); whether
  that costs time depends on what paces the step (docs/strategies.md). The embedding table,
  the final norm and an untied LM head keep their update off the wafer (their gradients stream
  out as before; the table's is a scatter over the step's tokens).

Functional runs (`onwafer`): each layer's state is one fp32 tile per projection, [w | m | v]
side by side in the layout of its `tn` gradient accumulator (`mapper.gemm_transposed`), and
one for its norms' gains (and biases) beside their gradient tiles; the `L{i}.w_q.adam` record
updates the Q|K|V tile (`w_k`, `w_v` carry no data: their values are in it), `w_up` the
up | gate tile, `small` the gains. The master weights are the model's, the moments random; the
check compares each updated weight with numpy's Adam (`ADAM`, float64) on the reference
gradients (`adam_check`).
"""

from __future__ import annotations

import math

import numpy as np

from mapper.gemm_common import ring_order
from workloads.graph import ADAM_STATE_BYTES, FLOPS_PER_ELEMENT

OPTIMIZERS = ("offwafer", "onwafer")
# the functional check's hyperparameters (timing does not depend on them): a second step, so
# that the bias corrections and the moments carried in both act, and a large rate, so that the
# update (about lr per weight) stands well above the fp32 rounding of the weights it changes
ADAM = {"lr": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "step": 2}
LABEL_OF = {"w_q": "qkv_proj", "w_o": "o_proj", "w_up": "ffn_up", "w_down": "ffn_down",
            "small": "small"}  # the graph op whose record updates each state tile


def layer_updates(ops: dict, layer: int) -> list[str]:
    """The graph's optimizer ops of one layer (its matrices', then its norms' and biases')."""
    return [n for n, op in ops.items() if op.kind == "optimizer" and op.layer == layer]


def layer_params(ops: dict, layer: int) -> int:
    """Parameters one layer's optimizer ops update (the graph's FLOPs / 10 per parameter)."""
    per = FLOPS_PER_ELEMENT["optimizer"]
    return sum(int(ops[n].flops) for n in layer_updates(ops, layer)) // per


def offwafer_flops(ops: dict, optimizer: str) -> int:
    """The optimizer FLOPs run off the wafer: all of them, or (`onwafer`) those of the ops
    outside the layers (embedding table, final norm, untied LM head)."""
    return sum(int(op.flops) for op in ops.values() if op.kind == "optimizer"
               and (optimizer == "offwafer" or op.layer is None))


def buffers(cfg, P: int, per_layer_tiles: int, optimizer: str, micro_batches: int) -> dict:
    """SRAM bytes per core the optimizer's place adds: `onwafer`, one layer's Adam state
    (master weights and moments of its tiles, and of its norms' and biases' share) and, with
    several micro-batches, every layer's fp32 gradient accumulator instead of one layer's
    (`weight_grads`, which the caller keeps)."""
    if optimizer == "offwafer":
        return {}
    small = max(math.ceil(cfg.layer_small_params(i) / (P * P)) for i in range(cfg.n_layers))
    out = {"optimizer_state": (per_layer_tiles + small) * ADAM_STATE_BYTES}
    if micro_batches > 1:  # the other layers' accumulators (the caller counts one)
        out["grad_accumulators"] = (cfg.n_layers - 1) * per_layer_tiles * 4
    return out


def update_layer(tr, xfer, i: int, after: tuple) -> tuple:
    """Layer i's on-wafer update once its backward is done (`after`: its gradients' and
    dX's records): its Adam state in, the update on every core, the state out (the I/O
    transfers in the channel's order, `xfer`). Returns what the next layer's backward waits
    for: each core updates before it goes on, so that every core's records keep the
    program's order in time (the fast engine's step path needs it; see
    docs/strategies.md)."""
    params = layer_params(tr.tp.ops, i)
    st = xfer(f"L{i}.adam_state.in", ADAM_STATE_BYTES * params, "in", ())
    dep = tuple(after) + st
    data = adam_data(tr.fd, i) if tr.fd is not None else {}
    for name in layer_updates(tr.tp.ops, i):
        dep = (tr.tp.compute(name, tr.reg, dep, fmac=False, flops=int(tr.tp.ops[name].flops),
                             data=data.get(name)),)
    xfer(f"L{i}.adam_state.out", ADAM_STATE_BYTES * params, "out", dep)
    return dep


# ---- functional runs ----------------------------------------------------------------------------

def _adam(call):
    """[w | m | v] (the last input) after one Adam step on the gradient tiles (the inputs
    before it, side by side)."""
    *grads, state = call.inputs
    g = np.concatenate(grads, axis=-1).astype(np.float64)
    n = g.shape[-1]
    w, m, v = (state[..., k * n:(k + 1) * n].astype(np.float64) for k in range(3))
    return np.concatenate(adam_step(w, g, m, v, call.params), axis=-1)


def adam_step(w, g, m, v, p: dict) -> tuple:
    """(w, m, v) after one Adam step (`p`: lr, b1, b2, eps, step)."""
    m = p["b1"] * m + (1 - p["b1"]) * g
    v = p["b2"] * v + (1 - p["b2"]) * g * g
    mh, vh = m / (1 - p["b1"] ** p["step"]), v / (1 - p["b2"] ** p["step"])
    return w - p["lr"] * mh / (np.sqrt(vh) + p["eps"]), m, v


def register_kernels() -> None:
    from wse_sim.kernels.registry import register_kernel
    register_kernel("l2t_adam", _adam, replace=True)


def state_tiles(fd) -> dict:
    """(name: (rows, cols, dtype)) of the optimizer state tiles of a functional step."""
    t, g = fd.t, (1 if fd.rms else 2)
    widths = t.weights() | {"small": (g, 2 * t.d)}
    return {f"L{i}.{label}.adam": (a, 3 * b, "fp32") for i in range(fd.cfg.n_layers)
            for label, (a, b) in widths.items()}


def adam_data(fd, i: int) -> dict:
    """Layer i's update records' DataOps (by graph op name)."""
    from mapper.strategies.layout2d_data import dataop
    q = (fd.P - 1) % 2  # the accumulator a `tn` product ends in
    out = {}
    for w, label in LABEL_OF.items():
        grads = (f"L{i}.gg1", f"L{i}.gg2") if label == "small" else (f"L{i}.{label}.dw{q}",)
        out[f"L{i}.{w}.adam"] = dataop("l2t_adam", grads + (f"L{i}.{label}.adam",),
                                       f"L{i}.{label}.adam", **ADAM)
    return out


def _tn_tiles(c: np.ndarray, P: int, rt: int, ct: int) -> np.ndarray:
    """The inverse of `gemm_transposed.tn_result`: C's tiles as a `tn` accumulator holds
    them ([y, x]: C(o[m], o[lx]) on logical (lx, m - lx + 1))."""
    pad = np.zeros((P * rt, P * ct), np.float32)
    pad[:c.shape[0], :c.shape[1]] = c
    blocks = pad.reshape(P, rt, P, ct).transpose(0, 2, 1, 3)  # [row block, column block]
    o = np.array(ring_order(P))
    m, lx = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    tiles = np.empty_like(blocks)
    tiles[o[(m - lx + 1) % P], o[lx]] = blocks[o[m], o[lx]]
    return tiles


def _norm_parts(cfg, w: dict, i: int) -> np.ndarray:
    """Layer i's gains (and biases): (parts, 2, d_model), ln1 then ln2."""
    names = ("_g",) if cfg.norm == "rmsnorm" else ("_g", "_b")
    return np.stack([np.stack([np.asarray(w[f"L{i}.{ln}{n}"]) for ln in ("ln1", "ln2")])
                     for n in names])


def _norm_tiles(v: np.ndarray, P: int, d_t: int) -> np.ndarray:
    """(parts, 2, d) as every core's [ln1 block x | ln2 block x] tile, (P, P, parts, 2 d_t)."""
    parts = v.shape[0]
    pad = np.zeros((parts, 2, P * d_t), np.float32)
    pad[..., :v.shape[-1]] = v
    blk = pad.reshape(parts, 2, P, d_t).transpose(2, 0, 1, 3).reshape(P, parts, 2 * d_t)
    return np.broadcast_to(blk[None], (P, P, parts, 2 * d_t)).copy()


def _layer_state(cfg, w: dict, i: int, t: dict, P: int) -> dict:
    """Layer i's state matrices by tile label, each with its tile shape (rt, ct)."""
    from mapper.strategies.layout2d_data import layer_matrices
    out = {}
    for label, m in layer_matrices(cfg, w, i, t["ffn_k"], P).items():
        ct = t["ffn"] if label == "ffn_up" else math.ceil(m.shape[1] / P)
        out[label] = (np.asarray(m, np.float64), (math.ceil(m.shape[0] / P), ct))
    out["small"] = (_norm_parts(cfg, w, i).astype(np.float64), None)
    return out


def _tiles_of(label: str, m: np.ndarray, shape, P: int, d_t: int) -> np.ndarray:
    return _norm_tiles(m, P, d_t) if label == "small" else _tn_tiles(m, P, *shape)


def adam_inputs(program, cfg, weights: dict, grads: dict, seed: int = 0) -> tuple[dict, dict]:
    """(the state tiles a functional step starts from, {(layer, label): (w, m, v)} float64):
    the model's weights as the master copy, moments drawn at the gradients' scale."""
    t, P = program.meta["tiles"], program.meta["region_cols"]
    rng = np.random.default_rng(seed + 1)
    tiles, held = {}, {}
    for i in range(cfg.n_layers):
        gs = _layer_state(cfg, grads, i, t, P)
        for label, (w, shape) in _layer_state(cfg, weights, i, t, P).items():
            scale = float(np.std(gs[label][0])) or 1.0
            m = rng.normal(0.0, scale, w.shape)
            v = rng.uniform(0.5, 2.0, w.shape) * scale * scale
            wmv = [x.astype(np.float32) for x in (w, m, v)]  # as the fp32 tiles hold them
            tiles[f"L{i}.{label}.adam"] = np.concatenate(
                [_tiles_of(label, x, shape, P, t["d_model"]) for x in wmv], axis=-1)
            held[(i, label)] = tuple(x.astype(np.float64) for x in wmv)
    return tiles, held


def adam_check(program, buffers: dict, cfg, grads: dict, held: dict) -> list[dict]:
    """Each state tile's updated weights against numpy's Adam on the reference gradients
    (the update w' - w compared, `functional.error_report`)."""
    from mapper.gemm_transposed import tn_result
    from mapper.strategies.functional_model import decode
    from wse_sim.functional import error_report
    t, P = program.meta["tiles"], program.meta["region_cols"]
    out = []
    for i in range(cfg.n_layers):
        for label, (g, shape) in _layer_state(cfg, grads, i, t, P).items():
            w, m, v = held[(i, label)]
            want = adam_step(w, g, m, v, ADAM)[0]
            tile = decode(program, buffers, f"L{i}.{label}.adam")
            if label == "small":  # row 0 holds the gains' gradients
                n = tile.shape[-1] // 3
                got = tile[0, :, :, :n].reshape(P, -1, 2, n // 2).transpose(1, 2, 0, 3)
                got = got.reshape(*w.shape[:2], -1)[..., :w.shape[-1]]
            else:
                got = tn_result(tile[..., :shape[1]], *w.shape)
            out.append(error_report(got - w, want - w, program.dtype)
                       | {"update": f"L{i}.{label}"})
    return out
