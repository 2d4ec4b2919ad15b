"""Storage: migrations, WAL, private files, one verdict per draft, owners kept apart, forgetting."""

from __future__ import annotations

import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel, select

from storage import repo
from storage.db import alembic_config, create_db_engine, migrate, open_database, read_scope, session_scope, table_names
from storage.models import Conversation, Draft, FeedbackKind, Lock, Message, Owner, SampleKind, WritingSample, WritingSampleCreate


def make_draft(session, telegram_id: int = 1, text: str = "hey") -> Draft:
    owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
    conversation = repo.get_or_create_conversation(session=session, owner_id=owner.id, chat_key="cli")
    message = repo.add_message(session=session, owner_id=owner.id, conversation_id=conversation.id, role="other", text="hi")
    return repo.add_draft(session=session, owner_id=owner.id, conversation_id=conversation.id, message_id=message.id,
                          incoming="hi", context=[], text=text, adapter_version=0, sampling={"t": 1}, seed=0, latency_ms=5)


def test_migrations_create_every_table_and_match_the_models(engine) -> None:
    assert {"owner", "conversation", "message", "draft", "feedback", "writing_sample", "adapter", "cycle", "lock"} <= set(table_names(engine))
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == [], f"models changed without a migration: {diff}"


def test_migrating_an_existing_database_keeps_its_rows(database_url: str) -> None:
    engine = open_database(database_url)
    with session_scope(engine) as session:
        draft_id = make_draft(session).id
    engine.dispose()
    engine = open_database(database_url)  # a restart applies migrations again: nothing changes
    migrate(engine)
    with session_scope(engine) as session:
        assert session.get(Draft, draft_id).text == "hey"
    engine.dispose()


def test_migration_0006_makes_stored_timestamps_aware_utc_and_keeps_the_rows(database_url: str) -> None:
    """Rows written before 0006 (naive UTC digits, as the old columns held them) read back as the
    same instants, aware, after the upgrade; on PostgreSQL the columns are now timestamptz."""
    engine = create_db_engine(database_url)
    migrate(engine, "0005")
    stamp = "2026-01-02 03:04:05"
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO owner (id, telegram_id, created_at) VALUES (1, 7, :t)"), {"t": stamp})
        connection.execute(text("INSERT INTO conversation (id, owner_id, chat_key, created_at) VALUES (1, 1, 'cli', :t)"),
                           {"t": stamp})
        connection.execute(text("INSERT INTO message (id, owner_id, conversation_id, role, text, created_at) "
                                "VALUES (1, 1, 1, 'other', 'hi', :t)"), {"t": stamp})
        connection.execute(text('INSERT INTO "lock" (name, holder, acquired_at, heartbeat_at) VALUES (\'cycle\', \'h:1\', :t, :t)'),
                           {"t": stamp})
    migrate(engine)
    expected = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with read_scope(engine) as session:
        assert session.get(Owner, 1).created_at == expected
        assert session.get(Conversation, 1).created_at == expected
        message = session.get(Message, 1)
        assert message.text == "hi" and message.created_at == expected and message.created_at.tzinfo is not None
        assert session.get(Lock, "cycle").heartbeat_at == expected
    if engine.dialect.name == "postgresql":
        columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("message")}
        assert columns["created_at"].timezone is True
    command.downgrade(alembic_config(engine), "0005")  # and back down, for a rollback of the code
    with read_scope(engine) as session:
        assert session.get(Owner, 1).created_at == expected
    migrate(engine)
    engine.dispose()


def test_timestamps_are_stored_in_utc_and_read_back_aware(engine) -> None:
    local = timezone(timedelta(hours=2))
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=5)
        owner.created_at = datetime(2026, 6, 1, 12, 0, tzinfo=local)
        owner_id = owner.id
    with read_scope(engine) as session:
        created = session.get(Owner, owner_id).created_at
    assert created == datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc) and created.utcoffset() == timedelta(0)


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'sub' / 'twin.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    mode = stat.S_IMODE(os.stat(tmp_path / "sub" / "twin.db").st_mode)
    assert mode & 0o077 == 0


def test_a_draft_takes_one_verdict(engine) -> None:
    with session_scope(engine) as session:
        draft = make_draft(session)
        repo.record_feedback(session=session, owner_id=draft.owner_id, draft_id=draft.id, kind="accept")
    with session_scope(engine) as session:
        with pytest.raises(repo.DraftAlreadyDecided):
            repo.record_feedback(session=session, owner_id=draft.owner_id, draft_id=draft.id, kind="reject")
    with session_scope(engine) as session:
        assert repo.owner_status(session=session, owner_id=draft.owner_id)["feedback"]["accept"] == 1


def test_two_writers_racing_on_one_draft_store_one_verdict(database_url: str) -> None:
    engines = [open_database(database_url) for _ in range(2)]
    with session_scope(engines[0]) as session:
        draft = make_draft(session)
    outcomes: list[str] = []

    def press(engine, kind: str) -> None:
        try:
            with session_scope(engine) as session:
                repo.record_feedback(session=session, owner_id=draft.owner_id, draft_id=draft.id, kind=kind)
            outcomes.append("stored")
        except repo.DraftAlreadyDecided:
            outcomes.append("refused")

    threads = [threading.Thread(target=press, args=(e, k)) for e, k in zip(engines, ("accept", "reject"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "stored"]
    for engine in engines:
        engine.dispose()


def test_an_edit_needs_text_and_other_owners_drafts_are_not_found(engine) -> None:
    with session_scope(engine) as session:
        draft = make_draft(session, telegram_id=1)
        stranger = repo.get_or_create_owner(session=session, telegram_id=2)
    with session_scope(engine) as session:
        with pytest.raises(repo.FeedbackTextRequired):
            repo.record_feedback(session=session, owner_id=draft.owner_id, draft_id=draft.id, kind="edit", text="  ")
        with pytest.raises(repo.DraftNotFound):
            repo.record_feedback(session=session, owner_id=stranger.id, draft_id=draft.id, kind="accept")


def test_reimporting_the_same_samples_adds_nothing(engine) -> None:
    samples = [WritingSampleCreate(kind=SampleKind.reply, text="sure thing", prompt="coming?",
                                   context=[{"role": "other", "text": "hey", "sender": "Ann"}]),
               WritingSampleCreate(kind=SampleKind.monologue, text="A long day.")]
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=1)
        assert repo.add_writing_samples(session=session, owner_id=owner.id, samples=samples) == (2, 0)
    with session_scope(engine) as session:
        assert repo.add_writing_samples(session=session, owner_id=owner.id, samples=samples + samples) == (0, 4)
        assert len(session.exec(select(WritingSample)).all()) == 2


def test_stale_lock_is_taken_over_and_a_live_one_is_not(engine) -> None:
    with session_scope(engine) as session:
        assert repo.acquire_lock(session=session, name="cycle", holder="host:1")
    with session_scope(engine) as session:
        assert not repo.acquire_lock(session=session, name="cycle", holder="host:2", stale_after=timedelta(hours=1))
        assert repo.acquire_lock(session=session, name="cycle", holder="host:2", holder_alive=lambda holder: False)
    with session_scope(engine) as session:
        assert repo.get_lock(session=session, name="cycle").holder == "host:2"
        repo.release_lock(session=session, name="cycle", holder="host:2")
    with session_scope(engine) as session:
        assert repo.get_lock(session=session, name="cycle") is None


def test_adapter_activation_keeps_exactly_one_active(engine) -> None:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=1)
        for version in (1, 2):
            repo.add_adapter(session=session, owner_id=owner.id, version=version, path=f"/a/{version}", parent_version=0,
                             cycle_id=None, checksum="x", data_counts={}, metrics={})
        repo.activate_adapter(session=session, owner_id=owner.id, version=1)
        repo.activate_adapter(session=session, owner_id=owner.id, version=2)
        states = {a.version: a.state.value for a in repo.list_adapters(session=session, owner_id=owner.id)}
        assert states == {1: "retired", 2: "active"}
        repo.activate_adapter(session=session, owner_id=owner.id, version=0)
        assert repo.active_version(session=session, owner_id=owner.id) == 0


def test_forgetting_an_owner_removes_every_row_and_spares_the_others(engine) -> None:
    with session_scope(engine) as session:
        mine, theirs = make_draft(session, telegram_id=1), make_draft(session, telegram_id=2)
        repo.record_feedback(session=session, owner_id=mine.owner_id, draft_id=mine.id, kind=FeedbackKind.regenerate)
        again = repo.add_draft(session=session, owner_id=mine.owner_id, conversation_id=mine.conversation_id,
                               message_id=mine.message_id, incoming="hi", context=[], text="again", adapter_version=0,
                               sampling={}, seed=1, latency_ms=1, regenerated_from=mine.id)
        repo.record_feedback(session=session, owner_id=mine.owner_id, draft_id=again.id, kind="edit", text="mine")
        repo.add_writing_samples(session=session, owner_id=mine.owner_id,
                                 samples=[WritingSampleCreate(kind=SampleKind.monologue, text="diary")])
        cycle = repo.start_cycle(session=session, owner_id=mine.owner_id, trigger="cli", forced=True,
                                 active_version_before=0, feedback_upto_id=0)
        repo.add_adapter(session=session, owner_id=mine.owner_id, version=1, path="/x", parent_version=0,
                         cycle_id=cycle.id, checksum="", data_counts={}, metrics={})
    with session_scope(engine) as session:
        repo.forget_owner(session=session, owner_id=mine.owner_id)
    with engine.connect() as connection:
        for table in ("draft", "feedback", "message", "conversation", "writing_sample", "adapter", "cycle"):
            owners = {row[0] for row in connection.execute(text(f"SELECT owner_id FROM {table}"))}
            assert mine.owner_id not in owners, table
        assert connection.execute(text("SELECT count(*) FROM draft")).scalar() == 1
    with session_scope(engine) as session:
        assert repo.find_owner(session=session, telegram_id=1) is None
        assert repo.get_draft(session=session, owner_id=theirs.owner_id, draft_id=theirs.id).text == "hey"
