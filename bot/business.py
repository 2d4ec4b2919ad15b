"""Handlers for the twin inside the owner's real chats (Telegram Business connection).

Updates: `business_connection` (stored for a configured owner only; anyone else's is refused and
nothing of it kept), `business_message` / `edited_business_message` (a contact's message: stored,
then drafted once the contact has been quiet `telegram.business_quiet_s`; the owner's own message:
implicit feedback or a writing sample; the bot's own post coming back: recorded) and
`deleted_business_messages`. The draft shows in the owner's private chat with the bot with
✅ Send ✏️ Edit 🗑 Reject 🔄 Another 🔇 Mute; Send and Edit reuse the verdict path of the private
chat (`bot.handlers.decide`), and `after_verdict` then posts the kept text in the real chat as the
owner. Commands: /chats /pause /resume /unmute.

The business logic lives in `loop.business`; everything is committed there before the owner sees
it acknowledged. Logs hold ids, never text. The gatekeeper lets business updates through
(`is_business_update`): their sender is the contact, and the gate here is the stored connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from telegram import Bot, Update
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import Application, ContextTypes

from bot import handlers, keyboards, texts
from bot.drafts import RECOVERY_WINDOW, _reply, drafting_failed
from bot.queue import DraftJob, QueueFull
from bot.state import state, state_of
from bot.telegram_io import answer_query, edit_text, send_text
from loop.business import (Business, BusinessDraftView, Connection, DraftAlreadyDecided, FeedbackKind, SendPlan,
                           Shown)

logger = logging.getLogger(__name__)

RUNTIME_KEY = "twin-business"


@dataclass
class BusinessRuntime:
    """Process state of the business chats: the loop service and the quiet-time timers per chat."""

    business: Business
    timers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)


def runtime_of(application: Application) -> BusinessRuntime:
    runtime = application.bot_data.get(RUNTIME_KEY)
    if runtime is None:
        runtime = application.bot_data[RUNTIME_KEY] = BusinessRuntime(Business(state_of(application).services.twin))
    return runtime


def _runtime(context: ContextTypes.DEFAULT_TYPE) -> BusinessRuntime:
    return runtime_of(context.application)


def is_business_update(update: object) -> bool:
    return isinstance(update, Update) and bool(
        update.business_connection or update.business_message or update.edited_business_message
        or update.deleted_business_messages)


def _rights(connection: Any) -> dict[str, Any]:
    rights = connection.rights.to_dict() if connection.rights is not None else {}
    return {key: bool(value) for key, value in rights.items()}


# Connections ---------------------------------------------------------------------------------

async def on_connection(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The owner connected, changed or removed the connection; a stranger's is refused."""
    connection = update.business_connection
    rt, st = _runtime(context), state(context)
    change = await asyncio.to_thread(rt.business.connect, connection_id=connection.id,
                                     telegram_id=connection.user.id, user_chat_id=connection.user_chat_id,
                                     enabled=connection.is_enabled, rights=_rights(connection))
    if change.connection is None:
        logger.info("refused a business connection of user %s (not an owner)", connection.user.id)
        if connection.user.id not in st.refused:
            st.refused.add(connection.user.id)
            await send_text(context.bot, connection.user_chat_id, texts.REFUSAL)
        return
    logger.info("business connection of owner %s: enabled %s, can reply %s", connection.user.id,
                connection.is_enabled, change.connection.can_reply)
    if not connection.is_enabled:
        await send_text(context.bot, connection.user_chat_id, texts.BUSINESS_DISCONNECTED)
        return
    text = texts.BUSINESS_CONNECTED
    if not change.connection.can_reply:
        text += "\n\n" + texts.BUSINESS_NO_REPLY_RIGHT
    if change.muted_chats:
        text += f"\n\n{change.muted_chats} chat(s) stay muted (/chats)."
    await send_text(context.bot, connection.user_chat_id, text)


async def _connection(context: ContextTypes.DEFAULT_TYPE, connection_id: str | None) -> Connection | None:
    """The owner's stored connection behind a business update; one the bot never heard of (made
    while it was down) is asked of Telegram (getBusinessConnection) and stored if it is an owner's."""
    if not connection_id:
        return None
    rt = _runtime(context)
    known = await asyncio.to_thread(rt.business.connection, connection_id)
    if known is not None:
        return known
    try:
        info = await context.bot.get_business_connection(connection_id)
    except TelegramError as error:
        logger.warning("could not look up business connection %s: %s", connection_id, error)
        return None
    change = await asyncio.to_thread(rt.business.connect, connection_id=info.id, telegram_id=info.user.id,
                                     user_chat_id=info.user_chat_id, enabled=info.is_enabled, rights=_rights(info))
    return change.connection


# Messages in the real chats --------------------------------------------------------------------

async def on_business_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A new or edited message in one of the owner's connected chats."""
    message = update.business_message or update.edited_business_message
    connection = await _connection(context, message.business_connection_id)
    if connection is None or message.from_user is None:
        return  # not an owner's connection: ignored, nothing stored
    rt, text = _runtime(context), message.text or message.caption
    if update.edited_business_message is not None:
        if text:
            await asyncio.to_thread(rt.business.edited, connection, chat_id=message.chat_id,
                                    telegram_message_id=message.message_id, text=text)
        return
    if not text:
        return  # stickers, photos without a caption, voice: nothing to draft from or learn
    contact = message.chat.full_name or message.chat.username or None
    if message.from_user.id == connection.telegram_id:
        by_bot = message.sender_business_bot is not None
        reply = await asyncio.to_thread(rt.business.owner_message, connection, chat_id=message.chat_id,
                                        contact=contact, telegram_message_id=message.message_id, text=text,
                                        by_bot=by_bot)
        logger.info("owner's message %s in business chat %s: %s", message.message_id, message.chat_id, reply.kind)
        if reply.kind == "feedback" and reply.shown is not None and reply.verdict is not None:
            await _set_status(context.bot, reply.shown, texts.business_status_line(reply.verdict.value, reply.contact))
        return
    if not connection.enabled:
        return
    stored = await asyncio.to_thread(rt.business.contact_message, connection, chat_id=message.chat_id,
                                     contact=contact, telegram_message_id=message.message_id, text=text,
                                     date=message.date)
    for shown in stored.outdated:
        await _set_status(context.bot, shown, texts.business_status_line("outdated", stored.chat.contact))
    if stored.new and stored.draft_due:
        schedule_draft(context.application, connection, stored.chat.id)


def schedule_draft(application: Application, connection: Connection, business_chat_id: int,
                   delay: float | None = None) -> None:
    """Draft for the chat once its contact has been quiet: a newer message restarts the wait."""
    rt = runtime_of(application)
    quiet = state_of(application).services.config.telegram.business_quiet_s if delay is None else delay
    timer = rt.timers.pop(business_chat_id, None)
    if timer is not None:
        timer.cancel()
    loop = asyncio.get_running_loop()
    rt.timers[business_chat_id] = loop.call_later(quiet, _queue_draft, application, connection, business_chat_id)


def _queue_draft(application: Application, connection: Connection, business_chat_id: int) -> None:
    rt, st = runtime_of(application), state_of(application)
    rt.timers.pop(business_chat_id, None)
    bot = application.bot
    job = DraftJob(chat_id=connection.owner_chat_id, owner=connection.telegram_id,
                   work=partial(rt.business.draft_for_chat, telegram_id=connection.telegram_id,
                                business_chat_id=business_chat_id),
                   deliver=partial(show_draft, bot, application, connection.telegram_id),
                   on_error=partial(drafting_failed, bot, connection.owner_chat_id))
    try:
        st.queue.submit(job)
    except QueueFull:  # the message is stored: the next start drafts it
        logger.warning("draft queue full; business chat %s is drafted at the next start", business_chat_id)
    except RuntimeError:  # stopping: the same
        logger.info("stopping; business chat %s is drafted at the next start", business_chat_id)


async def show_draft(bot: Bot, application: Application, telegram_id: int, view: BusinessDraftView | None, *,
                     reply_to: int | None = None) -> None:
    """Show a business draft with its buttons; "sending" is committed first, as for private drafts
    (bot.drafts), so a kill while it is sent does not show it twice."""
    if view is None:
        return
    for shown in view.outdated:
        await _set_status(bot, shown, texts.business_status_line("outdated", view.contact))
    twin = state_of(application).services.twin
    await asyncio.to_thread(twin.note_delivery, telegram_id=telegram_id, draft_id=view.draft_id, delivery="sending")
    try:
        sent = await send_text(bot, view.owner_chat_id, texts.business_draft_text(view.contact, view.incoming, view.text),
                               reply_markup=keyboards.business_keyboard(view.draft_id),
                               reply_parameters=_reply(reply_to))
    except (BadRequest, Forbidden):
        await asyncio.to_thread(twin.note_delivery, telegram_id=telegram_id, draft_id=view.draft_id, delivery=None)
        raise
    await asyncio.to_thread(twin.mark_shown, telegram_id=telegram_id, draft_id=view.draft_id, chat_id=sent.chat_id,
                            shown_message_id=sent.message_id)
    # Updates are handled while the draft is sent: a newer message of the contact, or the owner's own
    # reply, may have settled it before it was noted as shown, when there was no message to update yet.
    settled = await asyncio.to_thread(runtime_of(application).business.settled_as, telegram_id=telegram_id,
                                      draft_id=view.draft_id)
    if settled is not None:
        await _set_status(bot, Shown(view.draft_id, sent.chat_id, sent.message_id, view.text),
                          texts.business_status_line(settled, view.contact))


async def on_deleted(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Messages deleted in a connected chat leave training."""
    deleted = update.deleted_business_messages
    connection = await _connection(context, deleted.business_connection_id)
    if connection is None:
        return
    count = await asyncio.to_thread(_runtime(context).business.deleted, connection, chat_id=deleted.chat.id,
                                    telegram_message_ids=list(deleted.message_ids))
    logger.info("%d deleted messages of business chat %s left training", count, deleted.chat.id)


# The buttons -----------------------------------------------------------------------------------

async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """✅ Send ✏️ Edit 🗑 Reject 🔄 Another 🔇 Mute under a business draft."""
    query, user_id, rt = update.callback_query, update.effective_user.id, _runtime(context)
    press = keyboards.parse_business_data(query.data)
    if press is None:
        await answer_query(query, texts.UNKNOWN_BUTTON)
        return
    try:
        draft_state = await asyncio.to_thread(rt.business.draft_state, telegram_id=user_id, draft_id=press.draft_id)
    except Exception:  # not this owner's, or not a business draft
        await answer_query(query, texts.UNKNOWN_DRAFT)
        return
    if draft_state in ("outdated", "muted"):
        await answer_query(query, texts.BUSINESS_OUTDATED if draft_state == "outdated" else texts.BUSINESS_MUTED_DRAFT)
        return
    if press.action == "s":
        await handlers.decide(update, context, press.draft_id, FeedbackKind.accept, query=query)
    elif press.action == "e":
        await handlers._ask_for_edit(update, context, press.draft_id)
    elif press.action == "r":
        await handlers.decide(update, context, press.draft_id, FeedbackKind.reject, query=query)
    elif press.action == "n":
        await _another(update, context, press.draft_id)
    else:
        muted = await asyncio.to_thread(rt.business.mute, telegram_id=user_id, draft_id=press.draft_id)
        if muted is None:
            await answer_query(query, texts.UNKNOWN_DRAFT)
            return
        chat, set_aside = muted
        await answer_query(query, f"Muted: no drafts for {chat.contact} until /unmute {chat.id}")
        for shown in set_aside:
            await _set_status(context.bot, shown, texts.business_status_line("muted", chat.contact)
                              + f" (/unmute {chat.id})")


async def _another(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> None:
    st, rt, query = state(context), _runtime(context), update.callback_query
    if draft_id in st.regenerating:
        await answer_query(query, texts.ALREADY_WRITING)
        return
    user_id, bot, application = update.effective_user.id, context.bot, context.application

    async def deliver(result: tuple[Shown | None, BusinessDraftView]) -> None:
        st.regenerating.discard(draft_id)
        old, view = result
        if old is not None:
            await _set_status(bot, old, texts.business_status_line("regenerate", view.contact))
        await show_draft(bot, application, user_id, view, reply_to=old.shown_message_id if old else None)

    async def failed(error: BaseException) -> bool:
        st.regenerating.discard(draft_id)
        if isinstance(error, DraftAlreadyDecided):
            await send_text(bot, query.message.chat_id, texts.already_decided(error.feedback.kind))
            return True
        return await drafting_failed(bot, query.message.chat_id, error)

    job = DraftJob(chat_id=query.message.chat_id, update=update, deliver=deliver, on_error=failed, owner=user_id,
                   work=partial(rt.business.another, telegram_id=user_id, draft_id=draft_id))
    await handlers.submit_another(st, query, draft_id, job)


async def after_verdict(context: ContextTypes.DEFAULT_TYPE, telegram_id: int, draft_id: int) -> None:
    """Called by `bot.handlers.decide` after every verdict it stored: for a business draft, Send and
    Edit post the kept text in the real chat as the owner; other verdicts only set the draft aside."""
    rt = _runtime(context)
    if not await asyncio.to_thread(rt.business.is_business_draft, telegram_id=telegram_id, draft_id=draft_id):
        return
    plan = await asyncio.to_thread(rt.business.after_verdict, telegram_id=telegram_id, draft_id=draft_id)
    if plan is not None:
        await post(context.bot, rt, telegram_id, plan)


async def post(bot: Bot, rt: BusinessRuntime, telegram_id: int, plan: SendPlan) -> None:
    """Post the owner's reply in the real chat ("sending" is already committed); record its Telegram
    id, or tell the owner why Telegram refused (the verdict stays)."""
    try:
        sent = await send_text(bot, plan.chat_id, plan.text, business_connection_id=plan.connection_id)
    except (BadRequest, Forbidden) as error:
        logger.warning("posting draft %s in business chat %s refused: %s", plan.draft_id, plan.chat_id, error.message)
        await asyncio.to_thread(rt.business.send_refused, telegram_id=telegram_id, draft_id=plan.draft_id,
                                error=error.message)
        refusal = texts.business_refused(plan.contact, error.message)
        if plan.shown is not None:
            await _set_status(bot, plan.shown, refusal)
        connection = await asyncio.to_thread(rt.business.connection_of, telegram_id)
        await send_text(bot, connection.owner_chat_id if connection else telegram_id, refusal)
        return
    await asyncio.to_thread(rt.business.sent, telegram_id=telegram_id, draft_id=plan.draft_id,
                            sent_message_id=sent.message_id)
    if plan.shown is not None:
        await _set_status(bot, plan.shown, texts.business_status_line("sent", plan.contact))


async def _set_status(bot: Bot, shown: Shown, line: str) -> None:
    """Replace a draft's buttons with what happened to it (best effort: the state is stored)."""
    try:
        await edit_text(bot, chat_id=shown.owner_chat_id, message_id=shown.shown_message_id,
                        text=texts.with_status(shown.text, line))
    except TelegramError as error:
        logger.warning("could not update draft message %s: %s", shown.shown_message_id, error)


# Commands ----------------------------------------------------------------------------------------

async def chats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/chats: the connection and the connected chats with their state."""
    overview = await asyncio.to_thread(_runtime(context).business.chats, telegram_id=update.effective_user.id)
    await send_text(context.bot, update.effective_chat.id, texts.chats_text(overview.connection, overview.chats))


async def pause(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _pause(update, context, True)


async def resume(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await _pause(update, context, False)


async def _pause(update: Update, context: ContextTypes.DEFAULT_TYPE, paused: bool) -> None:
    connection = await asyncio.to_thread(_runtime(context).business.pause, telegram_id=update.effective_user.id,
                                         paused=paused)
    if connection is None:
        await update.effective_message.reply_text(texts.BUSINESS_NO_CONNECTION)
        return
    await update.effective_message.reply_text(
        "⏸ Paused: no drafts for your connected chats until /resume." if paused
        else "▶️ Drafting again for your connected chats.")


async def unmute(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/unmute N (the number /chats shows), or /unmute alone when one chat is muted."""
    rt, user_id = _runtime(context), update.effective_user.id
    args = context.args or []
    muted = await asyncio.to_thread(rt.business.muted_chats, telegram_id=user_id)
    if not args and len(muted) == 1:
        number = muted[0].id
    elif len(args) == 1 and args[0].isdigit():
        number = int(args[0])
    else:
        await update.effective_message.reply_text(
            "No chat is muted." if not muted else
            "Which one? " + ", ".join(f"/unmute {chat.id} ({chat.contact})" for chat in muted))
        return
    done = await asyncio.to_thread(rt.business.mute, telegram_id=user_id, business_chat_id=number, muted=False)
    if done is None:
        await update.effective_message.reply_text("I don't know that chat; /chats lists them.")
        return
    await update.effective_message.reply_text(f"🔊 Drafting again for {done[0].contact}.")


def stop(application: Application) -> None:
    """On shutdown: quiet-time timers still waiting are dropped (their messages are stored; the
    next start drafts them)."""
    rt = runtime_of(application)
    for timer in rt.timers.values():
        timer.cancel()
    rt.timers.clear()


# After a restart ---------------------------------------------------------------------------------

async def recover(application: Application, *, now: datetime | None = None) -> int:
    """Carry on what a kill left undone (call before updates are fetched): chats owed a draft, drafts
    never shown, verdicts never posted; a post begun but unconfirmed is never posted again (it may be
    in the chat): the owner is told, and its echo, if it comes, records it."""
    rt, st, bot = runtime_of(application), state_of(application), application.bot
    since = (now or datetime.now(timezone.utc)) - RECOVERY_WINDOW
    items = await asyncio.to_thread(rt.business.unfinished, since=since)
    for item in items:
        connection = await asyncio.to_thread(rt.business.connection_of, item.telegram_id)
        if connection is None:
            continue
        if item.kind == "draft":
            schedule_draft(application, connection, item.business_chat_id, delay=0)
        elif item.kind == "show" and item.draft_id is not None:
            view = await asyncio.to_thread(rt.business.view, telegram_id=item.telegram_id, draft_id=item.draft_id)
            st.queue.submit(DraftJob(chat_id=item.owner_chat_id, owner=item.telegram_id, work=lambda view=view: view,
                                     deliver=partial(show_draft, bot, application, item.telegram_id),
                                     on_error=partial(drafting_failed, bot, item.owner_chat_id)), force=True)
        elif item.kind == "post" and item.draft_id is not None:
            plan = await asyncio.to_thread(rt.business.post_plan, telegram_id=item.telegram_id, draft_id=item.draft_id)
            if plan is not None:
                await post(bot, rt, item.telegram_id, plan)
        elif item.draft_id is not None:  # "uncertain" (a post) or "uncertain-show" (a draft)
            if item.kind == "uncertain":
                await asyncio.to_thread(rt.business.note_uncertain, telegram_id=item.telegram_id,
                                        draft_id=item.draft_id)
                await send_text(bot, item.owner_chat_id, texts.BUSINESS_MAYBE_POSTED)
            else:
                await send_text(bot, item.owner_chat_id, texts.DRAFT_MAYBE_SHOWN)
                await asyncio.to_thread(st.services.twin.note_delivery, telegram_id=item.telegram_id,
                                        draft_id=item.draft_id, delivery="uncertain")
    if items:
        logger.info("carried on %d business items left undone by the last run", len(items))
    return len(items)

