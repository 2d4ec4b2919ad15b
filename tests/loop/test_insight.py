"""loop.insight on the tiny model: the cycle report's section for a promoted adapter (or the pointer
when it does not fit the budget), `twin insight` on demand, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loop.config import Config, load_config
from loop.cycle import run_cycle
from loop.errors import InsightUnavailable
from loop.insight import run_insight
from training.insight import insight_for_cycle
from loop.report import insight_text
from loop.runtime import open_engine
from storage import repo
from storage.db import session_scope
from tests.loop.test_cycle_support import OWNER, cycle_config, import_writing  # noqa: F401 - fixtures
from tests.tiny import build_random_adapter
from training.artifacts import read_manifest

PNG = b"\x89PNG\r\n\x1a\n"


def install_random_adapter(config: Config, engine, model_dir: Path, *, telegram_id: int = OWNER) -> Path:
    """The owner's writing plus an active v1 with random weights and no cycle of its own (so the
    held-out text comes from the newest writing, split as a cycle splits it)."""
    import_writing(engine)
    folder = build_random_adapter(model_dir, config.owner_dir(telegram_id) / "adapters" / "v1", seed=11)
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
        repo.add_adapter(session=session, owner_id=owner.id, version=1, path=str(folder), parent_version=0,
                         cycle_id=None, checksum=read_manifest(folder)["checksum"], data_counts={}, metrics={})
        repo.activate_adapter(session=session, owner_id=owner.id, version=1)
    return folder


def active_version(engine) -> int:
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        return repo.active_version(session=session, owner_id=owner.id)


def test_a_promoted_cycle_reports_what_the_adapter_learnt(cycle_config, engine, tmp_path):
    import_writing(engine)
    # Generous: a shared test machine is slow; what a budget that is too short does is tested below.
    cycle_config.insight.cycle_budget_s = 900
    outcome = run_cycle(cycle_config, engine, telegram_id=OWNER)
    assert outcome.status == "promoted", outcome.report_text
    assert "What v1 changed, against the base model" in outcome.report_text
    assert "Biggest changes:" in outcome.report_text and "Charts:" in outcome.report_text
    with session_scope(engine) as session:
        cycle = repo.get_cycle(session=session, cycle_id=outcome.cycle_id)
        stored, stages = cycle.metrics["insight"], cycle.durations["stages"]
    assert stored["seconds"] <= cycle_config.insight.cycle_budget_s and "insight" in stages
    assert all(Path(chart).read_bytes().startswith(PNG) for chart in stored["charts"]) and len(stored["charts"]) == 5

    # The same measurement past its budget is left out of the report, which points to `twin insight`.
    folder = cycle_config.owner_dir(OWNER) / "cycles" / str(outcome.cycle_id)
    job = json.loads((folder / "job.json").read_text())
    job["insight"]["cycle_budget_s"] = 1e-6
    over = insight_for_cycle(job, folder=folder, adapter_dir=Path(job["output_dir"]))
    assert "longer than the cycle allows" in over["skipped"]
    assert "`twin insight`" in insight_text(over) and "`twin insight`" in insight_text(None)

    # On demand: the adapter's own held-out text (its cycle's examples.json); nothing is switched.
    report = run_insight(cycle_config, engine, telegram_id=OWNER, folder=tmp_path / "charts")
    assert report.text.startswith("What v1 changed") and len(report.charts) == 5
    assert report.insight.items == stored["insight"]["items"]
    assert active_version(engine) == 1
    with pytest.raises(InsightUnavailable, match="against itself"):
        run_insight(cycle_config, engine, telegram_id=OWNER, folder=tmp_path, against=1)
    with pytest.raises(InsightUnavailable, match="There is no v7; versions: v1"):
        run_insight(cycle_config, engine, telegram_id=OWNER, folder=tmp_path, version=7)


def test_nothing_to_look_into_before_the_first_adapter(cycle_config, engine, tmp_path):
    import_writing(engine)
    with pytest.raises(InsightUnavailable, match="No trained version is active yet"):
        run_insight(cycle_config, engine, telegram_id=OWNER, folder=tmp_path)


def test_twin_insight_prints_the_summary_and_writes_the_charts(tmp_path, tiny_model_dir, monkeypatch):
    from bot.cli import app

    (tmp_path / "config.toml").write_text(
        f"owners = [{OWNER}]\n[schedule]\nenabled = false\n"
        f"[model]\nbase = \"{tiny_model_dir}\"\ndevice = \"cpu\"\nprecision = \"fp32\"\nowner_name = \"Ada\"\n"
        "context_turns = 4\nmax_prompt_tokens = 128\n"
        "[generation]\nbackend = \"transformers\"\nmax_new_tokens = 12\n"
        "[insight]\ndrafts = 2\nattention_items = 1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path / "config.toml")
    engine = open_engine(config)
    adapter = install_random_adapter(config, engine, tiny_model_dir)
    before = read_manifest(adapter)["checksum"]

    result = CliRunner().invoke(app, ["insight", "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "What v1 changed, against the base model" in result.stdout and "Now favours" in result.stdout
    charts = sorted((tmp_path / "out").glob("insight-*.png"))
    assert len(charts) == 5 and all(str(chart) in result.stdout for chart in charts)
    assert active_version(engine) == 1 and read_manifest(adapter)["checksum"] == before  # nothing trained

    numbers = CliRunner().invoke(app, ["insight", "1", "--json", "--out", str(tmp_path / "out")],
                                 catch_exceptions=False)
    data = json.loads(numbers.stdout)
    assert data["version"] == 1 and data["against"] == 0 and len(data["changes"]) == 14
    refused = CliRunner().invoke(app, ["insight", "3"])
    assert refused.exit_code == 1 and "There is no v3" in refused.output
    engine.dispose()
