"""Faults around storage: a database locked by another writer, and the bot token kept out of logs."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loop.config import Config
from loop.drafting import FakeDrafter
from loop.runtime import install_token_redaction, redact
from loop.twin import Twin
from storage.db import open_database


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
