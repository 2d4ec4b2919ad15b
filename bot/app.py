"""Wiring of the Telegram bot: the Application, its handlers, start-up and shutdown, and runners.

`build_application` only wires (python-telegram-bot's examples are the model): the services go
in `bot_data`, start-up work in `post_init` (draft queue, work a crash left undone, commands, the
nightly scheduler when asked), teardown in `post_stop` / `post_shutdown`; long polling and
the webhook go through `bot.polling.HandledFirstUpdater`, which confirms an update only after it
was handled (and handles it again when its handler met a busy database).
`run_bot` runs it with long polling or a webhook per `config.telegram`; `polling` does the same
inside a running event loop (tests, embedding). `make_notifier` gives the scheduler thread a way
to message an owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlparse

from telegram import BotCommand, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import NetworkError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    BaseRateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    BusinessConnectionHandler,
    BusinessMessagesDeletedHandler,
    TypeHandler,
    filters,
)

from bot import business, commands, handlers, keyboards, texts
from bot.drafts import requeue_unanswered
from bot.errors import BotConfigError
from bot.polling import HandledFirstUpdater
from bot.queue import DraftQueue
from bot.services import CycleRunner, Services
from bot.state import STATE_KEY, BotState, state, state_of
from bot.streaming import Streamer
from bot.telegram_io import answer_query, is_not_modified, with_retry
from loop.config import TOKEN_ENV, Config
from loop.errors import DatabaseBusy
from loop.twin import Twin

logger = logging.getLogger(__name__)

RATE_LIMIT_RETRIES = 5  # 429 "retry after" answers waited out before a send gives up
DRAIN_TIMEOUT_S = 120.0  # on shutdown, queued drafts get this long to be written and sent
NOTIFY_TIMEOUT_S = 120.0
# Business updates come only when asked for (Telegram keeps the last list given).
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.BUSINESS_CONNECTION, Update.BUSINESS_MESSAGE,
                   Update.EDITED_BUSINESS_MESSAGE, Update.DELETED_BUSINESS_MESSAGES]


def build_application(
    config: Config,
    twin: Twin,
    *,
    token: str | None = None,
    cycle_runner: CycleRunner | None = None,
    run_scheduler: bool = False,
    rate_limiter: BaseRateLimiter | None = None,
) -> Application:
    """The bot, wired: handlers, error handler, rate limiter, services in `bot_data`.

    `token` defaults to $TWIN_TELEGRAM_TOKEN; `config.telegram.base_url`/`base_file_url` point it
    at a self-hosted Bot API server. `cycle_runner` replaces `loop.cycle.run_cycle` for /train.
    `run_scheduler` starts the nightly scheduler in `post_init` (what `run_bot` does).
    """
    token = token or config.telegram_token
    if not token:
        raise BotConfigError(f"no Telegram bot token: set {TOKEN_ENV}")
    builder = (
        ApplicationBuilder()
        .token(token)
        .rate_limiter(rate_limiter or AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
        # One update at a time: with the FIFO draft queue this keeps the drafts of a chat in order.
        .concurrent_updates(False)
    )
    if config.telegram.base_url:
        builder = builder.base_url(config.telegram.base_url)
    if config.telegram.base_file_url:
        builder = builder.base_file_url(config.telegram.base_file_url)
    application = builder.build()
    # Long polling confirms an update only after it was handled (see bot.polling).
    application.updater = HandledFirstUpdater(application)
    services = Services(config=config, twin=twin, cycle_runner=cycle_runner)
    queue = DraftQueue(config.telegram.draft_queue_size,
                       error_callback=lambda update, error: application.process_error(update, error),
                       typing=lambda chat_id: application.bot.send_chat_action(chat_id, ChatAction.TYPING))
    application.bot_data[STATE_KEY] = BotState(services=services, queue=queue, start_scheduler=run_scheduler,
                                               streamer=Streamer.from_settings(config.telegram))
    add_handlers(application)
    return application


def add_handlers(application: Application) -> None:
    """Gatekeeper first (group -1), then commands, buttons and messages, then the error handler."""
    application.add_handler(TypeHandler(Update, gatekeeper), group=-1)
    # The owner's real chats (bot.business); their own gate is the stored connection.
    application.add_handler(BusinessConnectionHandler(business.on_connection))
    application.add_handler(MessageHandler(filters.UpdateType.BUSINESS_MESSAGES, business.on_business_message))
    application.add_handler(BusinessMessagesDeletedHandler(business.on_deleted))
    application.add_handler(CallbackQueryHandler(business.on_button, pattern=keyboards.BUSINESS_PATTERN))
    for name, callback in [("chats", business.chats), ("pause", business.pause), ("resume", business.resume),
                           ("unmute", business.unmute)]:
        application.add_handler(CommandHandler(name, callback))
    for name, callback in [("start", commands.start), ("help", commands.help_), ("import", commands.import_),
                           ("train", commands.train), ("status", commands.status), ("rollback", commands.rollback),
                           ("forget", commands.forget), ("cancel", commands.cancel)]:
        application.add_handler(CommandHandler(name, callback))
    # Charts and imports take seconds: they run beside the update loop (block=False), not in its way.
    application.add_handler(CommandHandler("stats", commands.stats, block=False))
    application.add_handler(CommandHandler("style", commands.style, block=False))
    application.add_handler(CommandHandler("insight", commands.insight, block=False))
    application.add_handler(CallbackQueryHandler(handlers.on_draft_button, pattern=keyboards.FEEDBACK_PATTERN))
    application.add_handler(CallbackQueryHandler(commands.on_forget_button, pattern=keyboards.FORGET_PATTERN))
    application.add_handler(CallbackQueryHandler(handlers.on_unknown_button))
    new_message = filters.UpdateType.MESSAGE  # edits of old messages are not new texts to answer
    application.add_handler(MessageHandler(new_message & filters.COMMAND, commands.unknown_command))
    application.add_handler(MessageHandler(new_message & filters.TEXT, handlers.on_text))
    application.add_handler(MessageHandler(new_message & filters.Document.ALL, commands.on_document, block=False))
    application.add_handler(MessageHandler(new_message, commands.not_text))
    application.add_error_handler(on_error)


async def gatekeeper(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Serve configured owners in private chats (or groups if allowed); refuse anyone else once.

    Nothing of a stranger is stored and no model time is spent: their update stops here.
    """
    if business.is_business_update(update):
        return  # the sender is the owner's contact; bot.business admits only an owner's connection
    st, user, chat = state(context), update.effective_user, update.effective_chat
    if user is None:
        raise ApplicationHandlerStop
    query = update.callback_query
    if chat is not None and chat.type != ChatType.PRIVATE and not st.services.config.telegram.allow_groups:
        logger.info("ignoring an update from a %s chat (telegram.allow_groups is off)", chat.type)
        if query is not None:
            await answer_query(query, texts.PRIVATE_ONLY)
        raise ApplicationHandlerStop
    if st.services.twin.is_owner(user.id):
        return
    logger.info("refused an update from user %s (not an owner)", user.id)
    if query is not None:
        await answer_query(query, texts.REFUSAL)
    elif user.id not in st.refused and chat is not None and chat.type == ChatType.PRIVATE:
        st.refused.add(user.id)
        await context.bot.send_message(chat.id, texts.REFUSAL)
    raise ApplicationHandlerStop


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with its traceback, then tell the owner in one sentence."""
    error = context.error
    if error is not None and is_not_modified(error):
        return
    if isinstance(error, DatabaseBusy) and isinstance(update, Update):
        await _database_busy(update, context, error)
        return
    # Ids only: the update holds the owner's text, and logs are out of /forget's reach.
    update_id = update.update_id if isinstance(update, Update) else None
    chat_id = update.effective_chat.id if isinstance(update, Update) and update.effective_chat else None
    logger.error("error while handling update %s in chat %s: %s", update_id, chat_id,
                 type(error).__name__ if error is not None else "unknown error", exc_info=error)
    if not isinstance(update, Update) or update.effective_chat is None or update.effective_user is None:
        return
    if business.is_business_update(update):
        return  # its chat is the owner's contact's: never write there unasked
    if not state(context).services.twin.is_owner(update.effective_user.id):
        return
    what = type(error).__name__ if error is not None else "unknown error"
    try:
        await context.bot.send_message(update.effective_chat.id, texts.ERROR_SENTENCE.format(what=what))
    except Exception:
        logger.exception("could not tell the owner about the error")


async def _database_busy(update: Update, context: ContextTypes.DEFAULT_TYPE, error: DatabaseBusy) -> None:
    """Nothing of the update was stored: it is handled again after a pause (not confirmed until then);
    the owner is told once per update why the answer is late."""
    logger.warning("update %s met a busy database (%s); it will be handled again", update.update_id, error)
    updater = context.application.updater
    if isinstance(updater, HandledFirstUpdater):
        updater.handle_again(update)
    st, chat, user = state(context), update.effective_chat, update.effective_user
    if business.is_business_update(update):
        return  # the owner is not waiting on it, and its chat is the contact's
    if chat is None or user is None or not st.services.twin.is_owner(user.id) or update.update_id in st.told_busy:
        return
    if len(st.told_busy) > 1000:  # only the updates still being retried matter
        st.told_busy.clear()
    st.told_busy.add(update.update_id)
    try:
        await context.bot.send_message(chat.id, texts.DATABASE_BUSY)
    except Exception:
        logger.exception("could not tell the owner that the database is busy")


# Lifecycle -------------------------------------------------------------------------------

async def _post_init(application: Application) -> None:
    st = state_of(application)
    st.loop = asyncio.get_running_loop()
    st.queue.start()
    # Before polling starts: what the last run left undone comes before anything new.
    await requeue_unanswered(application.bot, st.services, st.queue)
    await business.recover(application)
    try:
        await with_retry(lambda: application.bot.set_my_commands([BotCommand(n, d) for n, d in texts.COMMANDS]),
                         what="setMyCommands")
    except NetworkError:  # the menu is a convenience; the bot works without it
        logger.exception("could not register the bot's commands")
    if not st.services.config.schedule.train_in_bot:
        st.reports_task = asyncio.create_task(_send_worker_reports(application), name="twin-worker-reports")
    if st.start_scheduler and st.services.config.schedule.enabled:
        from loop.scheduler import start_scheduler

        st.scheduler = await asyncio.to_thread(start_scheduler, st.services.config, st.services.engine,
                                               notify=make_notifier(application))


async def _send_worker_reports(application: Application) -> None:
    """schedule.train_in_bot = false: send the reports of cycles that workers finished, then mark
    them sent; a report that could not be sent stays and is tried again on the next round."""
    st = state_of(application)
    while True:
        try:
            for request_id, telegram_id, text in await asyncio.to_thread(st.services.finished_reports):
                await commands.send_report(application.bot, telegram_id, text)
                await asyncio.to_thread(st.services.report_sent, request_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not send the reports of the training workers")
        await asyncio.sleep(st.services.config.worker.report_poll_s)


async def _post_stop(application: Application) -> None:
    st = state_of(application)
    if st.reports_task is not None:
        st.reports_task.cancel()
        st.reports_task = None
    business.stop(application)
    await state_of(application).queue.stop(drain_timeout=DRAIN_TIMEOUT_S)


async def _post_shutdown(application: Application) -> None:
    st = state_of(application)
    if st.scheduler is not None:
        st.scheduler.shutdown(wait=False)
        st.scheduler = None
    st.loop = None


def make_notifier(application: Application) -> Callable[[int, str, Path | None], None]:
    """`notify(telegram_id, text, chart_path)` for other threads (the scheduler): it hops onto the
    bot's event loop and returns once the message is sent."""

    def notify(telegram_id: int, text: str, chart: Path | None = None) -> None:
        loop = state_of(application).loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the bot is not running: cannot send the report")
        coroutine = commands.send_report(application.bot, telegram_id, text, chart)
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:  # called on the loop itself: waiting here would deadlock
            application.create_task(coroutine)
            return
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=NOTIFY_TIMEOUT_S)

    return notify


@asynccontextmanager
async def polling(application: Application, *, timeout: float = 10) -> AsyncIterator[Application]:
    """Run the application with long polling inside the current event loop, in the order
    `run_polling` uses (initialize, post_init, poll, start … stop, post_stop, shutdown, post_shutdown)."""
    await application.initialize()
    try:
        if application.post_init:
            await application.post_init(application)
        await application.updater.start_polling(timeout=timeout, allowed_updates=ALLOWED_UPDATES)
        await application.start()
        try:
            yield application
        finally:
            if application.updater.running:
                await application.updater.stop()
            if application.running:
                await application.stop()
            if application.post_stop:
                await application.post_stop(application)
    finally:
        await application.shutdown()
        if application.post_shutdown:
            await application.post_shutdown(application)


def webhook_secret(token: str) -> str:
    """A secret for the webhook header, stable across restarts and not the token itself."""
    return hashlib.sha256(f"twin-webhook:{token}".encode()).hexdigest()


def run_application(application: Application, config: Config, **kwargs: Any) -> None:
    """Run until stopped (Ctrl-C, SIGTERM): long polling, or a webhook per `config.telegram.mode`.

    `kwargs` go to `run_polling` / `run_webhook` (e.g. `stop_signals=None` in a thread).
    """
    telegram = config.telegram
    if telegram.mode == "webhook":
        application.run_webhook(listen=telegram.webhook_listen, port=telegram.webhook_port,
                                url_path=urlparse(telegram.webhook_url).path.lstrip("/"),
                                webhook_url=telegram.webhook_url, allowed_updates=ALLOWED_UPDATES,
                                # One update at a time, in order, as with polling (bot.polling).
                                max_connections=1,
                                secret_token=webhook_secret(application.bot.token), **kwargs)
    else:
        application.run_polling(allowed_updates=ALLOWED_UPDATES, **kwargs)


def run_bot(config: Config, twin: Twin, *, token: str | None = None, cycle_runner: CycleRunner | None = None,
            run_scheduler: bool = True, **kwargs: Any) -> None:
    """`twin run` with a token: the bot and, unless disabled, the nightly scheduler, until stopped."""
    if not config.owners:
        raise BotConfigError("no owners configured: the bot serves the Telegram user ids in `owners` only")
    application = build_application(config, twin, token=token, cycle_runner=cycle_runner,
                                     run_scheduler=run_scheduler)
    logger.info("starting the bot (%s) for owners %s", config.telegram.mode, config.owners)
    run_application(application, config, **kwargs)
