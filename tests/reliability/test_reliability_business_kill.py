"""kill -9 of the running bot between a Business draft and its post in the owner's real chat.

The bot is a real process (tests/reliability/run_bot.py) against the fake Bot API of this test,
on the test's database (SQLite, and PostgreSQL in CI). Killed after a draft was shown, its ✅ Send
still posts it once after the restart; killed while Telegram had taken the post but before the bot
got the answer, the post is never made a second time, and its echo records its Telegram id.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot import texts
from loop.config import Config
from storage.models import BusinessDraft, Feedback, FeedbackKind
from bench.fakebotapi import FakeBotApi
from tests.bot.test_bot_harness import OWNER_ID
from tests.reliability.test_reliability_kill import TOKEN, BotProcess, check_consistency

CONTACT = {"id": 5005, "is_bot": False, "first_name": "Anna"}


@pytest.fixture
async def bot_api():
    async with FakeBotApi(token=TOKEN) as api:
        yield api


def business_drafts(api: FakeBotApi) -> list[dict[str, Any]]:
    return [m for m in api.bot_messages(OWNER_ID) if "💬 Anna" in (m.get("text") or "")]


def posts(api: FakeBotApi) -> list[dict[str, Any]]:
    return [m for m in api.business_chat("bc-1", CONTACT["id"]) if m["from"]["id"] == OWNER_ID]


def rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model)).all())


async def draft_for(api: FakeBotApi, text: str) -> dict[str, Any]:
    api.business_message("bc-1", CONTACT, text)
    shown = await api.wait_for(lambda: next((m for m in business_drafts(api)
                                             if text in m["text"] and "reply_markup" in m), None),
                               timeout=60, what=f"the business draft for {text!r}")
    return copy.deepcopy(shown)


def send_data(shown: dict[str, Any]) -> str:
    return next(b["callback_data"] for row in shown["reply_markup"]["inline_keyboard"] for b in row
                if b["text"] == "✅ Send")


async def test_kill_9_between_the_draft_and_the_send_neither_posts_twice_nor_loses_the_post(
        config: Config, engine: Engine, bot_api: FakeBotApi, tmp_path: Path) -> None:
    api = bot_api
    owner = api.user(OWNER_ID, "Olga")
    bot = BotProcess(config, api, tmp_path / "bot.log", draft_delay=0.05)
    await bot.start()
    try:
        api.business_connect(owner)
        first = await draft_for(api, "are you coming tonight?")
        await bot.kill()  # after the draft, before the owner's tap
        await bot.restart()
        query = api.press(first, send_data(first))
        await api.wait_for(lambda: len(posts(api)) == 1, timeout=60, what="the first post")
        await api.wait_for(lambda: query in api.answers, what="the press answered")

        second = await draft_for(api, "bring wine?")
        hold = api.hold_next("sendMessage")  # Telegram takes the post; the bot never hears back
        api.press(second, send_data(second))
        await api.wait_for(lambda: len(posts(api)) == 2, timeout=60, what="the second post taken by Telegram")
        await bot.kill()
        hold.set()
        check_consistency(engine, config.db_url)
        await bot.restart()
        await api.wait_for(lambda: any(m.get("text") == texts.BUSINESS_MAYBE_POSTED for m in api.bot_messages(OWNER_ID)),
                           timeout=60, what="the owner told the post may be there")
        await api.wait_for(lambda: all(r.send_state == "sent" for r in rows(engine, BusinessDraft)), timeout=60,
                           what="the echo of the post recorded")
        # A message after the restart is drafted as usual.
        await draft_for(api, "see you at 8")
    finally:
        await bot.stop()
    assert [p["text"] for p in posts(api)] == [r.sent_text for r in rows(engine, BusinessDraft) if r.sent_text]
    assert len(posts(api)) == 2  # nothing posted twice
    assert sorted(r.sent_message_id for r in rows(engine, BusinessDraft) if r.sent_message_id) == \
        [p["message_id"] for p in posts(api)]
    assert [f.kind for f in rows(engine, Feedback)] == [FeedbackKind.accept, FeedbackKind.accept]
    shown = [c for c in api.calls_to("sendMessage") if c.ok and "bz:" in str(c.params.get("reply_markup"))]
    assert len(shown) == 3  # no draft shown twice
    check_consistency(engine, config.db_url)
    log = (tmp_path / "bot.log").read_text(errors="replace")
    assert "are you coming tonight?" not in log and "bring wine?" not in log  # logs never hold message text
