"""The `twin` CLI: init, status --json, forget, config errors; real files, no model."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from loop.cli import app
from loop.config import load_config

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    for command in ("init", "import", "run", "chat", "draft", "train", "cycles", "rollback", "status", "style", "forget"):
        assert command in result.output


def test_init_writes_a_config_and_a_private_data_folder(tmp_path: Path) -> None:
    result = invoke("init", "--owner", "4242", "--skip-model")
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "config.toml")
    assert config.owners == [4242]
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert (tmp_path / "data" / "twin.db").exists()
    again = invoke("init", "--skip-model")
    assert "keeping it" in again.output and load_config(tmp_path / "config.toml").owners == [4242]


def test_status_json_on_an_empty_twin(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("owners = [5]\n[schedule]\nenabled = false\n")
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["writing_samples"] == 0 and data["drafts"] == 0
    assert data["feedback"] == {"accept": 0, "edit": 0, "reject": 0, "regenerate": 0}
    assert data["active_adapter"] == 0 and data["last_cycle"] is None


def test_a_wrong_config_value_exits_2_with_key_and_allowed_values(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[generation]\ntop_p = 7\n")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "generation.top_p" in result.output and "(0, 1]" in result.output


def test_an_unknown_owner_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("owners = [5]\n")
    result = runner.invoke(app, ["status", "--owner", "6"])
    assert result.exit_code == 2 and "not in `owners`" in result.output


def test_forget_asks_first_and_removes_the_owner_folder(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("owners = [5]\n[schedule]\nenabled = false\n")
    invoke("status")
    folder = tmp_path / "data" / "owners" / "5" / "adapters"
    folder.mkdir(parents=True)
    (folder / "weights").write_text("x")
    refused = runner.invoke(app, ["forget"], input="n\n")
    assert refused.exit_code == 1 and folder.exists()
    done = invoke("forget", "--yes")
    assert done.exit_code == 0 and not (tmp_path / "data" / "owners" / "5").exists()


FIXTURES = Path(__file__).parent / "fixtures"


def test_import_of_telegram_exports_shows_in_status_counts(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("owners = [1001]\n[schedule]\nenabled = false\n")
    single, full = FIXTURES / "telegram_single" / "result.json", FIXTURES / "telegram_full" / "result.json"
    result = invoke("import", str(single), str(full))
    assert result.exit_code == 0, result.output
    status = json.loads(invoke("status", "--json").stdout)
    # 4 replies of the single chat; 3 replies and 2 saved-messages notes of the full export
    assert status["writing_samples"] == 9
    assert status["writing_samples_by_kind"] == {"reply": 7, "monologue": 2}
    again = invoke("import", str(single))
    assert again.exit_code == 0
    assert json.loads(invoke("status", "--json").stdout)["writing_samples"] == 9


def test_a_malformed_file_fails_and_stores_nothing_of_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("owners = [1001]\n[schedule]\nenabled = false\n")
    broken = tmp_path / "result.json"
    text = (FIXTURES / "telegram_single" / "result.json").read_text(encoding="utf-8")
    broken.write_text(text[: len(text) // 2], encoding="utf-8")
    result = runner.invoke(app, ["import", str(broken)])
    assert result.exit_code == 1
    assert "result.json" in result.output and "nothing of them was stored" in result.output
    assert json.loads(invoke("status", "--json").stdout)["writing_samples"] == 0


def test_status_names_the_next_nightly_run_before_the_scheduler_ever_ran(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('owners = [5]\n[schedule]\ntime = "04:30"\ntimezone = "Europe/Berlin"\n')
    data = json.loads(invoke("status", "--json").stdout)
    assert data["next_cycle"] is not None and "T04:30:00" in data["next_cycle"]
