"""Drafting: the `Drafter` interface, the real drafter on transformers + peft, and a fake for tests.

The drafter is asked for one reply to a `Conversation` with a given adapter (or none: the base
model) and seed. It never touches the database: `loop.twin` stores what it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from training.prompt import Conversation

logger = logging.getLogger(__name__)


class DraftingError(Exception):
    """No usable draft could be produced (every attempt came back empty)."""


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter a draft uses: `key` names it uniquely across owners (e.g. "42-v3")."""

    key: str
    version: int
    path: str


@dataclass
class DraftResult:
    text: str
    adapter_version: int
    sampling: dict[str, Any]
    seed: int
    latency_ms: int


class Drafter(Protocol):
    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int) -> DraftResult:
        """One reply in the owner's voice; raises DraftingError when none could be made."""
        ...


@dataclass
class FakeDrafter:
    """A drafter for tests of other layers: answers from a script and records what it was asked."""

    replies: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    calls: list[tuple[Conversation, AdapterRef | None, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int) -> DraftResult:
        started = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.calls.append((conversation, adapter, seed))
            text = self.replies.pop(0) if self.replies else f"draft {seed}: {conversation.incoming[:200]}"
        return DraftResult(text=text, adapter_version=adapter.version if adapter else 0,
                           sampling={"fake": True}, seed=seed,
                           latency_ms=int((time.perf_counter() - started) * 1000))
