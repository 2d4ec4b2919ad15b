"""Shared harness of the bot's end-to-end tests: the real Application against the fake Bot API.

`running_harness` starts a FakeBotApi on 127.0.0.1, points the config's `telegram.base_url` at it and
runs `bot.app.build_application` with long polling inside the test's event loop, on the test's
real database, with a FakeDrafter (or any drafter a test passes). `restart()` stops the bot and
starts a new Application on the same database, as a process restart would.
"""

from __future__ import annotations

import threading
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.app import build_application, polling
from bot.state import state_of
from loop.config import Config
from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage.models import Draft, Feedback, Message
from bench.fakebotapi import FakeBotApi

OWNER_ID = 1001  # the `config` fixture's owner
STRANGER_ID = 4242


class GatedDrafter(FakeDrafter):
    """A FakeDrafter that waits for `gate` before each draft and signals `started` (no sleeps)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.started = threading.Event()

    def draft(self, conversation: Any, *, adapter: Any, seed: int, on_text: Any = None) -> Any:
        self.started.set()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return super().draft(conversation, adapter=adapter, seed=seed, on_text=on_text)


@dataclass
class Harness:
    api: FakeBotApi
    config: Config
    engine: Engine
    drafter: Any = field(default_factory=FakeDrafter)
    app: Any = None
    cycle_runner: Any = None
    _stack: AsyncExitStack | None = None

    @property
    def owner(self) -> dict[str, Any]:
        return self.api.user(OWNER_ID, "Olga", username="olga")

    @property
    def state(self) -> Any:
        return state_of(self.app)

    async def start(self, drafter: Any = None) -> Any:
        if drafter is not None:
            self.drafter = drafter
        twin = Twin(self.config, self.engine, self.drafter)
        self.app = build_application(self.config, twin, token=self.api.token, cycle_runner=self.cycle_runner)
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(polling(self.app, timeout=5))
        return self.app

    async def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def restart(self, drafter: Any = None) -> Any:
        await self.stop()
        return await self.start(drafter)

    # Conversation helpers ------------------------------------------------------------------
    async def draft_for(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Send `text` as the owner and wait for the draft message with its buttons."""
        incoming = self.api.send_text(self.owner, text, **kwargs)
        return await self.reply_to(incoming, with_buttons=True)

    async def reply_to(self, incoming: dict[str, Any], *, with_buttons: bool = False) -> dict[str, Any]:
        chat_id = incoming["chat"]["id"]

        def find() -> dict[str, Any] | None:
            for message in self.api.bot_messages(chat_id):
                if message.get("reply_to_message", {}).get("message_id") == incoming["message_id"] and (
                        not with_buttons or "reply_markup" in message):
                    return message
            return None

        return await self.api.wait_for(find, what=f"the bot's reply to message {incoming['message_id']}")

    async def bot_says(self, contains: str, chat_id: int = OWNER_ID, *, after: int = 0) -> dict[str, Any]:
        """Wait for a bot message (id above `after`) whose text contains `contains`."""
        return await self.api.wait_for(
            lambda: next((m for m in self.api.bot_messages(chat_id)
                          if m["message_id"] > after and contains in (m.get("text") or m.get("caption") or "")), None),
            what=f"a bot message containing {contains!r}")

    async def verdict_shown(self, message: dict[str, Any], suffix: str) -> dict[str, Any]:
        """Wait until `message` was edited to end with `suffix` (its verdict) and has no buttons."""
        def now() -> dict[str, Any] | None:
            current = self.api.message(message["chat"]["id"], message["message_id"])
            done = (current.get("text") or "").endswith(suffix) and "reply_markup" not in current
            return current if done else None

        return await self.api.wait_for(now, what=f"message {message['message_id']} to show {suffix!r}")

    def fake_draft(self, incoming: str, seed: int | None = None) -> str:
        """The text the FakeDrafter writes for `incoming` (with the configured seed by default)."""
        return f"draft {self.config.generation.seed if seed is None else seed}: {incoming}"

    async def press(self, message: dict[str, Any], label: str) -> dict[str, Any]:
        """Press the button labelled `label` under `message`; returns the answer to the query."""
        return await self.answered(self.api.press(message, self.api.button_data(message, label)))

    async def answered(self, query_id: str) -> dict[str, Any]:
        return await self.api.wait_for(lambda: self.api.answers.get(query_id), what=f"the answer to query {query_id}")

    def rows(self, model: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.exec(select(model)).all())

    def feedback(self) -> list[Feedback]:
        return self.rows(Feedback)

    def drafts(self) -> list[Draft]:
        return self.rows(Draft)

    def messages(self) -> list[Message]:
        return self.rows(Message)


@asynccontextmanager
async def running_harness(config: Config, engine: Engine) -> AsyncIterator[Harness]:
    """A fake Bot API with the config pointed at it; each test module wraps this in its `harness` fixture."""
    async with FakeBotApi() as api:
        config.telegram.base_url = api.base_url
        config.telegram.base_file_url = api.base_file_url
        h = Harness(api=api, config=config, engine=engine)
        try:
            yield h
        finally:
            await h.stop()
