"""Adapter versions on disk and in the database: where they live, verify, promote, roll back.

Setting the active adapter in the database is all a promotion or rollback needs: the `Twin`
service reads the active adapter before every draft, so a running bot follows from its next
draft on. An adapter is verified against its checksum before it is activated.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from loop.config import Config
from loop.errors import RollbackError
from storage import repo
from storage.db import session_scope
from storage.models import Adapter
from training.artifacts import CorruptAdapter, verify_adapter

logger = logging.getLogger(__name__)


def adapters_root(config: Config, telegram_id: int) -> Path:
    return config.owner_dir(telegram_id) / "adapters"


def adapter_dir(config: Config, telegram_id: int, version: int) -> Path:
    return adapters_root(config, telegram_id) / f"v{version}"


def verify(adapter: Adapter, config: Config | None = None) -> None:
    """Raise `CorruptAdapter` unless the folder is complete and matches the checksum in the database too.

    An adapter in an S3 store (loop.adapter_storage) is downloaded first; that needs `config`."""
    from loop.adapter_storage import AdapterStoreError, local_path
    from training.artifacts import read_manifest

    try:
        folder = local_path(config, adapter.path)
    except AdapterStoreError as error:
        raise CorruptAdapter(str(error)) from None
    verify_adapter(folder)
    recorded = read_manifest(folder).get("checksum")
    if adapter.checksum and recorded != adapter.checksum:
        raise CorruptAdapter(f"adapter v{adapter.version} at {adapter.path} is not the one recorded "
                             f"(checksum {str(recorded)[:12]}… ≠ {adapter.checksum[:12]}…)")


def activate(*, session: Session, owner_id: int, version: int, config: Config | None = None) -> None:
    """Make `version` active (0 = base model) after verifying its files."""
    if version:
        target = repo.get_adapter(session=session, owner_id=owner_id, version=version)
        verify(target, config)
    repo.activate_adapter(session=session, owner_id=owner_id, version=version)
    logger.info("owner %s: adapter v%s is active", owner_id, version)


def rollback(config: Config, engine: Engine, *, telegram_id: int, version: int | None = None) -> int:
    """Activate an earlier adapter and return its version (0 = the base model).

    `version=None` goes back to the version the active adapter was trained from. A missing or
    corrupt adapter folder is refused (`RollbackError`) and the active adapter stays.
    """
    with session_scope(engine) as session:
        owner = repo.find_owner(session=session, telegram_id=telegram_id)
        if owner is None:
            raise RollbackError("nothing to roll back: this twin has no adapters yet")
        current = repo.active_adapter(session=session, owner_id=owner.id)  # type: ignore[arg-type]
        if version is None:
            if current is None:
                raise RollbackError("the base model (v0) is already active: there is no earlier version")
            version = current.parent_version
        if version < 0:
            raise RollbackError(f"there is no adapter version {version}")
        if current is not None and current.version == version or current is None and version == 0:
            return version
        try:
            activate(session=session, owner_id=owner.id, version=version, config=config)  # type: ignore[arg-type]
        except repo.AdapterNotFound as error:
            raise RollbackError(str(error)) from None
        except CorruptAdapter as error:
            raise RollbackError(f"adapter v{version} cannot be used: {error}") from None
    logger.info("owner %s rolled back to v%s", telegram_id, version)
    from loop.server_drafting import sync_served_adapters

    sync_served_adapters(config, engine)  # a shared drafting server follows (generation.backend = "openai")
    return version
