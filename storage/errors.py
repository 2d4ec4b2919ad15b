"""Storage's domain errors, in one module: what a caller of `storage.repo` / `storage.db` may catch.

loop re-exports them (loop.errors) for its front ends, which turn them into sentences; they are
raised by `storage.repo` (the rows) and `storage.db` (a busy SQLite file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:  # pragma: no cover
    from storage.models import Feedback


class StorageError(Exception):
    """Base of the domain errors raised by the repository."""


class DraftNotFound(StorageError):
    """The draft does not exist or belongs to another owner."""


class DraftAlreadyDecided(StorageError):
    """The draft already has a verdict; a second one is refused."""

    def __init__(self, feedback: Feedback):
        super().__init__(f"draft {feedback.draft_id} was already answered: {feedback.kind.value}")
        self.feedback = feedback


class FeedbackTextRequired(StorageError):
    """An edit needs the owner's text."""


class AdapterNotFound(StorageError):
    """No adapter of that version exists for the owner."""


class DatabaseBusy(OperationalError):
    """Another connection held SQLite's lock for longer than the busy timeout; nothing was written."""

    def __init__(self, statement: str | None, params: object, orig: BaseException, *, timeout_s: float):
        super().__init__(statement, params, orig, hide_parameters=True)  # parameters hold private text
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return (f"the database was locked by another connection for more than {self.timeout_s:g} s "
                "(a `twin forget`, an import or a cycle of another twin process?); nothing was written, "
                "try again when it is done (or raise database_busy_timeout_s)")
