"""Serving: a stream of requests under continuous batching, timed by the simulator itself.

- `requests`: request streams (Poisson arrivals or a CSV trace; length distributions);
- `costs`: the time of a prefill or decode step of a given shape, from the real mapping and
  engine, cached per shape and bucketed upward; the KV cache figures;
- `scheduler`: iteration-level (Orca-style) continuous batching, time-shared or
  disaggregated;
- `choose`: `--mode auto`, the mode that serves a stream best per wafer;
- `report`: percentiles, throughput, goodput, utilization; the per-request table, summary and
  figure.

The policy, cost model and every assumption: docs/serving.md.
"""
