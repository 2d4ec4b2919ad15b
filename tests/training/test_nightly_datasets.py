"""What the training child asks KTO to learn: the verdicts DPO cannot use, plus a replay-sized sample,
and, where asked, only a share of the desirable rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from training.config import StageSettings, TrainingSettings
from training.datasets import END_OF_TURN
from training.examples import FeedbackExample, WritingExample
from training.nightly import _kto_rows
from training.prompt import Conversation

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def render(conversation: Conversation) -> str:
    return f"PROMPT[{conversation.incoming}]"


def verdicts(n: int) -> list[FeedbackExample]:
    """n rounds of: accept, edit, reject without a replacement."""
    items = []
    for i in range(n):
        for j, (kind, text) in enumerate((("accept", None), ("edit", f"mine {i}"), ("reject", None))):
            items.append(FeedbackExample(kind=kind, conversation=Conversation.of(f"m{i}.{j}"), draft=f"draft {i}.{j}",
                                         text=text, later_kept=None, created_at=T0 + timedelta(minutes=3 * i + j)))
    return items


WRITING = [WritingExample(kind="reply", text=f"old reply {i}", conversation=Conversation.of(f"w{i}"), written_at=T0)
           for i in range(50)]


def test_with_dpo_on_kto_gets_the_unpaired_verdicts_and_half_as_many_replayed_replies() -> None:
    rows = _kto_rows(verdicts(4), WRITING, TrainingSettings(replay_fraction=0.5), render)
    completions = [row["completion"].removesuffix(END_OF_TURN) for row in rows]
    replayed = [c for c in completions if c.startswith("old reply")]
    assert len(replayed) == 4  # 0.5 x the 8 verdict rows: 4 accepts, 4 rejects
    assert sorted(c for c in completions if c not in replayed) == sorted(
        [f"draft {i}.0" for i in range(4)] + [f"draft {i}.2" for i in range(4)])
    assert not any(c.startswith("mine") or c.endswith(".1") for c in completions)  # edits are DPO's


def test_with_dpo_off_kto_learns_the_edits_too() -> None:
    training = TrainingSettings(replay_fraction=0.5, dpo=StageSettings(enabled=False))
    completions = [row["completion"].removesuffix(END_OF_TURN) for row in _kto_rows(verdicts(4), WRITING, training, render)]
    assert {f"mine {i}" for i in range(4)} | {f"draft {i}.1" for i in range(4)} <= set(completions)
    assert sum(c.startswith("old reply") for c in completions) == 8  # 0.5 x 16 verdict rows


def test_with_a_desirable_ratio_kto_keeps_every_undesirable_row_and_that_many_desirable_ones() -> None:
    training = TrainingSettings(replay_fraction=0.5, kto=StageSettings(learning_rate=5e-5, desirable_ratio=1.0))
    rows = _kto_rows(verdicts(4), WRITING, training, render)
    assert sum(not row["label"] for row in rows) == 4  # every rejected draft
    assert sum(row["label"] for row in rows) == 4  # of 8: 4 accepted drafts and 4 replayed replies
    assert rows == _kto_rows(verdicts(4), WRITING, training, render)  # seeded
