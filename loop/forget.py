"""Forgetting an owner: every row of theirs and every file under their folder.

Rows go first, in one transaction, so a crash half-way never leaves rows that point at files
already gone; the folder (adapters, datasets, logs) is removed afterwards.
"""

from __future__ import annotations

import logging
import shutil

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
    folder = config.owner_dir(telegram_id)
    existed = folder.exists()
    if existed:
        shutil.rmtree(folder)
    logger.info("forgot owner %s (rows: %s, files: %s)", telegram_id, owner is not None, existed)
    return owner is not None or existed
