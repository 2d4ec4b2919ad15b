"""What the twin's use and its cycles say: per-version accept rate and edit distance, cycle history, chart.

Real-use numbers come from drafts and the owner's verdicts (docs/architecture.md, "accept rate" and
"edit distance": the kept text against the draft); evaluation numbers come from the cycle rows.
Used by the nightly report, `/stats`, `twin cycles` and the history chart.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from loop.collect import kept_by_message, kept_by_row
from loop.config import Config
from training.gate import metric_value
from storage import repo
from storage.db import session_scope
from storage.models import FeedbackKind
from training.metrics import edit_distance

logger = logging.getLogger(__name__)


def _owner_id(session: Any, telegram_id: int) -> int | None:
    owner = repo.find_owner(session=session, telegram_id=telegram_id)
    return owner.id if owner else None


def owner_stats(engine: Engine, *, telegram_id: int) -> list[dict[str, Any]]:
    """One row per adapter version that drafted: drafts, verdicts by kind, accept rate, mean edit distance.

    The accept rate is the share of decided drafts accepted as they were. The edit distance
    compares each draft with what the owner finally kept for its message (accepted: 0; a
    reject without replacement and a regenerate with nothing kept later have no distance).
    """
    with session_scope(engine) as session:
        owner_id = _owner_id(session, telegram_id)
        if owner_id is None:
            return []
        pairs = repo.drafts_by_adapter(session=session, owner_id=owner_id)
    decided = [(f, d) for d, f in pairs if f is not None]
    finally_kept = kept_by_message(decided)
    by_version: dict[int, dict[str, Any]] = defaultdict(lambda: {"drafts": 0, "kinds": Counter(), "distances": []})
    for draft, feedback in pairs:
        row = by_version[draft.adapter_version]
        row["drafts"] += 1
        if feedback is None:
            continue
        row["kinds"][feedback.kind.value] += 1
        kept = kept_by_row(feedback, draft)
        if kept is None and feedback.kind == FeedbackKind.regenerate:
            kept = finally_kept.get(draft.message_id)
        if kept:
            row["distances"].append(edit_distance(draft.text, kept))
    result = []
    for version in sorted(by_version):
        row = by_version[version]
        kinds = {kind.value: row["kinds"].get(kind.value, 0) for kind in FeedbackKind}
        decided_count = sum(kinds.values())
        distances = row["distances"]
        result.append({
            "version": version,
            "drafts": row["drafts"],
            "decided": decided_count,
            "accepted": kinds["accept"],
            "accept_rate": kinds["accept"] / decided_count if decided_count else None,
            "edit_distance": sum(distances) / len(distances) if distances else None,
            "by_kind": kinds,
        })
    return result


def list_cycles(engine: Engine, *, telegram_id: int) -> list[dict[str, Any]]:
    """Every cycle of the owner, oldest first, as plain dicts (for `twin cycles [--json]`)."""
    with session_scope(engine) as session:
        owner_id = _owner_id(session, telegram_id)
        if owner_id is None:
            return []
        cycles = repo.list_cycles(session=session, owner_id=owner_id)
        rows = []
        for cycle in cycles:
            row = repo.cycle_summary(cycle)
            row.update(forced=cycle.forced, active_version_before=cycle.active_version_before,
                       feedback_upto_id=cycle.feedback_upto_id, log_path=cycle.log_path)
            rows.append(row)
    return rows


def history_rows(engine: Engine, *, telegram_id: int) -> list[dict[str, Any]]:
    """One row per evaluated cycle for the chart: the metrics of the adapter active after it, and the
    real accept rate and edit distance of the drafts made by the version active before it."""
    use = {row["version"]: row for row in owner_stats(engine, telegram_id=telegram_id)}
    rows = []
    for cycle in list_cycles(engine, telegram_id=telegram_id):
        metrics = cycle.get("metrics") or {}
        if cycle["status"] not in ("promoted", "kept") or not metrics:
            continue
        winner = metrics.get("candidate" if cycle["status"] == "promoted" else "active") or {}
        baselines = metrics.get("baselines") or {}
        real = use.get(cycle["active_version_before"], {})
        rows.append({
            "cycle": cycle["id"],
            "version": cycle["candidate_version"] if cycle["status"] == "promoted" else cycle["active_version_before"],
            "edit_distance": metric_value(winner, "edit_distance"),
            "likelihood": metric_value(winner, "likelihood"),
            "attribution": metric_value(winner, "attribution"),
            "attribution_ceiling": baselines.get("attribution_ceiling"),
            "attribution_floor": baselines.get("attribution_floor"),
            "edit_distance_empty": baselines.get("edit_distance_empty"),
            "edit_distance_echo": baselines.get("edit_distance_echo"),
            "accept_rate": real.get("accept_rate"),
            "used_edit_distance": real.get("edit_distance"),
        })
    return rows


def history_chart(config: Config, engine: Engine, *, telegram_id: int, path: Path) -> Path:
    """Draw edit distance, accept rate, likelihood and attribution across all cycles as a PNG."""
    from training.charts import plot_cycle_history

    return plot_cycle_history(history_rows(engine, telegram_id=telegram_id), Path(path))


def stats_chart(config: Config, engine: Engine, *, telegram_id: int, rows: list[dict[str, Any]],
                path: Path) -> Path | None:
    """The chart beside the per-version table (`rows`, from `owner_stats`): the cycle history once
    there is one, else real use per version; None when there is nothing to draw."""
    if history_rows(engine, telegram_id=telegram_id):
        return history_chart(config, engine, telegram_id=telegram_id, path=path)
    if not rows:
        return None
    from training.charts import plot_cycle_history

    use = [{"version": row["version"], "accept_rate": row["accept_rate"], "edit_distance": row["edit_distance"]}
           for row in rows]
    return plot_cycle_history(use, Path(path))
