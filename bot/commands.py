"""Command handlers: /start /help /import (and the file it takes) /stats /style /insight /train /status
/rollback /forget /cancel, plus the answer to anything the twin cannot draft from.

Slow work (imports, charts, training) runs in worker threads, an upload's parsing in a child
process with a memory limit; a training cycle runs for minutes in a daemon thread of its own and
reports back through the event loop when done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from telegram import Bot, Update
from telegram.ext import ContextTypes

from bot import keyboards, texts
from bot.services import ServiceError
from bot.state import BotState, state
from bot.telegram_io import answer_query, edit_text, send_photo, send_text

logger = logging.getLogger(__name__)

CLOUD_DOWNLOAD_LIMIT_MB = 20  # getFile on api.telegram.org serves files up to 20 MB
FORGET_CONFIRM_TTL = timedelta(minutes=10)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """What the twin is and how to teach it."""
    user = update.effective_user
    await asyncio.to_thread(state(context).services.twin.owner_id, user.id, user.full_name)
    await update.effective_message.reply_text(texts.START_TEXT)


async def help_(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """How drafts, buttons and editing work, and the commands."""
    await update.effective_message.reply_text(texts.HELP_TEXT)


async def import_(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain what to send; any document the owner sends is imported."""
    await update.effective_message.reply_text(texts.IMPORT_HOWTO.format(limit=upload_limit_mb(state(context))))


def upload_limit_mb(st: BotState) -> int:
    telegram = st.services.config.telegram
    # A self-hosted Bot API server (base_url) serves large files; the cloud one stops at 20 MB.
    return telegram.max_upload_mb if telegram.base_url else min(telegram.max_upload_mb, CLOUD_DOWNLOAD_LIMIT_MB)


def safe_file_name(name: str | None) -> str:
    """A file name without folders or odd characters; the extension is kept for format detection."""
    cleaned = re.sub(r"[^\w.\-]+", "_", Path(name or "upload").name).strip("._") or "upload"
    return cleaned[-120:]


async def on_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A file: import it with the CLI's importers (in a thread; parsed in a child process) and say what was added."""
    message, st = update.effective_message, state(context)
    document = message.document
    limit = upload_limit_mb(st)
    if document.file_size and document.file_size > limit * 1024 * 1024:
        await message.reply_text(texts.too_big(limit))
        return
    name = safe_file_name(document.file_name)
    await message.reply_text(f"Importing {name}…")
    folder = st.services.uploads_dir() / uuid.uuid4().hex
    folder.mkdir(mode=0o700)
    try:
        telegram_file = await context.bot.get_file(document.file_id)
        # The size in the message is optional: check what getFile says, then what actually arrived.
        if (telegram_file.file_size or 0) > limit * 1024 * 1024:
            await message.reply_text(texts.too_big(limit))
            return
        path = Path(await telegram_file.download_to_drive(folder / name))
        if path.stat().st_size > limit * 1024 * 1024:
            await message.reply_text(texts.too_big(limit))
            return
        summary = await asyncio.to_thread(st.services.import_file, telegram_id=update.effective_user.id, path=path,
                                          name=update.effective_user.full_name)
    finally:
        # The upload holds private writing: what matters is now in the database.
        shutil.rmtree(folder, ignore_errors=True)
    await send_text(context.bot, update.effective_chat.id, summary)


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Counts, accept rate and edit distance per adapter version, with a chart of the cycles."""
    await _text_and_chart(update, context, "stats")


async def style(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The owner's style profile."""
    await _text_and_chart(update, context, "style")


async def _text_and_chart(update: Update, context: ContextTypes.DEFAULT_TYPE, what: str) -> None:
    st, chat_id = state(context), update.effective_chat.id
    folder = st.services.uploads_dir() / uuid.uuid4().hex
    folder.mkdir(mode=0o700)
    try:
        call = st.services.stats if what == "stats" else st.services.style
        text, chart = await asyncio.to_thread(call, telegram_id=update.effective_user.id,
                                              chart_path=folder / f"{what}.png")
        await send_text(context.bot, chat_id, text)
        if chart is not None and Path(chart).exists():
            await send_photo(context.bot, chat_id, chart)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


INSIGHT_USAGE = "Use /insight for the active version, /insight 3 for v3, or /insight 3 2 to compare v3 with v2."


async def insight(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """What a version learnt: where it changed the model, the words it favours, how its attention moved."""
    args, st, chat_id = context.args or [], state(context), update.effective_chat.id
    if len(args) > 2 or not all(re.fullmatch(r"v?\d+", arg) for arg in args):
        await update.effective_message.reply_text(INSIGHT_USAGE)
        return
    version, against = ([int(arg.lstrip("v")) for arg in args] + [None, None])[:2]
    await update.effective_message.reply_text(texts.INSIGHT_WORKING)
    folder = st.services.uploads_dir() / uuid.uuid4().hex
    folder.mkdir(mode=0o700)
    try:
        text, charts = await asyncio.to_thread(st.services.insight, telegram_id=update.effective_user.id,
                                               folder=folder, version=version, against=against)
        await send_text(context.bot, chat_id, text)
        for chart in charts:
            await send_photo(context.bot, chat_id, chart)
    except ServiceError as error:
        await send_text(context.bot, chat_id, str(error))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def train(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start a training cycle now; the report (and chart) follow when it is done."""
    st, user_id, chat_id = state(context), update.effective_user.id, update.effective_chat.id
    if not st.services.config.schedule.train_in_bot:  # workers train (README, "Scale")
        new = await asyncio.to_thread(st.services.queue_cycle, telegram_id=user_id)
        await update.effective_message.reply_text(texts.TRAIN_QUEUED if new else texts.TRAIN_ALREADY_QUEUED)
        return
    if st.training.is_set():
        await update.effective_message.reply_text(texts.TRAIN_RUNNING)
        return
    st.training.set()
    await update.effective_message.reply_text(
        "Training started: this takes a few minutes. I'll send the report when it's done; drafts keep coming meanwhile.")
    loop = asyncio.get_running_loop()
    # A daemon thread, not the loop's executor: a cycle runs for minutes and must not hold up shutdown.
    threading.Thread(target=_run_cycle, args=(st, context.bot, loop, user_id, chat_id), daemon=True,
                     name=f"twin-cycle-{user_id}").start()


def _run_cycle(st: BotState, bot: Bot, loop: asyncio.AbstractEventLoop, telegram_id: int, chat_id: int) -> None:
    try:
        outcome = st.services.run_cycle(telegram_id=telegram_id)
        text, chart = outcome.report_text, outcome.chart_path
    except ServiceError as error:  # TrainingAlreadyRunning included: says who holds the lock
        text, chart = str(error), None
    except Exception as error:
        logger.exception("the training cycle started from Telegram failed")
        text, chart = f"The training cycle failed: {type(error).__name__}: {error}", None
    finally:
        st.training.clear()
    try:
        asyncio.run_coroutine_threadsafe(send_report(bot, chat_id, text, chart), loop).result(timeout=120)
    except Exception:
        logger.exception("could not send the training report")


async def send_report(bot: Bot, chat_id: int, text: str, chart: Any = None) -> None:
    """A cycle report: the text, then the chart if there is one."""
    await send_text(bot, chat_id, text or "The training cycle finished.")
    if chart and Path(chart).exists():
        await send_photo(bot, chat_id, chart)


async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Active adapter, counts, last cycle and next scheduled run."""
    st = state(context)

    def read() -> str:
        next_run = st.services.next_run(st.scheduler)
        return st.services.status(telegram_id=update.effective_user.id, next_run=next_run)

    await update.effective_message.reply_text(await asyncio.to_thread(read))


async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Back to the previous adapter version, or to `/rollback N`."""
    args = context.args or []
    if len(args) > 1 or (args and not re.fullmatch(r"v?\d+", args[0])):
        await update.effective_message.reply_text("Use /rollback, or /rollback 3 for version 3.")
        return
    version = int(args[0].lstrip("v")) if args else None
    try:
        active = await asyncio.to_thread(state(context).services.rollback, telegram_id=update.effective_user.id,
                                         version=version)
    except ServiceError as error:
        await update.effective_message.reply_text(str(error))
        return
    await update.effective_message.reply_text(
        f"Now using v{active}" + (" (the base model)" if active == 0 else "") + ", from the next draft on.")


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask before deleting everything of the owner."""
    await update.effective_message.reply_text(texts.FORGET_CONFIRM, reply_markup=keyboards.forget_keyboard())


async def on_forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The answer to /forget: delete everything, or keep it; an old confirmation does nothing."""
    query = update.callback_query
    match = keyboards.FORGET_PATTERN.match(query.data or "")
    sent_at = query.message.date if query.message is not None else None
    if match is None or sent_at is None or datetime.now(timezone.utc) - sent_at > FORGET_CONFIRM_TTL:
        await answer_query(query, texts.FORGET_EXPIRED)
        await edit_text(context.bot, chat_id=query.message.chat_id, message_id=query.message.message_id,
                        text=texts.FORGET_EXPIRED)
        return
    if match.group(1) == "no":
        await answer_query(query, texts.FORGET_KEPT)
        await edit_text(context.bot, chat_id=query.message.chat_id, message_id=query.message.message_id,
                        text=texts.FORGET_KEPT)
        return
    await asyncio.to_thread(state(context).services.forget, telegram_id=update.effective_user.id)
    await answer_query(query, "Deleted.")
    await edit_text(context.bot, chat_id=query.message.chat_id, message_id=query.message.message_id,
                    text=texts.FORGET_DONE)


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop waiting for the owner's version (the question of ✏️/🗑 in this chat)."""
    closed = await asyncio.to_thread(state(context).services.twin.close_version_prompts,
                                     telegram_id=update.effective_user.id, chat_id=update.effective_chat.id)
    if not closed:
        await update.effective_message.reply_text(texts.EDIT_NOTHING)
    elif closed[-1].action == "reject":
        await update.effective_message.reply_text("Cancelled: the reject stays, without a text.")
    else:
        await update.effective_message.reply_text("Cancelled: that draft still has its buttons.")


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A command the bot does not have."""
    await update.effective_message.reply_text("I don't know that command. /help lists what I can do.")


async def not_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stickers, photos, voice: nothing to draft from; nothing is stored."""
    await update.effective_message.reply_text(texts.ONLY_TEXT)
