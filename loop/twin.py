"""The twin as a service: draft replies, record verdicts, report status, for the bot and the CLI.

Both front ends (Telegram, terminal) go through `Twin`, so a verdict is stored the same way
wherever it was given. Every draft and every verdict is committed before the call returns:
the caller may tell the owner "saved" as soon as it has the result.

One unit of work per owner action: the owner is resolved inside the transaction that writes
(created on first use), and lookups read without committing (`storage.db.read_scope`). Storing an
incoming message is one commit, its draft one more (the model writes between them), a verdict one.
What comes back are loop's records (`loop.views`), not table rows.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session

from loop import adapter_storage
from loop.collect import kept_by_row
from loop.config import Config
from loop.drafting import AdapterRef, Drafter, TextCallback
from loop.errors import NotAnOwner
from loop.examples import OwnWords
from loop.views import DraftView, FeedbackKind, FeedbackView, VersionPromptView
from storage import repo
from storage.db import read_scope, session_scope
from storage.models import Message
from training.prompt import Conversation

logger = logging.getLogger(__name__)

MAX_INCOMING_CHARS = 4000  # longer messages are cut before drafting; the full text is still stored


@dataclass(frozen=True)
class Incoming:
    """A stored incoming message; `new` is False when it had been stored before."""

    message_id: int
    new: bool


@dataclass(frozen=True)
class Unanswered:
    """An incoming Telegram message still owed a draft (`draft` None), a written draft never shown, or
    (`maybe_shown`) a draft whose send had begun when the process died: it may be in the chat already."""

    telegram_id: int
    chat_id: int
    reply_to: int | None  # the Telegram message id to reply to
    message_id: int
    draft: DraftView | None = None
    maybe_shown: bool = False


@dataclass(frozen=True)
class Verdict:
    """What a verdict did: the draft it is about, the stored feedback and, for "another", the new draft."""

    draft: DraftView
    feedback: FeedbackView
    new_draft: DraftView | None = None


class Twin:
    """Drafting and feedback for every configured owner, on one database and one drafter."""

    def __init__(self, config: Config, engine: Engine, drafter: Drafter):
        self.config, self.engine, self.drafter = config, engine, drafter
        self.own_words = OwnWords(engine)  # the owner's past replies for the prompt (generation.retrieved_examples)

    # Owners -------------------------------------------------------------------------------
    def is_owner(self, telegram_id: int) -> bool:
        return telegram_id in self.config.owners or (not self.config.owners and telegram_id == self.config.default_owner())

    def _check_owner(self, telegram_id: int) -> None:
        if not self.is_owner(telegram_id):
            raise NotAnOwner(f"user {telegram_id} is not an owner of this twin")

    def owner_id(self, telegram_id: int, name: str | None = None) -> int:
        """The database id of an owner, created on first use; strangers are refused."""
        self._check_owner(telegram_id)
        with read_scope(self.engine) as session:
            owner = repo.find_owner(session=session, telegram_id=telegram_id)
            if owner is not None and (not name or owner.name == name):
                return owner.id  # type: ignore[return-value]
        with self._writing(telegram_id, name=name) as (_session, owner_db_id):
            return owner_db_id

    @contextmanager
    def _writing(self, telegram_id: int, *, name: str | None = None) -> Iterator[tuple[Session, int]]:
        """One transaction for one owner action, the owner resolved (or created) inside it."""
        self._check_owner(telegram_id)
        with session_scope(self.engine) as session:
            owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id, name=name)
            yield session, owner.id  # type: ignore[misc]

    @contextmanager
    def _reading(self, telegram_id: int) -> Iterator[tuple[Session, int]]:
        """A lookup for one owner, without a commit (an owner met for the first time is created first)."""
        self._check_owner(telegram_id)
        with read_scope(self.engine) as session:
            owner = repo.find_owner(session=session, telegram_id=telegram_id)
            if owner is not None:
                yield session, owner.id  # type: ignore[misc]
                return
        owner_db_id = self.owner_id(telegram_id)
        with read_scope(self.engine) as session:
            yield session, owner_db_id

    # Drafting -----------------------------------------------------------------------------
    def active_adapter_ref(self, owner_db_id: int, *, session: Session | None = None) -> AdapterRef | None:
        """The owner's active adapter, read from the database on every draft so a promotion
        made by another process is used from the next draft on."""
        if session is None:
            with read_scope(self.engine) as session:
                return self.active_adapter_ref(owner_db_id, session=session)
        adapter = repo.active_adapter(session=session, owner_id=owner_db_id)
        if adapter is None:
            return None
        # An adapter in an S3 store is downloaded on this machine's first draft with it.
        path = str(adapter_storage.local_path(self.config, adapter.path))
        return AdapterRef(key=f"{owner_db_id}-v{adapter.version}", version=adapter.version, path=path,
                          owner_id=owner_db_id, checksum=adapter.checksum or "")

    def warm_up(self) -> None:
        """Ready every configured owner's active adapter for drafting (conversions take seconds).

        Run in the background at start: a draft asked for meanwhile waits for the engine anyway.
        A failure is logged, never raised: drafting then prepares on demand.
        """
        prepare = getattr(self.drafter, "prepare", None)
        if prepare is None:
            return
        for telegram_id in self.config.owners or [self.config.default_owner()]:
            try:
                prepare(self.active_adapter_ref(self.owner_id(telegram_id)))
            except Exception:  # noqa: BLE001 - a warm-up must never stop the twin
                logger.exception("warming up the drafter for owner %s failed", telegram_id)

    def draft_reply(
        self,
        *,
        telegram_id: int,
        chat_key: str,
        incoming: str,
        sender: str | None = None,
        chat_id: int | None = None,
        telegram_message_id: int | None = None,
        on_text: TextCallback | None = None,
    ) -> DraftView:
        """Store the incoming message, draft a reply with the active adapter, store the draft (two commits).
        `on_text` follows the draft as it is written; what is stored is the final text."""
        stored = self.record_incoming(telegram_id=telegram_id, chat_key=chat_key, incoming=incoming, sender=sender,
                                      chat_id=chat_id, telegram_message_id=telegram_message_id)
        return self.draft_for_message(telegram_id=telegram_id, message_id=stored.message_id, chat_id=chat_id,
                                      on_text=on_text)

    def record_incoming(
        self,
        *,
        telegram_id: int,
        chat_key: str,
        incoming: str,
        sender: str | None = None,
        chat_id: int | None = None,
        telegram_message_id: int | None = None,
    ) -> Incoming:
        """Store a message to answer (committed on return), before any model time is spent, so a
        crash while it waits for its draft loses nothing. A Telegram message already stored (the
        same update delivered again after a crash) is not stored twice: `new` is False."""
        with self._writing(telegram_id) as (session, owner_db_id):
            if chat_id is not None and telegram_message_id is not None:
                known = repo.find_telegram_message(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                                   telegram_message_id=telegram_message_id)
                if known is not None:
                    return Incoming(message_id=known.id, new=False)  # type: ignore[arg-type]
            conversation = repo.get_or_create_conversation(session=session, owner_id=owner_db_id, chat_key=chat_key)
            message = repo.add_message(session=session, owner_id=owner_db_id, conversation_id=conversation.id,
                                       role="other", text=incoming, sender=sender,
                                       telegram_message_id=telegram_message_id, chat_id=chat_id)
            return Incoming(message_id=message.id, new=True)  # type: ignore[arg-type]

    def is_recorded(self, *, telegram_id: int, chat_id: int, telegram_message_id: int) -> bool:
        """Whether this Telegram message is stored already (a redelivered update)."""
        with self._reading(telegram_id) as (session, owner_db_id):
            return repo.find_telegram_message(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                              telegram_message_id=telegram_message_id) is not None

    def draft_for_message(self, *, telegram_id: int, message_id: int, chat_id: int | None = None,
                          on_text: TextCallback | None = None) -> DraftView:
        """Draft a reply to a stored incoming message with the active adapter; the draft is committed
        before this returns (`on_text` sees it being written, nothing of that is stored).

        The context is read now: the turns before the message and the owner's replies given since.
        """
        with self._reading(telegram_id) as (session, owner_db_id):
            message = session.get(Message, message_id)
            if message is None or message.owner_id != owner_db_id:
                raise repo.StorageError(f"message {message_id} not found")
            context = repo.recent_turns(session=session, conversation_id=message.conversation_id,
                                        limit=self.config.model.context_turns, answering_id=message_id)
            conversation_id, incoming = message.conversation_id, message.text
            adapter = self.active_adapter_ref(owner_db_id, session=session)
        return self._draft(owner_db_id=owner_db_id, conversation_id=conversation_id, message_id=message_id,
                           incoming=incoming, context=context, seed=self.config.generation.seed, chat_id=chat_id,
                           adapter=adapter, on_text=on_text)

    def unanswered(self, *, since: datetime) -> list[Unanswered]:
        """What a crash left undone since `since`, oldest first: incoming Telegram messages without a
        draft, drafts written but never sent, and drafts whose send was interrupted (`maybe_shown`;
        owners no longer configured are left out)."""
        with read_scope(self.engine) as session:
            items = [Unanswered(telegram_id=telegram_id, chat_id=m.chat_id, reply_to=m.telegram_message_id,  # type: ignore[arg-type]
                                message_id=m.id)  # type: ignore[arg-type]
                     for m, telegram_id in repo.undrafted_messages(session=session, since=since)]
            for delivery in (None, "sending"):
                for draft, telegram_id in repo.unshown_drafts(session=session, since=since, delivery=delivery):
                    message = session.get(Message, draft.message_id)
                    items.append(Unanswered(telegram_id=telegram_id, chat_id=draft.chat_id,  # type: ignore[arg-type]
                                            reply_to=message.telegram_message_id if message else None,
                                            message_id=draft.message_id, draft=DraftView.of(draft),
                                            maybe_shown=delivery is not None))
        return sorted((i for i in items if self.is_owner(i.telegram_id)), key=lambda i: i.message_id)

    def _draft(self, *, owner_db_id: int, conversation_id: int, message_id: int, incoming: str,
               context: list[dict[str, Any]], seed: int, chat_id: int | None,
               adapter: AdapterRef | None, regenerated_from: int | None = None,
               contact: str | None = None, on_text: TextCallback | None = None) -> DraftView:
        """Draft with `adapter` (the active one, read by the caller) and store the draft: one commit.

        `contact`: the person written to, when known (loop.business); the dataset builders put the
        same name in the prompt (loop.collect). With the retrieval lever on, the prompt also carries
        the owner's past replies, chosen as the cycle chooses them for training rows (loop.examples)."""
        conversation = self.own_words.for_draft(
            Conversation.of(incoming[:MAX_INCOMING_CHARS], context, contact=contact), owner_db_id=owner_db_id,
            conversation_id=conversation_id, generation=self.config.generation)
        # Drafters written before streamed drafts take no `on_text`: it is passed only when wanted.
        streaming = {"on_text": on_text} if on_text is not None else {}
        result = self.drafter.draft(conversation, adapter=adapter, seed=seed, **streaming)
        with session_scope(self.engine) as session:
            return DraftView.of(repo.add_draft(
                session=session, owner_id=owner_db_id, conversation_id=conversation_id, message_id=message_id,
                incoming=incoming, context=context, text=result.text, adapter_version=result.adapter_version,
                sampling=result.sampling, seed=result.seed, latency_ms=result.latency_ms,
                regenerated_from=regenerated_from, chat_id=chat_id))

    def note_delivery(self, *, telegram_id: int, draft_id: int, delivery: str | None) -> None:
        """Commit where the draft's way to the chat stands ("sending" before it is sent, None when the
        send failed, "uncertain" once the owner was told a restart interrupted it; see `Draft.delivery`)."""
        with self._writing(telegram_id) as (session, owner_db_id):
            repo.set_draft_delivery(session=session, owner_id=owner_db_id, draft_id=draft_id, delivery=delivery)

    def mark_shown(self, *, telegram_id: int, draft_id: int, chat_id: int, shown_message_id: int) -> None:
        """Remember which chat message shows the draft, so replies to it count as edits."""
        with self._writing(telegram_id) as (session, owner_db_id):
            repo.set_draft_shown(session=session, owner_id=owner_db_id, draft_id=draft_id, chat_id=chat_id,
                                 shown_message_id=shown_message_id)

    def draft_for_shown_message(self, *, telegram_id: int, chat_id: int, shown_message_id: int) -> DraftView | None:
        with self._reading(telegram_id) as (session, owner_db_id):
            draft = repo.find_draft_by_shown_message(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                                     shown_message_id=shown_message_id)
            return DraftView.of(draft) if draft is not None else None

    def get_draft(self, *, telegram_id: int, draft_id: int) -> DraftView:
        with self._reading(telegram_id) as (session, owner_db_id):
            return DraftView.of(repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id))

    # Feedback -----------------------------------------------------------------------------
    def record_verdict(
        self,
        *,
        telegram_id: int,
        draft_id: int,
        kind: FeedbackKind | str,
        text: str | None = None,
        reason: str | None = None,
        on_text: TextCallback | None = None,
    ) -> Verdict:
        """Store a verdict in one transaction (committed before returning); "regenerate" then drafts
        anew with another seed (a second commit, after the model's time).

        The owner's kept text (accepted draft, edit, replacement) joins the conversation as
        the owner's turn, so the next draft in that chat sees what was really said.
        """
        kind = FeedbackKind(kind)
        with self._writing(telegram_id) as (session, owner_db_id):
            draft = repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
            feedback = repo.record_feedback(session=session, owner_id=owner_db_id, draft_id=draft_id, kind=kind,
                                            text=text, reason=reason)
            kept = kept_by_row(feedback, draft)
            if kept:
                repo.add_message(session=session, owner_id=owner_db_id, conversation_id=draft.conversation_id,
                                 role="owner", text=kept)
            decided = Verdict(draft=DraftView.of(draft), feedback=FeedbackView.of(feedback))
        if kind != FeedbackKind.regenerate:
            return decided
        old = decided.draft
        new_draft = self._draft(owner_db_id=owner_db_id, conversation_id=old.conversation_id,
                                message_id=old.message_id, incoming=old.incoming, context=old.context,
                                seed=old.seed + 1, chat_id=old.chat_id, regenerated_from=old.id,
                                adapter=self.active_adapter_ref(owner_db_id), on_text=on_text)
        return Verdict(draft=old, feedback=decided.feedback, new_draft=new_draft)

    def verdict_of(self, *, telegram_id: int, draft_id: int) -> FeedbackView | None:
        """The verdict already given on a draft, or None; DraftNotFound if it is not this owner's."""
        with self._reading(telegram_id) as (session, owner_db_id):
            repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
            feedback = repo.feedback_for_draft(session=session, draft_id=draft_id)
            return FeedbackView.of(feedback) if feedback is not None else None

    def draft_state(self, *, telegram_id: int, draft_id: int) -> tuple[DraftView, FeedbackView | None]:
        """The draft and its verdict so far, in one lookup (DraftNotFound if it is not this owner's)."""
        with self._reading(telegram_id) as (session, owner_db_id):
            draft = repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
            feedback = repo.feedback_for_draft(session=session, draft_id=draft_id)
            return DraftView.of(draft), (FeedbackView.of(feedback) if feedback is not None else None)

    def amend_reject(self, *, telegram_id: int, draft_id: int, text: str | None = None,
                     reason: str | None = None) -> Verdict:
        """Add what the owner would have written (or why) to a reject given with a bare button press."""
        with self._writing(telegram_id) as (session, owner_db_id):
            feedback = repo.amend_reject(session=session, owner_id=owner_db_id, draft_id=draft_id, text=text,
                                         reason=reason)
            draft = repo.get_draft(session=session, owner_id=owner_db_id, draft_id=draft_id)
            if feedback.text:
                repo.add_message(session=session, owner_id=owner_db_id, conversation_id=draft.conversation_id,
                                 role="owner", text=feedback.text)
            return Verdict(draft=DraftView.of(draft), feedback=FeedbackView.of(feedback))

    # Asking for the owner's version -------------------------------------------------------
    # After ✏️ Edit or 🗑 Reject the bot asks for the owner's text; which draft and which action a
    # reply to that question completes is kept here, in the database, so it survives a restart.
    def ask_for_version(self, *, telegram_id: int, draft_id: int, action: str, chat_id: int,
                        prompt_message_id: int) -> None:
        if action not in ("edit", "reject"):
            raise ValueError(f"a version completes an edit or a reject, not {action!r}")
        with self._writing(telegram_id) as (session, owner_db_id):
            repo.add_version_prompt(session=session, owner_id=owner_db_id, draft_id=draft_id, action=action,
                                    chat_id=chat_id, prompt_message_id=prompt_message_id)

    def version_prompt(self, *, telegram_id: int, chat_id: int, prompt_message_id: int) -> VersionPromptView | None:
        """The question that message `prompt_message_id` asked, open or not (a reply to it counts)."""
        with self._reading(telegram_id) as (session, owner_db_id):
            prompt = repo.find_version_prompt(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                              prompt_message_id=prompt_message_id)
            return VersionPromptView.of(prompt) if prompt is not None else None

    def open_version_prompt(self, *, telegram_id: int, chat_id: int) -> VersionPromptView | None:
        """The chat's latest question still waiting for its version, if any."""
        with self._reading(telegram_id) as (session, owner_db_id):
            prompt = repo.open_version_prompt(session=session, owner_id=owner_db_id, chat_id=chat_id)
            return VersionPromptView.of(prompt) if prompt is not None else None

    def close_version_prompts(self, *, telegram_id: int, chat_id: int,
                              draft_id: int | None = None) -> list[VersionPromptView]:
        """Stop waiting (the version came, or /cancel); returns the questions closed."""
        with self._writing(telegram_id) as (session, owner_db_id):
            return [VersionPromptView.of(prompt) for prompt in
                    repo.close_version_prompts(session=session, owner_id=owner_db_id, chat_id=chat_id,
                                               draft_id=draft_id)]

    # Status -------------------------------------------------------------------------------
    def owner_and_name(self, telegram_id: int) -> tuple[int, str | None]:
        """The owner's database id and stored name (the owner is created on first use)."""
        with self._writing(telegram_id) as (session, owner_db_id):
            owner = repo.find_owner(session=session, telegram_id=telegram_id)
            return owner_db_id, owner.name if owner is not None else None

    def status(self, telegram_id: int) -> dict[str, Any]:
        with self._writing(telegram_id) as (session, owner_db_id):
            return repo.owner_status(session=session, owner_id=owner_db_id)
