"""From database rows to training inputs: feedback and writing as `training.examples` examples.

The cycle reads rows through `storage.repo` and turns them into the frozen `FeedbackExample` /
`WritingExample` of `training.examples`, plus the owner's and other people's lines that the
attribution classifier learns from. Nothing here trains or renders prompts; everything is
plain data that `training.examples` writes to JSON for the training child.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

from sqlmodel import Session

from storage import repo
from storage.models import Draft, Feedback, FeedbackKind, WritingSample
from training.examples import FeedbackExample, WritingExample, kept_by_verdict
from training.prompt import Conversation

logger = logging.getLogger(__name__)


def kept_by_row(feedback: Feedback, draft: Draft) -> str | None:
    """What the owner kept for a draft's message by this verdict (None: nothing kept): the rows
    handed to `training.examples.kept_by_verdict`, the one rule."""
    return kept_by_verdict(feedback.kind.value, draft.text, feedback.text)


def kept_by_message(rows: Sequence[tuple[Feedback, Draft]]) -> dict[int, str]:
    """For each incoming message, the text the owner finally kept (the newest verdict that kept one)."""
    kept: dict[int, str] = {}
    for feedback, draft in sorted(rows, key=lambda pair: pair[0].id or 0):
        text = kept_by_row(feedback, draft)
        if text:
            kept[draft.message_id] = text
    return kept


def conversation_thread(conversation_id: int) -> str:
    """The thread of a stored conversation: its drafts, verdicts and business writing share it, and
    drafting names the same one (training.retrieval keeps a row from its own conversation's future)."""
    return f"conversation:{conversation_id}"


def feedback_examples(rows: Sequence[tuple[Feedback, Draft]],
                      contacts: dict[int, str] | None = None) -> list[FeedbackExample]:
    """Feedback rows as examples; a regenerate's `later_kept` is the text finally kept for its message.

    `contacts`: the contact's name per draft id (drafts of Telegram Business chats), as drafting put
    it in the prompt."""
    contacts = contacts or {}
    finally_kept = kept_by_message(rows)
    examples = []
    for feedback, draft in rows:
        later = finally_kept.get(draft.message_id) if feedback.kind == FeedbackKind.regenerate else None
        examples.append(FeedbackExample(
            kind=feedback.kind.value,
            conversation=Conversation.of(draft.incoming, draft.context, contact=contacts.get(draft.id)),
            draft=draft.text,
            text=feedback.text,
            later_kept=later,
            created_at=feedback.created_at,
            thread=conversation_thread(draft.conversation_id),
        ))
    return examples


def writing_examples(samples: Sequence[WritingSample], contacts: dict[int, str] | None = None,
                     conversations: dict[int, int] | None = None) -> list[WritingExample]:
    """Writing samples as examples; `contacts`: the contact's name per sample id (the owner's own
    replies in Telegram Business chats), `conversations`: their conversation ids.

    The thread of an imported reply is the person it answered in its file; of a business reply its
    conversation; a monologue or a reply of unknown sender has none."""
    contacts, conversations = contacts or {}, conversations or {}
    examples = []
    for sample in samples:
        kind = sample.kind.value if hasattr(sample.kind, "value") else str(sample.kind)
        conversation = (Conversation.of(sample.prompt, sample.context, contact=contacts.get(sample.id))  # type: ignore[arg-type]
                        if sample.prompt else None)
        if sample.id in conversations:
            thread: str | None = conversation_thread(conversations[sample.id])
        else:
            thread = f"{sample.source}|{sample.sender}" if conversation is not None and sample.sender else None
        examples.append(WritingExample(kind=kind, text=sample.text, conversation=conversation,
                                       written_at=sample.written_at, thread=thread))
    return examples


def attribution_lines(samples: Sequence[WritingSample],
                      rows: Sequence[tuple[Feedback, Draft]]) -> tuple[list[str], list[str]]:
    """(owner's lines, other people's lines) for the attribution classifier.

    The owner: imported writing and the texts kept through feedback. Others: the messages the
    owner answered and the other voices of the imported context. Duplicates count once.
    """
    owner: dict[str, None] = {}
    other: dict[str, None] = {}
    for sample in samples:
        if sample.text.strip():
            owner[sample.text.strip()] = None
        if sample.prompt and sample.prompt.strip():
            other[sample.prompt.strip()] = None
        for turn in sample.context:
            text = str(turn.get("text") or "").strip()
            if text:
                (owner if turn.get("role") == "owner" else other)[text] = None
    for feedback, draft in rows:
        text = kept_by_row(feedback, draft)
        if text and text.strip():
            owner[text.strip()] = None
        if draft.incoming.strip():
            other[draft.incoming.strip()] = None
    # A line on both sides (a shared "ok") tells the classifier nothing.
    shared = owner.keys() & other.keys()
    return [t for t in owner if t not in shared], [t for t in other if t not in shared]


@dataclass
class Collected:
    """Everything one cycle learns from and is evaluated on, read in one session."""

    feedback: list[FeedbackExample]
    writing: list[WritingExample]
    owner_lines: list[str]
    other_lines: list[str]
    feedback_ids: list[int]  # ids of `feedback`, same order
    new_feedback: int  # rows that arrived since the last finished cycle
    new_writing: int  # samples imported since the last finished cycle started
    counts_by_kind: dict[str, int] = field(default_factory=dict)
    upto_id: int = 0


def collect(*, session: Session, owner_id: int, after_id: int, upto_id: int, trained_upto_id: int,
            since: datetime | None) -> Collected:
    """Feedback in (after_id, upto_id] and all writing of the owner.

    `after_id` is where the active adapter's training data ends (so a kept candidate's data is
    learnt again by the next one); `trained_upto_id` is where the last finished cycle looked,
    which decides what counts as new.
    """
    rows = repo.feedback_rows(session=session, owner_id=owner_id, after_id=after_id, upto_id=upto_id)
    samples = repo.writing_samples(session=session, owner_id=owner_id)
    all_rows = repo.feedback_rows(session=session, owner_id=owner_id, upto_id=upto_id)
    owner_lines, other_lines = attribution_lines(samples, all_rows)
    new_writing = sum(1 for s in samples if since is None or s.created_at > since)
    counts = Counter(feedback.kind.value for feedback, _ in rows)
    return Collected(
        feedback=feedback_examples(rows, repo.business_draft_contacts(session=session, owner_id=owner_id)),
        writing=writing_examples(samples, repo.business_sample_contacts(session=session, owner_id=owner_id),
                                 repo.business_sample_conversations(session=session, owner_id=owner_id)),
        owner_lines=owner_lines,
        other_lines=other_lines,
        feedback_ids=[feedback.id for feedback, _ in rows],  # type: ignore[misc]
        new_feedback=sum(1 for feedback, _ in all_rows if (feedback.id or 0) > trained_upto_id),
        new_writing=new_writing,
        counts_by_kind={kind.value: counts.get(kind.value, 0) for kind in FeedbackKind},
        upto_id=upto_id,
    )
