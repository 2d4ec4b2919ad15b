"""Charts and table rows for people: the owner's style profile and the metrics across cycles.

PNG files drawn with matplotlib's Agg backend (no display needed); pyplot is imported inside
the functions so importing this module stays cheap. Used by the nightly report, /stats,
/style and `twin style`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from training.style import FEATURES, FeatureStat, StyleProfile

logger = logging.getLogger(__name__)

_EMPTY = FeatureStat(0.0, 0.0, 0)
_BOUNDS = {"share": (0.0, 1.0), "score": (-1.0, 1.0)}

# (row key, panel title); lower is better for the first and third.
CYCLE_SERIES = (
    ("edit_distance", "edit distance (lower is better)"),
    ("accept_rate", "accept rate"),
    ("likelihood", "held-out NLL per token (lower is better)"),
    ("attribution", "attribution: drafts read as the owner"),
)
# Second measurements drawn solid beside the main line: edit distance of the drafts the owner really answered.
CYCLE_EXTRAS = {"edit_distance": (("used_edit_distance", "drafts in real use"),)}
# Dashed reference lines drawn in a panel when the rows carry them.
CYCLE_REFERENCES = {
    "edit_distance": (("edit_distance_empty", "empty draft"), ("edit_distance_echo", "echo")),
    "attribution": (("attribution_ceiling", "owner's own lines"), ("attribution_floor", "other people")),
}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_value(name: str, value: float) -> str:
    """A feature value as a person reads it: shares in percent, rates with two decimals."""
    kind = FEATURES[name].kind if name in FEATURES else "rate"
    if kind == "share":
        return f"{value:.0%}"
    if name in ("words", "chars", "sentence_words"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def style_table_rows(profile: StyleProfile) -> list[tuple[str, str]]:
    """(label, value) rows for a table of the profile; features with no data say so."""
    rows = [("messages", str(profile.n_texts)), ("words", str(profile.n_words))]
    for name, feature in FEATURES.items():
        stat = profile.features.get(name)
        if stat is None or stat.n == 0:
            rows.append((feature.label, "n/a"))
        elif feature.kind == "share":
            rows.append((feature.label, f"{format_value(name, stat.mean)} (n={stat.n})"))
        else:
            rows.append((feature.label, f"{format_value(name, stat.mean)} ± {format_value(name, stat.std)}"))
    for phrase, stat in profile.phrases.items():
        rows.append((f"pet phrase '{phrase}'", f"{stat.mean:.2f} per message"))
    return rows


def plot_style(profile: StyleProfile, path: str | Path, *, compare: dict[str, StyleProfile] | None = None,
               features: list[str] | None = None, title: str | None = None) -> Path:
    """A grid of small panels, one per feature: the owner's mean ± spread and each compared profile.

    `features`: only these (in this order; default every feature the owner's profile has data for)."""
    plt = pyplot()
    path = Path(path)
    profiles = {"owner": profile, **(compare or {})}
    names = [name for name in (features or FEATURES) if name in FEATURES and (profile.features.get(name) or _EMPTY).n]
    columns = 4 if features is None else max(1, min(3, len(names)))  # a chosen few: phone-sized
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, axis in enumerate(axes.flat):
        if index >= len(names):
            axis.set_visible(False)
            continue
        name = names[index]
        labels, means, below, above = [], [], [], []
        for position, (label, item) in enumerate(profiles.items()):
            stat = item.features.get(name) or _EMPTY
            labels.append(label)
            means.append(stat.mean if stat.n else 0.0)
            # A spread bar must not suggest impossible values (a negative rate, a share above one).
            floor, ceiling = _BOUNDS.get(FEATURES[name].kind, (0.0, math.inf))
            low, high = max(stat.mean - stat.std, floor), min(stat.mean + stat.std, ceiling)
            below.append(stat.mean - low if stat.n else 0.0)
            above.append(high - stat.mean if stat.n else 0.0)
            if not stat.n:
                axis.text(position, 0, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
        axis.bar(range(len(labels)), means, yerr=[below, above], capsize=3,
                 color=[colours[i % len(colours)] for i in range(len(labels))])
        axis.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20 if len(labels) > 3 else 0)
        axis.set_title(FEATURES[name].label, fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
        if FEATURES[name].kind == "share":
            axis.set_ylim(0, 1.05)
    figure.suptitle(title or f"Style profile: {profile.n_texts} messages, {profile.n_words} words (bars: mean ± spread)",
                    fontsize=10)
    figure.tight_layout()
    return save_figure(figure, plt, path)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _present(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points that have a value: a missing cycle is bridged by the line instead of breaking it."""
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    return [x for x, _ in pairs], [y for _, y in pairs]


def plot_cycle_history(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per metric across cycles; x is "cycle" (or "version", else the row's position).

    Keys read from each row: edit_distance, accept_rate, likelihood, attribution, plus the
    optional used_edit_distance (drafts in real use) and the references edit_distance_empty/_echo and attribution_ceiling/_floor. Missing,
    None or non-numeric values are skipped (the line joins the cycles that have one); a panel
    with no values at all says so.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    x_key = next((key for key in ("cycle", "version") if any(row.get(key) is not None for row in rows)), None)
    xs = [_number(row.get(x_key)) if x_key else float(i + 1) for i, row in enumerate(rows)]
    figure, axes = plt.subplots(len(CYCLE_SERIES), 1, figsize=(7, 2.0 * len(CYCLE_SERIES) + 0.5),
                                sharex=True, squeeze=False)
    for axis, (key, title) in zip(axes[:, 0], CYCLE_SERIES):
        ys = [_number(row.get(key)) for row in rows]
        axis.set_title(title, fontsize=9)
        if all(math.isnan(y) for y in ys):
            axis.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axis.transAxes, color="grey")
            continue
        axis.plot(*_present(xs, ys), marker="o", label="twin")
        for extra_key, extra_label in CYCLE_EXTRAS.get(key, ()):
            extras = [_number(row.get(extra_key)) for row in rows]
            if not all(math.isnan(e) for e in extras):
                axis.plot(*_present(xs, extras), marker="s", label=extra_label)
        for ref_key, ref_label in CYCLE_REFERENCES.get(key, ()):
            refs = [_number(row.get(ref_key)) for row in rows]
            if not all(math.isnan(r) for r in refs):
                axis.plot(*_present(xs, refs), linestyle="--", marker=".", alpha=0.7, label=ref_label)
        if key in ("accept_rate", "attribution"):
            axis.set_ylim(-0.02, 1.02)
        if len(axis.get_lines()) > 1:
            axis.legend(fontsize=7, loc="best")
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel(x_key or "cycle")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return save_figure(figure, plt, path)


def save_figure(figure: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
    logger.debug("chart written to %s", path)
    return path
