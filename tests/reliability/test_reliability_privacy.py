"""Privacy on disk: a private data folder and database file, and forgetting that leaves nothing.

An owner is seeded with a unique marker string in every place the twin keeps their words
(messages, drafts, verdicts, imported writing, cycle rows, adapter files, datasets, logs);
after forgetting, no row of any table and no byte of any file under the data folder may still
hold it, while a second owner's data stays whole.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from typer.testing import CliRunner

from loop.config import Config
from loop.drafting import FakeDrafter
from loop.forget import forget_owner
from loop.runtime import ensure_data_dir, open_engine
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import AdapterState, CycleStatus, SampleKind, WritingSampleCreate
from tests.reliability.figures import record

OWNER, OTHER = 1001, 2002
MARKER = "Q7marker-zebra-quokka"  # the forgotten owner's words
KEPT = "K9kept-heron-ibis"  # the other owner's words, which must survive


def seed_owner(config: Config, twin: Twin, *, telegram_id: int, marker: str, drafts: int = 12) -> None:
    """Put `marker` everywhere the twin keeps an owner's words: rows of every kind and files."""
    for index in range(drafts):
        draft = twin.draft_reply(telegram_id=telegram_id, chat_key=f"tg:{telegram_id}",
                                 incoming=f"{marker} incoming {index} " + "words " * 30, sender=f"{marker} friend")
        kind = ("accept", "edit", "reject", "regenerate")[index % 4]
        text = f"{marker} my version {index}" if kind in ("edit", "reject") else None
        twin.record_verdict(telegram_id=telegram_id, draft_id=draft.id, kind=kind, text=text,
                            reason=f"because {marker}" if kind == "reject" else None)
    owner_dir = config.owner_dir(telegram_id)
    adapter_dir = owner_dir / "adapters" / "v1"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"weights " + marker.encode() * 10)
    (adapter_dir / "twin_adapter.json").write_text(f'{{"metadata": "{marker}"}}')
    cycle_dir = owner_dir / "cycles" / "1"
    (cycle_dir / "datasets").mkdir(parents=True)
    (cycle_dir / "datasets" / "sft.jsonl").write_text(f'{{"prompt": "{marker}", "completion": "{marker}"}}\n')
    (cycle_dir / "train.log").write_text(f"step 1 loss 3.2 example {marker}\n")
    with session_scope(twin.engine) as session:
        owner_id = repo.find_owner(session=session, telegram_id=telegram_id).id
        repo.add_writing_samples(session=session, owner_id=owner_id, samples=[
            WritingSampleCreate(kind=SampleKind.reply, text=f"{marker} reply {i}", prompt=f"{marker} prompt",
                                context=[{"role": "other", "text": f"{marker} turn", "sender": marker}],
                                source=f"{marker}.json") for i in range(20)])
        cycle = repo.start_cycle(session=session, owner_id=owner_id, trigger="manual", forced=True,
                                 active_version_before=0, feedback_upto_id=0)
        repo.add_adapter(session=session, owner_id=owner_id, version=1, path=str(adapter_dir), parent_version=0,
                         cycle_id=cycle.id, checksum="0" * 64, data_counts={"note": marker},
                         metrics={"note": marker}, state=AdapterState.active)
        repo.finish_cycle(session=session, cycle_id=cycle.id, status=CycleStatus.promoted,
                          reason=f"promoted ({marker})", log_path=str(cycle_dir / "train.log"))


def rows_holding(engine: Engine, needle: str) -> dict[str, int]:
    """How many rows of each table mention `needle` anywhere (every column as text)."""
    found: dict[str, int] = {}
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            count = sum(1 for row in connection.execute(select(table)) if needle in repr(tuple(row)))
            if count:
                found[table.name] = count
    return found


def files_holding(folder: Path, needle: str) -> list[str]:
    """Files under `folder` whose bytes (or names) contain `needle`."""
    hits = []
    for path in sorted(folder.rglob("*")):
        if needle in str(path.relative_to(folder)):
            hits.append(str(path))
        elif path.is_file() and needle.encode() in path.read_bytes():
            hits.append(f"{path} ({path.stat().st_size} bytes)")
    return hits


@pytest.fixture
def twin(config: Config, engine: Engine) -> Twin:
    config.owners = [OWNER, OTHER]
    ensure_data_dir(config)
    return Twin(config, engine, FakeDrafter())


def test_forget_removes_every_row_and_file_of_the_owner_and_nothing_else(config: Config, twin: Twin) -> None:
    seed_owner(config, twin, telegram_id=OWNER, marker=MARKER)
    seed_owner(config, twin, telegram_id=OTHER, marker=KEPT, drafts=4)
    assert set(rows_holding(twin.engine, MARKER)) >= {"message", "draft", "feedback", "writing_sample", "adapter",
                                                       "cycle"}
    kept_rows = rows_holding(twin.engine, KEPT)

    rows_before = sum(rows_holding(twin.engine, MARKER).values())
    files_before = len(files_holding(config.data_dir, MARKER))
    assert forget_owner(config, twin.engine, telegram_id=OWNER) is True

    assert rows_holding(twin.engine, MARKER) == {}
    assert not config.owner_dir(OWNER).exists()
    assert rows_holding(twin.engine, KEPT) == kept_rows
    assert files_holding(config.owner_dir(OTHER), KEPT), "the other owner's files must stay"
    assert twin.status(OTHER)["drafts"] == 5  # four drafts and the one "another" wrote
    # Forgetting twice is harmless and says there was nothing left.
    assert forget_owner(config, twin.engine, telegram_id=OWNER) is False
    record("forget: rows / owner files holding the marker before → after", f"{rows_before} / {files_before} → 0 / 0")


def test_forget_leaves_no_byte_of_the_owner_in_the_sqlite_files_of_a_running_twin(tmp_path: Path) -> None:
    """The bot keeps its engine open after /forget, so the WAL is neither checkpointed nor removed."""
    config = Config(data_dir=tmp_path / "data", owners=[OWNER, OTHER])
    engine = open_engine(config)

    # Not every SQLite is built with SECURE_DELETE (Debian's is, others are not): test the worst case.
    @event.listens_for(engine, "connect")
    def _no_secure_delete(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA secure_delete=OFF")

    engine.dispose()
    twin = Twin(config, engine, FakeDrafter())
    seed_owner(config, twin, telegram_id=OWNER, marker=MARKER)
    seed_owner(config, twin, telegram_id=OTHER, marker=KEPT, drafts=4)
    assert files_holding(config.data_dir, MARKER)

    forget_owner(config, engine, telegram_id=OWNER)
    left_while_running = files_holding(config.data_dir, MARKER)
    engine.dispose()
    left_after_close = files_holding(config.data_dir, MARKER)
    assert files_holding(config.data_dir, KEPT)
    assert left_while_running == [] and left_after_close == []


def test_twin_forget_on_the_command_line_removes_the_owner(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f"owners = [{OWNER}, {OTHER}]\n[schedule]\nenabled = false\n")
    config = Config(data_dir=tmp_path / "data", owners=[OWNER, OTHER])
    engine = open_engine(config)
    twin = Twin(config, engine, FakeDrafter())
    seed_owner(config, twin, telegram_id=OWNER, marker=MARKER, drafts=4)
    seed_owner(config, twin, telegram_id=OTHER, marker=KEPT, drafts=2)
    engine.dispose()

    from loop.cli import app

    result = CliRunner().invoke(app, ["forget", "--yes", "--owner", str(OWNER)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    engine = open_engine(config)
    assert rows_holding(engine, MARKER) == {} and not config.owner_dir(OWNER).exists()
    assert rows_holding(engine, KEPT)
    engine.dispose()


def test_the_data_folder_and_database_files_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # a usual desktop umask: without care files come out world-readable
    try:
        config = Config(data_dir=tmp_path / "data", owners=[OWNER])
        engine = open_engine(config)
        Twin(config, engine, FakeDrafter()).draft_reply(telegram_id=OWNER, chat_key="cli", incoming="hello")
        database = config.data_dir / "twin.db"
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in config.data_dir.iterdir()}
        folder_mode = stat.S_IMODE(config.data_dir.stat().st_mode)
        engine.dispose()
    finally:
        os.umask(previous)
    assert folder_mode == 0o700
    # SQLite gives its -wal and -shm files the permissions of the database file.
    assert modes[database.name] == 0o600 and {"twin.db-wal", "twin.db-shm"} <= set(modes)
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


def test_an_existing_data_folder_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    open_engine(Config(data_dir=folder, owners=[OWNER])).dispose()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
