"""Forgetting an owner: every row of theirs and every file under their folder.

Rows go first, in one transaction, so a crash half-way never leaves rows that point at files
already gone; then the SQLite file is scrubbed of the deleted text, and the folder (adapters,
datasets, logs) is removed.
"""

from __future__ import annotations

import logging
import shutil

from sqlalchemy import text
from sqlalchemy.engine import Engine

from loop.config import Config
from storage import repo
from storage.db import session_scope

logger = logging.getLogger(__name__)


def forget_owner(config: Config, engine: Engine, *, telegram_id: int) -> bool:
    """Delete everything the twin holds of this owner; False when there was nothing."""
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=telegram_id)
        if owner is not None:
            repo.forget_owner(session=session, owner_id=owner.id)  # type: ignore[arg-type]
    if engine.dialect.name == "sqlite":
        _scrub_sqlite(engine)
    if config.adapter_store.kind != "local":  # the adapters kept beyond data_dir go too
        from loop.adapter_storage import store_for

        store_for(config).remove_owner(telegram_id)
    folder = config.owner_dir(telegram_id)
    existed = folder.exists()
    if existed:
        shutil.rmtree(folder)
    logger.info("forgot owner %s (rows: %s, files: %s)", telegram_id, owner is not None, existed)
    return owner is not None or existed


def _scrub_sqlite(engine: Engine) -> None:
    """Leave no byte of the deleted rows in the database files.

    SQLite keeps deleted text in free pages (unless built with SECURE_DELETE) and in the
    write-ahead log until a checkpoint; VACUUM rewrites the file and a truncating checkpoint
    empties the log, even while the bot keeps its connections open.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM"))
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
