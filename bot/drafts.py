"""Drafts on their way to the owner: the queue job that writes and shows one, and, at start, the
work a crash left undone.

An incoming text is stored (committed) before its job is queued, and a draft is stored before
it is shown, so after a kill nothing is lost: `requeue_unanswered` queues again, per owner and
oldest first, the recent messages that have no draft and the drafts that were never sent.

Telegram has no idempotent send, so a draft is noted as "sending" (committed) before it is sent and
as shown after. A draft found "sending" at start may be in the chat already (killed after Telegram
took it, before it was noted): it is not sent again, which could show it twice; the owner gets a
line under their message instead, saying it may be above and to send the message again if not.

While a draft is written its partial text may show in the chat (`bot.streaming`); the final
message is sent, or the growing preview message edited into it, only once the draft is stored.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from telegram import Bot, ReplyParameters
from telegram.error import BadRequest, Forbidden, TelegramError

from bot import keyboards, texts
from bot.queue import DraftJob, DraftQueue
from bot.services import Services
from bot.streaming import DraftStream, delete_quietly
from bot.telegram_io import PAUSES_S, edit_text, send_text
from loop.errors import DatabaseBusy, DraftingError, DraftingUnavailable
from loop.views import DraftView

logger = logging.getLogger(__name__)

# Older messages are not answered after a restart: a draft for a day-old message helps no one.
RECOVERY_WINDOW = timedelta(hours=24)


def draft_job(bot: Bot, services: Services, *, telegram_id: int, chat_id: int, message_id: int,
              reply_to: int | None, update: Any = None, draft: DraftView | None = None,
              maybe_shown: bool = False, stream: DraftStream | None = None, queue: DraftQueue | None = None,
              attempt: int = 0) -> DraftJob[DraftView]:
    """The queue job that drafts a reply to the stored message `message_id` (or takes `draft`,
    written before a restart) and shows it in `chat_id` as a reply to Telegram message `reply_to`
    (`maybe_shown`: its send was interrupted; the owner is told instead). With `stream`, the draft's
    partial text shows while it is written.

    Given the `queue`, a draft the drafting server could not write (DraftingUnavailable) is queued
    again after a pause that grows as the bot's other retries do (`RETRY_PAUSES_S`); `attempt` counts
    them. A retried draft is shown final only: its preview went with the failure.
    """
    retry = None
    if draft is not None:
        work: Any = lambda: draft  # noqa: E731 - nothing to write, only to show
        stream = None
    else:
        work = partial(services.twin.draft_for_message, telegram_id=telegram_id, message_id=message_id,
                       chat_id=chat_id, on_text=stream.on_text if stream is not None else None)
        if queue is not None:
            retry = partial(retry_later, queue, partial(draft_job, bot, services, telegram_id=telegram_id,
                                                        chat_id=chat_id, message_id=message_id, reply_to=reply_to,
                                                        update=update, queue=queue, attempt=attempt + 1), attempt)
    return DraftJob(chat_id=chat_id, work=work, update=update, owner=telegram_id,
                    deliver=partial(deliver_maybe_shown, bot, services, telegram_id, reply_to=reply_to)
                    if maybe_shown else partial(deliver_draft, bot, services, telegram_id, reply_to=reply_to,
                                                stream=stream),
                    on_error=partial(drafting_failed, bot, chat_id, stream=stream, retry=retry, attempt=attempt))


# Pauses before a draft the server could not write is tried again: the Bot API retries' pauses,
# then every 30 s while the bot runs (a restart queues the message again anyway).
RETRY_PAUSES_S = PAUSES_S


def retry_later(queue: DraftQueue, make_job: Any, attempt: int) -> None:
    """Queue `make_job()` again after the pause for `attempt`, past the owner's bound (it was taken)."""
    delay = RETRY_PAUSES_S[min(attempt, len(RETRY_PAUSES_S) - 1)]

    def resubmit() -> None:
        if not queue.running:  # stopping: the stored message is drafted at the next start
            return
        queue.submit(make_job(), force=True)

    asyncio.get_running_loop().call_later(delay, resubmit)


async def deliver_draft(bot: Bot, services: Services, telegram_id: int, draft: DraftView, *,
                        reply_to: int | None = None, stream: DraftStream | None = None) -> None:
    """Show a stored draft with its buttons, then remember the message so replies to it count as edits.

    "sending" is committed first: a kill before the draft is noted as shown then does not send it
    twice (see the module's docstring). A send Telegram refused is noted as not sent (the next start
    sends it); after a timeout or a cancel it may have arrived, so it stays "sending". A streamed
    preview message ("edit") becomes the draft; if it cannot be edited, the draft is sent anew.
    """
    twin = services.twin
    preview = await stream.finish() if stream is not None else None
    await asyncio.to_thread(twin.note_delivery, telegram_id=telegram_id, draft_id=draft.id, delivery="sending")
    try:
        sent = await _into_preview(bot, preview, draft) if preview is not None else None
        if sent is None:
            sent = await send_text(bot, draft.chat_id, draft.text,
                                   reply_markup=keyboards.draft_keyboard(draft.id, draft.text),
                                   reply_parameters=_reply(reply_to))
    except (BadRequest, Forbidden):
        await asyncio.to_thread(twin.note_delivery, telegram_id=telegram_id, draft_id=draft.id, delivery=None)
        raise
    await asyncio.to_thread(twin.mark_shown, telegram_id=telegram_id, draft_id=draft.id,
                            chat_id=sent.chat_id, shown_message_id=sent.message_id)


async def _into_preview(bot: Bot, preview: Any, draft: DraftView) -> Any:
    """Edit the streamed preview into the final draft with its buttons; None (the preview taken
    away where possible) when it cannot be: the caller sends the draft as a new message."""
    if len(texts.split_message(draft.text)) == 1:
        try:
            await edit_text(bot, chat_id=preview.chat_id, message_id=preview.message_id, text=draft.text,
                            reply_markup=keyboards.draft_keyboard(draft.id, draft.text))
            return preview
        except TelegramError as error:
            logger.warning("could not turn the preview %s into the draft (%s); sending it anew",
                           preview.message_id, error)
    await delete_quietly(bot, preview)
    return None


async def deliver_maybe_shown(bot: Bot, services: Services, telegram_id: int, draft: DraftView, *,
                              reply_to: int | None = None) -> None:
    """A draft whose send a restart interrupted: tell the owner instead of showing it a second time."""
    await send_text(bot, draft.chat_id, texts.DRAFT_MAYBE_SHOWN, reply_parameters=_reply(reply_to))
    await asyncio.to_thread(services.twin.note_delivery, telegram_id=telegram_id, draft_id=draft.id,
                            delivery="uncertain")


def _reply(reply_to: int | None) -> ReplyParameters | None:
    return ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None


async def drafting_failed(bot: Bot, chat_id: int, error: BaseException, *, stream: DraftStream | None = None,
                          retry: Any = None, attempt: int = 0) -> bool:
    """The model gave nothing usable, the drafting server is unavailable, or the database stayed
    locked: say so (the server's outage once per message, then `retry()` queues it again); other
    errors go to the error handler. A half-written preview is taken away first."""
    if stream is not None:
        await stream.abandon()
    if isinstance(error, DraftingUnavailable):
        logger.warning("drafting server unavailable for a draft in chat %s (attempt %d): %s", chat_id,
                       attempt + 1, error)
        if attempt == 0:
            await send_text(bot, chat_id, texts.DRAFT_SERVER_RETRYING if retry else texts.DRAFT_SERVER_UNAVAILABLE)
        if retry is not None:
            retry()
        return True
    if isinstance(error, DraftingError):
        await send_text(bot, chat_id, f"I couldn't write a draft for that ({error}). Please send it again.")
        return True
    if isinstance(error, DatabaseBusy):
        logger.warning("a draft in chat %s met a busy database: %s", chat_id, error)
        await send_text(bot, chat_id, texts.DRAFT_DATABASE_BUSY)
        return True
    return False


async def requeue_unanswered(bot: Bot, services: Services, queue: DraftQueue, *,
                             now: datetime | None = None) -> int:
    """Queue again what a crash left undone since `RECOVERY_WINDOW` ago; returns how many jobs.

    Call before updates are fetched, so these come before anything new of the same chat.
    """
    since = (now or datetime.now(timezone.utc)) - RECOVERY_WINDOW
    items = await asyncio.to_thread(services.twin.unanswered, since=since)
    for item in items:
        # Past the bound: these were taken before the crash (at most a queue's worth per owner).
        queue.submit(draft_job(bot, services, telegram_id=item.telegram_id, chat_id=item.chat_id,
                               message_id=item.message_id, reply_to=item.reply_to, draft=item.draft,
                               maybe_shown=item.maybe_shown, queue=queue), force=True)
    if items:
        logger.info("queued %d drafts left undone by the last run (%d already written, not shown; %d interrupted "
                    "while being sent, not sent again)", len(items),
                    sum(1 for item in items if item.draft is not None and not item.maybe_shown),
                    sum(1 for item in items if item.maybe_shown))
    return len(items)
