"""Handlers for drafts and verdicts: texts to answer, the draft buttons, the owner's versions.

Each handler parses the update, calls the twin through `Services` in a worker thread and
renders with `bot.texts` / `bot.keyboards`. Drafting (slow) goes through the draft queue; a
verdict (a quick database write) is committed before the owner sees it acknowledged. State
that buttons need lives in the database (callback data carries the draft id); only "the next
message is my version" after ✏️/🗑 is kept in `chat_data`, and a reply to the draft works
without it.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from telegram import (
    Bot,
    CallbackQuery,
    Message,
    MessageOriginChannel,
    MessageOriginChat,
    MessageOriginHiddenUser,
    MessageOriginUser,
    Update,
)
from telegram.constants import ParseMode
from telegram.ext import ContextTypes

from bot import keyboards, texts
from bot.drafts import deliver_draft, draft_job, drafting_failed
from bot.queue import DraftJob, QueueFull
from bot.services import Decision
from bot.state import state
from bot.telegram_io import answer_query, edit_text, send_text
from storage.models import Draft, Feedback, FeedbackKind
from storage.repo import DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired

logger = logging.getLogger(__name__)

PENDING = "pending"  # chat_data: ("edit" | "reject", draft_id): the next text is the owner's version
PROMPTS = "prompts"  # chat_data: {prompt message id: ("edit" | "reject", draft_id)}: replies to a prompt
MAX_PROMPTS = 50


def message_origin(message: Message) -> tuple[str | None, str]:
    """(sender name, conversation key): a forwarded message belongs to the chat with its sender."""
    origin = message.forward_origin
    if isinstance(origin, MessageOriginUser):
        return origin.sender_user.full_name, f"tg:user:{origin.sender_user.id}"
    if isinstance(origin, MessageOriginHiddenUser):
        return origin.sender_user_name, f"tg:name:{origin.sender_user_name}"
    if isinstance(origin, MessageOriginChat):
        return origin.sender_chat.title or origin.author_signature, f"tg:chat:{origin.sender_chat.id}"
    if isinstance(origin, MessageOriginChannel):
        return origin.chat.title or origin.author_signature, f"tg:chat:{origin.chat.id}"
    return None, f"tg:{message.chat_id}"


# Drafting ------------------------------------------------------------------------------------

async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text: the owner's version of a draft (a reply, or the message after ✏️/🗑), else one to answer."""
    message = update.effective_message
    text, _ = texts.strip_bot_mention(message.text or "", context.bot.username)
    if not text.strip():
        return
    if message.forward_origin is None and await _take_as_owner_version(update, context, text):
        return
    await queue_draft(update, context, text)


async def queue_draft(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
    """Store the message (committed), then queue its draft; "typing…" shows while it is written.

    Stored first, so a crash while it waits in the queue loses nothing: the next start queues
    it again (`bot.recovery`). The same update delivered again after a crash is not drafted twice.
    """
    message, user, st = update.effective_message, update.effective_user, state(context)
    twin = st.services.twin
    where = {"telegram_id": user.id, "chat_id": message.chat_id, "telegram_message_id": message.message_id}
    if not st.queue.has_room(user.id):
        if await asyncio.to_thread(twin.is_recorded, **where):
            return  # delivered again after a restart; its draft is already queued
        # A reply to the refused message, so that after a burst it is clear which to resend.
        await message.reply_text(texts.busy_text(st.queue.maxsize), do_quote=True)
        return
    sender, chat_key = message_origin(message)
    stored = await asyncio.to_thread(twin.record_incoming, chat_key=chat_key, incoming=text, sender=sender, **where)
    if not stored.new:
        logger.info("message %s in chat %s was taken before a restart; not drafted again",
                    message.message_id, message.chat_id)
        return
    job = draft_job(context.bot, st.services, telegram_id=user.id, chat_id=message.chat_id,
                    message_id=stored.message_id, reply_to=message.message_id, update=update)
    try:
        st.queue.submit(job)
    except QueueFull:  # not expected after the check above; the stored message is queued at the next start
        await message.reply_text(texts.busy_text(st.queue.maxsize), do_quote=True)


# The owner's versions ------------------------------------------------------------------------

async def _take_as_owner_version(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str) -> bool:
    """Use `text` as an edit or a reject's detail when it replies to a draft or follows ✏️/🗑."""
    message, chat_data = update.effective_message, context.chat_data
    target = None
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == context.bot.id:
        target = chat_data.get(PROMPTS, {}).get(replied.message_id)
        if target is None:
            # A draft still showing its buttons names itself; after a verdict the database knows it.
            draft_id = keyboards.draft_id_of(replied.reply_markup)
            target = ("edit", draft_id) if draft_id is not None else None
        if target is None:
            draft = await asyncio.to_thread(state(context).services.twin.draft_for_shown_message,
                                            telegram_id=update.effective_user.id, chat_id=message.chat_id,
                                            shown_message_id=replied.message_id)
            target = ("edit", draft.id) if draft is not None else None
    if target is None:
        target = chat_data.get(PENDING)
    if target is None:
        return False
    if chat_data.get(PENDING) is not None and chat_data[PENDING][1] == target[1]:
        del chat_data[PENDING]
    mode, draft_id = target
    if mode == "edit":
        await decide(update, context, draft_id, FeedbackKind.edit, text=text)
    else:
        await _amend_reject(update, context, draft_id, text)
    return True


async def decide(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int, kind: FeedbackKind, *,
                 text: str | None = None, query: CallbackQuery | None = None) -> Decision | None:
    """Store a verdict, then show it on the draft and acknowledge it; None when refused."""
    services = state(context).services
    try:
        decision = await asyncio.to_thread(services.decide, telegram_id=update.effective_user.id,
                                           draft_id=draft_id, kind=kind, text=text)
    except (DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired) as error:
        await _refuse(update, context, error, draft_id, query)
        return None
    if query is not None:
        await answer_query(query, texts.saved_text(kind))
    await show_verdict(context.bot, decision.draft, decision.feedback,
                       fallback=query.message if query is not None else None)
    if query is None:
        await update.effective_message.reply_text(texts.saved_text(kind))
    return decision


async def _amend_reject(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int, text: str) -> None:
    replacement, reason = texts.split_reject_detail(text)
    try:
        decision = await asyncio.to_thread(state(context).services.amend_reject, telegram_id=update.effective_user.id,
                                           draft_id=draft_id, text=replacement, reason=reason)
    except (DraftAlreadyDecided, DraftNotFound) as error:
        await _refuse(update, context, error, draft_id, None)
        return
    await show_verdict(context.bot, decision.draft, decision.feedback)
    await update.effective_message.reply_text("🗑 Saved, with your " + ("version." if replacement else "reason."))


async def _refuse(update: Update, context: ContextTypes.DEFAULT_TYPE, error: Exception, draft_id: int,
                  query: CallbackQuery | None) -> None:
    """A verdict that cannot be taken: a polite sentence; the draft shows its stored verdict again."""
    if isinstance(error, DraftAlreadyDecided):
        answer = texts.already_decided(error.feedback.kind)
    elif isinstance(error, DraftNotFound):
        answer = texts.UNKNOWN_DRAFT
    else:
        answer = "Send me the corrected text as a message."
    if query is not None:
        await answer_query(query, answer)
    else:
        await update.effective_message.reply_text(answer)
    if isinstance(error, DraftAlreadyDecided) and query is not None:
        draft = await asyncio.to_thread(state(context).services.twin.get_draft,
                                        telegram_id=update.effective_user.id, draft_id=draft_id)
        await show_verdict(context.bot, draft, error.feedback, fallback=query.message)


async def show_verdict(bot: Bot, draft: Draft, feedback: Feedback, *, fallback: Any = None) -> None:
    """Replace the draft's buttons with its verdict ("not modified" when it already shows it is fine)."""
    chat_id, message_id = draft.chat_id, draft.shown_message_id
    if (chat_id is None or message_id is None) and fallback is not None:
        chat_id, message_id = fallback.chat_id, fallback.message_id
    if chat_id is None or message_id is None:
        return
    await edit_text(bot, chat_id=chat_id, message_id=message_id,
                    text=texts.draft_with_verdict(draft.text, feedback.kind, text=feedback.text,
                                                  reason=feedback.reason))


def _remember_prompt(context: ContextTypes.DEFAULT_TYPE, message_id: int, target: tuple[str, int]) -> None:
    prompts = context.chat_data.setdefault(PROMPTS, {})
    prompts[message_id] = target
    while len(prompts) > MAX_PROMPTS:  # only recent prompts matter; keep chat_data small
        prompts.pop(next(iter(prompts)))


# Buttons -----------------------------------------------------------------------------------

async def on_draft_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """✅ ✏️ 🗑 🔄 under a draft: the draft id comes from the button, the state from the database."""
    query = update.callback_query
    press = keyboards.parse_feedback_data(query.data)
    if press is None:
        await answer_query(query, texts.UNKNOWN_BUTTON)
        return
    if press.action == "e":
        await _ask_for_edit(update, context, press.draft_id)
    elif press.action == "n":
        await _another(update, context, press.draft_id)
    else:
        decision = await decide(update, context, press.draft_id, press.kind, query=query)
        if decision is not None and press.kind == FeedbackKind.reject:
            context.chat_data[PENDING] = ("reject", press.draft_id)
            prompt = await send_text(context.bot, query.message.chat_id, texts.REJECT_PROMPT)
            _remember_prompt(context, prompt.message_id, ("reject", press.draft_id))


async def _undecided_draft(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> Draft | None:
    """The draft if it still takes a verdict; otherwise the press is answered politely and None."""
    query = update.callback_query
    try:
        draft, feedback = await asyncio.to_thread(state(context).services.draft_state,
                                                  telegram_id=update.effective_user.id, draft_id=draft_id)
    except DraftNotFound as error:
        await _refuse(update, context, error, draft_id, query)
        return None
    if feedback is not None:
        await _refuse(update, context, DraftAlreadyDecided(feedback), draft_id, query)
        return None
    return draft


async def _ask_for_edit(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> None:
    """✏️: the next message (or a reply to the draft) is the owner's version; the draft comes back
    as tap-to-copy text with a button that pre-fills the input field."""
    draft = await _undecided_draft(update, context, draft_id)
    if draft is None:
        return
    query = update.callback_query
    await answer_query(query, "Send me your version")
    context.chat_data[PENDING] = ("edit", draft_id)
    prompt = await send_text(context.bot, query.message.chat_id, texts.edit_prompt_html(draft.text),
                             parse_mode=ParseMode.HTML, reply_markup=keyboards.edit_keyboard(draft.text))
    _remember_prompt(context, prompt.message_id, ("edit", draft_id))


async def _another(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> None:
    """🔄: the old draft gets the "regenerate" verdict and a new draft is written in the queue."""
    st, query = state(context), update.callback_query
    if draft_id in st.regenerating:
        await answer_query(query, texts.ALREADY_WRITING)
        return
    if await _undecided_draft(update, context, draft_id) is None:
        return
    user_id, bot = update.effective_user.id, context.bot

    async def deliver(decision: Decision) -> None:
        st.regenerating.discard(draft_id)
        await show_verdict(bot, decision.draft, decision.feedback)
        assert decision.new_draft is not None
        await deliver_draft(bot, st.services, user_id, decision.new_draft,
                            reply_to=decision.draft.shown_message_id)

    async def failed(error: BaseException) -> bool:
        st.regenerating.discard(draft_id)
        if isinstance(error, (DraftAlreadyDecided, DraftNotFound)):
            text = texts.already_decided(error.feedback.kind) if isinstance(error, DraftAlreadyDecided) else texts.UNKNOWN_DRAFT
            await send_text(bot, query.message.chat_id, text)
            return True
        return await drafting_failed(bot, query.message.chat_id, error)

    job = DraftJob(chat_id=query.message.chat_id, update=update, deliver=deliver, on_error=failed, owner=user_id,
                   work=partial(st.services.decide, telegram_id=user_id, draft_id=draft_id,
                                kind=FeedbackKind.regenerate))
    try:
        st.queue.submit(job)
    except QueueFull:
        await answer_query(query, texts.busy_another(st.queue.maxsize), show_alert=True)
        return
    st.regenerating.add(draft_id)
    await answer_query(query, texts.WRITING_ANOTHER)


async def on_unknown_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any button whose data is not ours (tampered, or from an older version of the bot)."""
    await answer_query(update.callback_query, texts.UNKNOWN_BUTTON)
