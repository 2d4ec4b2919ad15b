"""The bot with drafts from a shared server (generation.backend = "openai"): when the server is down
the owner is told once, the message is kept, and the draft queue tries again until the server is back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loop.server_drafting import ServerDrafter, make_client, models_config_path, sync_served_adapters
from tests.bot.test_bot_harness import OWNER_ID, running_harness
from tests.llama_server import free_port, requires_server, running_server
from tests.loop.test_server_drafting import promote
from tests.tiny import tiny_model_settings
from training.model import embedded_gguf_path, load_tokenizer

pytestmark = [pytest.mark.server, requires_server]


async def test_a_draft_the_server_could_not_write_is_retried_and_shown_when_the_server_is_back(
        config, engine, tiny_model_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from training.tiny import build_random_gguf_adapters

    config.owners = [OWNER_ID]
    config.model = tiny_model_settings(tiny_model_dir)
    config.generation = replace(config.generation, backend="openai", server_kind="llama_cpp",
                                server_url=f"http://127.0.0.1:{free_port()}", server_timeout_s=600,
                                server_base_model=str(embedded_gguf_path()), max_new_tokens=8)
    [adapter] = build_random_gguf_adapters(embedded_gguf_path(), tmp_path / "adapters", 1, seed=31)
    promote(engine, OWNER_ID, 1, adapter)
    sync_served_adapters(config, engine)  # the models file; the server is not started yet
    drafter = ServerDrafter(make_client(config), load_tokenizer(config.model.base), config)
    async with running_harness(config, engine) as harness:
        await harness.start(drafter=drafter)
        incoming = harness.api.send_text(harness.owner, "are you coming tonight?")
        notice = await harness.bot_says("drafting server isn't answering")
        assert "Your message is kept" in notice["text"]
        assert harness.drafts() == [] and [m.text for m in harness.messages()] == ["are you coming tonight?"]
        await asyncio.sleep(2)  # a retry or two meet the server still down: the owner is not told again
        server = running_server(models_config_path(config), config.generation.server_url, log=tmp_path / "server.log")
        await asyncio.to_thread(server.__enter__)  # starting it takes seconds: not on the bot's event loop
        try:
            shown = await harness.reply_to(incoming, with_buttons=True)
        finally:
            await asyncio.to_thread(server.__exit__, None, None, None)
        [draft] = harness.drafts()
        assert (draft.adapter_version, draft.text) == (1, shown["text"])
        notices = [m for m in harness.api.bot_messages(OWNER_ID) if "isn't answering" in (m.get("text") or "")]
        assert len(notices) == 1
