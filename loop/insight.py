"""What an adapter learnt from the owner, on demand (`twin insight`, /insight) and in the cycle report.

Reads the owner's adapters and held-out text, loads the base model (never the bot's drafting
engine: the measurement must not hold up drafts), and hands them to `training.insight`; the charts
come from `training.insight_charts`. Pure measurement: nothing is trained and the active adapter
stays what it is.

The held-out text of an adapter is the one its own cycle held out (the cycle folder's
examples.json), so the adapter never saw it; when that folder is gone, the newest part of the
owner's writing and verdicts, split as a cycle splits them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy.engine import Engine

from loop import adapters as adapter_store
from loop.child import EXAMPLES_FILE
from loop.config import Config
from storage import repo
from storage.db import read_scope
from loop.errors import InsightUnavailable

logger = logging.getLogger(__name__)


@dataclass
class InsightReport:
    text: str
    charts: list[Path]
    insight: Any  # training.insight.Insight
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Sides:
    version: int
    path: Path
    against: int
    against_path: Path | None
    previous: int | None
    previous_path: Path | None
    cycle_id: int | None


def _resolve(config: Config, engine: Engine, telegram_id: int, version: int | None, against: int | None) -> _Sides:
    from training.artifacts import CorruptAdapter

    with read_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=telegram_id)
        if owner is None:
            raise InsightUnavailable("Nothing is stored for you yet: import your writing and train first.")
        if version is None:
            active = repo.active_adapter(session=session, owner_id=owner.id)  # type: ignore[arg-type]
            if active is None:
                raise InsightUnavailable("No trained version is active yet (the base model drafts): "
                                         "run a cycle first (`twin train` or /train).")
            version = active.version
        rows = {a.version: a for a in repo.list_adapters(session=session, owner_id=owner.id)}  # type: ignore[arg-type]

        def folder(number: int) -> Path:
            row = rows.get(number)
            if row is None:
                raise InsightUnavailable(f"There is no v{number}; versions: "
                                         + (", ".join(f"v{n}" for n in sorted(rows)) or "none yet") + ".")
            try:
                adapter_store.verify(row)
            except CorruptAdapter as error:
                raise InsightUnavailable(f"v{number} cannot be read: {error}") from None
            return Path(row.path)

        if version == 0:
            raise InsightUnavailable("v0 is the base model itself: name a trained version.")
        path = folder(version)
        against = against or 0
        if against == version:
            raise InsightUnavailable(f"v{version} against itself shows nothing: pick another version with --against.")
        against_path = folder(against) if against else None
        # The update sizes are compared with the adapter it was trained from, or with --against.
        previous = against or rows[version].parent_version or None
        previous_path = against_path if against else None
        if previous and not against:
            try:
                previous_path = folder(previous)
            except InsightUnavailable:
                previous, previous_path = None, None
        return _Sides(version, path, against, against_path, previous, previous_path, rows[version].cycle_id)


def heldout_examples(config: Config, engine: Engine, *, telegram_id: int, cycle_id: int | None) -> dict[str, list[Any]]:
    """The held-out feedback and writing of the cycle that trained the adapter, and the owner's lines;
    else the newest share of everything, split as a cycle splits it."""
    from loop.collect import collect
    from training.examples import feedback_from_json, writing_from_json
    from training.datasets import split_holdout, split_writing_holdout

    examples_path = config.owner_dir(telegram_id) / "cycles" / str(cycle_id) / EXAMPLES_FILE if cycle_id else None
    if examples_path is not None and examples_path.exists():
        data = json.loads(examples_path.read_text(encoding="utf-8"))
        return {"feedback": [feedback_from_json(item) for item in data["heldout_feedback"]],
                "writing": [writing_from_json(item) for item in data["heldout_writing"]],
                "owner_lines": list(data.get("owner_lines") or [])}
    with read_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=telegram_id)
        upto = repo.latest_feedback_id(session=session, owner_id=owner.id)  # type: ignore[union-attr,arg-type]
        collected = collect(session=session, owner_id=owner.id, after_id=0, upto_id=upto,  # type: ignore[union-attr,arg-type]
                            trained_upto_id=0, since=None)
    settings = config.evaluation
    _, feedback = split_holdout(collected.feedback, fraction=settings.holdout_fraction, minimum=settings.min_holdout)
    _, writing = split_writing_holdout(collected.writing, settings.holdout_fraction, settings.min_holdout)
    return {"feedback": feedback, "writing": writing, "owner_lines": collected.owner_lines}


def run_insight(config: Config, engine: Engine, *, telegram_id: int, folder: Path, version: int | None = None,
                against: int | None = None) -> InsightReport:
    """Measure adapter `version` (default: the active one) against `against` (default: the base model)
    on its held-out text, write the charts into `folder` and return them with a short text."""
    from loop.style import owner_texts
    from training.inference.engine import Engine as ModelEngine
    from training.insight import insight_lines, measure_insight, measure_items
    from training.insight_charts import write_insight_charts

    started = time.perf_counter()
    sides = _resolve(config, engine, telegram_id, version, against)
    held = heldout_examples(config, engine, telegram_id=telegram_id, cycle_id=sides.cycle_id)
    texts = owner_texts(engine, telegram_id=telegram_id) or held["owner_lines"]
    model = ModelEngine.load(config.model, config.models_dir, max_adapters=3,
                             llamacpp_weights=config.generation.llamacpp_weights)
    items = measure_items(model.tokenizer, config.model, held["feedback"], held["writing"])
    if not items:
        raise InsightUnavailable("No held-out replies of yours to measure on: import a chat export or "
                                 "answer a few drafts first.")
    insight = measure_insight(model, adapter_dir=sides.path, version=sides.version, items=items, owner_texts=texts,
                              generation=config.generation, settings=config.insight, against_dir=sides.against_path,
                              against_version=sides.against, previous_dir=sides.previous_path,
                              previous_version=sides.previous, seed=config.generation.seed)
    charts = write_insight_charts(insight, Path(folder))
    seconds = round(time.perf_counter() - started, 1)
    return InsightReport(text="\n".join(insight_lines(insight)), charts=charts, insight=insight, seconds=seconds)


def cycle_insight_text(data: dict[str, Any] | None) -> str:
    """The cycle report's insight section from what the cycle stored (metrics["insight"]); empty when
    the cycle did not measure one."""
    if not data:
        return ""
    if data.get("skipped"):
        return f"What it learnt: {data['skipped']}; `twin insight` (or /insight) shows it."
    from training.insight import Insight, insight_lines

    try:
        lines = insight_lines(Insight.from_json(data["insight"]))
    except (KeyError, TypeError, ValueError):
        logger.exception("could not read the stored insight")
        return "What it learnt: `twin insight` (or /insight) shows it."
    charts = data.get("charts") or []
    if charts:
        lines.append(f"  Charts: {Path(charts[0]).parent}")
    return "\n".join(lines)
