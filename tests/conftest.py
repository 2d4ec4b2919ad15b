"""Shared fixtures: every test gets its own data folder, database and environment.

The database is a fresh SQLite file per test; with TWIN_TEST_DATABASE_URL set (CI starts a
PostgreSQL server) the storage, loop and bot tests also run against PostgreSQL, each test in a
schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from loop.config import Config
from storage.db import open_database

POSTGRES_URL_ENV = "TWIN_TEST_DATABASE_URL"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's config, token, folders and any model hub."""
    for name in ("TWIN_CONFIG", "TWIN_TELEGRAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("WANDB_DISABLED", "true")
    # The CLI turns library progress bars off through the environment (loop.runtime); setting and
    # deleting the switch here makes monkeypatch restore "unset" after each test.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "")
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.chdir(tmp_path)


def _database_params() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get(POSTGRES_URL_ENV) else ["sqlite"]


@pytest.fixture(params=_database_params())
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A URL of an empty database: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twin.db'}"
        return
    from sqlalchemy import create_engine, text

    base = os.environ[POSTGRES_URL_ENV]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(database_url: str):
    engine = open_database(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    """Defaults with the data folder and database under the test's tmp_path, one owner configured."""
    cfg = Config(data_dir=tmp_path / "data", database_url=database_url, owners=[1001])
    cfg.schedule.min_new_feedback = 1
    return cfg


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama with the SmolLM2 tokenizer, saved as a local model folder."""
    from tests.tiny import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))
