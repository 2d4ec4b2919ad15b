"""Drafts shown while they are written: the partial text in the owner's chat, then the final message.

`telegram.stream` picks how:

- "draft": Bot API `sendMessageDraft` (the client animates a draft that grows; nothing is stored
  in the chat), at most once per `telegram.stream_interval_s`; the final message with its buttons
  is sent as before. Where the server refuses the method (an older or self-hosted Bot API server,
  a chat that is not private) the stream goes on as "edit", and drafts of later messages start as
  "edit" for the rest of the run.
- "edit": one message that grows, edited at most once a second (Telegram's pace for edits); it
  becomes the draft, with its buttons, when the draft is done.
- "off": the final message only.

Streaming is decoration: every failure here is logged and swallowed, never raised to the draft.
The partial text is never stored; the stored draft is the final one, committed before its buttons
appear (`bot.drafts.deliver_draft`). Business drafts are shown final only (their caller opens no
stream). `DraftStream.on_text` is called from the drafting thread and hops onto the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from telegram import Bot, Message, ReplyParameters
from telegram.error import BadRequest, Forbidden, InvalidToken, TelegramError

from bot.telegram_io import is_not_modified
from bot.texts import split_message

logger = logging.getLogger(__name__)

EDIT_MIN_INTERVAL_S = 1.0  # an edited preview changes at most once a second
FINISH_WAIT_S = 5.0  # the final message waits this long at most for a preview update in flight


def refused(error: BaseException) -> bool:
    """The server said no (the method is unknown, or not allowed in this chat), as opposed to a
    network failure or flood control, after which the next update may well go through. A server
    without the method answers 404, which python-telegram-bot raises as InvalidToken: the token
    worked for every other call, so here it means the method."""
    return isinstance(error, (BadRequest, Forbidden, InvalidToken))


@dataclass
class Streamer:
    """The configured way of streaming, for the whole run: `draft_refused` once the server refused
    sendMessageDraft, so later drafts start with the fallback."""

    mode: str = "draft"  # draft | edit | off
    interval_s: float = 0.3
    draft_refused: bool = False
    # sendMessageDraft animates changes of drafts with the same id: each draft gets its own, also
    # across restarts (seconds since 2025, then counted on), within Telegram's 32-bit ids.
    _ids: Any = field(default_factory=lambda: itertools.count(max(1, int(time.time()) - 1_735_689_600) * 64))

    @classmethod
    def from_settings(cls, telegram: Any) -> "Streamer":
        return cls(mode=telegram.stream, interval_s=telegram.stream_interval_s)

    def open(self, bot: Bot, chat_id: int, *, reply_to: int | None = None,
             private: bool = True) -> "DraftStream | None":
        """A stream for one draft (None when streaming is off); call on the event loop."""
        if self.mode == "off":
            return None
        mode = "draft" if self.mode == "draft" and private and not self.draft_refused else "edit"
        return DraftStream(self, bot, chat_id, draft_id=next(self._ids) % (2**31 - 1) or 1, reply_to=reply_to, mode=mode,
                           loop=asyncio.get_running_loop())


class DraftStream:
    """The preview of one draft: the latest partial text, shown by a task on the event loop."""

    def __init__(self, streamer: Streamer, bot: Bot, chat_id: int, *, draft_id: int, reply_to: int | None,
                 mode: str, loop: asyncio.AbstractEventLoop):
        self.streamer, self.bot, self.chat_id = streamer, bot, chat_id
        self.draft_id = draft_id  # sendMessageDraft's id of this draft (non-zero)
        self.reply_to, self.mode, self.loop = reply_to, mode, loop
        self.preview: Message | None = None  # "edit": the message that grows
        self.updates = 0  # partial texts shown (for tests and benchmarks)
        self.first_shown_at: float | None = None  # time.perf_counter() of the first one shown
        self._latest = ""
        self._shown = ""
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._given_up = False

    # From the drafting thread --------------------------------------------------------------
    def on_text(self, text: str) -> None:
        """The reply so far (thread-safe, cheap: the drafting loop calls it after every token)."""
        try:
            self.loop.call_soon_threadsafe(self._push, text)
        except RuntimeError:  # the event loop is closed: the bot is stopping
            pass

    # On the event loop ------------------------------------------------------------------------
    def _push(self, text: str) -> None:
        if self._closed.is_set() or self._given_up:
            return
        self._latest = text
        if self._task is None:
            self._task = self.loop.create_task(self._run(), name=f"twin-draft-stream-{self.draft_id}")
        self._wake.set()

    async def _run(self) -> None:
        while not self._closed.is_set() and not self._given_up:
            await self._wake.wait()
            self._wake.clear()
            if self._closed.is_set():
                return
            text = split_message(self._latest.strip())[0] if self._latest.strip() else ""  # a long one: its start
            if text and text != self._shown:
                try:
                    await self._show(text)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - a preview must never cost the draft
                    logger.exception("showing a draft's partial text failed; streaming stops for this draft")
                    self._given_up = True
                    return
            interval = self.streamer.interval_s if self.mode == "draft" else max(EDIT_MIN_INTERVAL_S,
                                                                                  self.streamer.interval_s)
            try:  # the pause between updates, cut short when the draft is done
                await asyncio.wait_for(self._closed.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def _show(self, text: str) -> None:
        if self.mode == "draft":
            try:
                await self.bot.send_message_draft(chat_id=self.chat_id, draft_id=self.draft_id, text=text)
                self._noted(text)
                return
            except TelegramError as error:
                if not refused(error):
                    logger.debug("a draft update in chat %s failed (%s); the next one may pass", self.chat_id, error)
                    return
                logger.warning("sendMessageDraft refused (%s): drafts are streamed by editing a message instead",
                               error)
                self.streamer.draft_refused = True
                self.mode = "edit"
        await self._edit(text)

    async def _edit(self, text: str) -> None:
        try:
            if self.preview is None:
                reply = ReplyParameters(message_id=self.reply_to, allow_sending_without_reply=True) \
                    if self.reply_to else None
                self.preview = await self.bot.send_message(chat_id=self.chat_id, text=text, reply_parameters=reply)
            else:
                await self.bot.edit_message_text(chat_id=self.chat_id, message_id=self.preview.message_id, text=text)
        except TelegramError as error:
            if is_not_modified(error):
                return
            if refused(error):  # neither way works here: the final message only
                logger.warning("streaming a draft in chat %s refused (%s); the final message only", self.chat_id, error)
                self._given_up = True
                return
            logger.debug("a preview edit in chat %s failed (%s); the next one may pass", self.chat_id, error)
            return
        self._noted(text)

    def _noted(self, text: str) -> None:
        self._shown = text
        self.updates += 1
        if self.first_shown_at is None:
            self.first_shown_at = time.perf_counter()

    async def finish(self) -> Message | None:
        """Stop streaming (an update in flight is waited for, so it cannot land after the final
        message); returns the "edit" preview message, which the final draft should replace."""
        self._closed.set()
        self._wake.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=FINISH_WAIT_S)
            except asyncio.TimeoutError:
                self._task.cancel()
            except Exception:  # noqa: BLE001 - already logged by the task
                pass
        return self.preview

    async def abandon(self) -> None:
        """No draft came (the model failed): stop, and take the half-written preview away."""
        preview = await self.finish()
        if preview is not None:
            await delete_quietly(self.bot, preview)


async def delete_quietly(bot: Bot, message: Message) -> None:
    try:
        await bot.delete_message(chat_id=message.chat_id, message_id=message.message_id)
    except TelegramError as error:
        logger.info("could not delete the preview message %s: %s", message.message_id, error)
