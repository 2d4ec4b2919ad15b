"""Sending and editing messages the way Telegram documents it.

- Network errors (connection lost, timeouts, 5xx) are retried with backoff for about a minute;
  a Bad Request is not (it would fail again). Answers to button presses are best effort. Flood control (429 RetryAfter) is waited out by
  PTB's `AIORateLimiter`, set up in `bot.app`.
- Texts over 4096 characters are split; the keyboard goes on the last part.
- "message is not modified" (the same text and buttons again, e.g. a double press) is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar

from telegram import Bot, CallbackQuery, ForceReply, InlineKeyboardMarkup, Message
from telegram.error import BadRequest, NetworkError, TelegramError

from bot.texts import split_message

logger = logging.getLogger(__name__)

T = TypeVar("T")
# The one table of growing pauses (seconds) the bot waits between tries; each use takes a slice.
PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# About a minute in all: a draft waits out a short Bot API outage instead of being dropped.
RETRY_DELAYS_S = PAUSES_S
# A button answer only matters while the client shows its spinner (about 15 s).
ANSWER_RETRY_DELAYS_S = PAUSES_S[:3]


def pause_after(failures: int, pauses: tuple[float, ...]) -> float:
    """The pause after `failures` failed tries in a row: the table's entry, its last one repeating."""
    return pauses[min(failures, len(pauses) - 1)]


def is_not_modified(error: BaseException) -> bool:
    return isinstance(error, BadRequest) and "message is not modified" in error.message.lower()


async def with_retry(call: Callable[[], Awaitable[T]], *, what: str = "request",
                     delays: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """Run a Bot API call, retrying network failures (not Bad Requests) with growing pauses."""
    for delay in (*delays, None):
        try:
            return await call()
        except BadRequest:
            raise
        except NetworkError as error:
            if delay is None:
                raise
            logger.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def answer_query(query: CallbackQuery, text: str | None = None, *, show_alert: bool = False) -> None:
    """Stop a button's spinner with a short text. Best effort: what the press did is already
    stored and shown in the chat, so a failed answer is logged, never raised."""
    try:
        await with_retry(lambda: query.answer(text, show_alert=show_alert), what="answerCallbackQuery",
                         delays=ANSWER_RETRY_DELAYS_S)
    except TelegramError as error:
        logger.warning("could not answer button press %s: %s", query.id, error)


async def send_text(
    bot: Bot,
    chat_id: int,
    text: str,
    *,
    reply_markup: InlineKeyboardMarkup | ForceReply | None = None,
    parse_mode: str | None = None,
    **kwargs: Any,
) -> Message:
    """Send `text`, split over several messages when too long; returns the last one sent.

    HTML texts are not split (a cut could fall inside a tag): their callers keep them short.
    """
    parts = [text] if parse_mode else split_message(text)
    message: Message | None = None
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        message = await with_retry(
            lambda part=part, last=last: bot.send_message(
                chat_id=chat_id, text=part, parse_mode=parse_mode,
                reply_markup=reply_markup if last else None, **kwargs),
            what="sendMessage")
    assert message is not None
    return message


async def edit_text(
    bot: Bot,
    *,
    chat_id: int,
    message_id: int,
    text: str,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> None:
    """Replace a message's text (and buttons); "not modified" means it already shows that."""
    try:
        await with_retry(lambda: bot.edit_message_text(chat_id=chat_id, message_id=message_id, text=text,
                                                       reply_markup=reply_markup),
                         what="editMessageText")
    except BadRequest as error:
        if not is_not_modified(error):
            raise
        logger.debug("message %s in chat %s already shows that text", message_id, chat_id)


async def send_photo(bot: Bot, chat_id: int, path: Any, *, caption: str | None = None) -> Message:
    """Send a picture from a file path (read anew on each retry)."""
    async def call() -> Message:
        with open(path, "rb") as handle:
            return await bot.send_photo(chat_id=chat_id, photo=handle, caption=caption)

    return await with_retry(call, what="sendPhoto")
