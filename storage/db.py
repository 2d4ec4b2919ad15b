"""Engines and sessions: SQLite (WAL, busy timeout, owner-only file) by default, PostgreSQL by URL.

`open_database(url)` returns an engine with every migration applied; callers then use
`session_scope(engine)` for one unit of work that commits once, or rolls back on error, and
`read_scope(engine)` for one that only reads (no commit).

SQLite has one writer at a time: a write waits up to the busy timeout (`database_busy_timeout_s`,
30 s by default) for another connection's lock, then fails. That failure is raised as
`DatabaseBusy` (an `OperationalError`, rolled back, nothing written) with a sentence that says so,
so callers can tell "try again later" from a real error.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from storage.errors import DatabaseBusy

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0


def _is_locked(error: BaseException | None) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _prepare_sqlite_file(url: str) -> None:
    """Create the database file readable by its owner only: it holds private writing."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def create_db_engine(url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Engine:
    """An engine for `url`; for SQLite, WAL mode and a busy timeout on every connection (a write
    that waited longer for another connection's lock raises `DatabaseBusy`)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

        @event.listens_for(engine, "handle_error")
        def _busy(context) -> DatabaseBusy | None:
            if not _is_locked(context.original_exception):
                return None
            return DatabaseBusy(context.statement, context.parameters, context.original_exception,
                                timeout_s=busy_timeout_s)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (all migrations by default)."""
    command.upgrade(alembic_config(engine), revision)


def open_database(url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Engine:
    """An engine on `url` with the schema migrated to the newest revision."""
    engine = create_db_engine(url, busy_timeout_s=busy_timeout_s)
    migrate(engine)
    return engine


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A unit of work that only reads: it ends without a commit (closing the session rolls the
    connection's transaction back), so a lookup costs the database no commit. Rows read stay loaded
    after the block. A write made here by mistake is refused, not lost silently."""
    with Session(engine, expire_on_commit=False) as session:
        yield session
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("read_scope holds unsaved changes: write inside session_scope")
