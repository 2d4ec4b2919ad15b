"""What the twin hands its front ends: small frozen records of drafts, verdicts and questions.

`Twin` returns these, never table rows, so the bot renders plain data and never holds a database
session's object; the verdict kinds (`FeedbackKind`) are re-exported here for the same reason.
Each record carries the columns of its row, read inside the unit of work that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from storage.models import FeedbackKind

__all__ = ["DraftView", "FeedbackKind", "FeedbackView", "VersionPromptView"]


class _FromRow:
    @classmethod
    def of(cls, row: Any):
        """The record of a row (a table row, or a record already)."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class DraftView(_FromRow):
    """A stored draft: what it says, what it answers, where it was shown."""

    id: int
    owner_id: int
    conversation_id: int
    message_id: int  # the incoming message it answers
    text: str
    incoming: str
    context: list[dict[str, Any]] = field(default_factory=list)
    adapter_version: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    latency_ms: int = 0
    regenerated_from: int | None = None
    chat_id: int | None = None
    shown_message_id: int | None = None
    delivery: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class FeedbackView(_FromRow):
    """A stored verdict on a draft."""

    id: int
    draft_id: int
    kind: FeedbackKind
    text: str | None = None  # the owner's edit or replacement
    reason: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class VersionPromptView(_FromRow):
    """The bot's question for the owner's version of a draft (see `storage.models.VersionPrompt`)."""

    id: int
    draft_id: int
    action: str  # "edit" | "reject"
    chat_id: int
    prompt_message_id: int
    open: bool = True
