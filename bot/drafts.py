"""Drafts on their way to the owner: the queue job that writes and shows one, and, at start, the
work a crash left undone.

An incoming text is stored (committed) before its job is queued, and a draft is stored before
it is shown, so after a kill nothing is lost: `requeue_unanswered` queues again, per owner and
oldest first, the recent messages that have no draft and the drafts that were never shown.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from telegram import Bot, ReplyParameters

from bot import keyboards
from bot.queue import DraftJob, DraftQueue
from bot.services import Services
from bot.telegram_io import send_text
from loop.drafting import DraftingError
from storage.models import Draft

logger = logging.getLogger(__name__)

# Older messages are not answered after a restart: a draft for a day-old message helps no one.
RECOVERY_WINDOW = timedelta(hours=24)


def draft_job(bot: Bot, services: Services, *, telegram_id: int, chat_id: int, message_id: int,
              reply_to: int | None, update: Any = None, draft: Draft | None = None) -> DraftJob[Draft]:
    """The queue job that drafts a reply to the stored message `message_id` (or takes `draft`,
    written before a restart) and shows it in `chat_id` as a reply to Telegram message `reply_to`."""
    if draft is not None:
        work: Any = lambda: draft  # noqa: E731 - nothing to write, only to show
    else:
        work = partial(services.twin.draft_for_message, telegram_id=telegram_id, message_id=message_id,
                       chat_id=chat_id)
    return DraftJob(chat_id=chat_id, work=work, update=update, owner=telegram_id,
                    deliver=partial(deliver_draft, bot, services, telegram_id, reply_to=reply_to),
                    on_error=partial(drafting_failed, bot, chat_id))


async def deliver_draft(bot: Bot, services: Services, telegram_id: int, draft: Draft, *,
                        reply_to: int | None = None) -> None:
    """Show a stored draft with its buttons, then remember the message so replies to it count as edits."""
    reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    sent = await send_text(bot, draft.chat_id, draft.text, reply_markup=keyboards.draft_keyboard(draft.id, draft.text),
                           reply_parameters=reply)
    await asyncio.to_thread(services.twin.mark_shown, telegram_id=telegram_id, draft_id=draft.id,
                            chat_id=sent.chat_id, shown_message_id=sent.message_id)


async def drafting_failed(bot: Bot, chat_id: int, error: BaseException) -> bool:
    """The model gave nothing usable: say so; other errors go to the error handler."""
    if isinstance(error, DraftingError):
        await send_text(bot, chat_id, f"I couldn't write a draft for that ({error}). Please send it again.")
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
                               message_id=item.message_id, reply_to=item.reply_to, draft=item.draft), force=True)
    if items:
        logger.info("queued %d drafts left undone by the last run (%d already written, not shown)",
                    len(items), sum(1 for item in items if item.draft is not None))
    return len(items)
