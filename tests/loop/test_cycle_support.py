"""Shared pieces of the cycle tests: a tiny-model config, a made-up owner, their writing and verdicts.

The owner "Ada" writes short lower-case replies without apostrophes and says "lol"; the other
people write proper sentences. Fixtures are imported by the cycle, rollback and scheduler tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loop.config import Config
from loop.drafting import FakeDrafter
from loop.twin import Twin
from storage import repo
from storage.db import session_scope
from storage.models import SampleKind, WritingSampleCreate
from tests.tiny import (
    tiny_evaluation_settings,
    tiny_generation_settings,
    tiny_model_settings,
    tiny_training_settings,
)
from training.config import LoraSettings

OWNER = 1001

INCOMING = [
    "Are you coming to the party tonight?", "Did you see the match yesterday?", "What time is dinner on Sunday?",
    "Can you send me the photos from the trip?", "How was your first week at the new job?",
    "Do you want to grab a coffee tomorrow morning?", "Have you finished the book I lent you?",
    "Should we take the train or drive to the coast?", "Is your sister still visiting this weekend?",
    "Could you water my plants while I am away?", "What did the doctor say about your knee?",
    "Are we still on for the cinema on Friday?",
]
REPLIES = [
    "yeah im coming lol, bringing snacks", "nah didnt see it, was it good", "dinner at 7 i think lol",
    "sure sending them tonight", "pretty good tbh, tired tho lol", "coffee sounds good, 9ish?",
    "almost done, its so good lol", "train, i hate driving that road", "yeah shes here till monday",
    "sure no problem, just leave the key", "its fine, just need rest lol", "yep friday works, ill book seats",
]


def test_support_data_is_consistent():
    assert len(INCOMING) == len(REPLIES)


def writing(n: int = 24, *, start: datetime | None = None) -> list[WritingSampleCreate]:
    """Reply samples of the owner, dated a day apart, each with a turn of context."""
    start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    samples = []
    for i in range(n):
        k = i % len(INCOMING)
        samples.append(WritingSampleCreate(
            kind=SampleKind.reply, text=f"{REPLIES[k]} {i}", prompt=INCOMING[k], sender="Sam",
            context=[{"role": "other", "text": f"Hi Ada, it is Sam, message {i}.", "sender": "Sam"}],
            written_at=start + timedelta(days=i), source="test"))
    return samples


def import_writing(engine, n: int = 24) -> int:
    with session_scope(engine) as session:
        owner = repo.get_or_create_owner(session=session, telegram_id=OWNER)
        added, _ = repo.add_writing_samples(session=session, owner_id=owner.id, samples=writing(n))
    return added


def give_every_kind_of_feedback(twin: Twin, *, rounds: int = 1, offset: int = 0) -> dict[str, int]:
    """Draft replies and answer them with accept, edit, reject (with and without text) and regenerate."""
    counts = {"accept": 0, "edit": 0, "reject": 0, "regenerate": 0}
    for r in range(rounds):
        for i in range(5):
            k = (offset + r * 5 + i) % len(INCOMING)
            draft = twin.draft_reply(telegram_id=OWNER, chat_key=f"tg:{k}", incoming=INCOMING[k])
            if i == 0:
                twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="accept")
                counts["accept"] += 1
            elif i == 1:
                twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="edit", text=REPLIES[k])
                counts["edit"] += 1
            elif i == 2:
                twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="reject", text=REPLIES[k] + " !")
                counts["reject"] += 1
            elif i == 3:
                twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="reject", reason="no")
                counts["reject"] += 1
            else:
                verdict = twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="regenerate")
                counts["regenerate"] += 1
                twin.record_verdict(telegram_id=OWNER, draft_id=verdict.new_draft.id, kind="edit", text=REPLIES[k])
                counts["edit"] += 1
    return counts


def make_cycle_config(config: Config, model_dir: Path, **training_overrides) -> Config:
    config.model = tiny_model_settings(model_dir)
    config.training = tiny_training_settings(**training_overrides)
    config.generation = tiny_generation_settings()
    # The tiny model's sampled drafts are noise: the tests judge on likelihood and keep the
    # sampled metrics' tolerances wide (the gate's own rules are tested in test_gate.py).
    config.evaluation = tiny_evaluation_settings(edit_distance_tolerance=0.9, attribution_tolerance=0.9,
                                                 preference_tolerance=0.9, caricature_ratio=1000.0)
    config.lora = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    config.schedule.min_new_feedback = 1
    return config


@pytest.fixture
def cycle_config(config: Config, tiny_model_dir: Path) -> Config:
    return make_cycle_config(config, tiny_model_dir)


@pytest.fixture
def twin(cycle_config: Config, engine) -> Twin:
    return Twin(cycle_config, engine, FakeDrafter())
