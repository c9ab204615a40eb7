"""`wse-sim serve`: the scheduler against hand-computed timelines (stub costs), the cost
cache and bucketing, request streams, and a few real runs end to end through the CLI."""

import csv
import json

import pytest

from wse_sim.cli.main import main
from wse_sim.serving.costs import Buckets, Cost, CostCache, Mapping, ShapeCosts
from wse_sim.serving.report import summarize
from wse_sim.serving.requests import (
    LengthDist,
    Request,
    StreamSpec,
    make_requests,
    parse_dist,
)
from wse_sim.serving.scheduler import run_disaggregated, run_time_shared


class StubCosts:
    """prefill of b prompts: longest / 4 x (1 + (b - 1) / 2) s; decode step: 0.5 + 0.5 x batch s; KV transfer: tokens / 8 s;
    a pool of `pool` tokens; every decode shape fits. Records the decode shapes asked."""

    def __init__(self, pool: int = 1000):
        self.kv_pool_tokens = pool
        self.decodes = []

    def prefill_cost(self, batch, prompt):
        return Cost(prompt / 4 * (1 + 0.5 * (batch - 1)), 10, 100.0)

    def prefill_fits(self, batch, prompt):
        return True

    def decode_cost(self, batch, context):
        self.decodes.append((batch, context))
        return Cost(0.5 + 0.5 * batch, 20, 100.0)

    def decode_fits(self, batch, context):
        return True

    def prefill_refusal(self, prompt):
        return None

    def decode_refusal(self, prompt, output):
        n = prompt + output - 1
        return f"KV cache: {n} tokens > {self.kv_pool_tokens}" if n > self.kv_pool_tokens \
            else None

    def kv_transfer_s(self, tokens, io_bits_per_s=None):
        return tokens / 8


THREE = [Request(0, 0.0, 4, 3), Request(1, 0.5, 8, 2), Request(2, 10.0, 4, 1)]


def _times(result):
    return [(o.first_token_s, o.finish_s, o.ttft_s, o.tpot_s) for o in result.outcomes]


def test_time_shared_three_requests_by_hand():
    # t=0 prefill R0 (1 s) -> 1; R1 arrived: prefill (2 s) -> 3; decode {R0, R1} (1.5 s) -> 4.5,
    # R1 done; decode {R0} (1 s) -> 5.5, R0 done; idle to 10; prefill R2 (1 s) -> 11, done.
    costs = StubCosts()
    r = run_time_shared(THREE, costs, max_batch=8)
    assert _times(r) == [(1.0, 5.5, 1.0, 2.25), (3.0, 4.5, 2.5, 1.5), (11.0, 11.0, 1.0, None)]
    assert costs.decodes == [(2, 8), (1, 5)]  # longest context: prompt + generated - 1
    assert [(s.kind, s.start_s, s.end_s, s.batch) for s in r.steps] == [
        ("prefill", 0.0, 1.0, 1), ("prefill", 1.0, 3.0, 1), ("decode", 3.0, 4.5, 2),
        ("decode", 4.5, 5.5, 1), ("prefill", 10.0, 11.0, 1)]
    s = summarize(r, slo_ttft_s=2.0, slo_tpot_s=2.0)
    assert s["span_s"] == 11.0 and s["output_tokens"] == 6
    assert s["goodput_requests_per_s"] == 1 / 11  # R2 only (R0: TPOT 2.25, R1: TTFT 2.5)
    assert s["utilization"]["shared"]["busy_fraction"] == 6.5 / 11
    assert s["ttft_s"]["p50"] == 1.0 and s["tpot_s"]["mean"] == 1.875
    later = [Request(q.id, q.arrival_s + 64, q.prompt_tokens, q.output_tokens) for q in THREE]
    s2 = summarize(run_time_shared(later, StubCosts(), max_batch=8))
    assert (s2["start_s"], s2["span_s"]) == (64.0, 11.0)  # the span starts at the first arrival
    u, u2 = s["utilization"]["shared"], s2["utilization"]["shared"]
    assert u2["busy_fraction"] == u["busy_fraction"] and u2["timeline"]["t_s"][0] == 64.0


def test_disaggregated_three_requests_by_hand():
    # prefill region: R0 0->1, R1 1->3, R2 10->11 (one token: done). Decode region: R0 moves
    # 1 -> 1.5 (4 tokens / 8), steps 1.5->2.5->3.5 (done); R1 moves 3.5 -> 4.5, step -> 5.5.
    r = run_disaggregated(THREE, StubCosts(), StubCosts(), max_batch=8, io_bits_per_s=1.0)
    assert _times(r) == [(1.0, 3.5, 1.0, 1.25), (3.0, 5.5, 2.5, 2.5), (11.0, 11.0, 1.0, None)]
    assert {s.region for s in r.steps} == {"prefill", "decode"}


def test_prefill_groups_by_hand():
    # K = 2: t=0 prefill R0 alone (R1, R4 not there yet) -> 1; R1 and R4 prefilled together
    # (longest prompt 8, batch 2: 3 s) -> 4; decode {R0, R1, R4} (2 s) -> 6: R1, R4 done;
    # decode {R0} -> 7.
    reqs = THREE[:2] + [Request(4, 0.5, 4, 2)]
    costs = StubCosts()
    r = run_time_shared(reqs, costs, max_batch=8, max_prefill_batch=2)
    assert _times(r) == [(1.0, 7.0, 1.0, 3.0), (4.0, 6.0, 3.5, 2.0), (4.0, 6.0, 3.5, 2.0)]
    assert costs.decodes == [(3, 8), (1, 5)]
    d = run_disaggregated(reqs, StubCosts(), StubCosts(), 8, 1.0, max_prefill_batch=2)
    assert [o.first_token_s for o in d.outcomes] == [1.0, 4.0, 4.0]


def test_kv_pool_makes_requests_wait_and_refuses_what_never_fits():
    # pool 12 tokens: R0 holds 6, R1 needs 9 -> R1 waits until R0 is done (decodes 1->2->3),
    # then its prefill 3->5 and one decode step 5->6. R3 needs 20 tokens: refused.
    reqs = THREE[:2] + [Request(3, 0.6, 10, 11)]
    r = run_time_shared(reqs, StubCosts(pool=12), max_batch=8)
    assert _times(r)[:2] == [(1.0, 3.0, 1.0, 1.0), (5.0, 6.0, 4.5, 1.0)]
    assert r.outcomes[2].refused.startswith("KV cache: 20 tokens")
    assert summarize(r)["refused"] == 1


def test_max_batch_caps_the_decode_batch():
    reqs = [Request(i, 0.0, 4, 3) for i in range(3)]
    costs = StubCosts()
    run_time_shared(reqs, costs, max_batch=2)
    assert max(b for b, _ in costs.decodes) == 2


def test_buckets_round_up_never_down():
    b = Buckets(max_batch=24)
    assert [b.batch(n) for n in (1, 2, 3, 5, 17, 24)] == [1, 2, 4, 8, 24, 24]
    assert [Buckets(8, max_prefill_batch=4).prefill_batch(n) for n in (1, 3, 5)] == [1, 4, 4]
    assert [b.token_count(n, 127) for n in (1, 3, 64, 65, 100, 127)] == [1, 4, 64, 127, 127, 127]
    assert Buckets(8, 16).token_count(17, 1000) == 32 and Buckets(8, 1).token_count(17, 99) == 17


def test_cost_cache_keys_on_hardware_and_shape():
    from wse_sim.hardware import load_preset
    hw = load_preset("mesh8")
    cache = CostCache()
    a = ShapeCosts(hw, "tiny", Mapping(engine="reference"), Buckets(4), cache)
    c1 = a.decode_cost(3, 5)  # bucketed to batch 4, context 8
    assert a.decode_cost(4, 8) == c1 and cache.simulated == 1
    b = ShapeCosts(hw.with_overrides({"clock_ghz": hw.clock_ghz / 2}), "tiny",
                   Mapping(engine="reference"), Buckets(4), cache)
    assert b.decode_cost(4, 8).seconds == pytest.approx(2 * c1.seconds)
    assert cache.simulated == 2
    assert a.kv_bytes_per_token == 2 * 2 * 4 * 16 * 2  # 2 x layers x kv heads x hd x fp16


def test_request_streams_are_seeded():
    spec = StreamSpec("poisson:100", None, 50, parse_dist("p", "uniform:4-9"),
                      LengthDist("lognormal", 20, 0.5), seed=7)
    a, b = make_requests(spec), make_requests(spec)
    assert a == b
    other = make_requests(StreamSpec("poisson:100", None, 50, spec.prompt, spec.output, 8))
    assert other != a
    assert all(4 <= r.prompt_tokens <= 9 for r in a)
    assert [r.arrival_s for r in a] == sorted(r.arrival_s for r in a)


def test_arrivals_file_with_length_distributions(tmp_path):
    f = tmp_path / "arrivals.csv"
    f.write_text("arrival_s\n0\n0.25\n0.25\n1.5\n")
    spec = StreamSpec(str(f), None, 3, LengthDist("fixed", 5), LengthDist("uniform", 1, 2))
    reqs = make_requests(spec)
    assert [(r.arrival_s, r.prompt_tokens) for r in reqs] == [(0, 5), (0.25, 5), (0.25, 5)]
    f.write_text("arrival_s\n1\n0.5\n")
    with pytest.raises(ValueError, match="row 3 column arrival_s"):
        make_requests(spec)


BASE = ["serve", "--preset", "mesh16", "--model", "tiny", "--engine", "reference"]
POISSON = ["--arrivals", "poisson:20000", "--requests", "6", "--prompt-dist", "uniform:4-20",
           "--output-dist", "uniform:1-6"]


def _json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_serve_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    s = _json(capsys, BASE + POISSON + ["--slo-ttft-ms", "1", "--slo-tpot-ms", "1",
                                        "--out", str(out), "--seed", "3"])
    assert s["served"] == 6 and s["refused"] == 0 and s["mode"] == "time-shared"
    assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] and s["output_tokens_per_s"] > 0
    assert s["kv_bytes_per_token"] == 512 and s["kv_pool_tokens"] > 0
    assert s["cost_shapes_simulated"] > 0 and "goodput_requests_per_s" in s
    assert s["seconds"] == s["span_s"] and s["engine"] == "reference" and s["cycles"] > 0
    rows = list(csv.DictReader(open(out / "requests.csv")))
    assert len(rows) == 6 and list(rows[0]) == ["id", "arrival_s", "prompt", "output",
                                                "first_token_s", "finish_s", "ttft_s",
                                                "tpot_s", "refused"]
    assert json.loads((out / "summary.json").read_text())["served"] == 6
    assert (out / "serving.png").stat().st_size > 0
    again = _json(capsys, BASE + POISSON + ["--slo-ttft-ms", "1", "--slo-tpot-ms", "1",
                                            "--seed", "3"])
    for key in ("wall_seconds", "cost_wall_s", "files"):
        s.pop(key, None), again.pop(key, None)
    assert again == s  # same seed, same result


def test_serve_trace_disaggregated_and_kv_refusal(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n0.0001,60,60\n"
                     "0.0002,16,3\n")
    argv = BASE + ["--trace", str(trace), "--set", "sram_bytes=2000"]
    s = _json(capsys, argv)
    assert s["served"] == 2 and s["refused"] == 1
    assert _json(capsys, argv + ["--mode", "disaggregated"])["served"] == 2
    assert main(argv + ["--out", str(tmp_path / "o")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "requests.csv")))
    assert "kv_cache" in rows[1]["refused"] and rows[1]["first_token_s"] == ""


def _err(capsys, argv) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("extra, needle", [
    (["--arrivals", "poisson:-1", "--requests", "3"], "--arrivals"),
    (["--arrivals", "poisson:x", "--requests", "3"], "--arrivals"),
    (POISSON[:4] + ["--prompt-dist", "uniform:9-2"], "--prompt-dist"),
    (POISSON[:4] + ["--prompt-dist", "gauss:3"], "--prompt-dist"),
    (POISSON[:4] + ["--prompt-dist", "lognormal:0,1"], "--prompt-dist"),
    (POISSON[:4] + ["--prompt-dist", "fixed:4"], "--output-dist"),
    (["--arrivals", "poisson:10", "--prompt-dist", "fixed:4", "--output-dist", "fixed:4"],
     "--requests"),
    (["--trace", "/no/such.csv"], "/no/such.csv"),
    (POISSON + ["--mode", "both"], "--mode"),
    (POISSON + ["--max-batch", "0"], "--max-batch"),
    (POISSON + ["--bucket", "x"], "--bucket"),
    (POISSON + ["--slo-ttft-ms", "5"], "--slo-tpot-ms"),
    (POISSON + ["--slo-ttft-ms", "-5", "--slo-tpot-ms", "1"], "--slo-ttft-ms"),
    (POISSON + ["--decode-preset", "mesh16"], "--decode-preset"),
    (POISSON + ["--seed", "-1"], "--seed"),
])
def test_bad_input_one_line(capsys, extra, needle):
    assert needle in _err(capsys, BASE + extra)


def test_bad_trace_cell_and_moe_serves(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n0.1,zero,3\n")
    assert "row 3 column prompt_tokens" in _err(capsys, BASE + ["--trace", str(trace)])
    # an MoE model is mapped (docs/moe.md): every step with the default (uniform) routing
    assert main(["serve", "--preset", "mesh16", "--model", "tiny-moe"] + POISSON) == 0
