"""Continuous batching, iteration-level (Orca-style): docs/serving.md, "Scheduler".

Time-shared (one region runs every step), at each step boundary `t`:

1. requests that arrived by `t` join the waiting queue (FCFS) or, if they can never run, are
   refused;
2. if the head of the queue can be admitted (the batch has room and the KV cache can hold it,
   below), it is prefilled, with up to `max_prefill_batch - 1` requests behind it, FCFS, each
   admissible with those before it and while the grown prefill maps: `t += prefill(k, longest
   prompt)`; the prefill gives each its first token;
3. otherwise, if requests are running, one decode step runs for all of them:
   `t += decode(batch, longest context)`; each gets one token; finished ones leave and free
   their KV;
4. otherwise the region idles until the next arrival.

Disaggregated: a prefill region runs prefills FCFS as soon as the head request has arrived
and the region is free (with it, up to `max_prefill_batch - 1` requests that have arrived by
then, while the prefill maps); a decode region runs decode steps. At each decode step
boundary (or when the decode region is idle and a prefill ends) the requests whose prefill
is done are admitted FCFS while they fit; an admitted request's prompt KV then crosses the
off-wafer link (one transfer at a time, FIFO) and it joins the batch at the first step
boundary after its transfer ends.

Admission (both modes): batch (running + in transfer) + 1 <= max batch; the tokens the KV
cache will hold when every admitted request is done (prompt + output - 1 each) fit the KV
pool; and the decode step of the grown batch at the longest context any admitted request
will reach maps (the mapper places each sequence's KV slots on the cores). The head of the
queue blocks the ones behind it (no skipping).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from wse_sim.serving.requests import Request


@dataclass(frozen=True)
class Outcome:
    """What happened to one request; times in seconds from the start of the stream."""

    request: Request
    first_token_s: float | None = None
    finish_s: float | None = None
    refused: str | None = None

    def __post_init__(self):
        done = self.first_token_s is not None and self.finish_s is not None
        if done == (self.refused is not None):
            raise ValueError(f"Outcome of request {self.request.id}: got first_token_s "
                             f"{self.first_token_s}, finish_s {self.finish_s}, refused "
                             f"{self.refused!r}; must be served (both times) or refused")

    @property
    def ttft_s(self) -> float | None:
        return None if self.refused else self.first_token_s - self.request.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Seconds per output token after the first (None with one output token)."""
        n = self.request.output_tokens
        return None if self.refused or n < 2 else (self.finish_s - self.first_token_s) / (n - 1)


@dataclass(frozen=True)
class Step:
    """One engine step on one region ("prefill" or "decode"): when, how many sequences, and
    the step's FLOPs and the peak FLOP/s of its cores."""

    region: str
    kind: str
    start_s: float
    end_s: float
    batch: int
    flops: int
    peak_flops_per_s: float


@dataclass(frozen=True)
class ServeResult:
    mode: str
    outcomes: tuple
    steps: tuple
    kv_pool_tokens: int


class _Live:
    """A request being served: tokens generated so far and when the first came."""

    __slots__ = ("request", "generated", "first_s", "ready_s")

    def __init__(self, request: Request, first_s: float):
        self.request, self.generated, self.first_s, self.ready_s = request, 1, first_s, first_s

    @property
    def kv_tokens(self) -> int:  # KV held once done: the last token is never fed back
        return self.request.prompt_tokens + self.request.output_tokens - 1

    @property
    def last_context(self) -> int:  # cached tokens at its last decode step
        return self.request.prompt_tokens + self.request.output_tokens - 2

    @property
    def context(self) -> int:  # cached tokens at its next decode step
        return self.request.prompt_tokens + self.generated - 1


class _Batch:
    """The decode side: running requests, those admitted but not yet running, and the KV
    tokens reserved for all of them."""

    def __init__(self, costs, max_batch: int, region: str):
        self.costs, self.max_batch, self.region = costs, max_batch, region
        self.running: list = []
        self.incoming: deque = deque()  # (join_s, _Live) in join order
        self.reserved_tokens = 0
        self.pool_tokens = costs.kv_pool_tokens

    def admits(self, live: _Live, extra: list = ()) -> bool:
        """Whether `live` can join the batch (`extra`: others joining with it)."""
        members = self.running + [lv for _, lv in self.incoming] + list(extra)
        if len(members) + 1 > self.max_batch:
            return False
        if self.reserved_tokens + live.kv_tokens > self.pool_tokens:
            return False
        longest = max([lv.last_context for lv in members] + [live.last_context])
        return self.costs.decode_fits(len(members) + 1, longest)

    def admit(self, live: _Live, join_s: float) -> None:
        self.reserved_tokens += live.kv_tokens
        self.incoming.append((join_s, live))

    def join(self, t: float) -> None:
        while self.incoming and self.incoming[0][0] <= t:
            self.running.append(self.incoming.popleft()[1])

    def step(self, t: float, steps: list, done: dict) -> float:
        """One decode step for every running request from `t`; returns its end."""
        context = max(lv.context for lv in self.running)
        c = self.costs.decode_cost(len(self.running), context)
        end = t + c.seconds
        steps.append(Step(self.region, "decode", t, end, len(self.running), c.flops,
                          c.peak_flops_per_s))
        still = []
        for lv in self.running:
            lv.generated += 1
            if lv.generated == lv.request.output_tokens:
                done[lv.request.id] = Outcome(lv.request, lv.first_s, end)
                self.reserved_tokens -= lv.kv_tokens
            else:
                still.append(lv)
        self.running = still
        return end


def _prefill(costs, group: list, start: float, region: str, steps: list) -> float:
    """One prefill step of the requests of `group`, every prompt at the longest."""
    c = costs.prefill_cost(len(group), max(r.prompt_tokens for r in group))
    end = start + c.seconds
    steps.append(Step(region, "prefill", start, end, len(group), c.flops, c.peak_flops_per_s))
    return end


def _refusal(r: Request, prefill_costs, decode_costs) -> str | None:
    return prefill_costs.prefill_refusal(r.prompt_tokens) or decode_costs.decode_refusal(
        r.prompt_tokens, r.output_tokens)


def _group(waiting: deque, batch: _Batch, costs, max_prefill_batch: int) -> list:
    """Take the next prefill group from the head of `waiting`, FCFS: while each next request
    can be admitted (with the ones already taken) and the grown prefill still maps."""
    group: list = []
    while waiting and len(group) < max_prefill_batch:
        lv = _Live(waiting[0], 0.0)
        decoding = [g for g in group if g.request.output_tokens > 1]
        if lv.request.output_tokens > 1 and not batch.admits(lv, decoding):
            break
        longest = max(g.request.prompt_tokens for g in group + [lv])
        if group and not costs.prefill_fits(len(group) + 1, longest):
            break
        group.append(lv)
        waiting.popleft()
    return group


def run_time_shared(requests: list, costs, max_batch: int,
                    max_prefill_batch: int = 1) -> ServeResult:
    """Prefill-first FCFS continuous batching on one region (module docstring)."""
    pending, waiting = deque(requests), deque()
    batch, steps, done = _Batch(costs, max_batch, "shared"), [], {}
    t = 0.0
    while pending or waiting or batch.running:
        while pending and pending[0].arrival_s <= t:
            r = pending.popleft()
            why = _refusal(r, costs, costs)
            if why:
                done[r.id] = Outcome(r, refused=why)
            else:
                waiting.append(r)
        group = _group(waiting, batch, costs, max_prefill_batch)
        if group:
            t = _prefill(costs, [lv.request for lv in group], t, "shared", steps)
            for lv in group:
                lv.first_s = t
                if lv.request.output_tokens == 1:
                    done[lv.request.id] = Outcome(lv.request, t, t)
                else:
                    batch.admit(lv, t)
            batch.join(t)
        elif batch.running:
            t = batch.step(t, steps, done)
        elif pending:
            t = max(t, pending[0].arrival_s)
        else:
            raise RuntimeError(f"request {waiting[0].id} waits on an empty region: its "
                               "refusal check and admission disagree")
    return ServeResult("time-shared", tuple(done[r.id] for r in requests), tuple(steps),
                       costs.kv_pool_tokens)


def _prefill_all(requests: list, costs, decode_costs, steps: list, done: dict,
                 max_prefill_batch: int) -> deque:
    """The prefill region: FCFS; a step takes the head and those behind it that have arrived
    by its start, up to `max_prefill_batch` while the prefill maps. Returns the requests
    that go on to decode, with their prefill end as `ready_s`."""
    queue = deque()
    for r in requests:
        why = _refusal(r, costs, decode_costs)
        if why:
            done[r.id] = Outcome(r, refused=why)
        else:
            queue.append(r)
    ready, t = deque(), 0.0
    while queue:
        t = max(t, queue[0].arrival_s)
        group = [queue.popleft()]
        while (queue and len(group) < max_prefill_batch and queue[0].arrival_s <= t and
               costs.prefill_fits(len(group) + 1, max(r.prompt_tokens
                                                      for r in group + [queue[0]]))):
            group.append(queue.popleft())
        t = _prefill(costs, group, t, "prefill", steps)
        for r in group:
            if r.output_tokens == 1:
                done[r.id] = Outcome(r, t, t)
            else:
                ready.append(_Live(r, t))
    return ready


def run_disaggregated(requests: list, prefill_costs, decode_costs, max_batch: int,
                      io_bits_per_s: float, max_prefill_batch: int = 1) -> ServeResult:
    """Prefill and decode on separate regions, KV over the off-wafer link (module doc)."""
    steps, done = [], {}
    ready = _prefill_all(requests, prefill_costs, decode_costs, steps, done,
                         max_prefill_batch)
    batch = _Batch(decode_costs, max_batch, "decode")
    t = link_free = 0.0
    while ready or batch.incoming or batch.running:
        while ready and ready[0].ready_s <= t and batch.admits(ready[0]):
            lv = ready.popleft()
            link_free = max(t, link_free) + decode_costs.kv_transfer_s(
                lv.request.prompt_tokens, io_bits_per_s)
            batch.admit(lv, link_free)
        batch.join(t)
        if batch.running:
            t = batch.step(t, steps, done)
            continue
        later = [batch.incoming[0][0]] if batch.incoming else []
        if ready and ready[0].ready_s > t:
            later.append(ready[0].ready_s)
        if not later:
            raise RuntimeError(f"request {ready[0].request.id} waits on an empty decode "
                               "region: its refusal check and admission disagree")
        t = min(later)
    return ServeResult("disaggregated", tuple(done[r.id] for r in requests), tuple(steps),
                       decode_costs.kv_pool_tokens)
