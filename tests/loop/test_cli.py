"""The `twin` CLI: init, status --json, forget, config errors; real files, no model."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from bot.cli import app  # loop's commands plus `run`: the console script `twin`
from loop.config import load_config
from loop.runtime import PROGRESS_BAR_SWITCHES

ROOT = Path(__file__).resolve().parents[2]

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


FIXTURES = Path(__file__).parents[1] / "fixtures"


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


def run_twin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`twin ARGS` as a real process (a fresh interpreter, as `make run` starts it), stdin at EOF."""
    env = {name: value for name, value in os.environ.items() if name not in PROGRESS_BAR_SWITCHES}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def test_a_first_run_shows_no_library_noise_unless_verbose(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`twin run` without a token (the terminal chat of `make run`): before the prompt the libraries
    printed a "Loading weights" bar and APScheduler's INFO lines; -v brings them back."""
    (tmp_path / "config.toml").write_text(
        f'owners = [5]\n[model]\nbase = "{tiny_model_dir}"\ndevice = "cpu"\n[generation]\nbackend = "transformers"\n')
    quiet = run_twin("run", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "they>" in quiet.stdout
    printed = quiet.stdout + quiet.stderr
    assert "apscheduler" not in printed and "Loading weights" not in printed and "it/s" not in printed
    assert "loop.scheduler: nightly cycle scheduled at 03:00" in quiet.stderr  # the twin's own line stays
    verbose = run_twin("-v", "run", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO apscheduler.scheduler: Scheduler started" in verbose.stderr
    assert "Loading weights" in verbose.stderr


def test_verbose_is_in_the_help() -> None:
    assert "--verbose" in invoke("--help").output
