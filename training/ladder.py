"""The strength ladder: a refused candidate that did learn is tried at milder strengths.

A candidate whose held-out likelihood improved but that the gate refuses for another reason (a
caricature flag, attribution or edit distance worse) overshot: it learnt the owner, and then some.
Instead of ending the night with nothing, the candidate is evaluated at the strengths of
`evaluation.milder_strengths`, strongest first (training.strength writes each version), and the
strongest one that passes the gate is promoted. The verdict says what was traded, so the report
can tell the owner ("promoted at 50% strength: pet phrase 'i think' 2.5× → 1.3× your rate").

When no strength passes, the night's training is still not thrown away: the version that came
closest (fewest failed criteria, then the strongest) is kept as the adapter the next cycle
continues from, as long as it improved the held-out likelihood.

A candidate whose likelihood did not improve gets no ladder: a weaker copy of training that did
not help does not help either, and each rung costs an evaluation.

Pure apart from the `evaluate_at` callback, which writes and evaluates one milder version.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from training.gate import caricature_flags, judge_criteria, likelihood_improved, metric_value
from training.config import EvaluationSettings

logger = logging.getLogger(__name__)

FULL_STRENGTH = 1.0


@dataclass
class Rung:
    """One strength tried: its metrics and the gate's decision."""

    strength: float
    metrics: dict[str, Any]
    promote: bool
    reasons: list[str]  # failed criteria first
    failed: int  # how many criteria failed

    def summary(self) -> dict[str, Any]:
        return {"strength": self.strength, "promote": self.promote, "failed": self.failed,
                "reason": self.reasons[0] if self.reasons else "",
                "likelihood": metric_value(self.metrics, "likelihood"),
                "attribution": metric_value(self.metrics, "attribution"),
                "lambdag": metric_value(self.metrics, "lambdag"),
                "edit_distance": metric_value(self.metrics, "edit_distance"),
                "caricature_flags": sorted(caricature_flags(self.metrics))}


@dataclass
class Verdict:
    """What the gate decided for the night, over every strength tried."""

    promote: bool
    strength: float  # of the version that is promoted, or kept to continue from
    reasons: list[str]
    metrics: dict[str, Any]  # of that version
    resumable: bool  # not promoted, but the next cycle continues from this version
    rungs: list[Rung] = field(default_factory=list)  # every strength tried, full strength first

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("metrics")
        data["rungs"] = [rung.summary() for rung in self.rungs]
        return data


def _rung(strength: float, metrics: dict[str, Any], active: dict[str, Any], settings: EvaluationSettings) -> Rung:
    failed, passed = judge_criteria(metrics, active, settings)  # as training.gate.gate orders them: failed first
    return Rung(strength, metrics, not failed, failed + passed, len(failed))


def climb(*, candidate: dict[str, Any], active: dict[str, Any], settings: EvaluationSettings,
          strengths: Sequence[float], evaluate_at: Callable[[float], dict[str, Any]]) -> Verdict:
    """Gate the full-strength candidate and, when it overshot, its milder versions; see the module docstring.

    `evaluate_at(strength)` returns the metrics of the candidate at that strength (as
    `training.evaluate` computes them for one adapter).
    """
    full = _rung(FULL_STRENGTH, candidate, active, settings)
    logger.info("gate at full strength: %s (%s)", "promote" if full.promote else "keep", full.reasons[0])
    rungs = [full]
    if full.promote:
        return Verdict(True, FULL_STRENGTH, full.reasons, candidate, False, rungs)
    if not likelihood_improved(candidate, active, settings):
        return Verdict(False, FULL_STRENGTH, full.reasons, candidate, False, rungs)
    for strength in sorted({s for s in strengths if 0 < s < FULL_STRENGTH}, reverse=True):
        rung = _rung(strength, evaluate_at(strength), active, settings)
        rungs.append(rung)
        logger.info("strength %.2f: %s (%s)", strength, "passes" if rung.promote else "refused",
                    rung.reasons[0] if rung.reasons else "")
        if rung.promote:
            return Verdict(True, strength, rung.reasons, rung.metrics, False, rungs)
    learnt = [rung for rung in rungs if likelihood_improved(rung.metrics, active, settings)]
    closest = min(learnt, key=lambda rung: (rung.failed, -rung.strength))
    return Verdict(False, closest.strength, closest.reasons, closest.metrics, True, rungs)


def _percent(strength: float) -> str:
    return f"{strength:.0%}"


def trade_off_text(full: dict[str, Any], chosen: dict[str, Any], strength: float) -> str:
    """What a milder version gave up and won back, in the owner's words."""
    parts: list[str] = []
    rates = chosen.get("habit_rates") or {}
    for name in sorted(caricature_flags(full)):
        full_rate = (full.get("habit_rates") or {}).get(name)
        rate = rates.get(name)
        if full_rate and rate and rate[1]:
            parts.append(f"{name} {full_rate[0] / full_rate[1]:.1f}× → {rate[0] / rate[1]:.1f}× your rate")
        else:
            parts.append(f"{name} no longer flagged" if name not in caricature_flags(chosen) else f"{name} still flagged")
    for key, label, pattern in (("attribution", "reads as you", "{:.0%}"), ("likelihood", "held-out NLL", "{:.3f}"),
                                ("edit_distance", "edit distance", "{:.2f}")):
        before, after = metric_value(full, key), metric_value(chosen, key)
        if before is not None and after is not None and pattern.format(after) != pattern.format(before):
            parts.append(f"{label} {pattern.format(after)} instead of {pattern.format(before)}")
    return f"at {_percent(strength)} strength: " + "; ".join(parts)
