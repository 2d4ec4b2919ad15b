"""Per-version use statistics, the cycle list, the history chart and the report text."""

from __future__ import annotations

import pytest

from loop.cycle import history_chart, list_cycles, owner_stats
from loop.drafting import FakeDrafter
from loop.report import cycle_report
from loop.stats import history_rows
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import CycleStatus
from tests.loop.test_cycle_support import OWNER
from training.config import EvaluationSettings


def evaluated(likelihood: float, edit: float, attribution: float) -> dict:
    return {"likelihood": likelihood, "edit_distance": edit, "attribution": attribution,
            "preference_accuracy": 0.5, "caricature_flags": []}


def add_cycle(engine, status: CycleStatus, *, before: int, candidate: int | None, metrics: dict | None = None,
              reason: str = "r") -> int:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        cycle = repo.start_cycle(session=session, owner_id=owner.id, trigger="schedule", forced=False,
                                 active_version_before=before, feedback_upto_id=0)
        repo.finish_cycle(session=session, cycle_id=cycle.id, status=status, reason=reason,
                          candidate_version=candidate, metrics=metrics or {},
                          counts={"feedback_by_kind": {"accept": 2, "edit": 1, "reject": 0, "regenerate": 1},
                                  "train_feedback": 3, "heldout_feedback": 1, "train_writing": 10,
                                  "heldout_writing": 2, "datasets": {"sft": 8, "dpo": 2, "kto": 5}},
                          durations={"stages": {"sft": {"seconds": 75, "peak_rss_mb": 2048}},
                                     "total_seconds": 130})
        return cycle.id


def test_owner_stats_per_version(config, engine):
    drafter = FakeDrafter(replies=["yes i will come", "see you there", "no idea", "maybe later", "ok then"])
    twin = Twin(config, engine, drafter)
    first = twin.draft_reply(telegram_id=OWNER, chat_key="a", incoming="coming?")
    twin.record_verdict(telegram_id=OWNER, draft_id=first.id, kind="accept")
    second = twin.draft_reply(telegram_id=OWNER, chat_key="a", incoming="when?")
    twin.record_verdict(telegram_id=OWNER, draft_id=second.id, kind="edit", text="see you there at six")
    third = twin.draft_reply(telegram_id=OWNER, chat_key="a", incoming="what?")
    regenerated = twin.record_verdict(telegram_id=OWNER, draft_id=third.id, kind="regenerate").new_draft
    twin.record_verdict(telegram_id=OWNER, draft_id=regenerated.id, kind="reject", reason="bad")
    twin.draft_reply(telegram_id=OWNER, chat_key="a", incoming="undecided")

    (row,) = owner_stats(engine, telegram_id=OWNER)
    assert row["version"] == 0 and row["drafts"] == 5 and row["decided"] == 4
    assert row["by_kind"] == {"accept": 1, "edit": 1, "reject": 1, "regenerate": 1}
    assert row["accept_rate"] == pytest.approx(0.25)
    # accept: 0; edit "see you there" -> "see you there at six": 2 insertions over 5 kept words.
    # The rejected (no text) draft and the regenerate with nothing kept later have no distance.
    assert row["edit_distance"] == pytest.approx((0 + 2 / 5) / 2)


def test_owner_stats_of_an_unknown_owner_is_empty(engine):
    assert owner_stats(engine, telegram_id=4242) == []
    assert list_cycles(engine, telegram_id=4242) == []


def test_history_rows_take_the_winner_of_each_evaluated_cycle(config, engine):
    baselines = {"edit_distance_empty": 1.0, "edit_distance_echo": 1.3, "attribution_ceiling": 0.8,
                 "attribution_floor": 0.3}
    add_cycle(engine, CycleStatus.skipped, before=0, candidate=None)
    add_cycle(engine, CycleStatus.promoted, before=0, candidate=1,
              metrics={"candidate": evaluated(3.0, 1.5, 0.4), "active": evaluated(4.0, 1.8, 0.3), "baselines": baselines})
    add_cycle(engine, CycleStatus.kept, before=1, candidate=2,
              metrics={"candidate": evaluated(3.1, 1.6, 0.4), "active": evaluated(2.9, 1.4, 0.5), "baselines": baselines})
    add_cycle(engine, CycleStatus.failed, before=1, candidate=None)
    rows = history_rows(engine, telegram_id=OWNER)
    assert [(r["version"], r["likelihood"], r["edit_distance"]) for r in rows] == [(1, 3.0, 1.5), (1, 2.9, 1.4)]
    assert rows[0]["edit_distance_echo"] == 1.3 and rows[0]["attribution_ceiling"] == 0.8
    chart = history_chart(config, engine, telegram_id=OWNER, path=config.data_dir / "history.png")
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert [row["status"] for row in list_cycles(engine, telegram_id=OWNER)] == ["skipped", "promoted", "kept", "failed"]


def test_reports_say_what_happened_and_why(engine):
    settings = EvaluationSettings(likelihood_tolerance=0.01)
    reasons = ["held-out likelihood did not improve enough: NLL 2.900 → 3.100 (needs a drop of more than 0.01)"]
    kept = add_cycle(engine, CycleStatus.kept, before=1, candidate=2, reason=reasons[0], metrics={
        "candidate": evaluated(3.1, 1.6, 0.4), "active": evaluated(2.9, 1.4, 0.5), "base": evaluated(5, 2, 0.2),
        "baselines": {"edit_distance_empty": 1.0, "edit_distance_echo": 1.25},
        "gate": {"promote": False, "reasons": reasons, "rule": "promote when NLL drops by more than 0.01"}})
    failed = add_cycle(engine, CycleStatus.failed, before=1, candidate=None, reason="the training process was killed")
    with session_scope(engine) as session:
        text = cycle_report(repo.get_cycle(session=session, cycle_id=kept), settings)
        failed_text = cycle_report(repo.get_cycle(session=session, cycle_id=failed), settings)
    assert "Kept v1" in text and "v1 → v2" in text and "2.900 → 3.100" in text and "0.01" in text
    assert "accept 2" in text and "regenerate 1" in text and "an empty draft scores 1.00" in text
    assert "2 min 10 s" in text and "peak memory 2.0 GB" in text
    assert "killed" in failed_text and "v1 stays active" in failed_text


def test_the_report_shows_lambdag_beside_attribution_each_with_its_bounds():
    from loop.report import metrics_text

    def judged(attribution: float, lambdag: float) -> dict:
        return {**evaluated(3.0, 1.5, attribution), "lambdag": lambdag}

    metrics = {"candidate": judged(0.6, 0.55), "active": judged(0.5, 0.4), "base": judged(0.2, 0.1),
               "baselines": {"attribution_ceiling": 0.85, "attribution_floor": 0.17,
                             "lambdag_ceiling": 0.93, "lambdag_floor": 0.14}}
    text = metrics_text(metrics, active_version=1, candidate_version=2)
    assert "reads as you (attribution): 50% → 60% (base 20%); your own lines 85%, other people 17%" in text
    assert ("reads as you (LambdaG, a second judge; not gated): 40% → 55% (base 10%); your own lines 93%, "
            "other people 14%") in text
    assert "judges also learnt" not in text  # an older cycle's metrics do not say which lines
    spare = metrics_text({**metrics, "baselines": {**metrics["baselines"], "judges_learnt_from_unseen": True}},
                         active_version=1, candidate_version=2)
    few = metrics_text({**metrics, "baselines": {**metrics["baselines"], "judges_learnt_from_unseen": False}},
                       active_version=1, candidate_version=2)
    assert "judges also learnt" not in spare
    assert "(both judges also learnt from lines the twin trained on: too few held-out lines to spare)" in few
    # A cycle evaluated before LambdaG was reported has no such line rather than a row of n/a.
    older = {side: evaluated(3.0, 1.5, 0.5) for side in ("candidate", "active", "base")}
    assert "LambdaG" not in metrics_text(older, active_version=1, candidate_version=2)
