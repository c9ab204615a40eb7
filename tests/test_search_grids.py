"""The search tries grid sizes: a documented set (`mapper.search.grid_options`), and on a small
case a smaller grid gives a strictly better mapping than the whole mesh."""

from mapper.search import grid_options
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.search_mappings import search_mapping

MESH64 = load_preset("mesh64")


def test_grid_options_are_the_mesh_then_powers_of_two_below_its_shorter_side():
    assert grid_options(64, 64) == (None, 32, 16, 8, 4)
    assert grid_options(750, 994) == (None, 512, 256, 128, 64, 32, 16, 8, 4)
    assert grid_options(4, 4) == (None,)


def test_search_finds_a_smaller_grid_that_beats_the_whole_mesh():
    """tiny decode on mesh64: its layers on a 32 x 32 corner are closer together than on the
    whole 64 x 64 mesh (shorter hand-offs and reduce lines)."""
    found, best = search_mapping(MESH64, "tiny", phase="decode", context=16, engine="fast")
    whole = [cost for c, cost, _ in found.tried if c["grid"] is None and cost is not None]
    assert found.best["grid"] is not None
    assert found.best_cost < min(whole)
    default = simulate(build_program(MESH64, "tiny", phase="decode", context=16), MESH64)
    assert found.best_cost < default.seconds / default.tokens
    assert best.seconds / best.tokens == found.best_cost
    assert "µs/token" in found.explain() and "grid=mesh" in found.explain()


def test_a_given_grid_is_not_searched():
    found, _ = search_mapping(MESH64, "tiny", phase="decode", context=16, engine="fast",
                              grids=(None,))
    assert {c["grid"] for c, _, _ in found.tried} == {None}
