"""Rollback: an earlier adapter (or the base model) becomes active, verified first; the running twin follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.adapters import RollbackError, adapter_dir
from loop.cycle import rollback
from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import AdapterState
from tests.loop.test_cycle_support import OWNER
from training.artifacts import write_manifest


def make_adapter(config, engine, version: int, parent: int, *, activate: bool = True) -> Path:
    """An adapter folder with a real manifest and checksum (tiny fake weights), recorded in the database."""
    folder = adapter_dir(config, OWNER, version)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(bytes([version]) * 64)
    manifest = write_manifest(folder, {"metadata": {"version": version}})
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        repo.add_adapter(session=session, owner_id=owner.id, version=version, path=str(folder), parent_version=parent,
                         cycle_id=None, checksum=manifest["checksum"], data_counts={}, metrics={})
        if activate:
            repo.activate_adapter(session=session, owner_id=owner.id, version=version)
    return folder


def states(engine) -> dict[int, str]:
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        return {a.version: a.state.value for a in repo.list_adapters(session=session, owner_id=owner.id)}


@pytest.fixture
def three_versions(config, engine):
    for version in (1, 2, 3):
        make_adapter(config, engine, version, version - 1)
    return config


def test_rollback_steps_back_along_the_parents_to_the_base_model(three_versions, engine):
    config = three_versions
    assert rollback(config, engine, telegram_id=OWNER) == 2
    assert states(engine) == {1: "retired", 2: "active", 3: "retired"}
    assert rollback(config, engine, telegram_id=OWNER) == 1
    assert rollback(config, engine, telegram_id=OWNER) == 0
    assert "active" not in states(engine).values()
    with pytest.raises(RollbackError, match="base model"):
        rollback(config, engine, telegram_id=OWNER)


def test_rollback_to_a_named_version_and_the_next_draft_uses_it(three_versions, engine):
    config = three_versions
    twin = Twin(config, engine, FakeDrafter())
    assert twin.draft_reply(telegram_id=OWNER, chat_key="c", incoming="hi").adapter_version == 3
    assert rollback(config, engine, telegram_id=OWNER, version=1) == 1
    assert twin.draft_reply(telegram_id=OWNER, chat_key="c", incoming="hi again").adapter_version == 1
    assert rollback(config, engine, telegram_id=OWNER, version=3) == 3  # forward again is allowed
    assert twin.draft_reply(telegram_id=OWNER, chat_key="c", incoming="and?").adapter_version == 3


def test_a_corrupt_or_missing_adapter_is_refused_and_the_active_one_stays(three_versions, engine):
    config = three_versions
    (adapter_dir(config, OWNER, 2) / "adapter_model.safetensors").write_bytes(b"damaged")
    with pytest.raises(RollbackError, match="checksum"):
        rollback(config, engine, telegram_id=OWNER)
    assert states(engine)[3] == "active"
    with pytest.raises(RollbackError, match="no adapter version 7"):
        rollback(config, engine, telegram_id=OWNER, version=7)
    import shutil

    shutil.rmtree(adapter_dir(config, OWNER, 1))
    with pytest.raises(RollbackError, match="does not exist"):
        rollback(config, engine, telegram_id=OWNER, version=1)
    assert states(engine)[3] == "active"


def test_a_folder_swapped_for_another_adapter_is_refused(config, engine):
    make_adapter(config, engine, 1, 0)
    make_adapter(config, engine, 2, 1)
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        repo.get_adapter(session=session, owner_id=owner.id, version=1).checksum = "0" * 64
    with pytest.raises(RollbackError, match="not the one recorded"):
        rollback(config, engine, telegram_id=OWNER)


def test_rollback_without_any_adapter_says_so(config, engine):
    with pytest.raises(RollbackError, match="no adapters yet"):
        rollback(config, engine, telegram_id=OWNER)


def test_a_failed_adapter_cannot_be_activated(config, engine):
    make_adapter(config, engine, 1, 0)
    make_adapter(config, engine, 2, 1)
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER)
        repo.get_adapter(session=session, owner_id=owner.id, version=1).state = AdapterState.failed
    with pytest.raises(RollbackError, match="failed"):
        rollback(config, engine, telegram_id=OWNER)
    assert states(engine)[2] == "active"


def test_twin_rollback_command(three_versions, engine, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tomli_w

    from loop.cli import app

    config_file = tmp_path / "config.toml"
    config_file.write_text(tomli_w.dumps({"data_dir": str(three_versions.data_dir),
                                          "database_url": three_versions.database_url, "owners": [OWNER]}))
    result = CliRunner().invoke(app, ["--config", str(config_file), "rollback", "1"])
    assert result.exit_code == 0, result.output
    assert "v1" in result.output and states(engine)[1] == "active"
    result = CliRunner().invoke(app, ["--config", str(config_file), "rollback", "9"])
    assert result.exit_code == 1 and "no adapter version 9" in result.output
