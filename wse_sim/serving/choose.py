"""`--mode auto`: serve the same request stream time-shared and disaggregated, and keep the
mode that serves it best per wafer (docs/serving.md, "Choosing the mode").

The two modes do not use the same hardware: time-shared runs on one region of `wafers`
wafers, disaggregated on two (a prefill region and a decode region, `wafers` each). So the
figure compared is per wafer: with SLO targets, the goodput (requests/s meeting both
targets) per wafer; without, the output tokens/s per wafer. A tie goes to time-shared (the
fewer wafers). Each candidate keeps its own figures, printed with their units.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeCandidate:
    """One mode's outcome on the stream: the wafers it used and the figure compared."""

    mode: str
    wafers: int
    summary: dict

    def __post_init__(self):
        if self.mode not in ("time-shared", "disaggregated"):
            raise ValueError(f"ModeCandidate.mode: got {self.mode!r}, must be time-shared or "
                             "disaggregated")
        if isinstance(self.wafers, bool) or not isinstance(self.wafers, int) or self.wafers < 1:
            raise ValueError(f"ModeCandidate.wafers: got {self.wafers!r}, must be a positive "
                             "integer")

    @property
    def metric(self) -> str:
        return "goodput_requests_per_s" if "slo" in self.summary else "output_tokens_per_s"

    @property
    def per_wafer(self) -> float:
        return self.summary[self.metric] / self.wafers

    def row(self) -> dict:
        s = self.summary
        return {"mode": s["mode"], "wafers": self.wafers,
                "output_tokens_per_s": s["output_tokens_per_s"],
                "requests_per_s": s["requests_per_s"],
                "goodput_requests_per_s": s.get("goodput_requests_per_s"),
                "ttft_p99_s": s["ttft_s"]["p99"], "tpot_p99_s": s["tpot_s"]["p99"],
                "refused": s["refused"], "metric": self.metric,
                "metric_per_wafer": self.per_wafer}

    def line(self) -> str:
        s, unit = self.summary, ("requests/s" if self.metric.startswith("goodput")
                                 else "output tokens/s")

        def ms(v):
            return "-" if v is None else f"{v * 1e3:.4g} ms"
        good = (f", goodput {s['goodput_requests_per_s']:.4g} requests/s" if "slo" in s
                else "")
        return (f"{s['mode']:14} on {self.wafers} wafer(s): {s['output_tokens_per_s']:.4g} "
                f"output tokens/s, {s['requests_per_s']:.4g} requests/s{good}, TTFT p99 "
                f"{ms(s['ttft_s']['p99'])}, TPOT p99 {ms(s['tpot_s']['p99'])}; "
                f"{self.per_wafer:.4g} {unit} per wafer")


def choose_mode(candidates: list) -> tuple:
    """(the winner, one line saying why): the most `metric` per wafer; ties to the first."""
    if not candidates:
        raise ValueError("choose_mode: got no candidates, must have at least one")
    best = candidates[0]
    for c in candidates[1:]:
        if c.per_wafer > best.per_wafer:
            best = c
    unit = "requests/s within the SLO" if best.metric.startswith("goodput") else \
        "output tokens/s"
    others = ", ".join(f"{c.mode} {c.per_wafer:.4g}" for c in candidates if c is not best)
    why = (f"{best.mode}: the most {unit} per wafer, {best.per_wafer:.4g}"
           + (f" vs {others}" if others else ""))
    return best, why
