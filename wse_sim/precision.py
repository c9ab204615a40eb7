"""Per-tensor precision: the dtype of a run's activations, weights, KV cache and accumulators,
and the rules that turn them into compute dtypes (docs/precision.md).

A run used to have one dtype. `Precision` gives each kind of tensor its own:

- `acts`: activations as they are stored between ops and moved over the fabric and the I/O;
- `weights`: the weight matrices (projections, FFN, embedding table, LM head);
- `kv`: the KV cache;
- `accum`: the accumulators (FMAC partial sums, attention scores) held in SRAM.

The rules (assumptions, stated in docs/precision.md):

- a matmul runs on the FMAC lanes of the wider of its two operands' dtypes; two 8-bit
  operands of different kinds (int8 x fp8, e4m3 x e5m2) run at fp16 (no mixed 8-bit lanes);
- element-wise ops (norms, softmax, activations, residuals) compute in `vector`, the
  activations' dtype when it is a float one of 16 or 32 bits, else fp16 (8-bit activations are
  dequantized on load and quantized on store, at no extra cycles); partial sums that travel
  between cores are rounded to `vector` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from wse_sim.errors import ConfigError
from wse_sim.hardware import DTYPE_BYTES, DTYPES, FLOAT_DTYPES

VECTOR_FALLBACK = "fp16"  # what 8-bit activations compute element-wise ops in


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: got {value!r}, must be one of {', '.join(allowed)}")


def matmul_dtype(a: str, b: str) -> str:
    """The dtype whose FMAC lanes multiply an `a` operand by a `b` operand: the wider one (by
    bytes; at equal width the same dtype, or fp32 > fp16 > bf16 by DTYPES order for 2-byte
    floats); two different 8-bit dtypes meet at fp16."""
    _check("dtype", a, DTYPES)
    _check("dtype", b, DTYPES)
    if a == b:
        return a
    wa, wb = DTYPE_BYTES[a], DTYPE_BYTES[b]
    if wa == wb == 1:
        return VECTOR_FALLBACK
    if wa != wb:
        return a if wa > wb else b
    return min(a, b, key=DTYPES.index)


@dataclass(frozen=True)
class Precision:
    """The dtypes of a run's tensors (see the module's docstring)."""

    acts: str = "fp16"
    weights: str = "fp16"
    kv: str = "fp16"
    accum: str = "fp32"

    def __post_init__(self):
        for name in ("acts", "weights", "kv"):
            _check(f"{name}_dtype" if name != "acts" else "dtype", getattr(self, name), DTYPES)
        _check("accum_dtype", self.accum, FLOAT_DTYPES)

    @classmethod
    def of(cls, dtype: str, weights: str | None = None, kv: str | None = None,
           accum: str | None = None) -> Precision:
        """The run's `dtype` for the activations and for every tensor not given."""
        return cls(dtype, weights or dtype, kv or dtype, accum or "fp32")

    @property
    def uniform(self) -> bool:
        """Every tensor in the activations' dtype, accumulators in fp32 (the one-dtype run)."""
        return self.weights == self.kv == self.acts and self.accum == "fp32"

    @property
    def vector(self) -> str:
        """The dtype element-wise ops compute in (and travelling partial sums are rounded to)."""
        return self.acts if self.acts in FLOAT_DTYPES else VECTOR_FALLBACK

    @property
    def matmul(self) -> str:
        """The compute dtype of a matmul by a weight: weights x activations."""
        return matmul_dtype(self.weights, self.acts)

    @property
    def attention(self) -> str:
        """The compute dtype of QK^T and PV: the KV cache x activations."""
        return matmul_dtype(self.kv, self.acts)

    @property
    def compute_dtypes(self) -> tuple:
        """The dtypes whose lanes the run's ops need (matmuls, attention, element-wise)."""
        return tuple(dict.fromkeys((self.matmul, self.attention, self.vector)))

    def bytes(self, tensor: str) -> int:
        """Bytes per value of `tensor` (acts, weights, kv, accum)."""
        return DTYPE_BYTES[getattr(self, tensor)]

    def to_dict(self) -> dict:
        return {"acts": self.acts, "weights": self.weights, "kv": self.kv, "accum": self.accum,
                "matmul": self.matmul, "attention": self.attention, "vector": self.vector}
