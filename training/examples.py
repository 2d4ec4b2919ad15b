"""Training's example types, their JSON codec, the rule of what the owner kept, and replay sampling.

The nightly pipeline runs one way: loop reads feedback and writing rows and turns them into the
frozen `FeedbackExample` / `WritingExample` below (loop.collect), writes them with `*_to_json` for
the training child, and the child reads them back with `*_from_json` (training.nightly) and builds
trl rows (training.datasets). Plain data, no model, no database: everything here can be written to
JSON, read by a person, and re-run by hand.

`kept_by_verdict` is the one definition of "what the owner kept" by a verdict on a draft: the
conversation's owner turn (loop.twin), the style profile (loop.style), the statistics (loop.stats),
the attribution lines (loop.collect) and the training rows (training.datasets) all ask it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence, TypeVar

from training.prompt import Conversation, Turn

FEEDBACK_KINDS = ("accept", "edit", "reject", "regenerate")

T = TypeVar("T")


@dataclass(frozen=True)
class FeedbackExample:
    """One verdict of the owner on one draft, with what the draft answered."""

    kind: str  # accept | edit | reject | regenerate
    conversation: Conversation
    draft: str
    text: str | None  # the owner's edit or replacement
    later_kept: str | None  # regenerate: the text finally accepted/edited for the same incoming message
    created_at: datetime
    thread: str | None = None  # the conversation it belongs to (training.retrieval keeps a row from its own later replies)


@dataclass(frozen=True)
class WritingExample:
    """One imported piece of the owner's writing: a reply (with its conversation) or a monologue."""

    kind: str  # reply | monologue
    text: str
    conversation: Conversation | None
    written_at: datetime | None
    thread: str | None = None  # the conversation (or person answered) it belongs to; None: unknown


# What the owner kept -------------------------------------------------------------------------------

def kept_by_verdict(kind: str, draft: str, text: str | None) -> str | None:
    """What the owner kept by one verdict on one draft: the accepted draft, their edit, their
    replacement; None for a reject without replacement and for "another draft" (a regenerate keeps
    nothing itself: the verdict on a later draft of the same message may)."""
    if kind == "accept":
        return draft
    if kind in ("edit", "reject"):
        return text or None
    if kind == "regenerate":
        return None
    raise ValueError(f"unknown feedback kind {kind!r}")


def kept_text(item: FeedbackExample) -> str | None:
    """The owner's text for this verdict (accepted draft, edit, replacement, later kept text), stripped."""
    kept = item.later_kept if item.kind == "regenerate" else kept_by_verdict(item.kind, item.draft, item.text)
    return (kept or "").strip() or None


# Replay ---------------------------------------------------------------------------------------------

def replay_sample(items: Sequence[T], *, fraction: float, of: int, seed: int) -> list[T]:
    """A seeded sample of older items, `fraction` × `of` of them (at most all): replayed beside the
    `of` new rows so the twin keeps the owner's wider voice without drowning the new corrections."""
    size = min(len(items), round(fraction * of))
    return random.Random(seed).sample(list(items), size)


# JSON for the training child ------------------------------------------------------------------------

def conversation_to_json(conversation: Conversation | None) -> dict[str, Any] | None:
    if conversation is None:
        return None
    data = {"incoming": conversation.incoming, "context": [t.to_dict() for t in conversation.context]}
    if conversation.contact:
        data["contact"] = conversation.contact
    if conversation.examples:
        data["examples"] = list(conversation.examples)
    return data


def conversation_from_json(data: dict[str, Any] | None) -> Conversation | None:
    if data is None:
        return None
    return Conversation(context=tuple(Turn.from_dict(t) for t in data["context"]), incoming=data["incoming"],
                        contact=data.get("contact"), examples=tuple(data.get("examples", ())))


def feedback_to_json(item: FeedbackExample) -> dict[str, Any]:
    return {"kind": item.kind, "conversation": conversation_to_json(item.conversation), "draft": item.draft,
            "text": item.text, "later_kept": item.later_kept, "created_at": item.created_at.isoformat(),
            "thread": item.thread}


def feedback_from_json(data: dict[str, Any]) -> FeedbackExample:
    return FeedbackExample(kind=data["kind"], conversation=conversation_from_json(data["conversation"]),  # type: ignore[arg-type]
                           draft=data["draft"], text=data["text"], later_kept=data["later_kept"],
                           created_at=datetime.fromisoformat(data["created_at"]), thread=data.get("thread"))


def writing_to_json(item: WritingExample) -> dict[str, Any]:
    return {"kind": item.kind, "text": item.text, "conversation": conversation_to_json(item.conversation),
            "written_at": item.written_at.isoformat() if item.written_at else None, "thread": item.thread}


def writing_from_json(data: dict[str, Any]) -> WritingExample:
    return WritingExample(kind=data["kind"], text=data["text"], conversation=conversation_from_json(data["conversation"]),
                          written_at=datetime.fromisoformat(data["written_at"]) if data["written_at"] else None,
                          thread=data.get("thread"))
