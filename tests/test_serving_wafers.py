"""`wse-sim serve` over several wafers (`--wafers N`), the per-step cost cache, and the mode
chosen by simulation (`--mode auto`): exact checks against the multi-wafer run and by hand."""

import json

import pytest
from test_serving import _err

from wse_sim.cli.main import main
from wse_sim.experiment import run_multi_wafer, stage_programs
from wse_sim.hardware import load_preset
from wse_sim.program import check_fits
from wse_sim.serving.choose import ModeCandidate, choose_mode
from wse_sim.serving.costs import Buckets, CostCache, Mapping, ShapeCosts

EXACT = Buckets(max_batch=8, tokens=1)  # no bucketing: the shape asked is the shape timed


def test_cached_cost_equals_recomputation_exactly():
    hw = load_preset("mesh8")
    cache = CostCache()
    a = ShapeCosts(hw, "tiny", Mapping(engine="reference"), EXACT, cache)
    first = a.decode_cost(3, 5)
    assert a.decode_cost(3, 5) == first and (cache.simulated, cache.hits) == (1, 1)
    fresh = ShapeCosts(hw, "tiny", Mapping(engine="reference"), EXACT, CostCache())
    assert fresh.decode_cost(3, 5) == first  # the same seconds, FLOPs and peak, to the bit


def test_multi_wafer_step_equals_run_multi_wafer():
    hw = load_preset("mesh16")
    costs = ShapeCosts(hw, "tiny-moe", Mapping(wafers=2), EXACT, CostCache())
    for phase, batch, tokens in (("decode", 2, 9), ("prefill", 1, 12)):
        c = costs.cost(phase, batch, tokens)
        r = run_multi_wafer(hw, "tiny-moe", wafers=2, phase=phase, batch=batch, prompt=tokens,
                            context=tokens)
        assert c.seconds == r["seconds"] and c.flops == r["flops"]
        assert r["stages"][1].io_bytes > 0  # the second wafer receives the activations
        assert c.peak_flops_per_s == sum(s.peak_flops_per_s for s in r["stages"])


def test_multi_wafer_kv_pool_is_each_wafers_sram_left_after_weights():
    hw = load_preset("mesh16")
    costs = ShapeCosts(hw, "tiny-moe", Mapping(wafers=2), EXACT, CostCache())
    # tiny-moe: 3 layers x 2 (K, V) x 32 (kv heads x head dim) x 2 B = 384 B/token; the
    # first wafer takes 2 layers (split_evenly), the second 1
    assert costs.kv_bytes_per_token == 384
    assert costs.kv_bytes_per_token_per_wafer == [256, 128]
    pools = []
    for p in stage_programs(hw, "tiny-moe", wafers=2, phase="decode", batch=1, prompt=1,
                            context=1):
        cores = int((check_fits(p, hw)["sram_bytes"] > 0).sum())
        other = sum(a.bytes_per_core * a.region.size for a in p.allocs
                    if not a.name.endswith("kv_cache"))
        pools.append(cores * hw.sram_bytes - other)
    assert costs.kv_pool_bytes_per_wafer == pools and costs.kv_pool_bytes == sum(pools)
    held = [pools[0] // 256, pools[1] // 128]
    assert costs.kv_pool_tokens == min(held)
    n = costs.kv_pool_tokens + 1  # one token more than the fuller wafer holds
    w = held.index(min(held))
    per = (256, 128)[w]
    assert costs.decode_refusal(n - 1, 2) == (
        f"KV cache: {n} tokens x {per} B = {n * per} B > the {pools[w]} B of SRAM of wafer "
        f"{w} left for KV")
    # disaggregated: wafer i's layers' KV moves to decode wafer i, all wafers at once
    assert costs.kv_transfer_s(100, 1e9) == 100 * 256 * 8 / 1e9


def test_kv_refusal_one_wafer_names_the_numbers():
    hw = load_preset("mesh16")
    costs = ShapeCosts(hw, "tiny", Mapping(engine="reference"), EXACT, CostCache())
    pool, n = costs.kv_pool_bytes, costs.kv_pool_tokens + 1
    assert costs.kv_bytes_per_token_per_wafer == [512]
    assert costs.decode_refusal(n - 1, 2) == (
        f"KV cache: {n} tokens x 512 B = {n * 512} B > the {pool} B of SRAM left for KV")
    assert costs.decode_refusal(n - 2, 2) != costs.decode_refusal(n - 1, 2)


BASE = ["serve", "--preset", "mesh16", "--model", "tiny-moe", "--arrivals", "poisson:20000",
        "--requests", "12", "--prompt-dist", "uniform:4-20", "--output-dist", "uniform:1-6"]


def _json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _strip(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("wall_seconds", "cost_wall_s",
                                                      "cost_shapes_simulated",
                                                      "cost_cache_hits", "mode_search")}


def test_serve_over_two_wafers_end_to_end(capsys, tmp_path):
    s = _json(capsys, BASE + ["--wafers", "2", "--cost-cache", str(tmp_path / "c.json")])
    assert s["served"] == 12 and s["wafers"] == 2 and s["mapping"]["wafers"] == 2
    assert len(s["kv_pool_bytes_per_wafer"]) == 2
    d = _json(capsys, BASE + ["--wafers", "2", "--mode", "disaggregated"])
    assert d["served"] == 12 and d["wafers_used"] == 4
    assert set(d["utilization"]) == {"prefill", "decode"}


def test_mode_auto_keeps_the_best_per_wafer_and_equals_that_mode(capsys, tmp_path):
    slo = ["--slo-ttft-ms", "0.2", "--slo-tpot-ms", "0.05"]
    auto = _json(capsys, BASE + slo + ["--mode", "auto"])
    ms = auto["mode_search"]
    rows = {r["mode"]: r for r in ms["candidates"]}
    assert set(rows) == {"time-shared", "disaggregated"}
    assert rows["disaggregated"]["wafers"] == 2 * rows["time-shared"]["wafers"]
    for r in rows.values():
        assert r["metric"] == "goodput_requests_per_s"
        assert r["metric_per_wafer"] == r["goodput_requests_per_s"] / r["wafers"]
    best = max(rows.values(), key=lambda r: r["metric_per_wafer"])
    assert ms["choice"] == auto["mode"] == best["mode"]
    alone = _json(capsys, BASE + slo + ["--mode", ms["choice"]])
    assert _strip(alone) == _strip(auto)


def _cand(mode, wafers, tokens, goodput=None):
    s = {"mode": mode, "output_tokens_per_s": tokens, "requests_per_s": 1.0, "refused": 0,
         "ttft_s": {"p99": 0.1}, "tpot_s": {"p99": 0.01}}
    if goodput is not None:
        s |= {"slo": {}, "goodput_requests_per_s": goodput}
    return ModeCandidate(mode, wafers, s)


def test_choose_mode_by_hand():
    ts, dis = _cand("time-shared", 1, 100.0), _cand("disaggregated", 2, 200.0)
    best, why = choose_mode([ts, dis])  # 100 per wafer each: the tie goes to the first
    assert best is ts and why == ("time-shared: the most output tokens/s per wafer, 100 vs "
                                  "disaggregated 100")
    best, _ = choose_mode([_cand("time-shared", 1, 100.0, goodput=3.0),
                           _cand("disaggregated", 2, 100.0, goodput=8.0)])
    assert best.mode == "disaggregated" and best.per_wafer == 4.0
    with pytest.raises(ValueError, match="ModeCandidate.wafers: got 0"):
        ModeCandidate("time-shared", 0, {})


@pytest.mark.parametrize("extra, needle", [
    (["--wafers", "0"], "--wafers: got 0, must be an integer >= 1"),
    (["--wafers", "x"], "--wafers"),
    (["--wafers", "4"], "wafers: got 4, must be at most the model's 3 layers"),
    (["--wafers", "2", "--strategy", "weight-streaming"], "wafers: got 2, which does not apply"),
    (["--wafers", "2", "--attention", "rows"], "--attention: got 'rows'"),
    (["--moe-layout", "rings"], "moe_layout: got 'rings'"),
    (["--mode", "best"], "--mode"),
])
def test_bad_wafer_and_mode_options_one_line(capsys, extra, needle):
    assert needle in _err(capsys, BASE + extra)


def test_moe_options_refused_for_a_dense_model(capsys):
    argv = ["serve", "--preset", "mesh16", "--model", "tiny"] + BASE[5:]
    assert "moe_layout" in _err(capsys, argv + ["--moe-layout", "bands"])


def test_per_token_prefill_is_the_sum_of_its_decode_steps():
    hw = load_preset("mesh16")
    costs = ShapeCosts(hw, "tiny-moe", Mapping(wafers=2, prefill="per-token"),
                       Buckets(max_batch=8, max_prefill_batch=2), CostCache())
    # a prompt of 6: positions 0..5 at contexts max(1, j) bucketed: 1, 1, 2, 4, 4, 8
    assert costs._per_token_contexts(6) == {1: 2, 2: 1, 4: 2, 8: 1}
    steps = [costs.cost("decode", 2, c) for c in (1, 1, 2, 4, 4, 8)]
    p = costs.prefill_cost(2, 6)
    assert p.seconds == pytest.approx(sum(c.seconds for c in steps), rel=1e-15)
    assert p.flops == sum(c.flops for c in steps)
    assert costs.prefill_fits(2, 6) and costs.prefill_refusal(6) is None
    with pytest.raises(ValueError, match="--prefill: got 'chunks'"):
        Mapping(prefill="chunks")


def test_search_over_wafers_chooses_the_expert_placement(capsys):
    argv = ["search", "--preset", "mesh16", "--model", "tiny-moe", "--phase", "decode",
            "--batch", "4", "--context", "16", "--wafers", "2", "--reduce-algo", "chain"]
    s = _json(capsys, argv)
    costs = {t["candidate"]["moe_layout"]: t["seconds_per_token"] for t in s["tried"]}
    assert {k.split(":")[0] for k in costs} == {"blocks", "strips", "bands"}
    assert any(":" in k for k in costs)  # the expert parallelism, on the best placement
    ok = {k: v for k, v in costs.items() if v is not None}
    assert s["moe_layout"] == min(ok, key=ok.get) == s["choice"]["moe_layout"]
    r = run_multi_wafer(load_preset("mesh16"), "tiny-moe", wafers=2, phase="decode", batch=4,
                        context=16, moe_layout=s["moe_layout"])
    assert costs[s["moe_layout"]] == r["seconds"] / 4 and s["seconds"] == r["seconds"]
    assert s["moe_layout_why"].startswith(f"{s['moe_layout']}: the least time per token")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "expert placement:" in text and "µs/token" in text
    assert "--grid: got 8 with --wafers 2" in _err(capsys, argv + ["--grid", "8"])


def test_search_on_one_wafer_says_why_its_expert_placement(capsys):
    s = _json(capsys, ["search", "--preset", "mesh16", "--model", "tiny-moe", "--phase",
                       "decode", "--batch", "4", "--context", "16", "--grid", "16",
                       "--reduce-algo", "chain", "--budget", "8"])
    tried = {t["candidate"]["moe_layout"] for t in s["tried"] if t["seconds_per_token"]}
    assert tried == {"blocks", "strips", "bands"} and s["moe_layout"] in tried
    assert "µs/token" in s["moe_layout_why"]


@pytest.mark.parametrize("extra, needle", [
    (["--attention", "rows"], "attention: got 'rows' with wafers 2, must be 'auto'"),
    (["--chunks", "2"], "chunks: got 2 with wafers 2, must be 1"),
    (["--region-shape", "1"], "region_shape: got 1 with wafers 2, must be 0"),
])
def test_run_over_wafers_refuses_what_a_slice_would_ignore(capsys, extra, needle):
    argv = ["run", "--preset", "mesh16", "--model", "tiny-moe", "--wafers", "2", "--prompt",
            "16"]
    assert needle in _err(capsys, argv + extra)


def test_mode_auto_report_prints_each_candidate_with_units(capsys):
    assert main(BASE + ["--wafers", "2", "--mode", "auto"]) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.strip().startswith("candidate")]
    assert len(lines) == 2 and all("output tokens/s" in x and "ms" in x for x in lines)
    assert "on 2 wafer(s)" in lines[0] and "on 4 wafer(s)" in lines[1]
    assert "chosen" in out and "output tokens/s per wafer" in out
    assert "per wafer" in next(x for x in out.splitlines() if x.strip().startswith("KV"))
