"""Compute kernels of functional runs by name: what `DataOp.kernel` of a `Compute` looks up.

A kernel runs once per task, over every core of the task's region at once. Two forms:

- **array kernel** (`register_kernel(name, fn)`, the one for users): `fn(call)` gets a
  `KernelCall` and returns the new tiles of the output buffer as an array shaped
  (region.rows, region.cols, *tile). `call.inputs[i][r, c]` is the tile of the i-th DataOp
  input held by core (region.x + c, region.y + r), as float32 values (fp16/bf16 buffers are
  decoded; a copy, so writing to it changes nothing; an 8-bit buffer of codes is an error, as
  its scales are another buffer); `call.out` is the output's current
  tiles, the same way (for a kernel that accumulates); `call.params` the DataOp's params.
  The result is rounded into the output buffer's dtype where it is stored. Inside, use
  numpy, or call a numba function on the arrays.
- **buffer kernel** (`raw=True`, the built-in ones): `fn(task, out, inputs, what)` reads and
  writes the `wse_sim.functional.Buffer`s itself (`buf.block(region, what)` is the view of the
  region's tiles, `as_f32` / `encode` convert). `what` ("task 3 (op)") starts every error.

Built in: `gemm`, `gemm_acc`, `add`, `copy`, `zero` (`wse_sim.kernels.basic`) and the
transformer kernels (`wse_sim.kernels.gpt`), registered here the same way. Timing never
looks at a kernel: the Compute record's FLOPs and bytes give its cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wse_sim.program import Compute, ProgramError


@dataclass(frozen=True)
class KernelCall:
    """What an array kernel sees: one task's data on every core of its region."""

    task: Compute
    inputs: tuple            # float32 arrays (rows, cols, *tile), one per DataOp input
    out: np.ndarray          # float32 (rows, cols, *tile): the output buffer's current tiles
    params: dict = field(default_factory=dict)
    what: str = ""

    @property
    def region(self):
        return self.task.region

    def cores(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every core, two (rows, cols) integer arrays."""
        r = self.region
        ys, xs = np.mgrid[r.y:r.y1 + 1, r.x:r.x1 + 1]
        return xs, ys


@dataclass(frozen=True)
class Kernel:
    name: str
    fn: Callable
    raw: bool = False


_KERNELS: dict[str, Kernel] = {}
_BUILTINS: list[bool] = [False]


def _load_builtins() -> None:
    """Register the built-in kernels once (lazily: they import `wse_sim.functional`)."""
    if _BUILTINS[0]:
        return
    _BUILTINS[0] = True
    from wse_sim.kernels import basic, gpt
    for name, fn in basic.KERNELS.items():
        _KERNELS.setdefault(name, Kernel(name, fn, raw=True))
    for name, fn in gpt.KERNELS.items():
        _KERNELS.setdefault(name, Kernel(name, _region_form(fn), raw=True))


def _region_form(fn: Callable) -> Callable:
    """A transformer kernel takes (region, DataOp, out, inputs, what)."""
    def run(task, out, ins, what):
        return fn(task.region, task.data, out, ins, what)
    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "kernel")
    run.__doc__ = fn.__doc__
    return run


def register_kernel(name: str, fn: Callable | None = None, *, raw: bool = False,
                    replace: bool = False):
    """Add kernel `fn` under `name` (usable as a decorator: `@register_kernel("mine")`).
    `raw`: a buffer kernel (see the module docstring). A name already taken is an error
    unless `replace`."""
    if fn is None:
        return lambda f: register_kernel(name, f, raw=raw, replace=replace)
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ProgramError(f"register_kernel name: got {name!r}, must be a non-empty name "
                           "without surrounding spaces")
    if not callable(fn):
        raise ProgramError(f"register_kernel {name!r}: fn got {fn!r}, must be callable")
    _load_builtins()
    if name in _KERNELS and not replace:
        raise ProgramError(f"register_kernel {name!r}: the name is taken; pass replace=True "
                           "to replace it")
    _KERNELS[name] = Kernel(name, fn, bool(raw))
    return fn


def unregister_kernel(name: str) -> None:
    """Remove kernel `name` (e.g. a test's); an unknown name is an error."""
    _load_builtins()
    if name not in _KERNELS:
        raise ProgramError(f"unregister_kernel: no kernel named {name!r}")
    del _KERNELS[name]


def kernel_names() -> tuple[str, ...]:
    """Every registered kernel, built-in ones first."""
    _load_builtins()
    return tuple(_KERNELS)


def get_kernel(name: str, what: str) -> Kernel:
    """The kernel `name`; an unknown name is a one-line ProgramError listing the known."""
    _load_builtins()
    try:
        return _KERNELS[name]
    except (KeyError, TypeError):
        raise ProgramError(f"{what}: kernel {name!r} is not one of {', '.join(_KERNELS)} "
                           "(add one with wse_sim.kernels.registry.register_kernel)") from None


def run_kernel(task: Compute, out, ins: list, what: str) -> None:
    """Run the kernel that `task.data.kernel` names on the task's region."""
    k = get_kernel(task.data.kernel, what)
    if k.raw:
        k.fn(task, out, ins, what)
        return
    reg = task.region
    vals = tuple(np.array(b.as_f32(b.block(reg, what)), np.float32) for b in ins)
    cur = np.array(out.as_f32(out.block(reg, what)), np.float32)
    call = KernelCall(task, vals, cur, dict(task.data.params), what)
    try:
        res = k.fn(call)
    except ProgramError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's kernel: one line that names it
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ProgramError(f"{what}: kernel {k.name!r} failed: {type(e).__name__}: {msg}") from e
    want = (reg.rows, reg.cols, *out.shape)
    try:
        res = np.asarray(res, np.float32)
    except (TypeError, ValueError):
        raise ProgramError(f"{what}: kernel {k.name!r} returned {type(res).__name__}, must be "
                           f"an array of numbers shaped {want}") from None
    if res.shape != want:
        raise ProgramError(f"{what}: kernel {k.name!r} returned shape {res.shape}, buffer "
                           f"{out.name!r} needs {want} (rows, cols, *tile)")
    out.block(reg, what)[...] = out.encode(res)
