"""Shared pieces of the bot-level reliability tests: fixtures around the bot harness and small
readers of what the fake Bot API saw (drafts shown, busy notices, button data).

Test modules import the fixtures (`harness`, `proxied`) by name so pytest finds them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import pytest

from bot import keyboards, texts
from bench.fakebotapi import FakeBotApi
from tests.reliability.proxy import FaultyProxy
from tests.bot.test_bot_harness import Harness, running_harness


@pytest.fixture
async def harness(config, engine):
    """The real Application against the fake Bot API, on the test's database (not started yet)."""
    async with running_harness(config, engine) as running:
        yield running


@pytest.fixture
async def proxied(config, engine):
    """A harness whose bot reaches the fake Bot API through a proxy that can fail (`.proxy`)."""
    async with FakeBotApi() as api, FaultyProxy(api.port) as proxy:
        config.telegram.base_url = f"{proxy.url}/bot"
        config.telegram.base_file_url = f"{proxy.url}/file/bot"
        running = Harness(api=api, config=config, engine=engine)
        running.proxy = proxy  # type: ignore[attr-defined]
        try:
            yield running
        finally:
            await running.stop()


def draft_messages(api: FakeBotApi, chat_id: int) -> list[dict[str, Any]]:
    """Bot messages that show a draft: they reply to an incoming message of the owner (and are not
    a busy notice, nor the notice for a draft whose send a restart interrupted)."""
    return [m for m in api.bot_messages(chat_id)
            if m.get("reply_to_message", {}).get("from", {}).get("id") not in (None, api.bot_id)
            and not (m.get("text") or "").startswith("I'm busy") and m.get("text") != texts.DRAFT_MAYBE_SHOWN]


def maybe_shown_notices(api: FakeBotApi, chat_id: int) -> list[dict[str, Any]]:
    """The lines sent after a restart instead of a draft whose send was interrupted."""
    return [m for m in api.bot_messages(chat_id) if m.get("text") == texts.DRAFT_MAYBE_SHOWN]


def fetched(api: FakeBotApi, *, messages: Sequence[dict[str, Any]] = (), queries: Sequence[str] = ()) -> bool:
    """Whether the bot's getUpdates calls have handed out these messages and button presses
    (confirmed since or not: the server learns that only from a later offset)."""
    seen_messages, seen_queries = set(), set()
    for call in api.calls_to("getUpdates"):
        for update in call.result or []:
            if "message" in update:
                seen_messages.add((update["message"]["chat"]["id"], update["message"]["message_id"]))
            if "callback_query" in update:
                seen_queries.add(update["callback_query"]["id"])
    return ({(m["chat"]["id"], m["message_id"]) for m in messages} <= seen_messages
            and set(queries) <= seen_queries)


def busy_notices(api: FakeBotApi, chat_id: int) -> list[dict[str, Any]]:
    return [m for m in api.bot_messages(chat_id) if "I'm busy" in (m.get("text") or "")]


def feedback_data_of(message: dict[str, Any], action: str) -> str:
    """The callback data of the draft button for `action` (a, e, r, n) under `message`."""
    for row in message.get("reply_markup", {}).get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data") or ""
            press = keyboards.parse_feedback_data(data)
            if press is not None and press.action == action:
                return data
    raise LookupError(f"no {action!r} button under message {message.get('message_id')}")


def draft_id_of(message: dict[str, Any]) -> int:
    return keyboards.parse_feedback_data(feedback_data_of(message, "a")).draft_id  # type: ignore[union-attr]


def shows_verdict(api: FakeBotApi, message: dict[str, Any], mark: str = "✅ Accepted") -> bool:
    current = api.message(message["chat"]["id"], message["message_id"])
    return "reply_markup" not in current and mark in current.get("text", "")


async def until(predicate: Callable[[], Any], *, what: str, timeout: float = 120.0) -> None:
    """Poll `predicate` until true (some conditions change without a Bot API call to wake on).

    The timeout only keeps a broken run from hanging; nothing is measured by it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)
