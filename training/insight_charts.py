"""Phone-readable charts of an adapter's insight (training.insight): a few cells or bars, labelled in words.

Five PNGs, drawn with training.charts' Agg set-up: where the adapter changed the model (a heat map of
layer groups × modules), the words it now favours and avoids, how much attention moved per layer
group, the attention an example reply pays its context (drawn over the text), and the style profile
of the owner beside the drafts before and after. `write_insight_charts` writes all it has data for.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from training.charts import plot_style, pyplot, save_figure
from training.insight import Insight, band_grid, layer_bands
from training.style import FEATURES, StyleProfile

logger = logging.getLogger(__name__)

BANDS = 6  # layer groups in the heat map and the attention bars: 30 layers become 6 rows of 5
STYLE_FEATURES = 6  # style panels shown: those where the three profiles differ most
CHART_NAMES = ("changes", "words", "attention", "attention_text", "style")


def _version(version: int | None) -> str:
    return f"v{version}" if version else "base model"


def plot_update_sizes(insight: Insight, path: Path) -> Path | None:
    """Heat map: rows are layer groups, columns modules in words, cells ‖ΔW‖/‖W‖ in percent; a second
    panel with the change since the previous adapter when there is one."""
    rows, columns, grid = band_grid(insight.changes, BANDS)
    if not grid:
        return None
    plt = pyplot()
    panels = [(f"How much v{insight.version} changed each part (% of the weight)", grid, "Reds")]
    if insight.previous_changes:
        _, before_columns, before = band_grid(insight.previous_changes, BANDS)
        if before_columns == columns and len(before) == len(grid):
            diff = [[a - b for a, b in zip(r1, r2)] for r1, r2 in zip(grid, before)]
            panels.append((f"Change since v{insight.previous} (percentage points)", diff, "RdBu_r"))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, (0.55 * len(rows) + 1.6) * len(panels)), squeeze=False)
    for axis, (title, values, colours) in zip(axes[:, 0], panels):
        percent = [[v * 100 for v in row] for row in values]
        finite = [abs(v) for row in percent for v in row if not math.isnan(v)] or [1.0]
        top = max(finite) or 1.0
        limits = (-top, top) if colours == "RdBu_r" else (0, top)
        axis.imshow(percent, cmap=colours, vmin=limits[0], vmax=limits[1], aspect="auto")
        for i, row in enumerate(percent):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    strong = abs(value) > 0.6 * top
                    axis.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                              color="white" if strong else "black")
        axis.set_xticks(range(len(columns)), columns, fontsize=8, rotation=30, ha="right")
        axis.set_yticks(range(len(rows)), rows, fontsize=8)
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, plt, Path(path))


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def plot_word_shifts(insight: Insight, path: Path) -> Path | None:
    """Two bar panels: the words it now favours (with your and its rate of use) and those it avoids."""
    if not insight.rose and not insight.fell:
        return None
    plt = pyplot()
    panels = [("Now favours (on your held-out replies)", insight.rose, "tab:green",
               lambda p: f"{p.text}   you {_rate(p.owner_rate)}, twin {_rate(p.twin_rate)}"),
              (f"Now avoids (your replies and the {_version(insight.against)}'s drafts)", insight.fell, "tab:red",
               lambda p: f"{p.text}   you {_rate(p.owner_rate)}, before {_rate(p.against_rate)}")]
    panels = [panel for panel in panels if panel[1]]
    height = sum(0.35 * len(items) + 1.0 for _, items, _, _ in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, height + 0.6), squeeze=False)
    for axis, (title, items, colour, label) in zip(axes[:, 0], panels):
        items = list(reversed(items))  # largest at the top
        axis.barh(range(len(items)), [p.shift for p in items], color=colour)
        axis.set_yticks(range(len(items)), [label(p) for p in items], fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.axvline(0, color="grey", linewidth=0.8)
        axis.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("change in log-probability per token (+0.69 = twice as likely)", fontsize=8)
    figure.suptitle("Words and phrases: you / twin / before = share of messages using it", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, plt, Path(path))


def plot_attention_shift(insight: Insight, path: Path) -> Path | None:
    """Bars per layer group: how far the adapter's attention moved from the other model's (mean KL)."""
    attention = insight.attention
    if attention is None or not attention.kl:
        return None
    plt = pyplot()
    groups = layer_bands(len(attention.kl), BANDS * 2)
    values = [sum(attention.kl[a:b + 1]) / (b - a + 1) for a, b in groups]
    labels = [f"layer {a + 1}" if a == b else f"layers {a + 1}-{b + 1}" for a, b in groups]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(groups) + 1.6))
    axis.barh(range(len(values)), values, color="tab:purple")
    axis.set_yticks(range(len(values)), labels, fontsize=8)
    axis.invert_yaxis()  # first layers on top, as the text reads
    axis.set_xlabel("mean KL divergence of the attention (0 = unchanged)", fontsize=8)
    axis.set_title(f"Where attention moved, v{insight.version} against {_version(insight.against)} "
                   f"({attention.items} replies)", fontsize=10)
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return save_figure(figure, plt, Path(path))


def plot_attention_text(insight: Insight, path: Path, *, width_chars: int = 60) -> Path | None:
    """The example's context drawn as text, each token shaded by the attention it gained (red) or lost
    (blue) from the reply; the reply itself below."""
    example = insight.example
    if example is None or not example.tokens:
        return None
    plt = pyplot()
    from matplotlib import colormaps

    gain = example.gain
    top = max((abs(g) for g in gain), default=0.0) or 1.0
    lines: list[list[tuple[str, float]]] = [[]]
    used = 0
    for token, value in zip(example.tokens, gain):
        if token == "\n" or "\n" in token:
            lines.append([])
            used = 0
            token = token.replace("\n", "")
            if not token.strip():
                continue
        if used + len(token) > width_chars and lines[-1]:
            lines.append([])
            used = 0
            token = token.lstrip()
        lines[-1].append((token, value))
        used += len(token)
    lines = [line for line in lines if line][-14:]  # the context nearest the reply
    figure, axis = plt.subplots(figsize=(7, 0.32 * (len(lines) + 4) + 0.8))
    axis.set_axis_off()
    cmap = colormaps["RdBu_r"]
    step = 1.0 / width_chars
    rows = len(lines) + 4
    for row, line in enumerate(lines):
        x = 0.0
        for token, value in line:
            axis.text(x, 1 - (row + 1) / rows, token, family="monospace", fontsize=9, va="center", ha="left",
                      bbox={"boxstyle": "square,pad=0.05", "facecolor": cmap(0.5 + 0.5 * value / top),
                            "edgecolor": "none"})
            x += step * len(token)
    reply = example.reply if len(example.reply) <= 2 * width_chars else example.reply[:2 * width_chars - 1] + "…"
    axis.text(0, 1 - (len(lines) + 2) / rows, f"reply: {reply}", family="monospace", fontsize=9, va="center",
              wrap=True)
    axis.set_title("Which words the reply looks at more (red) or less (blue) than before", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, plt, Path(path))


def chosen_features(profiles: dict[str, StyleProfile], count: int = STYLE_FEATURES) -> list[str]:
    """The features where the drafts differ most from the owner, in units of the owner's spread."""
    owner = profiles["owner"]
    scores = {}
    for name in FEATURES:
        mine = owner.features.get(name)
        if mine is None or not mine.n:
            continue
        spread = mine.std or abs(mine.mean) or 1.0
        others = [p.features.get(name) for key, p in profiles.items() if key != "owner"]
        scores[name] = max((abs(o.mean - mine.mean) / spread for o in others if o is not None and o.n), default=0.0)
    return sorted(scores, key=lambda n: -scores[n])[:count]


def plot_style_before_after(insight: Insight, path: Path) -> Path | None:
    """training.charts' style panels for the few features that moved most: you, before, the twin."""
    if "owner" not in insight.profiles:
        return None
    profiles = {key: StyleProfile.from_dict(value) for key, value in insight.profiles.items()}
    owner = profiles.pop("owner")
    compare = {_version(insight.against): profiles.get("against drafts"), f"v{insight.version}": profiles.get("twin drafts")}
    compare = {key: value for key, value in compare.items() if value is not None and value.n_texts}
    features = chosen_features({"owner": owner, **compare})
    if not features:
        return None
    return plot_style(owner, path, compare=compare, features=features,
                      title=f"Style: you, the {_version(insight.against)}'s drafts and v{insight.version}'s")


def write_insight_charts(insight: Insight, folder: Path) -> list[Path]:
    """Every chart there is data for, as folder/insight-<name>.png, in CHART_NAMES order."""
    folder = Path(folder)
    drawers: dict[str, Any] = {"changes": plot_update_sizes, "words": plot_word_shifts,
                               "attention": plot_attention_shift, "attention_text": plot_attention_text,
                               "style": plot_style_before_after}
    written = []
    for name in CHART_NAMES:
        path = drawers[name](insight, folder / f"insight-{name}.png")
        if path is not None:
            written.append(path)
    return written
