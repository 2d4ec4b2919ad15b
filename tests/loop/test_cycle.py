"""The learning cycle end to end on the tiny model: import, drafts, every verdict, train, promote, draft again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loop.cycle import list_cycles, owner_stats, run_cycle
from storage import repo
from storage.db import session_scope
from tests.loop.test_cycle_support import (  # noqa: F401 - fixtures
    OWNER,
    cycle_config,
    give_every_kind_of_feedback,
    import_writing,
    twin,
)


def active_version(engine) -> int:
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        return repo.active_version(session=session, owner_id=owner.id)


def test_full_cycle_import_feedback_promote_and_the_next_draft_uses_the_new_version(cycle_config, engine, twin):
    assert import_writing(engine) == 24
    first = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert first.status == "promoted", first.report_text
    assert active_version(engine) == first.candidate_version == 1
    rows = list_cycles(engine, telegram_id=OWNER)
    assert rows[0]["counts"]["train_feedback"] == 0 and rows[0]["counts"]["datasets"]["sft"] > 0
    assert rows[0]["counts"]["datasets"].get("dpo", 0) == 0  # SFT on the writing alone

    kinds = give_every_kind_of_feedback(twin)
    assert twin.draft_reply(telegram_id=OWNER, chat_key="x", incoming="hello?").adapter_version == 1

    second = run_cycle(cycle_config, engine, telegram_id=OWNER, trigger="schedule")
    assert second.status == "promoted", second.report_text
    assert active_version(engine) == 2
    assert twin.draft_reply(telegram_id=OWNER, chat_key="x", incoming="and now?").adapter_version == 2

    cycle = list_cycles(engine, telegram_id=OWNER)[-1]
    folder = cycle_config.owner_dir(OWNER) / "cycles" / str(cycle["id"])
    datasets = {name: (folder / "datasets" / f"{name}.jsonl").read_text().splitlines() for name in ("sft", "dpo", "kto")}
    assert all(datasets.values()), "SFT, DPO and KTO rows were all written"
    assert cycle["counts"]["feedback_by_kind"]["regenerate"] == kinds["regenerate"]
    assert cycle["status"] == "promoted" and cycle["trigger"] == "schedule"
    assert set(cycle["durations"]["stages"]) >= {"collect", "datasets", "sft", "dpo", "kto", "evaluate"}
    # The child trains at the lowest priority, so drafting keeps its speed while a cycle runs.
    assert cycle["durations"]["stages"]["child"]["priority"] == {"nice": 19, "policy": "idle"}
    assert cycle["metrics"]["candidate"]["likelihood"] < cycle["metrics"]["active"]["likelihood"]
    assert Path(cycle["log_path"]).exists()
    # The base model and the active adapter (the first night's candidate) scored only the held-out items
    # the first night did not: its held-out imported replies were kept.
    assert cycle["metrics"]["baselines"]["scores_kept"] > 0
    assert (cycle_config.owner_dir(OWNER) / "kept-scores.json").is_file()
    # The report names what was learnt from, the metrics old → new, the decision and the rule.
    for words in ("Promoted", "v1 → v2", "edit", "regenerate", "NLL", "Rule:"):
        assert words in second.report_text
    assert second.chart_path is not None and second.chart_path.read_bytes()[:4] == b"\x89PNG"
    # A regenerate's later kept text made a DPO pair: the edited reply over the rejected draft.
    pairs = [json.loads(line) for line in datasets["dpo"]]
    assert any(row["chosen"].startswith("yeah im coming") or "lol" in row["chosen"] for row in pairs)

    stats = {row["version"]: row for row in owner_stats(engine, telegram_id=OWNER)}
    assert stats[1]["by_kind"]["accept"] == 1 and stats[1]["accept_rate"] == pytest.approx(1 / 6)
    assert stats[1]["edit_distance"] is not None

    # Nothing new: the nightly run is skipped and says what it needs.
    cycle_config.schedule.min_new_feedback = 3
    skipped = run_cycle(cycle_config, engine, telegram_id=OWNER, trigger="schedule")
    assert skipped.status == "skipped" and "0 new verdict(s)" in skipped.reason and "3 are needed" in skipped.reason

    # A candidate made worse on purpose (a learning rate far too high) is refused, and the report says why.
    for stage in (cycle_config.training.sft, cycle_config.training.dpo, cycle_config.training.kto):
        stage.learning_rate, stage.max_steps = 0.9, 10  # whichever stage has rows this time
    wrecked = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    assert wrecked.status == "kept", wrecked.report_text
    assert wrecked.reason.startswith("held-out likelihood did not improve enough")
    assert "Kept v2" in wrecked.report_text and "did not improve enough" in wrecked.report_text
    assert "0.005" in wrecked.report_text  # the tolerance of the rule is shown
    metrics = list_cycles(engine, telegram_id=OWNER)[-1]["metrics"]
    assert metrics["candidate"]["likelihood"] > metrics["active"]["likelihood"]  # really worse, not just equal
    assert active_version(engine) == 2
    assert twin.draft_reply(telegram_id=OWNER, chat_key="x", incoming="still you?").adapter_version == 2


def test_a_promoted_candidate_is_converted_for_fast_drafting_before_the_bot_needs_it(cycle_config, engine, twin):
    from loop import adapters as adapter_store
    from tests.tiny import tiny_generation_settings
    from training.inference.serving import COMPLETE_MARKER

    cycle_config.generation = tiny_generation_settings(backend="ctranslate2")
    import_writing(engine)
    first = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert first.status == "promoted", first.report_text
    folder = adapter_store.adapter_dir(cycle_config, OWNER, first.candidate_version)
    assert [p.name for p in folder.iterdir() if (p / COMPLETE_MARKER).exists()], "converted in the training child"
    assert list_cycles(engine, telegram_id=OWNER)[-1]["durations"]["stages"]["serving"]["seconds"] > 0

    give_every_kind_of_feedback(twin)
    for stage in (cycle_config.training.sft, cycle_config.training.dpo, cycle_config.training.kto):
        stage.learning_rate, stage.max_steps = 0.9, 10
    wrecked = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    assert wrecked.status == "kept", wrecked.report_text
    refused = adapter_store.adapter_dir(cycle_config, OWNER, wrecked.candidate_version)
    assert not [p for p in refused.iterdir() if (p / COMPLETE_MARKER).exists()]  # no conversion wasted on it
    assert "serving" not in list_cycles(engine, telegram_id=OWNER)[-1]["durations"]["stages"]


def test_a_kept_candidate_that_learnt_is_where_the_next_cycle_continues(cycle_config, engine):
    from loop.cycle import RESUMABLE, rollback
    from storage.models import AdapterState

    import_writing(engine)
    first = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert first.status == "promoted", first.report_text
    rollback(cycle_config, engine, telegram_id=OWNER, version=0)
    # v1 now stands where the strength ladder leaves a candidate no strength of which passed the gate.
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        kept = repo.get_adapter(session=session, owner_id=owner.id, version=1)
        kept.state, kept.data_counts = AdapterState.candidate, {**kept.data_counts, RESUMABLE: True}
        kept_path = kept.path
        session.add(kept)

    second = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    job = json.loads((cycle_config.owner_dir(OWNER) / "cycles" / str(second.cycle_id) / "job.json").read_text())
    assert job["init_adapter"] == kept_path and job["active_adapter"] is None  # judged against the base model
    assert "Continued from v1" in second.report_text
    assert list_cycles(engine, telegram_id=OWNER)[-1]["counts"]["continued_from"] == 1


def test_without_a_kept_candidate_the_cycle_continues_the_active_adapter(cycle_config, engine):
    import_writing(engine)
    cycle_config.training.first_cycle_writing = 5  # a "long history" of 24 replies: the newest 5 train
    first = run_cycle(cycle_config, engine, telegram_id=OWNER)
    counts = list_cycles(engine, telegram_id=OWNER)[0]["counts"]
    assert counts["writing_used"] == counts["datasets"]["sft"] == 5 and counts["train_writing"] > 5
    assert "the newest 5 distinct ones" in first.report_text
    second = run_cycle(cycle_config, engine, telegram_id=OWNER, force=True)
    job = json.loads((cycle_config.owner_dir(OWNER) / "cycles" / str(second.cycle_id) / "job.json").read_text())
    assert job["init_adapter"] == job["active_adapter"] is not None
    assert first.candidate_version == 1 and "continued_from" not in list_cycles(engine, telegram_id=OWNER)[-1]["counts"]
