"""Drafts from a shared server (generation.backend = "openai"), against a real llama-cpp-python server
started from the models file the twin writes: the embedded GGUF and one LoRA alias per owner."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loop import adapters as adapter_store
from loop.config import Config
from loop.errors import DraftingUnavailable
from loop.server_drafting import (
    ServedAdapters,
    ServerDrafter,
    active_adapter_refs,
    make_client,
    models_config_path,
    sync_served_adapters,
)
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from tests.llama_server import free_port, requires_server, running_server
from tests.tiny import tiny_model_settings
from training.artifacts import read_manifest
from training.inference.engine import clean_generated
from training.inference.openai_server import BASE_ALIAS, adapter_name, read_models_config
from training.model import embedded_gguf_path, load_tokenizer
from training.prompt import Conversation

pytestmark = [pytest.mark.server, requires_server]

OWNER_A, OWNER_B = 1001, 1002


@pytest.fixture(scope="module")
def owner_adapters(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Random adapters shaped for the embedded model: A's v1, B's v1 and B's v2."""
    from training.tiny import build_random_gguf_adapters

    return build_random_gguf_adapters(embedded_gguf_path(), tmp_path_factory.mktemp("owner-adapters"), 3, seed=21)


@pytest.fixture
def server_config(config: Config, tiny_model_dir: Path) -> Config:
    # The tiny model's folder holds the SmolLM2 tokenizer (the renderer's); the server runs the real GGUF.
    # A generous timeout: on a starved CI machine a server's switch to another alias can take minutes.
    config.owners = [OWNER_A, OWNER_B]
    config.model = tiny_model_settings(tiny_model_dir)
    config.generation = replace(config.generation, backend="openai", server_kind="llama_cpp",
                                server_url=f"http://127.0.0.1:{free_port()}", server_timeout_s=600,
                                server_base_model=str(embedded_gguf_path()), max_new_tokens=8)
    return config


def promote(engine, telegram_id: int, version: int, folder: Path) -> int:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
        repo.add_adapter(session=session, owner_id=owner.id, version=version, path=str(folder),
                         parent_version=version - 1, cycle_id=None, checksum=read_manifest(folder)["checksum"],
                         data_counts={}, metrics={})
        adapter_store.activate(session=session, owner_id=owner.id, version=version)
        return owner.id


def name_of(owner_id: int, version: int, folder: Path) -> str:
    return adapter_name(owner_id, version, read_manifest(folder)["checksum"])


def serve(config: Config, tmp_path: Path):
    return running_server(models_config_path(config), config.generation.server_url, log=tmp_path / "server.log")


def make_twin(config: Config, engine) -> Twin:
    return Twin(config, engine, ServerDrafter(make_client(config), load_tokenizer(config.model.base), config))


def test_a_second_owners_draft_comes_from_the_server_with_their_own_adapter(server_config, engine, owner_adapters,
                                                                            tmp_path) -> None:
    a_id = promote(engine, OWNER_A, 1, owner_adapters[0])
    b_id = promote(engine, OWNER_B, 1, owner_adapters[1])
    report = ServedAdapters(server_config, make_client(server_config)).sync(active_adapter_refs(engine))
    a_name, b_name = name_of(a_id, 1, owner_adapters[0]), name_of(b_id, 1, owner_adapters[1])
    assert report.served == sorted([a_name, b_name]) and report.restart_needed  # no server runs yet
    served = read_models_config(models_config_path(server_config))
    assert served == {a_name: str(owner_adapters[0] / Path(served[a_name]).name),
                      b_name: str(owner_adapters[1] / Path(served[b_name]).name)}  # each LoRA in its own folder

    with serve(server_config, tmp_path) as client:
        twin = make_twin(server_config, engine)
        b_draft = twin.draft_reply(telegram_id=OWNER_B, chat_key="c", incoming="are you coming tonight?")
        a_draft = twin.draft_reply(telegram_id=OWNER_A, chat_key="c", incoming="are you coming tonight?")
        assert (b_draft.adapter_version, b_draft.sampling["server_model"]) == (1, b_name)
        assert a_draft.sampling["server_model"] == a_name
        # The very completion B's adapter gives that prompt with that seed: drafted on the server, by B's LoRA.
        prompt = twin.drafter.render(Conversation.of("are you coming tonight?"))
        direct = client.complete(prompt, model=b_name, settings=server_config.generation, seed=b_draft.seed,
                                 stop=["<|im_end|>"])
        base = client.complete(prompt, model=BASE_ALIAS, settings=server_config.generation, seed=b_draft.seed,
                               stop=["<|im_end|>"])
        assert b_draft.text == clean_generated(direct.text) != clean_generated(base.text)
        assert b_draft.sampling["prompt_tokens"] == len(load_tokenizer(server_config.model.base)(prompt)["input_ids"])


def test_a_server_that_is_down_keeps_the_message_and_it_is_drafted_when_the_server_is_back(
        server_config, engine, owner_adapters, tmp_path) -> None:
    b_id = promote(engine, OWNER_B, 1, owner_adapters[1])
    sync_served_adapters(server_config, engine)  # the server is down: the file is written all the same
    twin = make_twin(server_config, engine)
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    with pytest.raises(DraftingUnavailable, match="cannot be reached"):
        twin.draft_reply(telegram_id=OWNER_B, chat_key="c", incoming="lunch?", chat_id=5, telegram_message_id=77)
    [kept] = twin.unanswered(since=since)  # stored before drafting; no draft row
    assert kept.draft is None

    with serve(server_config, tmp_path):
        draft = twin.draft_for_message(telegram_id=OWNER_B, message_id=kept.message_id, chat_id=5)
        assert (draft.adapter_version, draft.sampling["server_model"]) == (1, name_of(b_id, 1, owner_adapters[1]))
        # Drafted now; only its delivery is left, which the bot's recovery does with this very draft.
        [pending] = twin.unanswered(since=since)
        assert pending.draft is not None and pending.draft.id == draft.id

        # A promotion replaces B's alias in the models file; llama.cpp's server reads it at start, so
        # until its restart B's drafts are unavailable (kept, retried), never the retired version's.
        promote(engine, OWNER_B, 2, owner_adapters[2])
        report = sync_served_adapters(server_config, engine)
        assert report is not None and report.restart_needed
        assert list(read_models_config(models_config_path(server_config))) == [name_of(b_id, 2, owner_adapters[2])]
        with pytest.raises(DraftingUnavailable, match="after a restart"):
            twin.draft_reply(telegram_id=OWNER_B, chat_key="c", incoming="and dinner?", chat_id=5,
                             telegram_message_id=78)
    with serve(server_config, tmp_path):
        [waiting] = [item for item in twin.unanswered(since=since) if item.draft is None]
        draft = twin.draft_for_message(telegram_id=OWNER_B, message_id=waiting.message_id, chat_id=5)
        assert (draft.adapter_version, draft.sampling["server_model"]) == (2, name_of(b_id, 2, owner_adapters[2]))
