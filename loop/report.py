"""The owner's report after a cycle: what it learnt from, the metrics old → new, the decision and why.

Plain text (Telegram and the terminal both show it as it is), built from the cycle row alone so
a report can be rebuilt for any past cycle. The chart beside it comes from `loop.stats`.
"""

from __future__ import annotations

import logging
from typing import Any

from training.gate import caricature_flags, gate_rule_text, metric_value
from training.ladder import trade_off_text
from storage.models import Cycle
from training.config import EvaluationSettings

logger = logging.getLogger(__name__)

# (metric key, label, number format)
METRIC_LINES = (
    ("likelihood", "held-out NLL/token (lower is better)", "{:.3f}"),
    ("edit_distance", "edit distance (lower is better)", "{:.2f}"),
    ("attribution", "reads as you (attribution)", "{:.0%}"),
    ("lambdag", "reads as you (LambdaG, a second judge; not gated)", "{:.0%}"),
    ("preference_accuracy", "prefers your text over its drafts (as a reward model)", "{:.0%}"),
)
OPTIONAL_METRICS = ("lambdag",)  # left out of reports of cycles that did not measure them (older ones)


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _writing_text(counts: dict[str, Any]) -> str:
    pieces, held = counts.get("train_writing", 0), counts.get("heldout_writing", 0)
    used = counts.get("writing_used")
    if used is not None and used < pieces:
        return (f"Your writing: {pieces} pieces; this first cycle trained on the newest {used} distinct ones "
                f"(training.first_cycle_writing; later cycles replay the rest), {held} replies held out.")
    return f"Your writing: {pieces} pieces trained on, {held} replies held out."


def learnt_from_text(counts: dict[str, Any]) -> str:
    by_kind = counts.get("feedback_by_kind") or {}
    kinds = ", ".join(f"{kind} {n}" for kind, n in by_kind.items() if n) or "none"
    train, held = counts.get("train_feedback", 0), counts.get("heldout_feedback", 0)
    lines = [f"Learnt from your verdicts: {train + held} ({kinds}), {train} trained on and {held} held out for the test.",
             _writing_text(counts)]
    if counts.get("continued_from"):
        lines.append(f"Continued from v{counts['continued_from']}, which an earlier cycle kept.")
    rows = counts.get("datasets") or {}
    if rows:
        lines.append("Training rows: " + ", ".join(f"{name.upper()} {n}" for name, n in rows.items()) + ".")
    return "\n".join(lines)


def metrics_text(metrics: dict[str, Any], *, active_version: int, candidate_version: int | None) -> str:
    candidate, active = metrics.get("candidate") or {}, metrics.get("active") or {}
    base, baselines = metrics.get("base") or {}, metrics.get("baselines") or {}
    lines = [f"Metrics, v{active_version} → v{candidate_version} (base model):"]
    for key, label, pattern in METRIC_LINES:
        if key in OPTIONAL_METRICS and all(key not in side for side in (candidate, active, base)):
            continue
        line = (f"  {label}: {_fmt(metric_value(active, key), pattern)} → "
                f"{_fmt(metric_value(candidate, key), pattern)} (base {_fmt(metric_value(base, key), pattern)})")
        if key == "edit_distance" and baselines.get("edit_distance_empty") is not None:
            line += (f"; an empty draft scores {_fmt(baselines.get('edit_distance_empty'), pattern)}, "
                     f"echoing the message {_fmt(baselines.get('edit_distance_echo'), pattern)}")
        if key in ("attribution", "lambdag") and baselines.get(f"{key}_ceiling") is not None:
            line += (f"; your own lines {_fmt(baselines.get(f'{key}_ceiling'), pattern)}, "
                     f"other people {_fmt(baselines.get(f'{key}_floor'), pattern)}")
        lines.append(line)
    if baselines.get("judges_learnt_from_unseen") is False:
        lines.append("  (both judges also learnt from lines the twin trained on: too few held-out lines to spare)")
    flags = caricature_flags(candidate)
    lines.append("  caricature: " + ("; ".join(flags.values()) if flags else "none"))
    return "\n".join(lines)


def timing_text(durations: dict[str, Any]) -> str:
    stages = durations.get("stages") or {}
    parts = [f"{name} {_duration(info.get('seconds'))}" for name, info in stages.items()
             if isinstance(info, dict) and info.get("seconds") is not None]
    peak = max((info.get("peak_rss_mb") or 0 for info in stages.values() if isinstance(info, dict)), default=0)
    text = f"Took {_duration(durations.get('total_seconds'))}"
    if parts:
        text += " (" + ", ".join(parts) + ")"
    if peak:
        text += f", peak memory {peak / 1024:.1f} GB"
    return text + "."


def _strengths_tried(gate_info: dict[str, Any]) -> str:
    return ", ".join(f"{rung['strength']:.0%}" for rung in gate_info.get("rungs") or [])


def decision_text(cycle: Cycle, gate_info: dict[str, Any]) -> tuple[str, str]:
    """(the decision, what a milder strength traded or what was kept for the next cycle; may be empty)."""
    strength = float(gate_info.get("strength", 1.0))
    metrics = cycle.metrics or {}
    new, old = cycle.candidate_version, cycle.active_version_before
    if cycle.status.value == "promoted":
        if strength >= 1.0:
            return f"Promoted: v{new} is now your twin (was v{old}).", ""
        trade = trade_off_text(metrics.get("full_strength") or {}, metrics.get("candidate") or {}, strength)
        return (f"Promoted at {strength:.0%} strength: v{new} is now your twin (was v{old}); at full strength "
                f"it overshot: {(gate_info.get('rungs') or [{}])[0].get('reason', '')}.", f"Traded {trade}.")
    decision = f"Kept v{old}: the new v{new} was not better."
    if not gate_info.get("resumable"):
        return decision, ""
    return (f"Kept v{old}: no strength of the new v{new} passed the gate (tried {_strengths_tried(gate_info)}).",
            f"Its training is not lost: the next cycle continues from v{new} (at {strength:.0%} strength).")


def cycle_report(cycle: Cycle, settings: EvaluationSettings) -> str:
    """The report of a finished cycle as a few lines of text."""
    status = cycle.status.value
    header = f"Learning cycle #{cycle.id} ({cycle.trigger})"
    if status == "skipped":
        return f"{header}: nothing to do. {cycle.reason}"
    if status == "failed":
        version = cycle.active_version_before
        unchanged = f"v{version} stays active" if version else "the base model stays active"
        text = f"{header} failed: {cycle.reason}\nYour twin is unchanged: {unchanged}."
        if cycle.log_path:
            text += f"\nLog: {cycle.log_path}"
        return text
    gate_info = (cycle.metrics or {}).get("gate") or {}
    reasons = gate_info.get("reasons") or []
    decision, trade = decision_text(cycle, gate_info)
    lines = [f"{header}: {decision}", *([trade] if trade else []), learnt_from_text(cycle.counts or {}),
             metrics_text(cycle.metrics or {}, active_version=cycle.active_version_before,
                          candidate_version=cycle.candidate_version),
             "Why: " + ("; ".join(reasons) if reasons else cycle.reason),
             "Rule: " + gate_info.get("rule", gate_rule_text(settings)) + ".",
             timing_text(cycle.durations or {})]
    if status == "promoted":
        lines.append(insight_text((cycle.metrics or {}).get("insight")))
    return "\n".join(line for line in lines if line)


def insight_text(data: dict[str, Any] | None) -> str:
    """What the promoted adapter learnt (loop.insight), or where to see it when the cycle did not measure it."""
    from loop.insight import cycle_insight_text

    return cycle_insight_text(data) or "What it learnt: `twin insight` (or /insight) shows it."
