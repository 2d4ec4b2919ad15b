"""Faults around storage: a database locked by another writer (shorter and longer than the busy
timeout, at the service and at the bot), and the bot token kept out of logs."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sqlmodel import Session, select

from loop.config import Config
from loop.drafting import FakeDrafter
from loop.runtime import install_token_redaction, redact
from loop.twin import Twin
from storage.db import DatabaseBusy, open_database
from storage.models import Feedback, Message
from tests.reliability.figures import record
from tests.reliability.bot import draft_messages, harness  # noqa: F401 - harness is a fixture
from tests.bot.test_bot_harness import OWNER_ID


def _hold_lock(path: Path, seconds: float, locked: threading.Event) -> threading.Thread:
    """Another connection holds SQLite's writer lock for `seconds` (as a long `twin forget` would)."""
    def hold() -> None:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        connection.rollback()
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return thread


def test_a_verdict_waits_for_a_database_locked_by_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "twin.db"
    config = Config(data_dir=tmp_path, database_url=f"sqlite:///{path}", owners=[7])
    twin = Twin(config, open_database(config.db_url), FakeDrafter())
    draft = twin.draft_reply(telegram_id=7, chat_key="cli", incoming="you there?")

    locked, released = threading.Event(), threading.Event()

    def other_writer() -> None:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long import would
        connection.execute("INSERT INTO lock (name, holder, acquired_at, heartbeat_at) VALUES ('x', 'y', '2026-01-01', '2026-01-01')")
        locked.set()
        time.sleep(3)
        connection.commit()
        connection.close()
        released.set()

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert locked.wait(10)
    verdict = twin.record_verdict(telegram_id=7, draft_id=draft.id, kind="edit", text="yes, here")
    writer.join()
    assert released.is_set(), "the verdict should have waited for the other writer"
    assert verdict.feedback.id is not None
    assert twin.status(7)["feedback"]["edit"] == 1


def test_the_bot_token_never_reaches_a_log_record(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"
    monkeypatch.setenv("TWIN_TELEGRAM_TOKEN", token)
    install_token_redaction()
    logger = logging.getLogger("twin.test")
    with caplog.at_level(logging.INFO):
        logger.info("POST https://api.telegram.org/bot%s/getUpdates failed", token)
        logger.error("another token-shaped secret 987654321:%s", "Z" * 35)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert token not in text and "Z" * 35 not in text
    assert text.count("[token]") == 2
    assert redact(f"url /bot{token}/x") == "url /bot[token]/x"


def test_a_lock_held_past_the_busy_timeout_fails_the_write_with_a_clear_message_and_writes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "twin.db"
    config = Config(data_dir=tmp_path, database_url=f"sqlite:///{path}", owners=[7], database_busy_timeout_s=1)
    twin = Twin(config, open_database(config.db_url, busy_timeout_s=config.database_busy_timeout_s), FakeDrafter())
    draft = twin.draft_reply(telegram_id=7, chat_key="cli", incoming="you there?")
    holder = _hold_lock(path, 3.0, threading.Event())
    started = time.monotonic()
    with pytest.raises(DatabaseBusy) as raised:
        twin.record_verdict(telegram_id=7, draft_id=draft.id, kind="edit", text="the private edit")
    waited = time.monotonic() - started
    holder.join()
    message = str(raised.value)
    assert "locked by another connection for more than 1 s" in message and "nothing was written" in message
    assert "the private edit" not in message  # the parameters stay out of the message (and the logs)
    assert twin.status(7)["feedback"]["edit"] == 0  # rolled back: nothing half-written
    verdict = twin.record_verdict(telegram_id=7, draft_id=draft.id, kind="edit", text="the private edit")
    assert verdict.feedback.id is not None  # once the lock is gone the same write goes through
    record("busy timeout 1 s, lock held 3 s: the write failed (DatabaseBusy, nothing written) after", f"{waited:.1f} s")


async def test_the_bot_takes_a_message_that_met_a_lock_past_the_busy_timeout_once_the_lock_is_gone(
        harness) -> None:  # noqa: F811
    """`twin forget` (or an import) holds the lock for 3 s while the busy timeout is 1 s: the owner's
    message and press fail to be stored at first; the bot tells the owner, handles them again, and
    both are stored once the lock is gone. Nothing is confirmed to Telegram before that."""
    url = harness.config.db_url
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's writer lock")
    harness.config.database_busy_timeout_s = 1
    harness.engine = open_database(url, busy_timeout_s=1)
    await harness.start()
    first = await harness.draft_for("before the lock")
    holder = _hold_lock(Path(url.removeprefix("sqlite:///")), 3.0, threading.Event())
    started = time.monotonic()
    press = harness.api.press(first, harness.api.button_data(first, "✅"))
    waiting = harness.api.send_text(harness.owner, "while the lock is held")
    await harness.bot_says("The database is busy")
    assert any(u["callback_query"]["id"] == press for u in harness.api.pending_updates() if "callback_query" in u)
    reply = await harness.reply_to(waiting, with_buttons=True)
    taken_after = time.monotonic() - started
    holder.join()
    assert reply["text"] == harness.fake_draft("while the lock is held")
    assert "Saved" in (await harness.answered(press))["text"]
    with Session(harness.engine) as session:
        stored = [m for m in session.exec(select(Message)).all() if m.text == "while the lock is held"]
        verdicts = session.exec(select(Feedback)).all()
    assert (len(stored), len(verdicts)) == (1, 1)
    assert len([m for m in draft_messages(harness.api, OWNER_ID) if m["reply_to_message"]["message_id"]
                == waiting["message_id"]]) == 1
    harness.engine.dispose()
    record("busy timeout 1 s, lock held 3 s, at the bot: press and message stored once, drafted once, after",
           f"{taken_after:.1f} s")
