"""The chat corpus (bench/chitchat.py): the builder, its Telegram export through the real importer, the split by time.

A hand-made dataset in the chitchat package's format is small enough to count by hand; the
committed slice stands in for the package in the learning curve's plan; the real owner's counts
are checked only where the package is installed (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bench.chitchat import (SLICE_FILE, DatasetError, build_owner_corpus, chat_corpus, load_dataset, main,
                            telegram_user_id)
from bench.corpus import load_named
from loop.importing import OwnerIdentity, parse_file, run_import
from storage.db import session_scope
from storage.repo import get_or_create_owner, writing_samples

REPO = Path(__file__).resolve().parents[2]
OWNER = "aaaa1111-0000-4000-8000-000000000001"
BEA = "bbbb2222-0000-4000-8000-000000000002"
CAL = "cccc3333-0000-4000-8000-000000000003"
DAY = datetime(2018, 5, 1, 18, 0, tzinfo=timezone.utc)


def _turn(sender: str, at: datetime, *texts: str) -> list[dict]:
    return [{"text": text, "timestamp": (at + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), "sender": sender}
            for i, text in enumerate(texts)]


def _conversation(start: datetime, *turns: tuple[str, tuple[str, ...]],
                  prompt: str | None = "What's your favorite smell?") -> dict:
    messages, at = [], start
    for sender, texts in turns:
        messages.append(_turn(sender, at, *texts))
        at += timedelta(minutes=1)
    raw = {"messages": messages, "start": start.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if prompt:
        raw["prompt"] = prompt
    return raw


def hand_made() -> dict:
    """Five conversations of the owner (listed out of time order) and one without them."""
    late = _conversation(DAY + timedelta(days=1), (BEA, ("lavender?",)), (OWNER, ("coffee for sure",)),
                         (BEA, ("nice",)), (OWNER, ("sorry, fell asleep",)))
    late["messages"][-1] = _turn(OWNER, DAY + timedelta(days=1, hours=20), "sorry, fell asleep")
    return {
        # Newest: held out with 20%. Two pairs; Cal opens.
        "conv-e": _conversation(DAY + timedelta(days=9), (CAL, ("hi", "how are you?")), (OWNER, ("good, you?",)),
                                (CAL, ("tired",)), (OWNER, ("same", "long week"))),
        # Oldest. The owner opens (nothing to answer), then answers Bea twice: two pairs.
        "conv-a": _conversation(DAY, (OWNER, ("hey there",)), (BEA, ("hello!", "what's up")),
                                (OWNER, ("not much", "just studying")), (BEA, ("cool",)), (OWNER, ("yeah",))),
        # A day of silence inside: the reply after it answers nothing (the importer's 12-hour gap).
        "conv-b": late,
        # Only the owner's lines: no pair.
        "conv-c": _conversation(DAY + timedelta(days=2), (OWNER, ("anyone here?", "hello?")), prompt=None),
        # One pair, and Bea's closing line is answered by nobody.
        "conv-d": _conversation(DAY + timedelta(days=3), (BEA, ("pigs flying would be weird",)),
                                (OWNER, ("bacon from the sky",)), (BEA, ("lol",))),
        "other": _conversation(DAY, (BEA, ("hi",)), (CAL, ("hey",))),
    }


def test_the_builder_splits_the_owners_conversations_by_time_into_an_export_and_heldout_items():
    corpus = build_owner_corpus(hand_made(), "aaaa1111", holdout_fraction=0.2)
    assert corpus.owner == OWNER
    assert [c.id for c in corpus.train_conversations] == ["conv-a", "conv-b", "conv-c", "conv-d"]
    assert [c.id for c in corpus.heldout_conversations] == ["conv-e"]
    assert [(p.message, p.reply, p.thread) for p in corpus.train] == [
        ("hello!\nwhat's up", "not much\njust studying", "conv-a"), ("cool", "yeah", "conv-a"),
        ("lavender?", "coffee for sure", "conv-b"), ("pigs flying would be weird", "bacon from the sky", "conv-d")]
    first, second = corpus.train[:2]
    assert first.sender == "Student bbbb2222" and first.written_at == DAY + timedelta(minutes=2)
    assert [t["role"] for t in second.context] == ["owner", "other", "other", "owner", "owner"]
    # Held out: the same shape as the mail corpus's pairs, paired as the importer pairs the training chats.
    assert [(p.message, p.reply) for p in corpus.heldout] == [("hi\nhow are you?", "good, you?"),
                                                              ("tired", "same\nlong week")]
    assert corpus.heldout[1].context[-1] == {"role": "owner", "text": "good, you?", "sender": "Student aaaa1111"}
    assert corpus.negatives == ["hello!", "what's up", "cool", "lavender?", "nice", "pigs flying would be weird", "lol"]
    summary = corpus.summary()
    assert summary["conversations"] == {"total": 5, "train": 4, "heldout": 1, "one_sided": 1}
    assert summary["reply_pairs"] == {"total": 6, "train": 4, "heldout": 2}
    assert (summary["owner_lines"], summary["others_lines"]) == (12, 10)
    assert summary["dates"] == {"first": "2018-05-01", "last": "2018-05-10", "heldout_from": "2018-05-10"}


def test_the_export_is_a_full_account_telegram_export_naming_its_owner():
    export = build_owner_corpus(hand_made(), "aaaa1111").export
    assert export["personal_information"]["user_id"] == telegram_user_id(OWNER)
    chats = export["chats"]["list"]
    assert [chat["type"] for chat in chats] == ["private_group"] * 4
    assert chats[0]["name"] == "What's your favorite smell?" and chats[2]["name"].startswith("Chit-chat 2018-05-03")
    first = chats[0]["messages"][0]
    assert first["from_id"] == f"user{telegram_user_id(OWNER)}" and first["from"] == "Student aaaa1111"
    assert datetime.fromtimestamp(int(first["date_unixtime"]), timezone.utc) == DAY
    ids = [m["id"] for chat in chats for m in chat["messages"]]
    assert len(ids) == len(set(ids)) == 16


def test_the_written_export_imports_through_twin_import_with_every_training_pair(engine, tmp_path: Path):
    corpus = build_owner_corpus(hand_made(), "aaaa1111")
    assert main(["--source", str(_write(hand_made(), tmp_path / "dataset.json")), "--owner", "aaaa1111",
                 "--out", str(tmp_path / "out")]) == 0
    result = tmp_path / "out" / "result.json"
    assert json.loads(result.read_text()) == json.loads(json.dumps(corpus.export))
    assert len((tmp_path / "out" / "heldout.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reply_pairs"]["train"] == 4
    with session_scope(engine) as session:
        owner_db_id = get_or_create_owner(session=session, telegram_id=4444, name="Sam").id
    # As `twin import` runs it: no owner configured but the one the export names, masking on.
    report = run_import(engine=engine, owner_db_id=owner_db_id, paths=[result], owner=OwnerIdentity(), mask=True)
    assert report.ok and report.files[0].format == "telegram"
    assert report.added == len(corpus.train) == 4
    assert report.skipped == {"your messages with nothing to answer": 4,  # conv-a's opening, conv-b after the gap, conv-c
                              "others' messages with no reply right after": 2}  # conv-b's "nice", conv-d's "lol"
    with session_scope(engine) as session:
        stored = {(s.prompt, s.text) for s in writing_samples(session=session, owner_id=owner_db_id)}
    assert stored == {(p.message, p.reply) for p in corpus.train}


def test_no_heldout_conversation_is_older_than_a_training_one():
    dataset = hand_made()
    for fraction in (0.2, 0.4, 0.6):
        corpus = build_owner_corpus(dataset, "aaaa1111", holdout_fraction=fraction)
        assert corpus.heldout_conversations and corpus.train_conversations
        assert max(c.start for c in corpus.train_conversations) <= min(c.start for c in corpus.heldout_conversations)
        assert max(p.written_at for p in corpus.train) <= min(p.written_at for p in corpus.heldout)
    assert build_owner_corpus(dataset, "aaaa1111", holdout_fraction=0).heldout == []


def test_a_wrong_owner_or_a_broken_dataset_is_refused_with_the_place(tmp_path: Path):
    with pytest.raises(DatasetError, match="matches no sender"):
        build_owner_corpus(hand_made(), "ffff")
    with pytest.raises(DatasetError, match="matches 2 senders"):
        build_owner_corpus({**hand_made(), "x": _conversation(DAY, (OWNER[:4] + "9999-x", ("hi",)))}, "aaaa")
    broken = hand_made()
    broken["conv-d"]["messages"][1][0]["timestamp"] = "yesterday"
    with pytest.raises(DatasetError, match="conversation conv-d, turn 2: 'timestamp' is not an ISO time"):
        build_owner_corpus(broken, "aaaa1111")
    with pytest.raises(DatasetError, match="not JSON"):
        load_dataset(_write_text("{", tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="holdout_fraction"):
        build_owner_corpus(hand_made(), "aaaa1111", holdout_fraction=1.0)


def test_the_learning_curve_imports_whole_conversations_of_the_slice_and_holds_out_the_newest(engine, tmp_path: Path):
    from bench.learning_curve import Plan

    corpus = load_named("chat", quick=True)
    assert corpus.import_format == "telegram" and corpus.section == "learning_curve_chat"
    sizes = corpus.default_sizes(quick=True)
    plan = Plan.split(corpus.pairs, heldout=sizes["heldout"], imported=sizes["imported"], rounds=sizes["rounds"])
    threads = [{p.thread for p in part} for part in (plan.imported, plan.rounds[0], plan.heldout)]
    assert all(part for part in threads) and not (threads[0] & threads[1] or threads[1] & threads[2]
                                                  or threads[0] & threads[2])
    assert (len(plan.imported), len(plan.rounds[0]), len(plan.heldout)) == (13, 12, 7)
    starts = {c.id: c.start for c in corpus.conversations}
    assert max(starts[t] for t in threads[0]) <= min(starts[t] for t in threads[1])
    assert max(starts[t] for t in threads[1]) <= min(starts[t] for t in threads[2])
    with session_scope(engine) as session:
        owner_db_id = get_or_create_owner(session=session, telegram_id=4444, name=corpus.owner).id
    path = corpus.write_import(plan.imported, tmp_path)
    report = run_import(engine=engine, owner_db_id=owner_db_id, paths=[path], owner=OwnerIdentity(),
                        format=corpus.import_format, mask=False)
    assert report.added == len(plan.imported)
    assert set(corpus.other_lines(plan.imported)) <= {u.text for c in corpus.conversations for u in c.utterances}
    # The mail corpus has no conversations: its split is the plain one by count.
    mail = load_named("mail")
    assert mail.default_sizes(quick=False) == {"heldout": 18, "imported": 24, "rounds": 3, "pairs": None}


def test_the_committed_slice_is_the_owners_in_the_packages_format():
    data = load_dataset(SLICE_FILE)
    assert 5 <= len(data) <= 8 and SLICE_FILE.stat().st_size < 40_000
    assert all({"text", "timestamp", "sender"} == set(item) for raw in data.values() for turn in raw["messages"]
               for item in turn)
    summary = build_owner_corpus(data, "0f9fe1f8").summary()
    assert summary["reply_pairs"]["total"] == 32 and summary["conversations"]["one_sided"] == 1


@pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is None,
                    reason="chitchat-dataset is not installed (pip install -e '.[bench]'): the real owner's counts "
                           "are not checked")
def test_the_real_owner_has_124_conversations_and_about_4400_reply_pairs():
    summary = build_owner_corpus(load_dataset(), "0f9fe1f8").summary()
    assert summary["conversations"] == {"total": 124, "train": 99, "heldout": 25, "one_sided": 51}
    assert summary["reply_pairs"] == {"total": 4424, "train": 3677, "heldout": 747}
    assert (summary["owner_lines"], summary["others_lines"]) == (11426, 7250)
    assert summary["dates"] == {"first": "2018-04-13", "last": "2018-10-25", "heldout_from": "2018-10-15"}


@pytest.mark.skipif(importlib.util.find_spec("chitchat_dataset") is not None,
                    reason="the package is installed: the command would start a full benchmark")
def test_the_chat_learning_curve_without_the_package_says_how_to_get_it(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "bench.learning_curve", "--corpus", "chat", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "chitchat-dataset==0.9.0" in result.stderr and ".[bench]" in result.stderr
    assert not (tmp_path / "RESULTS.md").exists()


def _write(data: dict, path: Path) -> Path:
    return _write_text(json.dumps(data), path)


def _write_text(text: str, path: Path) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
