"""The domain errors of the twin, in one module: what loop's front ends (bot, CLI, terminal chat)
catch and turn into a sentence at the edge.

Storage's errors are re-exported as they are (the same classes, so a caller catching
`storage.repo.DraftNotFound` and one catching `loop.errors.DraftNotFound` catch the same thing):
the bot imports them from here and never reaches into storage. loop's own errors are defined here.
"""

from __future__ import annotations

from storage.db import DatabaseBusy
from storage.repo import AdapterNotFound, DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired, StorageError

__all__ = [
    "AdapterNotFound",
    "DatabaseBusy",
    "DraftAlreadyDecided",
    "DraftNotFound",
    "DraftingError",
    "DraftingUnavailable",
    "FeedbackTextRequired",
    "NotAnOwner",
    "StorageError",
]


class NotAnOwner(Exception):
    """The user is not among the configured owners."""


class DraftingError(Exception):
    """No usable draft could be produced (every attempt came back empty)."""


class DraftingUnavailable(DraftingError):
    """The drafting server (generation.backend = "openai") is down, refused, or does not serve the
    owner's adapter yet: the incoming message is kept and drafted again when the server is back."""
