"""The twin inside the owner's real chats: Telegram Business connections, as the bot's front end needs them.

A connection (Settings → Telegram Business → Chatbots) lets the bot read the owner's private chats
and post in them as the owner. What this module keeps, each step committed before it returns:

- the owner's connection (only a configured owner's: anyone else's is refused and nothing of it stored);
- per real chat a conversation ("biz:<chat id>") with the contact's name, its messages in order, and
  the Telegram ids of those messages (`BusinessMessage`), so edits and deletions reach what they became;
- per chat at most one pending draft: a newer message from the contact makes it outdated;
- the owner's verdicts: Send / Edit are posted by the bot (noted "sending" before the post and "sent"
  with the Telegram id after, so a restart neither posts twice nor loses one); the owner's own replies
  typed in the chat are implicit feedback on a pending draft (accept when the same text, else edit)
  or, with none pending, a writing sample with the chat's recent turns as context;
- mute (per chat, outlives a reconnect) and pause (all chats of the owner).

A contact's text is stored only as context for the owner's replies. The bot (bot.business) renders
the small dataclasses returned here; it never touches storage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from loop.errors import NotBusinessDraft
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
# Re-exported for the bot, which imports only loop.
from storage.repo import DraftAlreadyDecided  # noqa: F401
from storage.models import (BusinessChat, BusinessDraft, Draft, Feedback, FeedbackKind, Message, Owner, SampleKind,
                            WritingSampleCreate)

logger = logging.getLogger(__name__)

SAMPLE_SOURCE = "telegram business"


@dataclass(frozen=True)
class Connection:
    """A stored connection, as the bot needs it."""

    connection_id: str
    telegram_id: int  # the owner's Telegram id
    owner_chat_id: int  # the owner's private chat with the bot: drafts are shown there
    enabled: bool
    can_reply: bool
    paused: bool


@dataclass(frozen=True)
class ConnectionChange:
    """What a `business_connection` update did: `connection` None when it was refused (not an owner)."""

    connection: Connection | None
    new: bool = False
    muted_chats: int = 0


@dataclass(frozen=True)
class ChatRef:
    """One real chat of the owner."""

    id: int  # BusinessChat id: the number /unmute takes
    chat_id: int
    contact: str
    muted: bool
    last_contact_at: datetime | None = None


@dataclass(frozen=True)
class Shown:
    """A draft message in the owner's chat with the bot (to edit when its state changes)."""

    draft_id: int
    owner_chat_id: int
    shown_message_id: int
    text: str


@dataclass(frozen=True)
class Incoming:
    """A contact's message stored: `draft_due` when a draft should follow after the quiet time."""

    chat: ChatRef
    new: bool
    draft_due: bool
    outdated: tuple[Shown, ...] = ()


@dataclass(frozen=True)
class BusinessDraftView:
    """A business draft to show: who wrote what, the draft, and where it goes."""

    draft_id: int
    text: str
    contact: str
    incoming: str  # the contact's messages it answers, joined
    owner_chat_id: int
    chat: ChatRef
    outdated: tuple[Shown, ...] = ()


@dataclass(frozen=True)
class SendPlan:
    """A verdict to post in the real chat as the owner."""

    draft_id: int
    connection_id: str
    chat_id: int
    text: str
    contact: str
    shown: Shown | None


@dataclass(frozen=True)
class OwnerReply:
    """What the owner's own message in a real chat became.

    `kind`: "feedback" (implicit verdict on the pending draft: `verdict` accept or edit), "sample"
    (a writing sample), "turn" (kept as context only), "echo" (the bot's own post, now recorded),
    "duplicate" (seen before).
    """

    kind: str
    verdict: FeedbackKind | None = None
    shown: Shown | None = None
    contact: str = ""


@dataclass(frozen=True)
class Unfinished:
    """Work a restart carries on: "draft" (a chat owed a draft), "show" (a draft never shown), "post"
    (a verdict never posted) or "uncertain" (a post begun before the kill: never posted again)."""

    kind: str
    telegram_id: int
    owner_chat_id: int
    business_chat_id: int
    draft_id: int | None = None


@dataclass(frozen=True)
class ChatState:
    chat: ChatRef
    pending: bool


@dataclass
class ChatsOverview:
    connection: Connection | None
    chats: list[ChatState] = field(default_factory=list)


def _chat_ref(chat: BusinessChat) -> ChatRef:
    return ChatRef(id=chat.id, chat_id=chat.chat_id, contact=chat.contact_name or "your contact",  # type: ignore[arg-type]
                   muted=chat.muted, last_contact_at=chat.last_contact_at)


def _shown(draft: Draft) -> Shown | None:
    if draft.chat_id is None or draft.shown_message_id is None:
        return None
    return Shown(draft_id=draft.id, owner_chat_id=draft.chat_id, shown_message_id=draft.shown_message_id,  # type: ignore[arg-type]
                 text=draft.text)


class Business:
    """Telegram Business chats of every configured owner, on the twin's database and drafter."""

    def __init__(self, twin: Twin):
        self.twin = twin
        self.engine = twin.engine

    # Connections ------------------------------------------------------------------------
    def connect(self, *, connection_id: str, telegram_id: int, user_chat_id: int, enabled: bool,
                rights: dict[str, Any]) -> ConnectionChange:
        """Store a (re)connection or its change; a stranger's connection is refused, nothing stored."""
        if not self.twin.is_owner(telegram_id):
            return ConnectionChange(connection=None)
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row, new = repo.upsert_business_connection(
                session=session, owner_id=owner_db_id, connection_id=connection_id, user_chat_id=user_chat_id,
                enabled=enabled, can_reply=bool(rights.get("can_reply")), rights=rights)
            muted = sum(1 for chat in repo.business_chats(session=session, owner_id=owner_db_id) if chat.muted)
            return ConnectionChange(connection=self._connection(row, telegram_id), new=new, muted_chats=muted)

    def connection(self, connection_id: str) -> Connection | None:
        """The stored connection with this id, if it belongs to a configured owner."""
        with session_scope(self.engine) as session:
            row = repo.find_business_connection(session=session, connection_id=connection_id)
            if row is None:
                return None
            owner = session.get(Owner, row.owner_id)
            if owner is None or not self.twin.is_owner(owner.telegram_id):
                return None
            return self._connection(row, owner.telegram_id)

    def connection_of(self, telegram_id: int) -> Connection | None:
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = repo.business_connection_of(session=session, owner_id=owner_db_id)
            return self._connection(row, telegram_id) if row is not None else None

    @staticmethod
    def _connection(row: Any, telegram_id: int) -> Connection:
        return Connection(connection_id=row.connection_id, telegram_id=telegram_id, owner_chat_id=row.user_chat_id,
                          enabled=row.enabled, can_reply=row.can_reply, paused=row.paused)

    # The contact writes -----------------------------------------------------------------
    def contact_message(self, connection: Connection, *, chat_id: int, contact: str | None,
                        telegram_message_id: int, text: str, date: datetime | None = None) -> Incoming:
        """Store the contact's message (once per Telegram id); a pending draft of the chat becomes outdated."""
        owner_db_id = self.twin.owner_id(connection.telegram_id)
        with session_scope(self.engine) as session:
            chat = repo.get_or_create_business_chat(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                                    contact_name=contact)
            ref_due = connection.enabled and not connection.paused and not chat.muted
            if repo.find_business_message(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                          telegram_message_id=telegram_message_id) is not None:
                return Incoming(chat=_chat_ref(chat), new=False, draft_due=False)
            message = repo.add_message(session=session, owner_id=owner_db_id, conversation_id=chat.conversation_id,
                                       role="other", text=text, sender=chat.contact_name)
            repo.add_business_message(session=session, owner_id=owner_db_id, business_chat_id=chat.id,  # type: ignore[arg-type]
                                      telegram_message_id=telegram_message_id, message_id=message.id)
            chat.last_contact_at = date or datetime.now(timezone.utc)
            outdated = self._outdate_pending(session, chat)
            return Incoming(chat=_chat_ref(chat), new=True, draft_due=ref_due, outdated=outdated)

    def _outdate_pending(self, session: Any, chat: BusinessChat, state: str = "outdated") -> tuple[Shown, ...]:
        changed = []
        for row, draft in repo.business_drafts(session=session, business_chat_id=chat.id, state="pending"):  # type: ignore[arg-type]
            row.state = state
            shown = _shown(draft)
            if shown is not None:
                changed.append(shown)
        session.flush()
        return tuple(changed)

    def draft_for_chat(self, *, telegram_id: int, business_chat_id: int) -> BusinessDraftView | None:
        """Draft once for the contact's messages since the owner last wrote (committed, not shown yet);
        None when nothing is owed (the owner answered, the chat is muted or paused, a draft exists)."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            chat = session.get(BusinessChat, business_chat_id)
            connection = repo.business_connection_of(session=session, owner_id=owner_db_id)
            if chat is None or chat.owner_id != owner_db_id or connection is None:
                return None
            if chat.muted or connection.paused or not connection.enabled:
                return None
            waiting = repo.messages_since_owner(session=session, conversation_id=chat.conversation_id)
            if not waiting:
                return None
            last = waiting[-1]
            if any(draft.message_id == last.id and row.state != "outdated"
                   for row, draft in repo.business_drafts(session=session, business_chat_id=chat.id)):  # type: ignore[arg-type]
                return None  # already drafted (a redelivered update, or recovery after a restart)
            outdated = self._outdate_pending(session, chat)
            context = repo.recent_turns(session=session, conversation_id=chat.conversation_id,
                                        limit=self.twin.config.model.context_turns, answering_id=last.id)
            conversation_id, incoming, message_id = chat.conversation_id, last.text, last.id
            ref, owner_chat_id = _chat_ref(chat), connection.user_chat_id
            said = "\n".join(m.text for m in waiting)
        # Consecutive turns of the contact are joined by the renderer, so drafting for the last one
        # with the others as context answers all of them.
        draft = self.twin._draft(owner_db_id=owner_db_id, conversation_id=conversation_id, message_id=message_id,
                                 incoming=incoming, context=context, seed=self.twin.config.generation.seed,
                                 chat_id=None, adapter=self.twin.active_adapter_ref(owner_db_id),
                                 contact=ref.contact)
        with session_scope(self.engine) as session:
            repo.add_business_draft(session=session, owner_id=owner_db_id, draft_id=draft.id,  # type: ignore[arg-type]
                                    business_chat_id=business_chat_id)
        return BusinessDraftView(draft_id=draft.id, text=draft.text, contact=ref.contact, incoming=said,  # type: ignore[arg-type]
                                 owner_chat_id=owner_chat_id, chat=ref, outdated=outdated)

    def view(self, *, telegram_id: int, draft_id: int) -> BusinessDraftView:
        """A stored business draft, to show (again) after a restart."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row, draft, chat = self._business_draft(session, owner_db_id, draft_id)
            connection = repo.business_connection_of(session=session, owner_id=owner_db_id)
            waiting = [m.text for m in repo.messages_since_owner(session=session, conversation_id=chat.conversation_id)
                       if m.id <= draft.message_id]
            return BusinessDraftView(draft_id=draft_id, text=draft.text, contact=_chat_ref(chat).contact,
                                     incoming="\n".join(waiting) or draft.incoming,
                                     owner_chat_id=connection.user_chat_id if connection else telegram_id,
                                     chat=_chat_ref(chat))

    def _business_draft(self, session: Any, owner_db_id: int, draft_id: int) -> tuple[BusinessDraft, Draft, BusinessChat]:
        row = repo.find_business_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
        if row is None:
            raise NotBusinessDraft(f"draft {draft_id} is not a business draft")
        draft = repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
        chat = session.get(BusinessChat, row.business_chat_id)
        return row, draft, chat  # type: ignore[return-value]

    def is_business_draft(self, *, telegram_id: int, draft_id: int) -> bool:
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            return repo.find_business_draft(session=session, owner_id=owner_db_id, draft_id=draft_id) is not None

    def settled_as(self, *, telegram_id: int, draft_id: int) -> str | None:
        """What became of a draft while it was being shown (None: still pending): "outdated", "muted",
        or the verdict of the owner's own reply ("accept", "edit")."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = self._business_draft(session, owner_db_id, draft_id)[0]
            if row.state in ("outdated", "muted"):
                return row.state
            feedback = repo.feedback_for_draft(session=session, draft_id=draft_id)
            return feedback.kind.value if row.state == "answered" and feedback is not None else None

    def draft_state(self, *, telegram_id: int, draft_id: int) -> str:
        """"pending", "outdated", "muted" or "answered"."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            return self._business_draft(session, owner_db_id, draft_id)[0].state

    # Verdicts -----------------------------------------------------------------------------
    def after_verdict(self, *, telegram_id: int, draft_id: int) -> SendPlan | None:
        """A verdict was stored on a draft (by a button or a reply): for Send/Edit of a business draft,
        note the post as "sending" (committed) and return what to post; otherwise None."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = repo.find_business_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
            if row is None:
                return None
            _, draft, chat = self._business_draft(session, owner_db_id, draft_id)
            feedback = repo.feedback_for_draft(session=session, draft_id=draft_id)
            row.state = "answered"
            if feedback is None or feedback.kind not in (FeedbackKind.accept, FeedbackKind.edit):
                return None
            if row.send_state is not None:
                return None  # posted, or being posted, already
            text = draft.text if feedback.kind == FeedbackKind.accept else (feedback.text or "")
            turn = repo.latest_owner_turn(session=session, conversation_id=chat.conversation_id, text=text)
            row.send_state, row.sent_text = "sending", text
            row.owner_message_id = turn.id if turn is not None else None
            return self._plan(session, owner_db_id, row, draft, chat, text)

    def _plan(self, session: Any, owner_db_id: int, row: BusinessDraft, draft: Draft, chat: BusinessChat,
              text: str) -> SendPlan | None:
        connection = repo.business_connection_of(session=session, owner_id=owner_db_id)
        if connection is None:
            return None
        return SendPlan(draft_id=draft.id, connection_id=connection.connection_id, chat_id=chat.chat_id,  # type: ignore[arg-type]
                        text=text, contact=_chat_ref(chat).contact, shown=_shown(draft))

    def post_plan(self, *, telegram_id: int, draft_id: int) -> SendPlan | None:
        """The post of a verdict a restart interrupted before it began (recovery)."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row, draft, chat = self._business_draft(session, owner_db_id, draft_id)
            if row.send_state is not None or not row.sent_text:
                return None
            row.send_state = "sending"
            return self._plan(session, owner_db_id, row, draft, chat, row.sent_text)

    def sent(self, *, telegram_id: int, draft_id: int, sent_message_id: int) -> None:
        """The post went through: remember its Telegram id (its echo and later edits find it)."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row, _, chat = self._business_draft(session, owner_db_id, draft_id)
            self._record_sent(session, owner_db_id, row, chat, sent_message_id)

    @staticmethod
    def _record_sent(session: Any, owner_db_id: int, row: BusinessDraft, chat: BusinessChat,
                     sent_message_id: int) -> None:
        row.send_state, row.sent_message_id, row.error = "sent", sent_message_id, None
        if repo.find_business_message(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                      telegram_message_id=sent_message_id) is None:
            feedback = repo.feedback_for_draft(session=session, draft_id=row.draft_id)
            repo.add_business_message(session=session, owner_id=owner_db_id, business_chat_id=chat.id,  # type: ignore[arg-type]
                                      telegram_message_id=sent_message_id, message_id=row.owner_message_id,
                                      feedback_id=feedback.id if feedback else None)

    def send_refused(self, *, telegram_id: int, draft_id: int, error: str) -> None:
        """Telegram refused the post: the draft and the verdict stay, the post is noted as refused."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = self._business_draft(session, owner_db_id, draft_id)[0]
            row.send_state, row.error = "refused", error

    def another(self, *, telegram_id: int, draft_id: int) -> tuple[Shown | None, BusinessDraftView]:
        """🔄: the "regenerate" verdict on the draft and a new draft (another seed), both committed."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row, draft, chat = self._business_draft(session, owner_db_id, draft_id)
            repo.record_feedback(session=session, owner_id=owner_db_id, draft_id=draft_id,
                                 kind=FeedbackKind.regenerate)
            row.state = "answered"
            ref, conversation_id = _chat_ref(chat), chat.conversation_id
            shown = _shown(draft)
            old = (draft.message_id, draft.incoming, list(draft.context), draft.seed)
        new = self.twin._draft(owner_db_id=owner_db_id, conversation_id=conversation_id, message_id=old[0],
                               incoming=old[1], context=old[2], seed=old[3] + 1, chat_id=None,
                               regenerated_from=draft_id, contact=ref.contact)
        with session_scope(self.engine) as session:
            repo.add_business_draft(session=session, owner_id=owner_db_id, draft_id=new.id,  # type: ignore[arg-type]
                                    business_chat_id=ref.id)
        view = self.view(telegram_id=telegram_id, draft_id=new.id)  # type: ignore[arg-type]
        return shown, view

    # The owner writes by hand ---------------------------------------------------------------
    def owner_message(self, connection: Connection, *, chat_id: int, contact: str | None, telegram_message_id: int,
                      text: str, by_bot: bool) -> OwnerReply:
        """The owner's message in a real chat: the echo of the bot's post (`by_bot`), else their own words."""
        owner_db_id = self.twin.owner_id(connection.telegram_id)
        with session_scope(self.engine) as session:
            chat = repo.get_or_create_business_chat(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                                    contact_name=contact)
            ref = _chat_ref(chat)
            if repo.find_business_message(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                          telegram_message_id=telegram_message_id) is not None:
                return OwnerReply(kind="duplicate", contact=ref.contact)
            if by_bot:
                return self._echo(session, owner_db_id, chat, telegram_message_id, text)
            pending = repo.business_drafts(session=session, business_chat_id=chat.id, state="pending")  # type: ignore[arg-type]
            if pending:
                row, draft = pending[-1]
                verdict = FeedbackKind.accept if text.strip() == draft.text.strip() else FeedbackKind.edit
                feedback = repo.record_feedback(session=session, owner_id=owner_db_id, draft_id=draft.id,  # type: ignore[arg-type]
                                                kind=verdict, text=None if verdict == FeedbackKind.accept else text)
                self._outdate_pending(session, chat, state="answered")
                message = repo.add_message(session=session, owner_id=owner_db_id,
                                           conversation_id=chat.conversation_id, role="owner", text=text)
                repo.add_business_message(session=session, owner_id=owner_db_id, business_chat_id=chat.id,  # type: ignore[arg-type]
                                          telegram_message_id=telegram_message_id, message_id=message.id,
                                          feedback_id=feedback.id)
                return OwnerReply(kind="feedback", verdict=verdict, shown=_shown(draft), contact=ref.contact)
            waiting = repo.messages_since_owner(session=session, conversation_id=chat.conversation_id)
            answered = waiting[-1] if waiting else repo.latest_message(session=session,
                                                                       conversation_id=chat.conversation_id)
            sample = None
            if answered is not None and answered.role == "other":
                context = repo.recent_turns(session=session, conversation_id=chat.conversation_id,
                                            limit=self.twin.config.model.context_turns, answering_id=answered.id)
                sample = repo.add_writing_sample(session=session, owner_id=owner_db_id, sample=WritingSampleCreate(
                    kind=SampleKind.reply, text=text, prompt=answered.text, context=context, sender=chat.contact_name,
                    written_at=datetime.now(timezone.utc), source=SAMPLE_SOURCE))
            message = repo.add_message(session=session, owner_id=owner_db_id, conversation_id=chat.conversation_id,
                                       role="owner", text=text)
            repo.add_business_message(session=session, owner_id=owner_db_id, business_chat_id=chat.id,  # type: ignore[arg-type]
                                      telegram_message_id=telegram_message_id, message_id=message.id,
                                      sample_id=sample.id if sample is not None else None)
            return OwnerReply(kind="sample" if sample is not None else "turn", contact=ref.contact)

    def _echo(self, session: Any, owner_db_id: int, chat: BusinessChat, telegram_message_id: int,
              text: str) -> OwnerReply:
        """The bot's own post comes back as a business message: it confirms a post whose answer a
        restart lost ("sending"); anything else of the bot is kept as the owner's turn."""
        for row, _draft in reversed(repo.business_drafts(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                                         send_states=["sending", "uncertain", "sent"])):
            if row.sent_message_id in (None, telegram_message_id) and (row.sent_text or "").strip() == text.strip():
                self._record_sent(session, owner_db_id, row, chat, telegram_message_id)
                return OwnerReply(kind="echo", contact=_chat_ref(chat).contact)
        message = repo.add_message(session=session, owner_id=owner_db_id, conversation_id=chat.conversation_id,
                                   role="owner", text=text)
        repo.add_business_message(session=session, owner_id=owner_db_id, business_chat_id=chat.id,  # type: ignore[arg-type]
                                  telegram_message_id=telegram_message_id, message_id=message.id)
        return OwnerReply(kind="turn", contact=_chat_ref(chat).contact)

    def edited(self, connection: Connection, *, chat_id: int, telegram_message_id: int, text: str) -> bool:
        """A message of the chat was edited: its stored text follows (turn, sample, verdict)."""
        owner_db_id = self.twin.owner_id(connection.telegram_id)
        with session_scope(self.engine) as session:
            chat = repo.find_business_chat(session=session, owner_id=owner_db_id, chat_id=chat_id)
            row = chat and repo.find_business_message(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                                      telegram_message_id=telegram_message_id)
            if not row:
                return False
            if row.message_id is not None:
                message = session.get(Message, row.message_id)
                if message is not None:
                    message.text = text
            if row.sample_id is not None:
                repo.update_writing_sample_text(session=session, sample_id=row.sample_id, text=text)
            if row.feedback_id is not None:
                feedback = session.get(Feedback, row.feedback_id)
                draft = session.get(Draft, feedback.draft_id) if feedback is not None else None
                if feedback is not None and draft is not None:
                    same = text.strip() == draft.text.strip()
                    feedback.kind = FeedbackKind.accept if same else FeedbackKind.edit
                    feedback.text = None if same else text
            return True

    def deleted(self, connection: Connection, *, chat_id: int, telegram_message_ids: Sequence[int]) -> int:
        """Messages deleted in the chat leave training (their turns, samples and verdicts)."""
        owner_db_id = self.twin.owner_id(connection.telegram_id)
        with session_scope(self.engine) as session:
            chat = repo.find_business_chat(session=session, owner_id=owner_db_id, chat_id=chat_id)
            if chat is None:
                return 0
            return repo.delete_business_messages(session=session, business_chat_id=chat.id,  # type: ignore[arg-type]
                                                 telegram_message_ids=telegram_message_ids)

    # Control ------------------------------------------------------------------------------
    def mute(self, *, telegram_id: int, business_chat_id: int | None = None, draft_id: int | None = None,
             muted: bool = True) -> tuple[ChatRef, tuple[Shown, ...]] | None:
        """Mute (or unmute) one chat, named by its number or by one of its drafts; a pending draft of
        a muted chat is set aside. None when there is no such chat."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            if draft_id is not None:
                row = repo.find_business_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
                business_chat_id = row.business_chat_id if row is not None else None
            chat = session.get(BusinessChat, business_chat_id) if business_chat_id is not None else None
            if chat is None or chat.owner_id != owner_db_id:
                return None
            chat.muted = muted
            set_aside = self._outdate_pending(session, chat, state="muted") if muted else ()
            return _chat_ref(chat), set_aside

    def pause(self, *, telegram_id: int, paused: bool) -> Connection | None:
        """/pause and /resume: drafting for all connected chats; None without a connection."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = repo.business_connection_of(session=session, owner_id=owner_db_id)
            if row is None:
                return None
            row.paused = paused
            return self._connection(row, telegram_id)

    def chats(self, *, telegram_id: int) -> ChatsOverview:
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = repo.business_connection_of(session=session, owner_id=owner_db_id)
            overview = ChatsOverview(connection=self._connection(row, telegram_id) if row is not None else None)
            for chat in repo.business_chats(session=session, owner_id=owner_db_id):
                pending = bool(repo.business_drafts(session=session, business_chat_id=chat.id, state="pending"))  # type: ignore[arg-type]
                overview.chats.append(ChatState(chat=_chat_ref(chat), pending=pending))
            return overview

    def muted_chats(self, *, telegram_id: int) -> list[ChatRef]:
        return [state.chat for state in self.chats(telegram_id=telegram_id).chats if state.chat.muted]

    # After a restart ----------------------------------------------------------------------
    def unfinished(self, *, since: datetime) -> list[Unfinished]:
        """What a kill left undone since `since`, oldest first: chats owed a draft (the contact wrote
        last, no draft for it), drafts never shown, verdicts never posted, posts begun but unconfirmed."""
        items: list[Unfinished] = []
        with session_scope(self.engine) as session:
            for telegram_id in self.twin.config.owners:
                owner = repo.find_owner(session=session, telegram_id=telegram_id)
                connection = owner and repo.business_connection_of(session=session, owner_id=owner.id)  # type: ignore[arg-type]
                if not connection or not connection.enabled:
                    continue
                for chat in repo.business_chats(session=session, owner_id=owner.id):  # type: ignore[union-attr, arg-type]
                    last = repo.latest_message(session=session, conversation_id=chat.conversation_id)
                    if (last is None or last.role != "other" or last.created_at < since
                            or chat.muted or connection.paused):
                        continue
                    if not any(draft.message_id == last.id
                               for _, draft in repo.business_drafts(session=session, business_chat_id=chat.id)):  # type: ignore[arg-type]
                        items.append(Unfinished("draft", telegram_id, connection.user_chat_id, chat.id))  # type: ignore[arg-type]
            for row, draft in repo.unfinished_business_drafts(session=session, since=since):
                owner = session.get(Owner, row.owner_id)
                connection = repo.business_connection_of(session=session, owner_id=row.owner_id)
                if owner is None or connection is None or not self.twin.is_owner(owner.telegram_id):
                    continue
                kind = ("uncertain" if row.send_state == "sending" else "post" if row.state == "answered"
                        else "show" if draft.delivery is None else "uncertain-show")
                items.append(Unfinished(kind, owner.telegram_id, connection.user_chat_id, row.business_chat_id,
                                        draft.id))
        return items

    def note_uncertain(self, *, telegram_id: int, draft_id: int) -> None:
        """The owner was told a post may or may not have gone out: it is not tried again."""
        owner_db_id = self.twin.owner_id(telegram_id)
        with session_scope(self.engine) as session:
            row = self._business_draft(session, owner_db_id, draft_id)[0]
            if row.send_state == "sending":
                row.send_state = "uncertain"
