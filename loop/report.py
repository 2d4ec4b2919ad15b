"""The owner's report after a cycle: what it learnt from, the metrics old → new, the decision and why.

Plain text (Telegram and the terminal both show it as it is), built from the cycle row alone so
a report can be rebuilt for any past cycle. The chart beside it comes from `loop.stats`.
"""

from __future__ import annotations

import logging
from typing import Any

from loop.gate import caricature_flags, gate_rule_text, metric_value
from storage.models import Cycle
from training.config import EvaluationSettings

logger = logging.getLogger(__name__)

# (metric key, label, number format)
METRIC_LINES = (
    ("likelihood", "held-out NLL/token (lower is better)", "{:.3f}"),
    ("edit_distance", "edit distance (lower is better)", "{:.2f}"),
    ("attribution", "reads as you (attribution)", "{:.0%}"),
    ("preference_accuracy", "prefers your text (preference acc.)", "{:.0%}"),
)


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def learnt_from_text(counts: dict[str, Any]) -> str:
    by_kind = counts.get("feedback_by_kind") or {}
    kinds = ", ".join(f"{kind} {n}" for kind, n in by_kind.items() if n) or "none"
    train, held = counts.get("train_feedback", 0), counts.get("heldout_feedback", 0)
    lines = [f"Learnt from your verdicts: {train + held} ({kinds}), {train} trained on and {held} held out for the test.",
             f"Your writing: {counts.get('train_writing', 0)} pieces trained on, "
             f"{counts.get('heldout_writing', 0)} replies held out."]
    rows = counts.get("datasets") or {}
    if rows:
        lines.append("Training rows: " + ", ".join(f"{name.upper()} {n}" for name, n in rows.items()) + ".")
    return "\n".join(lines)


def metrics_text(metrics: dict[str, Any], *, active_version: int, candidate_version: int | None) -> str:
    candidate, active = metrics.get("candidate") or {}, metrics.get("active") or {}
    base, baselines = metrics.get("base") or {}, metrics.get("baselines") or {}
    lines = [f"Metrics, v{active_version} → v{candidate_version} (base model):"]
    for key, label, pattern in METRIC_LINES:
        line = (f"  {label}: {_fmt(metric_value(active, key), pattern)} → "
                f"{_fmt(metric_value(candidate, key), pattern)} (base {_fmt(metric_value(base, key), pattern)})")
        if key == "edit_distance" and baselines.get("edit_distance_empty") is not None:
            line += (f"; an empty draft scores {_fmt(baselines.get('edit_distance_empty'), pattern)}, "
                     f"echoing the message {_fmt(baselines.get('edit_distance_echo'), pattern)}")
        if key == "attribution" and baselines.get("attribution_ceiling") is not None:
            line += (f"; your own lines {_fmt(baselines.get('attribution_ceiling'), pattern)}, "
                     f"other people {_fmt(baselines.get('attribution_floor'), pattern)}")
        lines.append(line)
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
    if status == "promoted":
        decision = f"Promoted: v{cycle.candidate_version} is now your twin (was v{cycle.active_version_before})."
    else:
        decision = f"Kept v{cycle.active_version_before}: the new v{cycle.candidate_version} was not better."
    lines = [f"{header}: {decision}", learnt_from_text(cycle.counts or {}),
             metrics_text(cycle.metrics or {}, active_version=cycle.active_version_before,
                          candidate_version=cycle.candidate_version),
             "Why: " + ("; ".join(reasons) if reasons else cycle.reason),
             "Rule: " + gate_info.get("rule", gate_rule_text(settings)) + ".",
             timing_text(cycle.durations or {})]
    return "\n".join(lines)
