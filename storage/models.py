"""SQLModel tables for the words of docs/architecture.md: owner, conversation, message, draft, feedback,
writing sample, adapter, cycle, plus the bot's questions for the owner's version of a draft and
the cross-process lock row of the cycle.

Every row belongs to an owner (`owner_id`), so deleting an owner deletes everything of theirs.
JSON columns hold small structured values (context turns, sampling settings, metrics).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AwareDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that hands back aware UTC datetimes on every database.

    PostgreSQL stores `timestamptz` and returns aware values itself. SQLite has no time-zone type:
    SQLAlchemy writes the wall-clock digits and reads them back naive. So the value is converted to
    UTC before it is written, and SQLite's naive result is UTC by construction; this is the only
    place that knows it (migration 0006 made every timestamp column this type). A naive value is
    refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # a bug of the caller: which zone is it in? (SQLite would not say)
            raise ValueError(f"a naive datetime {value.isoformat()} cannot be stored; give it a time zone")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: written as UTC above
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)  # PostgreSQL answers in the session's time zone


class FeedbackKind(str, Enum):
    accept = "accept"
    edit = "edit"
    reject = "reject"
    regenerate = "regenerate"


class SampleKind(str, Enum):
    reply = "reply"
    monologue = "monologue"


class AdapterState(str, Enum):
    candidate = "candidate"
    active = "active"
    retired = "retired"
    failed = "failed"


class CycleStatus(str, Enum):
    running = "running"
    skipped = "skipped"
    promoted = "promoted"
    kept = "kept"
    failed = "failed"


class Owner(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    telegram_id: int = Field(sa_column=Column(BigInteger, unique=True, nullable=False))
    name: Optional[str] = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class Conversation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("owner_id", "chat_key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    chat_key: str  # "tg:<chat id>", "cli", ...
    title: Optional[str] = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class Message(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    role: str  # "owner" or "other"
    sender: Optional[str] = None
    text: str = Field(sa_column=Column(Text, nullable=False))
    telegram_message_id: Optional[int] = Field(default=None, sa_column=Column(BigInteger))
    chat_id: Optional[int] = Field(default=None, sa_column=Column(BigInteger))  # the Telegram chat it came in
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class DraftBase(SQLModel):
    text: str = Field(sa_column=Column(Text, nullable=False))
    adapter_version: int = 0
    sampling: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seed: int = 0
    latency_ms: int = 0


class Draft(DraftBase, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    message_id: int = Field(foreign_key="message.id", index=True)  # the incoming message it answers
    # The context exactly as the prompt saw it, so the dataset builders render the same prompt.
    context: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    incoming: str = Field(sa_column=Column(Text, nullable=False))
    regenerated_from: Optional[int] = Field(default=None, foreign_key="draft.id")
    chat_id: Optional[int] = Field(default=None, sa_column=Column(BigInteger))  # where the draft was shown
    shown_message_id: Optional[int] = Field(default=None, sa_column=Column(BigInteger))
    # Telegram has no idempotent send: "sending" is committed before the draft is sent, so a restart
    # that finds it (and no shown_message_id) knows the draft may already be in the chat and does not
    # send it again; "uncertain": the owner was told so. None: never sent (or its send failed).
    delivery: Optional[str] = Field(default=None, sa_column=Column(String(16)))
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class Feedback(SQLModel, table=True):
    # One verdict per draft: a second press is refused by the database, not only by the code.
    __table_args__ = (UniqueConstraint("draft_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    draft_id: int = Field(foreign_key="draft.id")
    kind: FeedbackKind
    text: Optional[str] = Field(default=None, sa_column=Column(Text))  # the owner's edit or replacement
    reason: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, index=True, sa_type=AwareDateTime)


class VersionPrompt(SQLModel, table=True):
    """The bot asked the owner for their version of a draft (after ✏️ Edit or 🗑 Reject).

    A reply to the prompt message is that version, also after a restart; `open` until the version
    came or the owner cancelled (a ✍️ pre-filled text counts only while an edit is open).
    """

    __tablename__ = "version_prompt"
    __table_args__ = (UniqueConstraint("chat_id", "prompt_message_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    draft_id: int = Field(foreign_key="draft.id", index=True)
    action: str  # "edit" | "reject": what the version completes
    chat_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    prompt_message_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    open: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class WritingSampleCreate(SQLModel):
    """An imported piece of the owner's writing, as importers produce it."""

    kind: SampleKind
    text: str
    prompt: Optional[str] = None  # the message a reply answered
    context: list[dict[str, Any]] = Field(default_factory=list)  # earlier turns, oldest first
    sender: Optional[str] = None  # who wrote the prompt
    written_at: Optional[datetime] = None
    source: str = ""  # file name and format


class WritingSample(SQLModel, table=True):
    __tablename__ = "writing_sample"
    __table_args__ = (UniqueConstraint("owner_id", "content_hash"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    kind: SampleKind
    text: str = Field(sa_column=Column(Text, nullable=False))
    prompt: Optional[str] = Field(default=None, sa_column=Column(Text))
    context: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    sender: Optional[str] = None
    written_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)
    source: str = ""
    content_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class Adapter(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("owner_id", "version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    version: int
    state: AdapterState = AdapterState.candidate
    path: str = ""
    parent_version: int = 0
    cycle_id: Optional[int] = Field(default=None, foreign_key="cycle.id")
    checksum: str = ""
    data_counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    activated_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)


class Cycle(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    status: CycleStatus = CycleStatus.running
    forced: bool = False
    trigger: str = "manual"  # schedule | manual | telegram
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    feedback_upto_id: int = 0  # the newest feedback row this cycle saw
    candidate_version: Optional[int] = None
    active_version_before: int = 0
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    durations: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    log_path: str = ""
    pid: Optional[int] = None
    started_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    finished_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)


class CycleRequestStatus(str, Enum):
    queued = "queued"  # waiting for a worker (from `due_at` on)
    running = "running"  # claimed by `worker`, which beats `heartbeat_at`
    done = "done"  # the cycle ran (its own status says how it ended: promoted, kept, skipped, failed)
    failed = "failed"  # the cycle raised before it could record an outcome


class CycleRequest(SQLModel, table=True):
    """One owner's cycle waiting in (or taken from) the training queue that `twin worker` drains.

    Several processes on several machines share the queue through the database; a worker claims a
    request with a conditional UPDATE, so one request is run by one worker only.
    """

    __tablename__ = "cycle_request"
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    trigger: str = "manual"  # schedule | cli | telegram
    force: bool = False
    status: CycleRequestStatus = Field(default=CycleRequestStatus.queued, index=True)
    requested_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    due_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    claimed_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)
    heartbeat_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)
    finished_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)
    worker: str = ""  # "<host>:<pid>" of the worker that claimed it
    attempts: int = 0
    cycle_id: Optional[int] = None
    outcome: str = ""  # the cycle's status, or the error of a failed request
    report: str = Field(default="", sa_column=Column(Text, nullable=False))
    reported_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)  # sent to the owner


class Lock(SQLModel, table=True):
    """A named cross-process lock: the row exists while someone holds it."""

    name: str = Field(primary_key=True)
    holder: str  # "<hostname>:<pid>"
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


Index("ix_draft_owner_created", Draft.owner_id, Draft.created_at)  # type: ignore[arg-type]
# A Telegram message is stored once: an update delivered again after a crash is recognised.
Index("ux_message_chat_telegram", Message.chat_id, Message.telegram_message_id, unique=True)  # type: ignore[arg-type]


# Telegram Business ------------------------------------------------------------------------------
# The twin inside the owner's real chats (bot.business, loop.business). A contact's text is stored
# only as context for the owner's replies; `forget_owner` deletes all of it.

class BusinessConnection(SQLModel, table=True):
    """The owner's Telegram Business connection to the bot: one per owner, the id may change on reconnect.

    `paused` (/pause) belongs to the owner, not to one connection id: it outlives a reconnect.
    """

    __tablename__ = "business_connection"
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", unique=True)
    connection_id: str = Field(sa_column=Column(String(128), unique=True, nullable=False))
    user_chat_id: int = Field(sa_column=Column(BigInteger, nullable=False))  # the owner's chat with the bot
    can_reply: bool = False
    enabled: bool = True
    paused: bool = False
    rights: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class BusinessChat(SQLModel, table=True):
    """One real chat of the owner with a contact; its messages live in `conversation_id`.

    Keyed by (owner, chat id), not by connection, so a mute outlives a reconnect.
    """

    __tablename__ = "business_chat"
    __table_args__ = (UniqueConstraint("owner_id", "chat_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    chat_id: int = Field(sa_column=Column(BigInteger, nullable=False))  # the contact's private chat id
    conversation_id: int = Field(foreign_key="conversation.id")
    contact_name: Optional[str] = None
    muted: bool = False
    last_contact_at: Optional[datetime] = Field(default=None, sa_type=AwareDateTime)
    # the contact's last message: Telegram's 24-hour reply window
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class BusinessMessage(SQLModel, table=True):
    """A Telegram message of a business chat and what it became: a conversation turn, and for the
    owner's own words a writing sample or the verdict on a pending draft (edits and deletions follow it)."""

    __tablename__ = "business_message"
    __table_args__ = (UniqueConstraint("business_chat_id", "telegram_message_id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    business_chat_id: int = Field(foreign_key="business_chat.id", index=True)
    telegram_message_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    sample_id: Optional[int] = Field(default=None, foreign_key="writing_sample.id")
    feedback_id: Optional[int] = Field(default=None, foreign_key="feedback.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)


class BusinessDraft(SQLModel, table=True):
    """A draft for a business chat, shown in the owner's chat with the bot.

    `state`: "pending" (waiting for the owner), "outdated" (the contact wrote again), "muted",
    "answered" (a verdict, by button or by the owner's own reply). `send_state`: None until a
    Send/Edit is to be posted; "sending" is committed before the post (a restart then does not post
    twice), "sent" with `sent_message_id` after; "refused" when Telegram said no (`error` says why).
    """

    __tablename__ = "business_draft"
    id: Optional[int] = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    draft_id: int = Field(foreign_key="draft.id", unique=True)
    business_chat_id: int = Field(foreign_key="business_chat.id", index=True)
    state: str = Field(default="pending", sa_column=Column(String(16), nullable=False))
    send_state: Optional[str] = Field(default=None, sa_column=Column(String(16)))
    sent_text: Optional[str] = Field(default=None, sa_column=Column(Text))
    sent_message_id: Optional[int] = Field(default=None, sa_column=Column(BigInteger))
    owner_message_id: Optional[int] = Field(default=None, foreign_key="message.id")
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow, sa_type=AwareDateTime)
