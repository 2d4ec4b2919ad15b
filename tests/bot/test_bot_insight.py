"""/insight end to end: the real Application against the fake Bot API, the tiny model measuring a real adapter."""

from __future__ import annotations

import pytest

from tests.bot.test_bot_commands import PNG_MAGIC, photos_to
from tests.bot.test_bot_harness import OWNER_ID, running_harness
from tests.loop.test_cycle_support import import_writing
from tests.loop.test_insight import install_random_adapter
from tests.tiny import tiny_generation_settings, tiny_model_settings


@pytest.fixture
async def harness(config, engine, tiny_model_dir):
    config.model = tiny_model_settings(tiny_model_dir)
    config.generation = tiny_generation_settings()
    config.insight.drafts, config.insight.attention_items = 2, 1
    async with running_harness(config, engine) as running:
        running.model_dir = tiny_model_dir
        yield running


async def test_insight_sends_the_summary_and_the_charts(harness):
    await harness.start()
    import_writing(harness.engine)  # the owner's writing is in, but nothing is trained yet
    harness.api.send_command(harness.owner, "/insight")
    await harness.bot_says("No trained version is active yet")
    install_random_adapter(harness.config, harness.engine, harness.model_dir, telegram_id=OWNER_ID)
    harness.api.send_command(harness.owner, "/insight")
    await harness.bot_says("Looking into what your twin learnt")
    said = await harness.bot_says("What v1 changed, against the base model")
    assert "Now favours" in said["text"]
    charts = await harness.api.wait_for(lambda: (lambda p: p if len(p) == 5 else None)(photos_to(harness)))
    assert all(chart.startswith(PNG_MAGIC) for chart in charts)
    assert list((harness.config.data_dir / "uploads").iterdir()) == []  # the charts are not kept
    harness.api.send_command(harness.owner, "/insight 4")
    await harness.bot_says("There is no v4")
    harness.api.send_command(harness.owner, "/insight soon")
    await harness.bot_says("Use /insight for the active version")
