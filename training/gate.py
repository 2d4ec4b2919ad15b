"""The promotion gate (docs/architecture.md, "Metrics"): is the candidate adapter better than the active one?

Pure: it compares two metric dicts (as `training.evaluate` returns them) under the tolerances of
`EvaluationSettings` and says yes or no with one human-readable line per criterion, so the
report can show exactly which rule decided and with which tolerance.

The rule: the held-out likelihood (mean per-token NLL, lower is better) must drop by more than
`likelihood_tolerance`; edit distance, attribution and preference accuracy must not get worse
by more than their tolerances plus `noise_z` standard errors of the difference (they are measured
on a handful of sampled drafts or pairs: on five drafts one draft is 20 points of attribution);
no caricature flag may appear that the active adapter lacks (unless its drafts already used that
habit as often, within noise: `rose_over_active`).
A metric that neither side measured (e.g. no held-out preference pairs) is not judged.

Attribution is the character n-gram classifier's (training.attribution): cheap, and its behaviour
and noise are known from many measured runs. The second judge, LambdaG (training.lambdag_judge,
the metrics' "lambdag"), is reported beside it and is not a criterion here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from training.config import EvaluationSettings
from training.style import difference_noise

logger = logging.getLogger(__name__)


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """One number of a metric dict: plain numbers, or the `score`/`mean`/`value` of a nested dict."""
    value = metrics.get(name)
    if isinstance(value, dict):
        for key in ("score", "mean", "value", "nll"):
            if isinstance(value.get(key), (int, float)):
                value = value[key]
                break
        else:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def caricature_flags(metrics: dict[str, Any]) -> dict[str, str]:
    """Flagged features by name -> the flag's text.

    `training.style` writes flags as "<feature>: drafts 0.40 vs owner 0.10 (4.0x)"; the name is
    the part before ": drafts", so the same feature flagged with other numbers is not "new".
    """
    flags = metrics.get("caricature_flags") or []
    if isinstance(flags, dict):
        return {str(name): str(detail) for name, detail in flags.items()}
    named: dict[str, str] = {}
    for flag in flags:
        text = str(flag.get("feature", flag)) if isinstance(flag, dict) else str(flag)
        named[text.split(": drafts", 1)[0].strip()] = text
    return named


SHARES = ("attribution", "preference_accuracy")  # metrics that are a share of items judged 0 or 1


def difference_error(candidate: dict[str, Any], active: dict[str, Any], name: str) -> float:
    """Standard error of (candidate - active) for a metric; 0 when either side did not record one.

    Where both sides kept the metric per held-out item (`per_item`: the same prompts and seeds for
    both), it is the error of the paired difference: an item that is hard for one model is mostly
    hard for the other. Added as if they were independent, the two errors let attribution fall by
    0.19 on 60 drafts as noise (0.05 + 1.64 x 0.088); paired, a model that loses 8 of 60 drafts and
    wins none is refused. Otherwise (no per-item values) the two errors are added.
    """
    paired = paired_difference_error((candidate.get("per_item") or {}).get(name),
                                     (active.get("per_item") or {}).get(name), shares=name in SHARES)
    if paired is not None:
        return paired
    errors = [(side.get("standard_errors") or {}).get(name) for side in (candidate, active)]
    if any(not isinstance(error, (int, float)) for error in errors):
        return 0.0
    return math.sqrt(sum(float(error) ** 2 for error in errors))


def paired_difference_error(new: Any, old: Any, *, shares: bool = False) -> float | None:
    """Standard error of the mean of new[i] - old[i] over the items both measured (None marks an item
    one side could not measure, e.g. an empty draft); None when the lists are not of the same items
    or fewer than two items are left. `shares` (0/1 per item, as an attribution per draft): the
    variance is at least that of one item changing its side, so two models that agreed on every
    item are not taken for noiseless."""
    if not isinstance(new, list) or not isinstance(old, list) or len(new) != len(old):
        return None
    differences = [float(a) - float(b) for a, b in zip(new, old)
                   if isinstance(a, (int, float)) and isinstance(b, (int, float))]
    count = len(differences)
    if count < 2:
        return None
    mean = sum(differences) / count
    variance = sum((d - mean) ** 2 for d in differences) / (count - 1)
    if shares:
        variance = max(variance, 1.0 / count)
    return math.sqrt(variance / count)


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _fmt_opt(value: float | None) -> str:
    return "n/a" if value is None else _fmt(value)


def likelihood_improved(candidate: dict[str, Any], active: dict[str, Any], settings: EvaluationSettings) -> bool:
    """Whether the candidate passes the likelihood criterion (also when neither side could be measured)."""
    new, old = metric_value(candidate, "likelihood"), metric_value(active, "likelihood")
    if new is None and old is None:
        return True
    return new is not None and old is not None and old - new > settings.likelihood_tolerance


def gate(candidate: dict[str, Any], active: dict[str, Any], settings: EvaluationSettings) -> tuple[bool, list[str]]:
    """Decide whether `candidate` replaces `active`; returns (promote, one reason per criterion).

    Failed criteria come first in the list, so `reasons[0]` explains a refusal.
    """
    failed, passed = judge_criteria(candidate, active, settings)
    promote = not failed
    logger.info("gate: %s (%s)", "promote" if promote else "keep", "; ".join(failed or passed))
    return promote, failed + passed


def judge_criteria(candidate: dict[str, Any], active: dict[str, Any],
                   settings: EvaluationSettings) -> tuple[list[str], list[str]]:
    """(failed criteria, passed criteria), one human-readable line each."""
    failed: list[str] = []
    passed: list[str] = []

    new, old = metric_value(candidate, "likelihood"), metric_value(active, "likelihood")
    if new is None and old is None:
        # No held-out reply or verdict exists yet (an owner who imported only monologues): the
        # first adapter could never be promoted otherwise.
        passed.append("held-out likelihood not judged: there is no held-out reply or verdict yet")
    elif new is None or old is None:
        failed.append("held-out likelihood was measured for one model only; it is required to promote")
    elif old - new > settings.likelihood_tolerance:
        passed.append(f"held-out likelihood improved: NLL {_fmt(old)} → {_fmt(new)} "
                      f"(needs a drop of more than {settings.likelihood_tolerance})")
    else:
        failed.append(f"held-out likelihood did not improve enough: NLL {_fmt(old)} → {_fmt(new)} "
                      f"(needs a drop of more than {settings.likelihood_tolerance})")

    # (metric, label, higher is better, tolerance)
    for name, label, higher_better, tolerance in (
        ("edit_distance", "edit distance", False, settings.edit_distance_tolerance),
        ("attribution", "attribution", True, settings.attribution_tolerance),
        ("preference_accuracy", "preference accuracy", True, settings.preference_tolerance),
    ):
        new, old = metric_value(candidate, name), metric_value(active, name)
        if new is None and old is None:
            passed.append(f"{label} not judged: not measured on this held-out set")
            continue
        if new is None or old is None:
            # e.g. the candidate drafted only empty texts, so nothing could be attributed
            failed.append(f"{label} was measured for one model only: {_fmt_opt(old)} → {_fmt_opt(new)}")
            continue
        worse_by = (old - new) if higher_better else (new - old)
        noise = settings.noise_z * difference_error(candidate, active, name)
        allowed = tolerance + noise
        line = (f"{label} {_fmt(old)} → {_fmt(new)} (tolerance {tolerance}"
                + (f" + {_fmt(noise)} sampling noise)" if noise else ")"))
        if worse_by > allowed:
            failed.append(f"{label} got worse: {line}")
        else:
            passed.append(f"{label} held: {line}")

    candidate_flags, active_flags = caricature_flags(candidate), caricature_flags(active)
    new_flags: list[str] = []
    inherited: list[str] = []
    for name, text in sorted(candidate_flags.items()):
        if name not in active_flags:
            if rose_over_active(candidate, active, name, settings.noise_z):
                new_flags.append(text)
            else:
                inherited.append(name)
    if new_flags:
        failed.append(f"new caricature flag(s): {'; '.join(new_flags)} "
                      f"(a draft feature beyond {settings.caricature_ratio}× the owner's spread)")
    elif inherited:
        passed.append(f"no new caricature flag: {', '.join(inherited)} flagged, but the active adapter's drafts "
                      f"already did that as often (within {settings.noise_z} standard errors)")
    else:
        passed.append("no new caricature flag")
    return failed, passed


def rose_over_active(candidate: dict[str, Any], active: dict[str, Any], name: str, noise_z: float) -> bool:
    """Whether the candidate's drafts use a flagged habit more than the active adapter's, beyond noise.

    A flag compares the drafts with the owner: a habit the owner never shows ('...' in none of their
    messages) is flagged as soon as the drafts' rate clears its own noise, so an active adapter just
    under that line and a candidate just over it would refuse a candidate that changed nothing. When
    both sides recorded the habit's spread (`habit_rates`: mean, owner's mean, std, n), the candidate
    is held to the active adapter's rate instead; without it every unflagged-before flag counts.
    """
    new = (candidate.get("habit_rates") or {}).get(name)
    old = (active.get("habit_rates") or {}).get(name)
    if not new or not old or len(new) < 4 or len(old) < 4 or not new[3] or not old[3]:
        return True
    return new[0] - old[0] > noise_z * difference_noise(new[2], new[3], old[2], old[3])


def gate_rule_text(settings: EvaluationSettings) -> str:
    """The rule with its tolerances, for the report."""
    return (f"promote when held-out NLL drops by more than {settings.likelihood_tolerance}, "
            f"edit distance rises by at most {settings.edit_distance_tolerance}, "
            f"attribution falls by at most {settings.attribution_tolerance}, "
            f"preference accuracy falls by at most {settings.preference_tolerance} "
            f"(each plus {settings.noise_z} standard errors of sampling noise), "
            f"and no new caricature flag appears")
