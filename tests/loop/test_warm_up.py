"""At start the twin readies each owner's active adapter for drafting, before the first message."""

from __future__ import annotations

from pathlib import Path

from loop.config import Config
from loop.drafting import FakeDrafter, EngineDrafter
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from training.inference.engine import Engine
from training.inference.serving import COMPLETE_MARKER
from tests.tiny import build_random_adapter, tiny_generation_settings, tiny_model_settings


def test_warm_up_converts_each_owners_active_adapter(tiny_model_dir: Path, config: Config, engine,
                                                    tmp_path: Path) -> None:
    adapter = build_random_adapter(tiny_model_dir, config.owner_dir(1001) / "adapters" / "v1", seed=3)
    settings = tiny_model_settings(tiny_model_dir)
    drafter = EngineDrafter(Engine.load(settings, config.models_dir), settings,
                                  tiny_generation_settings(backend="ctranslate2"))
    twin = Twin(config, engine, drafter)
    with session_scope(engine) as session:
        owner_id = repo.get_or_create_owner(session=session, telegram_id=1001).id
        repo.add_adapter(session=session, owner_id=owner_id, version=1, path=str(adapter), parent_version=0,
                         cycle_id=None, checksum="test", data_counts={}, metrics={})
        repo.activate_adapter(session=session, owner_id=owner_id, version=1)
    assert not list(adapter.glob("serving-*"))
    twin.warm_up()
    converted = list(adapter.glob("serving-*"))
    assert len(converted) == 1 and (converted[0] / COMPLETE_MARKER).exists()
    draft = twin.draft_reply(telegram_id=1001, chat_key="t", incoming="are you coming?")
    assert draft.adapter_version == 1 and draft.sampling["backend"] == "ctranslate2"


def test_warm_up_without_a_model_does_nothing(config: Config, engine) -> None:
    Twin(config, engine, FakeDrafter()).warm_up()  # the fake has nothing to prepare: no error
