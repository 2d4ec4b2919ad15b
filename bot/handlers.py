"""Handlers for drafts and verdicts: texts to answer, the draft buttons, the owner's versions.

Each handler parses the update, calls the twin through `Services` in a worker thread and
renders with `bot.texts` / `bot.keyboards`. Drafting (slow) goes through the draft queue; a
verdict (a quick database write) is committed before the owner sees it acknowledged. State
that buttons need lives in the database (callback data carries the draft id), and so does the
question "send me your version" after ✏️/🗑 (`Twin.ask_for_version`): a reply to it is the
owner's version also after a restart. Only a reply (to that question or to the draft) is taken
as a version, never just "the next message": a forwarded or newly typed text is a message to
answer, whatever was asked before.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from telegram import (
    Bot,
    CallbackQuery,
    ForceReply,
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
from loop.errors import DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired
from loop.views import DraftView, FeedbackKind, FeedbackView

logger = logging.getLogger(__name__)


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
    """A text: the owner's version of a draft (a reply to the question or the draft), else one to answer."""
    message = update.effective_message
    text, prefilled = texts.strip_bot_mention(message.text or "", context.bot.username)
    if not text.strip():
        return
    if message.forward_origin is None and await _take_as_owner_version(update, context, text, prefilled):
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
    stream = st.streamer.open(context.bot, message.chat_id, reply_to=message.message_id,
                              private=message.chat.type == "private")
    job = draft_job(context.bot, st.services, telegram_id=user.id, chat_id=message.chat_id,
                    message_id=stored.message_id, reply_to=message.message_id, update=update, stream=stream,
                    queue=st.queue)
    try:
        st.queue.submit(job)
    except QueueFull:  # not expected after the check above; the stored message is queued at the next start
        await message.reply_text(texts.busy_text(st.queue.maxsize), do_quote=True)


# The owner's versions ------------------------------------------------------------------------

async def _take_as_owner_version(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str,
                                 prefilled: bool) -> bool:
    """Use `text` as the owner's version when it replies to the bot's question for one or to a draft,
    or is the ✍️ pre-filled draft (it starts with the bot's @name) while an edit is asked for.

    Anything else is a new message to answer; an open question stays open, so a reply to it
    later still counts.
    """
    message, twin = update.effective_message, state(context).services.twin
    where = {"telegram_id": update.effective_user.id, "chat_id": message.chat_id}
    target = None
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == context.bot.id:
        asked = await asyncio.to_thread(twin.version_prompt, **where, prompt_message_id=replied.message_id)
        if asked is not None:
            target = (asked.action, asked.draft_id)
        else:
            target = await _replied_draft(update, context, replied)
    elif prefilled:
        asked = await asyncio.to_thread(twin.open_version_prompt, **where)
        if asked is not None and asked.action == "edit":
            target = ("edit", asked.draft_id)
    if target is None:
        return False
    mode, draft_id = target
    await asyncio.to_thread(twin.close_version_prompts, **where, draft_id=draft_id)
    if mode == "edit":
        await decide(update, context, draft_id, FeedbackKind.edit, text=text)
    else:
        await _amend_reject(update, context, draft_id, text)
    return True


async def _replied_draft(update: Update, context: ContextTypes.DEFAULT_TYPE,
                         replied: Message) -> tuple[str, int] | None:
    """A reply to a draft: its edit, or the detail of its bare reject; None if `replied` is no draft."""
    # A draft still showing its buttons names itself; after a verdict the database knows it.
    draft_id = keyboards.draft_id_of(replied.reply_markup)
    services, user_id = state(context).services, update.effective_user.id
    if draft_id is None:
        draft = await asyncio.to_thread(services.twin.draft_for_shown_message, telegram_id=user_id,
                                        chat_id=replied.chat_id, shown_message_id=replied.message_id)
        if draft is None:
            return None
        draft_id = draft.id
    try:
        _, feedback = await asyncio.to_thread(services.draft_state, telegram_id=user_id, draft_id=draft_id)
    except DraftNotFound:
        return ("edit", draft_id)  # refused politely by the verdict itself
    if feedback is not None and feedback.kind == FeedbackKind.reject and not (feedback.text or feedback.reason):
        return ("reject", draft_id)
    return ("edit", draft_id)


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
    from bot.business import after_verdict  # late: bot.business builds on this module

    await after_verdict(context, update.effective_user.id, draft_id)  # a business draft's Send/Edit is posted
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


async def show_verdict(bot: Bot, draft: DraftView, feedback: FeedbackView, *, fallback: Any = None) -> None:
    """Replace the draft's buttons with its verdict ("not modified" when it already shows it is fine)."""
    chat_id, message_id = draft.chat_id, draft.shown_message_id
    if (chat_id is None or message_id is None) and fallback is not None:
        chat_id, message_id = fallback.chat_id, fallback.message_id
    if chat_id is None or message_id is None:
        return
    await edit_text(bot, chat_id=chat_id, message_id=message_id,
                    text=texts.draft_with_verdict(draft.text, feedback.kind, text=feedback.text,
                                                  reason=feedback.reason))


async def _ask_for_version(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int, action: str,
                           text: str, **kwargs: Any) -> None:
    """Send the question for the owner's version and store it: a reply to it is the version."""
    query = update.callback_query
    prompt = await send_text(context.bot, query.message.chat_id, text, **kwargs)
    await asyncio.to_thread(state(context).services.twin.ask_for_version, telegram_id=update.effective_user.id,
                            draft_id=draft_id, action=action, chat_id=prompt.chat_id,
                            prompt_message_id=prompt.message_id)


# The input field opens as a reply to the question, so the next text typed there is a reply to it.
def _force_reply(placeholder: str) -> ForceReply:
    return ForceReply(input_field_placeholder=placeholder)


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
            await _ask_for_version(update, context, press.draft_id, "reject", texts.REJECT_PROMPT,
                                   reply_markup=_force_reply(texts.REJECT_PLACEHOLDER))


async def _undecided_draft(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> DraftView | None:
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
    """✏️: a reply to the question (or to the draft) is the owner's version; the draft comes back
    as tap-to-copy text with a button that pre-fills the input field. A message has one markup:
    with those buttons there is no ForceReply, so the pre-filled text (after the bot's @name)
    counts as the version too; a draft too long for the buttons gets the ForceReply."""
    draft = await _undecided_draft(update, context, draft_id)
    if draft is None:
        return
    query = update.callback_query
    await answer_query(query, "Send me your version")
    buttons = keyboards.edit_keyboard(draft.text)
    await _ask_for_version(update, context, draft_id, "edit", texts.edit_prompt_html(draft.text, buttons is not None),
                           parse_mode=ParseMode.HTML, reply_markup=buttons or _force_reply(texts.EDIT_PLACEHOLDER))


async def _another(update: Update, context: ContextTypes.DEFAULT_TYPE, draft_id: int) -> None:
    """🔄: the old draft gets the "regenerate" verdict and a new draft is written in the queue."""
    st, query = state(context), update.callback_query
    if draft_id in st.regenerating:
        await answer_query(query, texts.ALREADY_WRITING)
        return
    if await _undecided_draft(update, context, draft_id) is None:
        return
    user_id, bot = update.effective_user.id, context.bot
    stream = st.streamer.open(bot, query.message.chat_id, reply_to=query.message.message_id,
                              private=query.message.chat.type == "private")

    async def deliver(decision: Decision) -> None:
        st.regenerating.discard(draft_id)
        await show_verdict(bot, decision.draft, decision.feedback)
        assert decision.new_draft is not None
        await deliver_draft(bot, st.services, user_id, decision.new_draft,
                            reply_to=decision.draft.shown_message_id, stream=stream)

    async def failed(error: BaseException) -> bool:
        st.regenerating.discard(draft_id)
        if stream is not None:
            await stream.abandon()
        if isinstance(error, (DraftAlreadyDecided, DraftNotFound)):
            text = texts.already_decided(error.feedback.kind) if isinstance(error, DraftAlreadyDecided) else texts.UNKNOWN_DRAFT
            await send_text(bot, query.message.chat_id, text)
            return True
        return await drafting_failed(bot, query.message.chat_id, error)

    job = DraftJob(chat_id=query.message.chat_id, update=update, deliver=deliver, on_error=failed, owner=user_id,
                   work=partial(st.services.decide, telegram_id=user_id, draft_id=draft_id,
                                kind=FeedbackKind.regenerate, on_text=stream.on_text if stream else None))
    await submit_another(st, query, draft_id, job)


async def submit_another(st: Any, query: CallbackQuery, draft_id: int, job: DraftJob[Any]) -> None:
    """Queue the job of a 🔄 press (private or business draft) and answer the press."""
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
