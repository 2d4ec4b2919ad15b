"""Repository functions: every read and write of the twin's tables goes through here.

All functions are keyword-only and take the session; the caller owns the unit of work
(`storage.db.session_scope`) so rows that belong together commit in one transaction.
Domain errors are small exceptions that the edges (bot, CLI) turn into a sentence.
"""

from __future__ import annotations

import hashlib
import json
import socket
import os
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional, Sequence

from sqlalchemy import delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.errors import AdapterNotFound, DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired, StorageError
from storage.models import (
    Adapter,
    AdapterState,
    BusinessChat,
    BusinessConnection,
    BusinessDraft,
    BusinessMessage,
    Conversation,
    Cycle,
    CycleRequest,
    CycleRequestStatus,
    CycleStatus,
    Draft,
    Feedback,
    FeedbackKind,
    Lock,
    Message,
    Owner,
    VersionPrompt,
    WritingSample,
    WritingSampleCreate,
    utcnow,
)


# Owners and conversations ---------------------------------------------------------------------

def get_or_create_owner(*, session: Session, telegram_id: int, name: str | None = None) -> Owner:
    owner = session.exec(select(Owner).where(Owner.telegram_id == telegram_id)).first()
    if owner is None:
        owner = Owner(telegram_id=telegram_id, name=name)
        session.add(owner)
        session.flush()
    elif name and owner.name != name:
        owner.name = name
    return owner


def find_owner(*, session: Session, telegram_id: int) -> Owner | None:
    return session.exec(select(Owner).where(Owner.telegram_id == telegram_id)).first()


def get_or_create_conversation(*, session: Session, owner_id: int, chat_key: str, title: str | None = None) -> Conversation:
    conversation = session.exec(
        select(Conversation).where(Conversation.owner_id == owner_id, Conversation.chat_key == chat_key)
    ).first()
    if conversation is None:
        conversation = Conversation(owner_id=owner_id, chat_key=chat_key, title=title)
        session.add(conversation)
        session.flush()
    return conversation


def add_message(
    *,
    session: Session,
    owner_id: int,
    conversation_id: int,
    role: str,
    text: str,
    sender: str | None = None,
    telegram_message_id: int | None = None,
    chat_id: int | None = None,
) -> Message:
    if role not in ("owner", "other"):
        raise ValueError(f"role must be 'owner' or 'other', not {role!r}")
    message = Message(owner_id=owner_id, conversation_id=conversation_id, role=role, text=text,
                      sender=sender, telegram_message_id=telegram_message_id, chat_id=chat_id)
    session.add(message)
    session.flush()
    return message


def find_telegram_message(*, session: Session, owner_id: int, chat_id: int, telegram_message_id: int) -> Message | None:
    """The stored message that came as `telegram_message_id` in `chat_id`, if any."""
    return session.exec(select(Message).where(Message.owner_id == owner_id, Message.chat_id == chat_id,
                                              Message.telegram_message_id == telegram_message_id)).first()


def recent_turns(*, session: Session, conversation_id: int, limit: int, before_id: int | None = None,
                 answering_id: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` messages of a conversation as turn dicts, oldest first.

    `answering_id`: the context for a reply to that message: what came before it, and the
    owner's own turns written since (replies to earlier messages), but not the message itself
    nor later incoming ones.
    """
    query = select(Message).where(Message.conversation_id == conversation_id)
    if before_id is not None:
        query = query.where(Message.id < before_id)
    if answering_id is not None:
        query = query.where(Message.id != answering_id,
                            or_(col(Message.id) < answering_id, Message.role == "owner"))
    rows = session.exec(query.order_by(col(Message.id).desc()).limit(limit)).all()
    return [{"role": m.role, "text": m.text, "sender": m.sender} for m in reversed(rows)]


def undrafted_messages(*, session: Session, since: datetime) -> list[tuple[Message, int]]:
    """Incoming Telegram messages since `since` without a draft, with their owner's Telegram id,
    oldest first: what a crash left unanswered."""
    has_draft = select(Draft.id).where(Draft.message_id == Message.id).exists()
    query = (select(Message, Owner.telegram_id).join(Owner, col(Owner.id) == Message.owner_id)
             .where(Message.role == "other", col(Message.chat_id).is_not(None),
                    col(Message.telegram_message_id).is_not(None), Message.created_at >= since, ~has_draft)
             .order_by(col(Message.id)))
    return [(message, telegram_id) for message, telegram_id in session.exec(query).all()]


def unshown_drafts(*, session: Session, since: datetime, delivery: str | None = None) -> list[tuple[Draft, int]]:
    """Drafts for a Telegram chat since `since` that were never shown and have no verdict, with
    their owner's Telegram id, oldest first: written, then the process died before sending.

    `delivery`: None for drafts never sent; "sending" for those whose send had begun (they may be
    in the chat already).
    """
    has_feedback = select(Feedback.id).where(Feedback.draft_id == Draft.id).exists()
    delivery_is = col(Draft.delivery).is_(None) if delivery is None else Draft.delivery == delivery
    query = (select(Draft, Owner.telegram_id).join(Owner, col(Owner.id) == Draft.owner_id)
             .where(col(Draft.chat_id).is_not(None), col(Draft.shown_message_id).is_(None), delivery_is,
                    Draft.created_at >= since, ~has_feedback)
             .order_by(col(Draft.id)))
    return [(draft, telegram_id) for draft, telegram_id in session.exec(query).all()]


# Drafts and feedback ---------------------------------------------------------------------------

def add_draft(
    *,
    session: Session,
    owner_id: int,
    conversation_id: int,
    message_id: int,
    incoming: str,
    context: Sequence[dict[str, Any]],
    text: str,
    adapter_version: int,
    sampling: dict[str, Any],
    seed: int,
    latency_ms: int,
    regenerated_from: int | None = None,
    chat_id: int | None = None,
) -> Draft:
    draft = Draft(owner_id=owner_id, conversation_id=conversation_id, message_id=message_id, incoming=incoming,
                  context=list(context), text=text, adapter_version=adapter_version, sampling=dict(sampling),
                  seed=seed, latency_ms=latency_ms, regenerated_from=regenerated_from, chat_id=chat_id)
    session.add(draft)
    session.flush()
    return draft


def get_draft(*, session: Session, owner_id: int, draft_id: int) -> Draft:
    draft = session.get(Draft, draft_id)
    if draft is None or draft.owner_id != owner_id:
        raise DraftNotFound(f"draft {draft_id} not found")
    return draft


def set_draft_shown(*, session: Session, owner_id: int, draft_id: int, chat_id: int, shown_message_id: int) -> None:
    draft = get_draft(session=session, owner_id=owner_id, draft_id=draft_id)
    draft.chat_id, draft.shown_message_id, draft.delivery = chat_id, shown_message_id, "shown"


def set_draft_delivery(*, session: Session, owner_id: int, draft_id: int, delivery: str | None) -> None:
    """Note where a draft's way to the chat stands (see `Draft.delivery`)."""
    get_draft(session=session, owner_id=owner_id, draft_id=draft_id).delivery = delivery


def find_draft_by_shown_message(*, session: Session, owner_id: int, chat_id: int, shown_message_id: int) -> Draft | None:
    return session.exec(
        select(Draft).where(Draft.owner_id == owner_id, Draft.chat_id == chat_id,
                            Draft.shown_message_id == shown_message_id)
    ).first()


def feedback_for_draft(*, session: Session, draft_id: int) -> Feedback | None:
    return session.exec(select(Feedback).where(Feedback.draft_id == draft_id)).first()


def record_feedback(
    *,
    session: Session,
    owner_id: int,
    draft_id: int,
    kind: FeedbackKind | str,
    text: str | None = None,
    reason: str | None = None,
) -> Feedback:
    """Store the owner's verdict on a draft; a draft takes one verdict only."""
    kind = FeedbackKind(kind)
    get_draft(session=session, owner_id=owner_id, draft_id=draft_id)
    text = text.strip() if text else None
    if kind == FeedbackKind.edit and not text:
        raise FeedbackTextRequired("an edit needs the corrected text")
    existing = feedback_for_draft(session=session, draft_id=draft_id)
    if existing is not None:
        raise DraftAlreadyDecided(existing)
    feedback = Feedback(owner_id=owner_id, draft_id=draft_id, kind=kind, text=text, reason=reason)
    if not _insert_unless_conflict(session, feedback):
        # The unique constraint settled a race between two presses in two processes.
        raise DraftAlreadyDecided(feedback_for_draft(session=session, draft_id=draft_id))  # type: ignore[arg-type]
    return feedback


def _insert_unless_conflict(session: Session, row: Any) -> bool:
    """Insert `row` in a savepoint; False (and the transaction still usable) on a unique conflict."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        if row in session:
            session.expunge(row)
        return False
    return True


def amend_reject(*, session: Session, owner_id: int, draft_id: int, text: str | None = None,
                 reason: str | None = None) -> Feedback:
    """Add the replacement or the reason to a reject given without them (the bot asks after the press).

    Any other verdict, or a reject that already has its text or reason, stays as it is.
    """
    get_draft(session=session, owner_id=owner_id, draft_id=draft_id)
    feedback = feedback_for_draft(session=session, draft_id=draft_id)
    if feedback is None:
        raise DraftNotFound(f"draft {draft_id} has no reject to amend")
    if feedback.kind != FeedbackKind.reject or feedback.text or feedback.reason:
        raise DraftAlreadyDecided(feedback)
    feedback.text = text.strip() if text and text.strip() else None
    feedback.reason = reason.strip() if reason and reason.strip() else None
    session.flush()
    return feedback


# The bot's questions for the owner's version ----------------------------------------------

def add_version_prompt(*, session: Session, owner_id: int, draft_id: int, action: str, chat_id: int,
                       prompt_message_id: int) -> VersionPrompt:
    """Remember that `prompt_message_id` asks for the owner's version of a draft; it becomes the
    chat's one open question (earlier ones there stay answerable by a reply, but are no longer open)."""
    get_draft(session=session, owner_id=owner_id, draft_id=draft_id)
    close_version_prompts(session=session, owner_id=owner_id, chat_id=chat_id)
    prompt = VersionPrompt(owner_id=owner_id, draft_id=draft_id, action=action, chat_id=chat_id,
                           prompt_message_id=prompt_message_id)
    session.add(prompt)
    session.flush()
    return prompt


def find_version_prompt(*, session: Session, owner_id: int, chat_id: int, prompt_message_id: int) -> VersionPrompt | None:
    return session.exec(select(VersionPrompt).where(
        VersionPrompt.owner_id == owner_id, VersionPrompt.chat_id == chat_id,
        VersionPrompt.prompt_message_id == prompt_message_id)).first()


def open_version_prompt(*, session: Session, owner_id: int, chat_id: int) -> VersionPrompt | None:
    return session.exec(select(VersionPrompt).where(
        VersionPrompt.owner_id == owner_id, VersionPrompt.chat_id == chat_id, col(VersionPrompt.open).is_(True),
    ).order_by(col(VersionPrompt.id).desc())).first()


def close_version_prompts(*, session: Session, owner_id: int, chat_id: int,
                          draft_id: int | None = None) -> list[VersionPrompt]:
    """Close the open questions of a chat (only those about `draft_id` if given); returns them."""
    query = select(VersionPrompt).where(VersionPrompt.owner_id == owner_id, VersionPrompt.chat_id == chat_id,
                                        col(VersionPrompt.open).is_(True))
    if draft_id is not None:
        query = query.where(VersionPrompt.draft_id == draft_id)
    closed = list(session.exec(query).all())
    for prompt in closed:
        prompt.open = False
    session.flush()
    return closed


def feedback_rows(
    *, session: Session, owner_id: int, after_id: int = 0, upto_id: int | None = None
) -> list[tuple[Feedback, Draft]]:
    """Feedback with its draft, oldest first, optionally only rows in (after_id, upto_id]."""
    query = select(Feedback, Draft).join(Draft, col(Draft.id) == Feedback.draft_id).where(
        Feedback.owner_id == owner_id, Feedback.id > after_id)
    if upto_id is not None:
        query = query.where(Feedback.id <= upto_id)
    return list(session.exec(query.order_by(col(Feedback.id))).all())


def latest_feedback_id(*, session: Session, owner_id: int) -> int:
    return session.exec(select(func.max(Feedback.id)).where(Feedback.owner_id == owner_id)).one() or 0


def drafts_by_adapter(*, session: Session, owner_id: int) -> list[tuple[Draft, Feedback | None]]:
    query = select(Draft, Feedback).join(Feedback, col(Feedback.draft_id) == Draft.id, isouter=True).where(
        Draft.owner_id == owner_id).order_by(col(Draft.id))
    return list(session.exec(query).all())


# Writing samples -----------------------------------------------------------------------------

def sample_hash(sample: WritingSampleCreate) -> str:
    """Content hash of a sample: the same text in the same context is the same sample."""
    key = json.dumps([sample.kind.value if hasattr(sample.kind, "value") else sample.kind, sample.prompt or "",
                      [t.get("text", "") for t in sample.context], sample.text], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def add_writing_samples(*, session: Session, owner_id: int, samples: Iterable[WritingSampleCreate]) -> tuple[int, int]:
    """Add samples that are not stored yet; returns (added, skipped as duplicates)."""
    samples = list(samples)
    hashes = [sample_hash(s) for s in samples]
    existing = set()
    for start in range(0, len(hashes), 500):
        chunk = hashes[start:start + 500]
        existing.update(session.exec(select(WritingSample.content_hash).where(
            WritingSample.owner_id == owner_id, col(WritingSample.content_hash).in_(chunk))).all())
    added = skipped = 0
    for sample, digest in zip(samples, hashes):
        if digest in existing:
            skipped += 1
            continue
        existing.add(digest)
        session.add(WritingSample(owner_id=owner_id, content_hash=digest, **sample.model_dump()))
        added += 1
    session.flush()
    return added, skipped


def writing_samples(*, session: Session, owner_id: int) -> list[WritingSample]:
    return list(session.exec(select(WritingSample).where(WritingSample.owner_id == owner_id)
                             .order_by(col(WritingSample.written_at), col(WritingSample.id))).all())


# Adapters -------------------------------------------------------------------------------------

def active_adapter(*, session: Session, owner_id: int) -> Adapter | None:
    return session.exec(select(Adapter).where(Adapter.owner_id == owner_id,
                                              Adapter.state == AdapterState.active)).first()


def active_adapters(*, session: Session) -> list[Adapter]:
    """Every owner's active adapter (a drafting server serves exactly these)."""
    return list(session.exec(select(Adapter).where(Adapter.state == AdapterState.active)
                             .order_by(col(Adapter.owner_id))).all())


def active_version(*, session: Session, owner_id: int) -> int:
    adapter = active_adapter(session=session, owner_id=owner_id)
    return adapter.version if adapter else 0


def next_adapter_version(*, session: Session, owner_id: int) -> int:
    latest = session.exec(select(func.max(Adapter.version)).where(Adapter.owner_id == owner_id)).one()
    return (latest or 0) + 1


def add_adapter(*, session: Session, owner_id: int, version: int, path: str, parent_version: int,
                cycle_id: int | None, checksum: str, data_counts: dict[str, Any], metrics: dict[str, Any],
                state: AdapterState = AdapterState.candidate) -> Adapter:
    adapter = Adapter(owner_id=owner_id, version=version, path=path, parent_version=parent_version,
                      cycle_id=cycle_id, checksum=checksum, data_counts=data_counts, metrics=metrics, state=state)
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(*, session: Session, owner_id: int, version: int) -> Adapter:
    adapter = session.exec(select(Adapter).where(Adapter.owner_id == owner_id, Adapter.version == version)).first()
    if adapter is None:
        raise AdapterNotFound(f"no adapter version {version}")
    return adapter


def list_adapters(*, session: Session, owner_id: int) -> list[Adapter]:
    return list(session.exec(select(Adapter).where(Adapter.owner_id == owner_id).order_by(col(Adapter.version))).all())


def activate_adapter(*, session: Session, owner_id: int, version: int) -> Adapter | None:
    """Make `version` the active adapter (0 = the base model); the previous one is retired."""
    target = get_adapter(session=session, owner_id=owner_id, version=version) if version else None
    if target is not None and target.state == AdapterState.failed:
        raise AdapterNotFound(f"adapter version {version} failed and cannot be activated")
    current = active_adapter(session=session, owner_id=owner_id)
    if current is not None and current is not target:
        current.state = AdapterState.retired
        session.flush()
    if target is not None:
        target.state = AdapterState.active
        target.activated_at = utcnow()
    session.flush()
    return target


# Cycles and the lock -------------------------------------------------------------------------

def lock_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lock(*, session: Session, name: str, holder: str | None = None, stale_after: timedelta | None = None,
                 holder_alive: Optional[Any] = None) -> bool:
    """Take the named lock; a lock whose holder is dead (or silent past `stale_after`) is taken over."""
    holder = holder or lock_holder_id()
    row = session.get(Lock, name)
    if row is not None:
        now = utcnow()
        stale = stale_after is not None and now - row.heartbeat_at > stale_after
        dead = holder_alive is not None and not holder_alive(row.holder)
        if not (stale or dead):
            return False
        session.delete(row)
        session.flush()
    return _insert_unless_conflict(session, Lock(name=name, holder=holder))


def heartbeat_lock(*, session: Session, name: str, holder: str | None = None) -> None:
    row = session.get(Lock, name)
    if row is not None and row.holder == (holder or lock_holder_id()):
        row.heartbeat_at = utcnow()


def release_lock(*, session: Session, name: str, holder: str | None = None) -> None:
    session.exec(delete(Lock).where(col(Lock.name) == name, col(Lock.holder) == (holder or lock_holder_id())))


def release_lock_row(*, session: Session, name: str) -> None:
    """Delete the named lock row whoever holds it (storage.locks, once the advisory lock is ours)."""
    session.exec(delete(Lock).where(col(Lock.name) == name))
    session.flush()


def get_lock(*, session: Session, name: str) -> Lock | None:
    return session.get(Lock, name)


def start_cycle(*, session: Session, owner_id: int, trigger: str, forced: bool, active_version_before: int,
                feedback_upto_id: int) -> Cycle:
    cycle = Cycle(owner_id=owner_id, trigger=trigger, forced=forced, active_version_before=active_version_before,
                  feedback_upto_id=feedback_upto_id, pid=os.getpid())
    session.add(cycle)
    session.flush()
    return cycle


def finish_cycle(*, session: Session, cycle_id: int, status: CycleStatus, reason: str, **fields: Any) -> Cycle:
    cycle = session.get(Cycle, cycle_id)
    if cycle is None:
        raise StorageError(f"cycle {cycle_id} not found")
    cycle.status, cycle.reason, cycle.finished_at = status, reason, utcnow()
    for key, value in fields.items():
        setattr(cycle, key, value)
    session.flush()
    return cycle


def get_cycle(*, session: Session, cycle_id: int) -> Cycle | None:
    return session.get(Cycle, cycle_id)


def list_cycles(*, session: Session, owner_id: int) -> list[Cycle]:
    return list(session.exec(select(Cycle).where(Cycle.owner_id == owner_id).order_by(col(Cycle.id))).all())


def last_cycle(*, session: Session, owner_id: int) -> Cycle | None:
    return session.exec(select(Cycle).where(Cycle.owner_id == owner_id).order_by(col(Cycle.id).desc())).first()


def last_trained_feedback_id(*, session: Session, owner_id: int) -> int:
    """The newest feedback id that a finished (not skipped or failed) cycle already learnt from."""
    value = session.exec(select(func.max(Cycle.feedback_upto_id)).where(
        Cycle.owner_id == owner_id, col(Cycle.status).in_([CycleStatus.promoted, CycleStatus.kept]))).one()
    return value or 0


def last_finished_cycle(*, session: Session, owner_id: int) -> Cycle | None:
    """The newest cycle that trained and was judged (promoted or kept)."""
    return session.exec(select(Cycle).where(
        Cycle.owner_id == owner_id, col(Cycle.status).in_([CycleStatus.promoted, CycleStatus.kept]))
        .order_by(col(Cycle.id).desc())).first()


def fail_running_cycles(*, session: Session, reason: str, owner_id: int | None = None) -> list[int]:
    """Mark every cycle still `running` as failed (call while holding the cycle lock: they are orphans).

    With `owner_id`, only that owner's: a worker holds one owner's lock while other owners' cycles
    run in other workers."""
    query = select(Cycle).where(Cycle.status == CycleStatus.running)
    if owner_id is not None:
        query = query.where(Cycle.owner_id == owner_id)
    cycles = list(session.exec(query).all())
    for cycle in cycles:
        cycle.status, cycle.reason, cycle.finished_at = CycleStatus.failed, reason, utcnow()
    session.flush()
    return [cycle.id for cycle in cycles]  # type: ignore[misc]


# The training queue (`twin worker`) ------------------------------------------------------------

def enqueue_cycle(*, session: Session, owner_id: int, trigger: str, force: bool = False,
                  due_at: datetime | None = None) -> tuple[CycleRequest, bool]:
    """Queue a cycle for the owner; returns (the request, whether it is new).

    An owner has at most one queued request: a second one merges into it (forced if either was,
    due at the earlier time), so a night that is enqueued twice still trains once."""
    due = due_at or utcnow()
    waiting = session.exec(select(CycleRequest).where(
        CycleRequest.owner_id == owner_id, CycleRequest.status == CycleRequestStatus.queued)).first()
    if waiting is not None:
        waiting.force = waiting.force or force
        if due < waiting.due_at:
            waiting.due_at = due
        session.flush()
        return waiting, False
    request = CycleRequest(owner_id=owner_id, trigger=trigger, force=force, due_at=due)
    session.add(request)
    session.flush()
    return request, True


def due_cycle_requests(*, session: Session, now: datetime | None = None, limit: int = 1) -> list[CycleRequest]:
    """Queued requests that are due, oldest first, of owners with no request running (one cycle per
    owner at a time: the owner's cycle lock would refuse the second anyway)."""
    busy = select(CycleRequest.owner_id).where(CycleRequest.status == CycleRequestStatus.running)
    return list(session.exec(select(CycleRequest).where(
        CycleRequest.status == CycleRequestStatus.queued, col(CycleRequest.due_at) <= (now or utcnow()),
        col(CycleRequest.owner_id).not_in(busy)).order_by(col(CycleRequest.due_at), col(CycleRequest.id))
        .limit(limit)).all())


def claim_cycle_request(*, session: Session, request_id: int, worker: str) -> bool:
    """Take a queued request for `worker`; False when another worker took it first.

    A conditional UPDATE: of two workers racing for the same row, the database lets one change
    it (PostgreSQL re-checks the condition after the other's commit, SQLite has one writer)."""
    now = utcnow()
    result = session.execute(update(CycleRequest).where(
        col(CycleRequest.id) == request_id, col(CycleRequest.status) == CycleRequestStatus.queued).values(
        status=CycleRequestStatus.running, worker=worker, claimed_at=now, heartbeat_at=now,
        attempts=CycleRequest.attempts + 1))
    return result.rowcount == 1


def heartbeat_cycle_requests(*, session: Session, request_ids: Sequence[int], worker: str) -> None:
    if request_ids:
        session.execute(update(CycleRequest).where(
            col(CycleRequest.id).in_(list(request_ids)), col(CycleRequest.worker) == worker,
            col(CycleRequest.status) == CycleRequestStatus.running).values(heartbeat_at=utcnow()))


def finish_cycle_request(*, session: Session, request_id: int, status: CycleRequestStatus, outcome: str,
                         cycle_id: int | None = None, report: str = "") -> CycleRequest:
    request = session.get(CycleRequest, request_id)
    if request is None:
        raise StorageError(f"cycle request {request_id} not found")
    request.status, request.outcome, request.finished_at = status, outcome, utcnow()
    request.cycle_id, request.report = cycle_id, report
    session.flush()
    return request


def requeue_cycle_request(*, session: Session, request_id: int, due_at: datetime, note: str = "") -> None:
    """Put a claimed request back in the queue (its owner's lock was busy, or its worker died)."""
    request = session.get(CycleRequest, request_id)
    if request is None or request.status != CycleRequestStatus.running:
        return
    waiting = session.exec(select(CycleRequest).where(
        CycleRequest.owner_id == request.owner_id, CycleRequest.status == CycleRequestStatus.queued)).first()
    if waiting is not None:  # enqueued again meanwhile: that one stands for both
        waiting.force = waiting.force or request.force
        request.status, request.outcome, request.finished_at = CycleRequestStatus.done, note or "merged", utcnow()
    else:
        request.status, request.due_at, request.outcome = CycleRequestStatus.queued, due_at, note
        request.worker, request.claimed_at, request.heartbeat_at = "", None, None
    session.flush()


def running_cycle_requests(*, session: Session) -> list[CycleRequest]:
    return list(session.exec(select(CycleRequest).where(
        CycleRequest.status == CycleRequestStatus.running).order_by(col(CycleRequest.id))).all())


def list_cycle_requests(*, session: Session, owner_id: int | None = None) -> list[CycleRequest]:
    query = select(CycleRequest).order_by(col(CycleRequest.id))
    if owner_id is not None:
        query = query.where(CycleRequest.owner_id == owner_id)
    return list(session.exec(query).all())


def unreported_cycle_requests(*, session: Session) -> list[tuple[CycleRequest, int]]:
    """Finished requests whose report has not reached the owner yet, with the owner's Telegram id."""
    rows = session.exec(select(CycleRequest, Owner.telegram_id).join(Owner, col(Owner.id) == CycleRequest.owner_id)
                        .where(col(CycleRequest.status).in_([CycleRequestStatus.done, CycleRequestStatus.failed]),
                               col(CycleRequest.reported_at).is_(None), CycleRequest.report != "")
                        .order_by(col(CycleRequest.id))).all()
    return [(request, telegram_id) for request, telegram_id in rows]


def mark_cycle_request_reported(*, session: Session, request_id: int) -> None:
    request = session.get(CycleRequest, request_id)
    if request is not None:
        request.reported_at = utcnow()


# Status and forgetting --------------------------------------------------------------------------

def owner_status(*, session: Session, owner_id: int) -> dict[str, Any]:
    """Counts for `twin status --json` and `/status`."""
    kinds = Counter({kind.value: 0 for kind in FeedbackKind})
    for kind, count in session.exec(select(Feedback.kind, func.count()).where(Feedback.owner_id == owner_id)
                                    .group_by(Feedback.kind)).all():
        kinds[FeedbackKind(kind).value] = count
    samples = Counter()
    for kind, count in session.exec(select(WritingSample.kind, func.count()).where(WritingSample.owner_id == owner_id)
                                    .group_by(WritingSample.kind)).all():
        samples[kind.value if hasattr(kind, "value") else kind] = count
    drafts = session.exec(select(func.count()).select_from(Draft).where(Draft.owner_id == owner_id)).one()
    cycle = last_cycle(session=session, owner_id=owner_id)
    return {
        "writing_samples": sum(samples.values()),
        "writing_samples_by_kind": dict(samples),
        "drafts": drafts,
        "feedback": dict(kinds),
        "active_adapter": active_version(session=session, owner_id=owner_id),
        "last_cycle": cycle_summary(cycle) if cycle else None,
    }


def cycle_summary(cycle: Cycle) -> dict[str, Any]:
    return {
        "id": cycle.id,
        "status": cycle.status.value,
        "trigger": cycle.trigger,
        "reason": cycle.reason,
        "candidate_version": cycle.candidate_version,
        "started_at": cycle.started_at.isoformat() if cycle.started_at else None,
        "finished_at": cycle.finished_at.isoformat() if cycle.finished_at else None,
        "counts": cycle.counts,
        "metrics": cycle.metrics,
        "durations": cycle.durations,
    }


def forget_owner(*, session: Session, owner_id: int) -> None:
    """Delete every row of the owner (files are removed by the caller)."""
    forget_business(session=session, owner_id=owner_id)  # they point at drafts, messages, samples
    session.exec(delete(Feedback).where(col(Feedback.owner_id) == owner_id))
    session.exec(delete(VersionPrompt).where(col(VersionPrompt.owner_id) == owner_id))
    # Drafts point at each other (regenerated_from) and at messages; clear the links first.
    for draft in session.exec(select(Draft).where(Draft.owner_id == owner_id, col(Draft.regenerated_from).is_not(None))):
        draft.regenerated_from = None
    session.flush()
    session.exec(delete(Adapter).where(col(Adapter.owner_id) == owner_id))
    for model in (Draft, Message, Conversation, WritingSample, Cycle, CycleRequest):
        session.exec(delete(model).where(col(model.owner_id) == owner_id))
    session.exec(delete(Owner).where(col(Owner.id) == owner_id))


# Telegram Business --------------------------------------------------------------------------------
# Connections, the real chats behind them, their Telegram messages and drafts (loop.business).

def upsert_business_connection(*, session: Session, owner_id: int, connection_id: str, user_chat_id: int,
                               enabled: bool, can_reply: bool, rights: dict[str, Any]) -> tuple[BusinessConnection, bool]:
    """Store the owner's connection (one per owner: a reconnect replaces the id); (row, new)."""
    row = session.exec(select(BusinessConnection).where(BusinessConnection.owner_id == owner_id)).first()
    new = row is None
    if row is None:
        row = BusinessConnection(owner_id=owner_id, connection_id=connection_id, user_chat_id=user_chat_id)
        session.add(row)
    row.connection_id, row.user_chat_id, row.enabled = connection_id, user_chat_id, enabled
    row.can_reply, row.rights, row.updated_at = can_reply, dict(rights), utcnow()
    session.flush()
    return row, new


def find_business_connection(*, session: Session, connection_id: str) -> BusinessConnection | None:
    return session.exec(select(BusinessConnection).where(BusinessConnection.connection_id == connection_id)).first()


def business_connection_of(*, session: Session, owner_id: int) -> BusinessConnection | None:
    return session.exec(select(BusinessConnection).where(BusinessConnection.owner_id == owner_id)).first()


def get_or_create_business_chat(*, session: Session, owner_id: int, chat_id: int,
                                contact_name: str | None) -> BusinessChat:
    """The owner's real chat `chat_id`, with its conversation ("biz:<chat id>"), created on first use."""
    chat = find_business_chat(session=session, owner_id=owner_id, chat_id=chat_id)
    if chat is None:
        conversation = get_or_create_conversation(session=session, owner_id=owner_id, chat_key=f"biz:{chat_id}",
                                                  title=contact_name)
        chat = BusinessChat(owner_id=owner_id, chat_id=chat_id, conversation_id=conversation.id,  # type: ignore[arg-type]
                            contact_name=contact_name)
        session.add(chat)
        session.flush()
    elif contact_name and chat.contact_name != contact_name:
        chat.contact_name = contact_name
    return chat


def find_business_chat(*, session: Session, owner_id: int, chat_id: int) -> BusinessChat | None:
    return session.exec(select(BusinessChat).where(BusinessChat.owner_id == owner_id,
                                                   BusinessChat.chat_id == chat_id)).first()


def business_chats(*, session: Session, owner_id: int) -> list[BusinessChat]:
    return list(session.exec(select(BusinessChat).where(BusinessChat.owner_id == owner_id)
                             .order_by(col(BusinessChat.id))).all())


def find_business_message(*, session: Session, business_chat_id: int, telegram_message_id: int) -> BusinessMessage | None:
    return session.exec(select(BusinessMessage).where(
        BusinessMessage.business_chat_id == business_chat_id,
        BusinessMessage.telegram_message_id == telegram_message_id)).first()


def add_business_message(*, session: Session, owner_id: int, business_chat_id: int, telegram_message_id: int,
                         message_id: int | None, sample_id: int | None = None,
                         feedback_id: int | None = None) -> BusinessMessage:
    row = BusinessMessage(owner_id=owner_id, business_chat_id=business_chat_id,
                          telegram_message_id=telegram_message_id, message_id=message_id, sample_id=sample_id,
                          feedback_id=feedback_id)
    session.add(row)
    session.flush()
    return row


def latest_message(*, session: Session, conversation_id: int) -> Message | None:
    return session.exec(select(Message).where(Message.conversation_id == conversation_id)
                        .order_by(col(Message.id).desc())).first()


def messages_since_owner(*, session: Session, conversation_id: int) -> list[Message]:
    """The other side's messages after the owner's last one, oldest first (what a draft answers)."""
    last_owner = session.exec(select(func.max(Message.id)).where(Message.conversation_id == conversation_id,
                                                                 Message.role == "owner")).one() or 0
    return list(session.exec(select(Message).where(Message.conversation_id == conversation_id,
                                                   Message.id > last_owner, Message.role == "other")
                             .order_by(col(Message.id))).all())


def add_business_draft(*, session: Session, owner_id: int, draft_id: int, business_chat_id: int) -> BusinessDraft:
    row = BusinessDraft(owner_id=owner_id, draft_id=draft_id, business_chat_id=business_chat_id)
    session.add(row)
    session.flush()
    return row


def find_business_draft(*, session: Session, owner_id: int, draft_id: int) -> BusinessDraft | None:
    return session.exec(select(BusinessDraft).where(BusinessDraft.owner_id == owner_id,
                                                    BusinessDraft.draft_id == draft_id)).first()


def business_drafts(*, session: Session, business_chat_id: int, state: str | None = None,
                    send_states: Sequence[str | None] | None = None) -> list[tuple[BusinessDraft, Draft]]:
    """A chat's business drafts with their drafts, oldest first, optionally only in `state` / `send_states`."""
    query = select(BusinessDraft, Draft).join(Draft, col(Draft.id) == BusinessDraft.draft_id).where(
        BusinessDraft.business_chat_id == business_chat_id)
    if state is not None:
        query = query.where(BusinessDraft.state == state)
    if send_states is not None:
        named = [value for value in send_states if value is not None]
        condition = col(BusinessDraft.send_state).in_(named)
        if None in send_states:
            condition = or_(condition, col(BusinessDraft.send_state).is_(None))
        query = query.where(condition)
    return list(session.exec(query.order_by(col(BusinessDraft.id))).all())


def unfinished_business_drafts(*, session: Session, since: datetime) -> list[tuple[BusinessDraft, Draft]]:
    """Business drafts since `since` that a restart must carry on: pending ones never shown, and
    Send/Edit verdicts whose post had not begun (None with a verdict) or had begun ("sending")."""
    has_feedback = select(Feedback.id).where(Feedback.draft_id == BusinessDraft.draft_id).exists()
    query = select(BusinessDraft, Draft).join(Draft, col(Draft.id) == BusinessDraft.draft_id).where(
        Draft.created_at >= since,
        or_((BusinessDraft.state == "pending") & col(Draft.shown_message_id).is_(None) & ~has_feedback,
            BusinessDraft.send_state == "sending",
            (BusinessDraft.state == "answered") & col(BusinessDraft.send_state).is_(None)
            & col(BusinessDraft.sent_text).is_not(None)))
    return list(session.exec(query.order_by(col(BusinessDraft.id))).all())


def latest_owner_turn(*, session: Session, conversation_id: int, text: str) -> Message | None:
    """The newest owner turn of a conversation with this text (the one a verdict just added)."""
    return session.exec(select(Message).where(Message.conversation_id == conversation_id, Message.role == "owner",
                                              Message.text == text).order_by(col(Message.id).desc())).first()


def add_writing_sample(*, session: Session, owner_id: int, sample: WritingSampleCreate) -> WritingSample | None:
    """Add one sample and return it; None when the same sample is stored already."""
    digest = sample_hash(sample)
    if session.exec(select(WritingSample.id).where(WritingSample.owner_id == owner_id,
                                                   WritingSample.content_hash == digest)).first() is not None:
        return None
    row = WritingSample(owner_id=owner_id, content_hash=digest, **sample.model_dump())
    session.add(row)
    session.flush()
    return row


def update_writing_sample_text(*, session: Session, sample_id: int, text: str) -> None:
    """A sample's text changed (the owner edited the message): its content hash follows."""
    row = session.get(WritingSample, sample_id)
    if row is None:
        return
    row.text = text
    row.content_hash = sample_hash(WritingSampleCreate(kind=row.kind, text=text, prompt=row.prompt,
                                                       context=row.context))
    session.flush()


def delete_business_messages(*, session: Session, business_chat_id: int,
                             telegram_message_ids: Sequence[int]) -> int:
    """Take deleted Telegram messages out of training: their writing samples, the verdicts they gave
    (or those on drafts that answered them) and, where no draft points at it, the turn itself."""
    rows = list(session.exec(select(BusinessMessage).where(
        BusinessMessage.business_chat_id == business_chat_id,
        col(BusinessMessage.telegram_message_id).in_(list(telegram_message_ids)))).all())
    for row in rows:
        sample_id, feedback_id, message_id = row.sample_id, row.feedback_id, row.message_id
        session.delete(row)
        session.flush()
        if sample_id is not None:
            session.exec(delete(WritingSample).where(col(WritingSample.id) == sample_id))
        if feedback_id is not None:
            _delete_feedback(session, [feedback_id])
        if message_id is None:
            continue
        answering = list(session.exec(select(Draft.id).where(Draft.message_id == message_id)).all())
        if answering:
            _delete_feedback(session, list(session.exec(select(Feedback.id).where(
                col(Feedback.draft_id).in_(answering))).all()))
            continue
        session.exec(delete(BusinessDraft).where(col(BusinessDraft.owner_message_id) == message_id))
        session.exec(delete(Message).where(col(Message.id) == message_id))
    session.flush()
    return len(rows)


def _delete_feedback(session: Session, feedback_ids: list[int]) -> None:
    if not feedback_ids:
        return
    for row in session.exec(select(BusinessMessage).where(col(BusinessMessage.feedback_id).in_(feedback_ids))):
        row.feedback_id = None
    session.flush()
    session.exec(delete(Feedback).where(col(Feedback.id).in_(feedback_ids)))


def business_draft_contacts(*, session: Session, owner_id: int) -> dict[int, str]:
    """The contact's name per business draft id, as drafting puts it in the prompt."""
    query = select(BusinessDraft.draft_id, BusinessChat.contact_name).join(
        BusinessChat, col(BusinessChat.id) == BusinessDraft.business_chat_id).where(BusinessDraft.owner_id == owner_id)
    return {draft_id: name for draft_id, name in session.exec(query).all() if name}


def business_sample_contacts(*, session: Session, owner_id: int) -> dict[int, str]:
    """The contact's name per writing sample that the owner wrote in a business chat."""
    query = select(BusinessMessage.sample_id, BusinessChat.contact_name).join(
        BusinessChat, col(BusinessChat.id) == BusinessMessage.business_chat_id).where(
        BusinessMessage.owner_id == owner_id, col(BusinessMessage.sample_id).is_not(None))
    return {sample_id: name for sample_id, name in session.exec(query).all() if name}


def business_sample_conversations(*, session: Session, owner_id: int) -> dict[int, int]:
    """The conversation id per writing sample that the owner wrote in a business chat."""
    query = select(BusinessMessage.sample_id, BusinessChat.conversation_id).join(
        BusinessChat, col(BusinessChat.id) == BusinessMessage.business_chat_id).where(
        BusinessMessage.owner_id == owner_id, col(BusinessMessage.sample_id).is_not(None))
    return {sample_id: conversation_id for sample_id, conversation_id in session.exec(query).all()}


def own_words_version(*, session: Session, owner_id: int) -> tuple[int, ...]:
    """A value that changes when the owner's writing or verdicts change (rows added or removed, a
    text edited to another length): what loop.examples rebuilds its index on. Aggregates only."""
    version: list[int] = []
    for model in (WritingSample, Feedback):
        row = session.exec(select(func.count(), func.max(model.id), func.sum(func.length(model.text)))
                           .where(model.owner_id == owner_id)).one()
        version.extend(int(value or 0) for value in row)
    return tuple(version)


def forget_business(*, session: Session, owner_id: int) -> None:
    """Delete the owner's connection and business chats (their messages go with the owner's)."""
    for model in (BusinessMessage, BusinessDraft, BusinessChat, BusinessConnection):
        session.exec(delete(model).where(col(model.owner_id) == owner_id))
    session.flush()
