"""Faults between the bot and the world: the Bot API answering 5xx, the network down or stalled,
the database locked by another writer. The bot must recover by itself and lose nothing.

The real Application runs against bench/fakebotapi/; network faults come from a TCP proxy in
between (tests/reliability/proxy.py), Bot API errors from the fake server's `fail_next`, the
lock from a second SQLite connection holding the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from storage.models import FeedbackKind
from bench.fakebotapi import FakeBotApi
from tests.reliability.bot import draft_messages, feedback_data_of, fetched, harness, proxied, until  # noqa: F401
from tests.reliability.bot import shows_verdict as shown_with_verdict
from tests.reliability.figures import record
from tests.reliability.proxy import FaultyProxy
from tests.bot.test_bot_harness import OWNER_ID, Harness


def failed_calls(api: FakeBotApi) -> int:
    return sum(1 for call in api.calls if not call.ok)


async def test_bot_api_5xx_for_a_while_loses_nothing(harness: Harness) -> None:
    await harness.start()
    before = await harness.draft_for("before the outage")
    api = harness.api
    api.fail_next("getUpdates", error_code=502, description="Bad Gateway", times=2)
    api.fail_next("sendMessage", error_code=500, description="Internal Server Error", times=2)
    api.fail_next("editMessageText", error_code=503, description="Service Unavailable", times=2)
    api.fail_next("sendChatAction", error_code=504, description="Gateway Timeout", times=3)

    during = [api.send_text(harness.owner, f"during the outage {i}") for i in range(3)]
    query = api.press(before, feedback_data_of(before, "a"))
    for message in during:
        await harness.reply_to(message, with_buttons=True)
    await api.wait_for(lambda: shown_with_verdict(api, before), what="the verdict shown on the draft")

    assert "Saved" in harness.api.answers[query]["text"]
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]
    # The shown message is recorded just after the send: replies to any of them count as edits.
    await until(lambda: all(d.shown_message_id for d in harness.drafts()), what="every draft marked shown")
    assert len(harness.drafts()) == 4
    assert not any("Sorry, something went wrong" in (m.get("text") or "") for m in api.bot_messages(OWNER_ID))
    record("Bot API 5xx: failed calls absorbed, messages lost", f"{failed_calls(api)}, 0")


async def test_a_failed_button_answer_still_shows_the_stored_verdict(harness: Harness) -> None:
    await harness.start()
    shown = await harness.draft_for("are you in?")
    harness.api.fail_next("answerCallbackQuery", error_code=502, description="Bad Gateway", times=1)
    harness.api.press(shown, feedback_data_of(shown, "a"))
    await harness.api.wait_for(lambda: harness.feedback(), what="the verdict stored")
    await harness.api.wait_for(
        lambda: shown_with_verdict(harness.api, shown) or any(
            "went wrong" in (m.get("text") or "") for m in harness.api.bot_messages(OWNER_ID)),
        what="the verdict shown, or an error told")
    assert shown_with_verdict(harness.api, shown)


async def test_a_draft_is_delivered_after_four_failed_sends_in_a_row(harness: Harness) -> None:
    await harness.start()
    harness.api.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=4)
    incoming = harness.api.send_text(harness.owner, "anyone there?")
    await harness.api.wait_for(
        lambda: draft_messages(harness.api, OWNER_ID) or any(
            "went wrong" in (m.get("text") or "") for m in harness.api.bot_messages(OWNER_ID)),
        what="the draft, or an error sentence")
    assert [m["reply_to_message"]["message_id"] for m in draft_messages(harness.api, OWNER_ID)] == \
        [incoming["message_id"]]


async def test_network_down_then_stalled_the_bot_recovers_by_itself(proxied: Harness) -> None:
    """Connections refused for a while, then accepted but never answered (client timeouts)."""
    proxy: FaultyProxy = proxied.proxy  # type: ignore[attr-defined]
    api = proxied.api
    await proxied.start()
    first = await proxied.draft_for("before anything broke")

    proxy.set_mode("down")
    down_messages = [api.send_text(proxied.owner, f"while the network is down {i}") for i in range(2)]
    query = api.press(first, feedback_data_of(first, "a"))
    await _outage(seconds=3.0)
    proxy.set_mode("stall")
    stalled_messages = [api.send_text(proxied.owner, f"while the network stalls {i}") for i in range(2)]
    await _outage(seconds=6.0)  # longer than PTB's 5 s read timeout: requests time out
    proxy.set_mode("up")

    for message in down_messages + stalled_messages:
        await proxied.reply_to(message, with_buttons=True)
    await api.wait_for(lambda: query in api.answers and shown_with_verdict(api, first), timeout=60,
                       what="the press answered and shown")
    texts = [d.incoming for d in proxied.drafts()]
    assert texts == ["before anything broke", *(m["text"] for m in down_messages + stalled_messages)]
    assert [f.kind for f in proxied.feedback()] == [FeedbackKind.accept]
    # At least once: a message whose draft was sent twice (a timed-out send that did arrive) would show here.
    shown = draft_messages(api, OWNER_ID)
    assert len(shown) == len({m["reply_to_message"]["message_id"] for m in shown}) == 5
    record("network down 3 s + stalled 6 s: connections cut or stalled, messages lost", f"{proxy.refused}, 0")


async def _outage(*, seconds: float) -> None:
    """Let a fault last: the bot meets it on its own schedule (this is not a measurement)."""
    await asyncio.sleep(seconds)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


async def test_a_database_locked_by_another_writer_delays_but_loses_nothing(harness: Harness) -> None:
    path = sqlite_path(harness.config.database_url)
    if path is None:
        pytest.skip("the writer lock is SQLite's; PostgreSQL locks rows, not the database")
    await harness.start()
    shown = await harness.draft_for("lunch?")
    locked, release, released = threading.Event(), threading.Event(), threading.Event()

    def other_writer() -> None:
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("BEGIN IMMEDIATE")  # what a long `twin import` in another process does
        connection.execute("INSERT INTO lock (name, holder, acquired_at, heartbeat_at) "
                           "VALUES ('import', 'other', '2026-01-01', '2026-01-01')")
        locked.set()
        release.wait(30)
        connection.commit()
        connection.close()
        released.set()

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert await asyncio.to_thread(locked.wait, 10)
    query = harness.api.press(shown, feedback_data_of(shown, "a"))
    later = harness.api.send_text(harness.owner, "and dinner?")
    # Both updates reached the bot; its writes now wait for the other writer.
    await harness.api.wait_for(lambda: fetched(harness.api, messages=[later], queries=[query]),
                               what="the updates taken")
    await asyncio.to_thread(time.sleep, 2.0)
    answered_while_locked = query in harness.api.answers
    release.set()
    await harness.api.wait_for(lambda: query in harness.api.answers, what="the press answered")
    await harness.reply_to(later, with_buttons=True)
    writer.join()

    assert not answered_while_locked, "the owner must not see 'saved' before the verdict is committed"
    assert "Saved" in harness.api.answers[query]["text"]
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]
    assert [d.incoming for d in harness.drafts()] == ["lunch?", "and dinner?"]
    record("SQLite writer lock held ~2 s during a press and a message: writes lost", 0)
