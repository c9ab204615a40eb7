"""Step costs from the simulator itself, cached per shape (docs/serving.md, "Cost model").

The time of a prefill of P tokens, or of a decode step of B sequences at context C, is the
simulated time of the program the mapper builds for that shape (`wse_sim.experiment`), run by
the engine. Shapes are bucketed upward (never down): a batch to the next power of two (at most
the max batch), a prompt or a context to the next power of two or multiple of a block (at most
what the model allows). Each distinct shape is simulated once; `CostCache` keeps its cost (or
the one-line reason it does not map) under a key made of everything that affects it: the
effective hardware fields, the model's full config, the mapping options, the phase and shape.

Over several wafers (`Mapping.wafers`) a shape's programs are the wafers' slices
(`experiment.stage_programs`) and its cost their sum; the KV pool is per wafer. With
`Mapping.prefill == "per-token"` a prefill is the sum of one decode step per prompt position.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wse_sim.errors import must_be as _bad
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig


@dataclass(frozen=True)
class Cost:
    """One engine step: simulated seconds, FLOPs, and the peak FLOP/s of the cores used."""

    seconds: float
    flops: int
    peak_flops_per_s: float

    def __post_init__(self):
        if not self.seconds > 0:
            raise _bad("Cost.seconds", self.seconds, "> 0")
        if self.flops < 0 or self.peak_flops_per_s < 0:
            raise _bad("Cost.flops/peak_flops_per_s", (self.flops, self.peak_flops_per_s),
                       ">= 0")


@dataclass(frozen=True)
class Buckets:
    """Shape bucketing: `tokens` is "pow2" or a block size (1 = exact); batches round up to
    a power of two, at most `max_batch` (decode) or `max_prefill_batch` (prefill)."""

    max_batch: int
    tokens: str | int = "pow2"
    max_prefill_batch: int = 1

    def __post_init__(self):
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) \
                or self.max_batch < 1:
            raise _bad("--max-batch", self.max_batch, "a positive integer")
        if isinstance(self.max_prefill_batch, bool) or not isinstance(
                self.max_prefill_batch, int) or self.max_prefill_batch < 1:
            raise _bad("--max-prefill-batch", self.max_prefill_batch, "a positive integer")
        if self.tokens != "pow2" and (isinstance(self.tokens, bool) or
                                      not isinstance(self.tokens, int) or self.tokens < 1):
            raise _bad("--bucket", self.tokens, "pow2 or a positive integer block of tokens")

    def batch(self, n: int) -> int:
        return min(1 << (n - 1).bit_length(), self.max_batch)

    def prefill_batch(self, n: int) -> int:
        return min(1 << (n - 1).bit_length(), self.max_prefill_batch)

    def token_count(self, n: int, cap: int) -> int:
        """`n` rounded up to the bucket, at most `cap` (when n <= cap, still >= n)."""
        up = 1 << (n - 1).bit_length() if self.tokens == "pow2" else -(-n // self.tokens) * \
            self.tokens
        return max(n, min(up, cap))


def parse_bucket(text: str) -> str | int:
    if text == "pow2":
        return text
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise _bad("--bucket", text, "pow2 or a positive integer block of tokens")
    return v


PREFILL_KINDS = ("whole", "per-token")


@dataclass(frozen=True)
class Mapping:
    """The mapping options that shape a cost (wse_sim.experiment.build_program's)."""

    strategy: str = "layer-pipelined"
    dtype: str = "fp16"
    grid: int | None = None
    reduce_algo: str = "chain"
    attention: str = "auto"
    engine: str = "auto"
    wafers: int = 1
    moe_layout: str | None = None
    routing: str | None = None
    prefill: str = "whole"

    def __post_init__(self):
        if self.dtype not in DTYPE_BYTES:
            raise _bad("--dtype", self.dtype, f"one of {', '.join(DTYPE_BYTES)}")
        if isinstance(self.wafers, bool) or not isinstance(self.wafers, int) or self.wafers < 1:
            raise _bad("--wafers", self.wafers, "a positive integer")
        if self.wafers > 1 and self.strategy != "layer-pipelined":
            raise _bad("--wafers", self.wafers, f"1 with --strategy {self.strategy}: a "
                       "multi-wafer pipeline is layer-pipelined on every wafer")
        if self.prefill not in PREFILL_KINDS:
            raise _bad("--prefill", self.prefill, " or ".join(PREFILL_KINDS))
        if self.wafers > 1 and self.attention != "auto":
            raise _bad("--attention", self.attention, "auto with --wafers > 1: a wafer's "
                       "slice of the model takes the attention split that fits it")

    def build_kw(self) -> dict:
        """The keyword arguments of the mapping (build_program's or stage_programs')."""
        kw = {"dtype": self.dtype, "grid": self.grid, "reduce_algo": self.reduce_algo,
              "moe_layout": self.moe_layout, "routing": self.routing}
        if self.wafers == 1:  # (top-row: the prefill leaves the KV cache where decode reads it)
            kw |= {"strategy": self.strategy, "attention": self.attention, "layout": "top-row"}
        return kw


class CostCache:
    """Shape key -> {"seconds", "flops", "peak_flops_per_s"} or {"error"}; optionally kept in
    a JSON file across runs (`load`, `save`). Counts simulations and their wall time."""

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self.entries: dict = {}
        self.simulated = 0
        self.hits = 0
        self.wall_s = 0.0
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())["entries"]
            except (ValueError, KeyError, TypeError):
                raise _bad("--cost-cache", str(self.path), "a cost cache JSON written by "
                           "wse-sim serve (or a new file)") from None

    def save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"version": 1, "entries": self.entries}))


def model_kv_bytes_per_token(cfg, dtype: str) -> int:
    """2 (K and V) x layers x kv heads x head dim x bytes of the dtype."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.hd * DTYPE_BYTES[dtype]


class ShapeCosts:
    """Costs and fit checks of one model mapped one way on one hardware. Every method takes
    real (unbucketed) sizes and buckets them itself."""

    def __init__(self, hw: HardwareConfig, model: str, mapping: Mapping, buckets: Buckets,
                 cache: CostCache | None = None):
        from workloads.models import load_model
        self.hw, self.model, self.mapping, self.buckets = hw, model, mapping, buckets
        self.cfg = load_model(model)
        self.cache = cache if cache is not None else CostCache()
        prefix = json.dumps([hw.to_dict(), repr(self.cfg), asdict(mapping)], sort_keys=True,
                            default=str)
        self._prefix = hashlib.sha256(prefix.encode()).hexdigest()[:32]
        self.kv_bytes_per_token = model_kv_bytes_per_token(self.cfg, mapping.dtype)
        self._pool: list | None = None

    # ---- shapes ----------------------------------------------------------------------------
    def _key(self, phase: str, batch: int, tokens: int) -> str:
        return f"{self._prefix}|{phase}|{batch}|{tokens}"

    def _build(self, phase: str, batch: int, tokens: int) -> list:
        """[(program, fits)] of a shape: one program, or one per wafer (`--wafers N`: the
        layers split as `wse-sim run --wafers N` splits them, `experiment.stage_programs`)."""
        from wse_sim.experiment import build_program, stage_programs
        from wse_sim.program import check_fits
        m, kw = self.mapping, self.mapping.build_kw()
        if m.wafers == 1:
            programs = [build_program(self.hw, self.model, phase=phase, batch=batch,
                                      prompt=tokens, context=tokens, **kw)]
        else:
            programs = stage_programs(self.hw, self.model, wafers=m.wafers, phase=phase,
                                      batch=batch, prompt=tokens, context=tokens, **kw)
        return [(p, check_fits(p, self.hw)) for p in programs]

    def _entry(self, phase: str, batch: int, tokens: int, simulate_it: bool) -> dict:
        """The cache entry of a bucketed shape; mapped (and simulated when asked) on a miss.
        Over several wafers the step is one batch through every wafer in turn: the seconds
        and FLOPs of the wafers' programs add up (each after the first includes receiving
        the activations over its I/O), and so do the peak FLOP/s of their cores."""
        from mapper.placement import MappingError
        from wse_sim.engine import simulate
        key = self._key(phase, batch, tokens)
        e = self.cache.entries.get(key)
        if e is not None and ("error" in e or "seconds" in e or not simulate_it):
            self.cache.hits += 1
            return e
        t0 = time.perf_counter()
        try:
            built = self._build(phase, batch, tokens)
        except (MappingError, ValueError) as err:  # ConfigError, ProgramError are ValueErrors
            e = {"error": str(err).splitlines()[0]}
        else:
            e = {"fits": True}
            if simulate_it:
                rs = [simulate(p, self.hw, engine=self.mapping.engine) for p, _ in built]
                e = {"seconds": sum(r.seconds for r in rs),
                     "flops": sum(int(r.flops) for r in rs),
                     "peak_flops_per_s": sum(r.peak_flops_per_s for r in rs)}
                self.cache.simulated += 1
        self.cache.wall_s += time.perf_counter() - t0
        self.cache.entries[key] = e
        return e

    def shape_error(self, phase: str, batch: int, tokens: int) -> str | None:
        """None when the bucketed shape maps and fits; else the mapper's one-line reason."""
        return self._entry(phase, batch, tokens, False).get("error")

    def cost(self, phase: str, batch: int, tokens: int) -> Cost:
        e = self._entry(phase, batch, tokens, True)
        if "error" in e:
            raise ValueError(f"{phase} of batch {batch} at {tokens} tokens does not map: "
                             f"{e['error']}")
        return Cost(e["seconds"], e["flops"], e["peak_flops_per_s"])

    def prefill_tokens(self, prompt: int) -> int:
        return self.buckets.token_count(prompt, self.cfg.max_context)

    def decode_context(self, context: int) -> int:
        return self.buckets.token_count(context, self.cfg.max_context - 1)

    def check_maps(self) -> None:
        """Map the smallest decode step: a model the mapper refuses (e.g. one whose weights
        do not fit) raises its one-line error here, before any request is drawn."""
        self._pool_per_wafer()

    # ---- what the scheduler asks -----------------------------------------------------------
    def prefill_cost(self, batch: int, prompt: int) -> Cost:
        """A prefill of `batch` prompts, timed with each at the longest, `prompt` tokens:
        one prefill step (`--prefill whole`), or (`per-token`) `prompt` decode steps of the
        `batch` sequences, position j at context max(1, j), added up."""
        k = self.buckets.prefill_batch(batch)
        if self.mapping.prefill == "whole":
            return self.cost("prefill", k, self.prefill_tokens(prompt))
        seconds, flops, peak_s = 0.0, 0, 0.0
        for context, n in self._per_token_contexts(prompt).items():
            c = self.cost("decode", k, context)
            seconds += n * c.seconds
            flops += n * c.flops
            peak_s += n * c.peak_flops_per_s * c.seconds
        return Cost(seconds, flops, peak_s / seconds)

    def _per_token_contexts(self, prompt: int) -> dict:
        """{bucketed decode context: how many prompt positions run at it} (per-token)."""
        out: dict = {}
        for j in range(prompt):
            c = self.decode_context(max(1, j))
            out[c] = out.get(c, 0) + 1
        return out

    def _prefill_shape(self, batch: int, prompt: int) -> tuple:
        if self.mapping.prefill == "whole":
            return "prefill", batch, self.prefill_tokens(prompt)
        return "decode", batch, self.decode_context(max(1, prompt - 1))  # the last position

    def prefill_fits(self, batch: int, prompt: int) -> bool:
        return self.shape_error(*self._prefill_shape(self.buckets.prefill_batch(batch),
                                                     prompt)) is None

    def decode_cost(self, batch: int, context: int) -> Cost:
        return self.cost("decode", self.buckets.batch(batch), self.decode_context(context))

    def decode_fits(self, batch: int, context: int) -> bool:
        """Whether a decode step of `batch` sequences whose longest context is `context`
        maps (its bucketed shape: weights, working buffers and every sequence's KV slots in
        each core's SRAM, as the mapper places them)."""
        return self.shape_error("decode", self.buckets.batch(batch),
                                self.decode_context(context)) is None

    def prefill_refusal(self, prompt: int) -> str | None:
        err = self.shape_error(*self._prefill_shape(1, prompt))
        return None if err is None else f"prefill does not map ({prompt} tokens): {err}"

    def decode_refusal(self, prompt: int, output: int) -> str | None:
        """Why a request can never decode on this region, even alone; None when it can."""
        if output < 2:
            return None
        tokens = prompt + output - 1
        for w, (pool, per_token) in enumerate(zip(self.kv_pool_bytes_per_wafer,
                                                  self.kv_bytes_per_token_per_wafer,
                                                  strict=True)):
            need = tokens * per_token
            if need > pool:
                where = f" of wafer {w}" if self.mapping.wafers > 1 else ""
                return (f"KV cache: {tokens} tokens x {per_token} B = {need} B > the "
                        f"{pool} B of SRAM{where} left for KV")
        err = self.shape_error("decode", 1, self.decode_context(prompt + output - 2))
        return None if err is None else (f"decode does not map (context "
                                         f"{prompt + output - 2}): {err}")

    @property
    def kv_bytes_per_token_per_wafer(self) -> list[int]:
        """KV bytes per token on each wafer: its share of the layers (`split_evenly`)."""
        from wse_sim.timing import split_evenly
        per_layer = self.kv_bytes_per_token // self.cfg.n_layers
        w = self.mapping.wafers
        return [per_layer * split_evenly(self.cfg.n_layers, w, i) for i in range(w)]

    @property
    def kv_pool_bytes_per_wafer(self) -> list[int]:
        return self._pool_per_wafer()

    def _pool_per_wafer(self) -> list[int]:
        """SRAM left for KV on each wafer of the serving region: the cores its decode step
        (batch 1, context 1) uses times sram_bytes, less every buffer the mapper places there
        that is not KV (weights, embedding table, working buffers)."""
        if self._pool is None:
            self._pool = []
            for program, fits in self._build("decode", 1, 1):
                cores = int((fits["sram_bytes"] > 0).sum())
                other = sum(a.bytes_per_core * a.region.size for a in program.allocs
                            if not a.name.endswith("kv_cache"))
                self._pool.append(max(0, cores * self.hw.sram_bytes - other))
        return self._pool

    @property
    def kv_pool_bytes(self) -> int:
        """SRAM left for KV over every wafer of the serving region (kv_pool_bytes_per_wafer)."""
        return sum(self.kv_pool_bytes_per_wafer)

    @property
    def kv_pool_tokens(self) -> int:
        """Tokens of KV the region holds: the fewest any wafer holds of its layers' KV."""
        return min(pool // per_token for pool, per_token in zip(
            self.kv_pool_bytes_per_wafer, self.kv_bytes_per_token_per_wafer, strict=True))

    def kv_transfer_s(self, tokens: int, io_bits_per_s: float | None = None) -> float:
        """Seconds to move `tokens` tokens of KV over the off-wafer link; over several wafers
        wafer i of the prefill region sends its layers' KV to wafer i of the decode region,
        all wafers at once, so the wafer with the most layers sets the time."""
        io = io_bits_per_s or self.hw.io_bits_per_s
        return tokens * max(self.kv_bytes_per_token_per_wafer) * 8 / io
