"""End to end with a real model: the tiny Llama drafts through EngineDrafter behind the bot."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.drafting import EngineDrafter
from storage.models import FeedbackKind
from tests.bot.test_bot_harness import running_harness
from tests.tiny import tiny_generation_settings, tiny_model_settings


@pytest.fixture
async def harness(config, engine):
    async with running_harness(config, engine) as running:
        yield running


async def test_the_tiny_model_drafts_and_the_verdict_is_stored(harness, tiny_model_dir: Path):
    from training.inference.engine import Engine

    settings = tiny_model_settings(tiny_model_dir)
    harness.config.model = settings
    harness.config.generation = tiny_generation_settings()
    drafter = EngineDrafter(Engine.load(settings, Path("unused-models-dir")), settings, harness.config.generation)
    await harness.start(drafter)
    shown = await harness.draft_for("are you coming tonight?")
    [draft] = harness.drafts()
    assert shown["text"] == draft.text and draft.text.strip()
    assert draft.sampling["max_new_tokens"] == 12 and "fake" not in draft.sampling
    harness.api.press(shown, harness.api.button_data(shown, "Accept"))
    await harness.verdict_shown(shown, "✅ Accepted")
    assert [f.kind for f in harness.feedback()] == [FeedbackKind.accept]
