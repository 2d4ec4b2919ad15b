"""Named cross-process locks: the lock row (storage.models.Lock) on SQLite, a PostgreSQL advisory
lock under the same row on PostgreSQL.

On SQLite the row alone is the lock: it is taken over when its holder is dead or silent (the
caller says how to tell, `holder_alive` and `stale_after`). On PostgreSQL the truth is
`pg_try_advisory_lock` on a connection held for as long as the lock is: the server drops it when
that connection ends, so a worker that dies on another machine frees its owners' cycles at once,
with no liveness guess. The row is still written there, for "who holds it since when" in messages.

The advisory key is a hash of the schema and the name, so two twins sharing one database in
different schemas do not block each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from storage import repo
from storage.db import session_scope
from storage.models import Lock

logger = logging.getLogger(__name__)

_KEY = "hashtextextended(current_schema() || ':' || :name, 0)"


@dataclass
class HeldLock:
    name: str
    holder: str
    connection: Optional[Connection] = None  # PostgreSQL: the session that holds the advisory lock


def uses_advisory_locks(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def try_lock(engine: Engine, name: str, holder: str, *, stale_after: timedelta | None = None,
             holder_alive: Callable[[str], bool] | None = None) -> HeldLock | None:
    """Take the lock `name` for `holder`, or None when someone else holds it."""
    if not uses_advisory_locks(engine):
        with session_scope(engine) as session:
            taken = repo.acquire_lock(session=session, name=name, holder=holder, stale_after=stale_after,
                                      holder_alive=holder_alive)
        return HeldLock(name, holder) if taken else None
    connection = engine.connect()
    try:
        taken = bool(connection.execute(text(f"SELECT pg_try_advisory_lock({_KEY})"), {"name": name}).scalar())
        connection.commit()  # a session-level advisory lock outlives the transaction that took it
        if not taken:
            connection.close()
            return None
        with session_scope(engine) as session:
            # A row left by a holder that died is stale by definition: the advisory lock was free.
            repo.release_lock_row(session=session, name=name)
            session.add(Lock(name=name, holder=holder))
    except BaseException:
        _close(connection, name)
        raise
    return HeldLock(name, holder, connection)


def heartbeat(engine: Engine, held: HeldLock) -> None:
    with session_scope(engine) as session:
        repo.heartbeat_lock(session=session, name=held.name, holder=held.holder)


def release(engine: Engine, held: HeldLock) -> None:
    """Give the lock back (the row first, so nobody sees a free advisory lock with our row)."""
    try:
        with session_scope(engine) as session:
            repo.release_lock(session=session, name=held.name, holder=held.holder)
    finally:
        if held.connection is not None:
            _close(held.connection, held.name)


def _close(connection: Connection, name: str) -> None:
    try:
        connection.execute(text(f"SELECT pg_advisory_unlock({_KEY})"), {"name": name})
        connection.commit()
    except OperationalError:  # the connection is gone: so is the lock
        logger.debug("could not unlock %s explicitly", name, exc_info=True)
    finally:
        connection.close()


def describe(engine: Engine, name: str) -> Any:
    """The lock's row (holder, acquired_at), or None."""
    with session_scope(engine) as session:
        return repo.get_lock(session=session, name=name)
