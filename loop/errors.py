"""The domain errors of the twin, in one module: what loop's front ends (bot, CLI, terminal chat)
catch and turn into a sentence at the edge.

Storage's errors (storage.errors) are re-exported as they are (the same classes, so a caller
catching `storage.errors.DraftNotFound` and one catching `loop.errors.DraftNotFound` catch the same
thing): the bot imports them from here and never reaches into storage. loop's own errors (cycle,
child, rollback, business, scheduler, importers) are defined here; the modules that raise them
import them from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from storage.errors import AdapterNotFound, DatabaseBusy, DraftAlreadyDecided, DraftNotFound, FeedbackTextRequired, StorageError

__all__ = [
    "AdapterNotFound",
    "ChildFailed",
    "CycleAlreadyRunning",
    "CycleFailed",
    "DatabaseBusy",
    "DraftAlreadyDecided",
    "DraftNotFound",
    "DraftingError",
    "DraftingUnavailable",
    "InsightUnavailable",
    "FeedbackTextRequired",
    "ImportFormatError",
    "ImporterError",
    "NotAnOwner",
    "NotBusinessDraft",
    "OwnerUnknownError",
    "RollbackError",
    "ScheduledCycleError",
    "StorageError",
]


class NotAnOwner(Exception):
    """The user is not among the configured owners."""


class DraftingError(Exception):
    """No usable draft could be produced (every attempt came back empty)."""


class DraftingUnavailable(DraftingError):
    """The drafting server (generation.backend = "openai") is down, refused, or does not serve the
    owner's adapter yet: the incoming message is kept and drafted again when the server is back."""


class RollbackError(ValueError):
    """The requested version cannot be activated; the message says why."""


class NotBusinessDraft(Exception):
    """The draft is not one of a business chat of this owner."""


class AdapterStoreError(RuntimeError):
    """The adapter store could not keep or hand out an adapter's files; the message says what failed."""


class CycleAlreadyRunning(Exception):
    """Another cycle holds the lock (in this or another process)."""


class CycleFailed(Exception):
    """The cycle cannot go on; the message is the reason shown to the owner."""


class ChildFailed(Exception):
    """The child ended without a result; the message is the reason shown to the owner."""


class ScheduledCycleError(Exception):
    """The nightly job failed for some owners; `failures` maps their Telegram id to the error."""

    def __init__(self, failures: dict[int, BaseException]):
        super().__init__("; ".join(f"owner {tid}: {type(err).__name__}: {err}" for tid, err in failures.items()))
        self.failures = failures


class ImporterError(Exception):
    """Base of the importers' domain errors; `file` is the file concerned."""

    format: str | None = None  # what the file looked like, when known (the report's Format column)

    def __init__(self, file: Path, message: str):
        super().__init__(message)
        self.file = Path(file)


class ImportFormatError(ImporterError):
    """A file is not in the expected format: names the file, the place (line, byte, message id) and why."""

    def __init__(self, file: Path | str, location: str | None, message: str):
        self.location = location
        self.message = message
        super().__init__(Path(file), message)

    def __str__(self) -> str:
        where = f", {self.location}" if self.location else ""
        return f"{self.file.name}{where}: {self.message}"


class OwnerUnknownError(ImporterError):
    """The file is readable but nothing in it says which sender is the owner."""

    def __init__(self, file: Path | str, *, senders: Sequence[tuple[str, int]], hint: str):
        self.senders = list(senders)
        self.hint = hint
        found = "; ".join(f"{name}: {count} message{'s' if count != 1 else ''}"
                          for name, count in self.senders[:12]) or "none"
        more = f"; and {len(self.senders) - 12} more" if len(self.senders) > 12 else ""
        super().__init__(Path(file), f"{Path(file).name}: which sender is you? Senders found: {found}{more}. {hint}")

    def __str__(self) -> str:
        return self.args[0]


class InsightUnavailable(Exception):
    """There is nothing to measure (no adapter, no held-out text); the message says what to do."""
