"""The fast engine's mapped arrays (`fast_memory`): numpy's values, seen by tracemalloc while
they live, and the same simulation either way."""

import gc
import tracemalloc

import numpy as np
import pytest
from test_engine_fast import assert_same

from mapper.gemm import build_gemm
from wse_sim.engine import fast_memory as mem
from wse_sim.engine.fast import simulate_fast
from wse_sim.hardware import load_preset

MAPPED = mem._FLAGS != 0


@pytest.fixture
def map_everything(monkeypatch):
    monkeypatch.setattr(mem, "POPULATE_MIN_BYTES", 0)


@pytest.mark.skipif(not MAPPED, reason="no MAP_POPULATE on this platform")
def test_mapped_arrays_hold_numpys_values(map_everything):
    z = mem.zeros((1000, 7))
    f = mem.full(5000, -1, np.int32)
    e = mem.empty(3, np.int64, dense=False)  # not dense: numpy's own
    assert mem.is_mapped(z) and mem.is_mapped(f) and not mem.is_mapped(e)
    assert z.shape == (1000, 7) and z.dtype == np.int64 and not z.any()
    assert f.dtype == np.int32 and (f == -1).all()
    z[999, 6] = 7  # writable, C order
    assert z.flags.c_contiguous and z.ravel()[-1] == 7


@pytest.mark.skipif(not MAPPED, reason="no MAP_POPULATE on this platform")
def test_tracemalloc_sees_a_mapped_array_while_it_lives(map_everything):
    nbytes = 16 << 20
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        a = mem.zeros(nbytes // 8)
        view = a[10:]
        del a
        assert tracemalloc.get_traced_memory()[0] - before >= nbytes  # a view keeps it
        del view
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - before < nbytes // 16
    finally:
        tracemalloc.stop()


def test_small_arrays_stay_numpys():
    a = mem.zeros(10)
    assert not mem.is_mapped(a) and not a.any()


@pytest.mark.parametrize("path", ["step", "event", "window"])
def test_the_same_simulation_with_every_array_mapped(path, monkeypatch):
    hw = load_preset("mesh32")
    program = build_gemm("meshgemm", hw, grid=12, m=96, k=96, n=96, dtype="fp16")
    plain = simulate_fast(program, hw, path=path, spans=True)
    monkeypatch.setattr(mem, "POPULATE_MIN_BYTES", 0)
    mapped = simulate_fast(program, hw, path=path, spans=True)
    assert_same(plain, mapped)
    assert mapped.fast_path == plain.fast_path == path
