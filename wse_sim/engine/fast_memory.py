"""The fast engine's large arrays, their pages mapped when allocated instead of on first touch.

A full-wafer run allocates a few hundred MB to a few GB of arrays (per resource, per signal
slot, per instance) and writes most of them. numpy gets fresh pages from the kernel one page
fault at a time as they are first written; on a virtual machine each fault is a trap to the
hypervisor: measured on the development VM, writing 400 MB of fresh `np.zeros` takes 0.78 s,
the same 400 MB mapped with `MAP_POPULATE` (the kernel maps every page in one call) 0.12 s,
rewriting it 0.015 s. So an array that the run will write in whole, above
`POPULATE_MIN_BYTES`, is an anonymous mapping made with `MAP_POPULATE` (zero-filled by the
kernel); smaller ones, and every array where the platform has no `MAP_POPULATE`, are numpy's.

Memory figures stay honest: a mapped array is reported to `tracemalloc` (as numpy reports its
own) while it lives, and its pages are returned when the last view of it goes.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref

import numpy as np

POPULATE_MIN_BYTES = 8 << 20  # smaller arrays: numpy's (a mapping per array costs a syscall)
TRACE_DOMAIN = 0x5753          # tracemalloc domain of the mapped arrays
_FLAGS = getattr(mmap, "MAP_POPULATE", 0)


def _tracemalloc_api():
    """CPython's PyTraceMalloc_Track / _Untrack (the C API numpy uses), or None."""
    try:
        track, untrack = ctypes.pythonapi.PyTraceMalloc_Track, ctypes.pythonapi.PyTraceMalloc_Untrack
    except AttributeError:
        return None
    track.argtypes, track.restype = (ctypes.c_uint, ctypes.c_size_t, ctypes.c_size_t), ctypes.c_int
    untrack.argtypes, untrack.restype = (ctypes.c_uint, ctypes.c_size_t), ctypes.c_int
    return track, untrack


_API = _tracemalloc_api()


def _mapped(shape, dtype) -> np.ndarray | None:
    """A zero-filled array over a populated anonymous mapping, or None where it should be
    numpy's (small, or no MAP_POPULATE here)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if not _FLAGS or nbytes < POPULATE_MIN_BYTES:
        return None
    try:
        mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _FLAGS)
    except OSError:
        return None
    a = np.frombuffer(mm, dtype, count).reshape(shape)
    if _API is not None:
        ptr = a.__array_interface__["data"][0]
        _API[0](TRACE_DOMAIN, ptr, nbytes)
        weakref.finalize(mm, _API[1], TRACE_DOMAIN, ptr)
    return a


def is_mapped(a: np.ndarray) -> bool:
    """Whether `a` (or the array it views) is one of the mapped arrays."""
    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None) if not isinstance(a, memoryview) else a.obj
    return False


def zeros(shape, dtype=np.int64, dense: bool = True) -> np.ndarray:
    """np.zeros; mapped up front when `dense` (the run will write most of it)."""
    a = _mapped(shape, dtype) if dense else None
    return np.zeros(shape, dtype) if a is None else a


def empty(shape, dtype=np.int64, dense: bool = True) -> np.ndarray:
    """np.empty (here zero-filled when mapped); mapped up front when `dense`."""
    a = _mapped(shape, dtype) if dense else None
    return np.empty(shape, dtype) if a is None else a


def full(shape, value, dtype=np.int64) -> np.ndarray:
    """np.full: written whole at once, so always mapped up front when large."""
    a = _mapped(shape, dtype)
    if a is None:
        return np.full(shape, value, dtype)
    a.fill(value)
    return a
