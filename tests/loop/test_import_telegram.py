"""Telegram Desktop exports: a single chat and a full-account export, parsed into samples."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loop.importing import ImportFormatError, OwnerIdentity, OwnerUnknownError, Skip, parse_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
SINGLE = FIXTURES / "telegram_single" / "result.json"
FULL = FIXTURES / "telegram_full" / "result.json"
SAM = OwnerIdentity(telegram_ids=[1001])


def _by_text(parsed):
    return {s.text: s for s in parsed.samples}


def test_single_chat_counts():
    parsed = parse_file(SINGLE, owner=SAM)
    assert parsed.format == "telegram"
    assert parsed.messages == 22
    assert [s.kind.value for s in parsed.samples] == ["reply"] * 4
    assert dict(parsed.skipped) == {
        Skip.service: 2,  # a phone call and a pin
        Skip.media: 4,  # sticker, photo without caption, voice message, GIF
        Skip.forwarded: 1,
        Skip.no_prompt: 2,  # the owner writing first after a long silence
        Skip.unanswered: 3,
    }


def test_single_chat_pairs_blocks_with_entities_flattened():
    first, second, third, fourth = parse_file(SINGLE, owner=SAM).samples
    # Two messages of Alice answered by two of the owner's; text_link and bold keep their visible text.
    assert first.prompt == "morning! are we still on for saturday?\ndid you see this place?"
    assert first.text == "yeah def\nsaturday works, 10am at the usual spot"
    assert first.context == []
    assert first.sender == "Alice Nguyen"
    assert first.written_at == datetime(2024, 3, 1, 9, 5, tzinfo=timezone.utc)
    assert first.source == "telegram:result.json"
    # A photo's caption is text; stickers and a caption-less photo in between are left out.
    assert second.prompt == "look what I found at the market"
    assert second.text == "@alice_n haha thats amazing, how much was it"
    assert [t["role"] for t in second.context] == ["other", "other", "owner", "owner"]
    assert second.context[0] == {"role": "other", "text": "morning! are we still on for saturday?",
                                 "sender": "Alice Nguyen"}
    # The forwarded news is not Alice's words: the prompt is what she herself wrote.
    assert third.prompt == "like 5 bucks"
    assert third.text == "nice https://maps.example.com/market is close to me"
    assert len(third.context) == 6
    assert third.context[-1]["text"] == second.text
    assert fourth.prompt == "my new number is +44 7700 900123 and email alice@example.com"
    assert fourth.text == "saved 👍"
    assert fourth.context == [{"role": "owner", "text": "anytime!!", "sender": "Sam Carter"}]


def test_messages_far_apart_are_not_paired():
    texts = _by_text(parse_file(SINGLE, owner=SAM))
    assert "anytime!!" not in texts  # 14.5 hours after "thanks for driving"
    wide = parse_file(SINGLE, owner=SAM, max_gap=timedelta(days=3))
    reply = _by_text(wide)["anytime!!"]
    assert reply.prompt == "yes! finally 🙌\nthanks for driving"
    assert wide.skipped[Skip.no_prompt] == 0


def test_full_export_finds_owner_in_personal_information():
    parsed = parse_file(FULL, owner=OwnerIdentity())
    assert parsed.messages == 17
    assert [s.kind.value for s in parsed.samples] == ["reply"] * 3 + ["monologue"] * 2
    assert dict(parsed.skipped) == {Skip.service: 1, Skip.media: 2, Skip.forwarded: 1, Skip.unanswered: 2,
                                    Skip.channel: 2}
    personal, group_first, group_second, note, grocery = parsed.samples
    assert (personal.prompt, personal.text) == ("hey how was the trip", "amazing, tired tho\nwill send pics later")
    # In a group the prompt is the last person who spoke; earlier voices are context.
    assert (group_first.prompt, group_first.sender) == ("me!", "Carol Diaz")
    assert group_first.context == [{"role": "other", "text": "who's in for thursday?", "sender": "Bob Okafor"}]
    assert (group_second.prompt, group_second.sender, group_second.text) == ("great, 7pm at the wall", "Bob Okafor",
                                                                             "see you there")
    assert [t["sender"] for t in group_second.context] == ["Bob Okafor", "Carol Diaz", "Sam Carter"]
    assert note.text == "book idea: a lighthouse keeper who collects lost letters"
    assert note.prompt is None and note.context == []
    assert grocery.written_at == datetime(2024, 4, 12, 8, 30, tzinfo=timezone.utc)


def test_owner_by_name_when_no_id_is_known():
    by_name = parse_file(SINGLE, owner=OwnerIdentity(names=["sam carter"]))
    assert [s.text for s in by_name.samples] == [s.text for s in parse_file(SINGLE, owner=SAM).samples]


def test_unknown_owner_lists_senders_and_how_to_choose():
    with pytest.raises(OwnerUnknownError) as caught:
        parse_file(SINGLE, owner=OwnerIdentity())
    message = str(caught.value)
    assert "result.json" in message
    assert "Alice Nguyen (user2002): 12 messages; Sam Carter (user1001): 8 messages" in message
    assert "--me NAME" in message and "owners" in message


def _write_export(tmp_path: Path, messages) -> Path:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"name": "X", "type": "personal_chat", "id": 7, "messages": messages}),
                    encoding="utf-8")
    return path


def _message(mid: int, text, sender: int = 2002, **extra):
    return {"id": mid, "type": "message", "date": "2024-01-01T10:00:00", "date_unixtime": str(1704103200 + mid),
            "from": f"User {sender}", "from_id": f"user{sender}", "text": text, **extra}


def test_wrong_text_type_names_file_and_message(tmp_path: Path):
    path = _write_export(tmp_path, [_message(1, "hi"), _message(345, 42, sender=1001)])
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=SAM)
    assert str(caught.value) == "result.json, message 345: 'text' must be a string or a list of entities"
    assert caught.value.location == "message 345" and caught.value.file == path


def test_bad_entity_and_bad_date_are_located(tmp_path: Path):
    path = _write_export(tmp_path, [_message(1, "hi"), _message(2, ["ok ", {"type": "bold"}], sender=1001)])
    with pytest.raises(ImportFormatError, match="message 2: 'text' must be"):
        parse_file(path, owner=SAM)
    bad_date = _message(3, "hi")
    bad_date.pop("date_unixtime")
    bad_date["date"] = "yesterday"
    with pytest.raises(ImportFormatError, match="message 3: 'date' is not an ISO"):
        parse_file(_write_export(tmp_path, [bad_date]), owner=SAM)


def test_naive_dates_are_read_in_the_given_zone(tmp_path: Path):
    first, second = _message(1, "question?"), _message(2, "answer", sender=1001)
    for message in (first, second):
        message.pop("date_unixtime")
    (sample,) = parse_file(_write_export(tmp_path, [first, second]), owner=SAM,
                           tz=timezone(timedelta(hours=2))).samples
    assert sample.written_at == datetime(2024, 1, 1, 8, 0, tzinfo=timezone.utc)


def test_truncated_json_names_line_and_column(tmp_path: Path):
    path = tmp_path / "result.json"
    path.write_bytes(SINGLE.read_bytes()[:3000])
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=SAM)
    assert caught.value.location.startswith("line ") and ", column " in caught.value.location
    assert "not valid JSON" in str(caught.value)


@pytest.mark.parametrize("data, location", [
    ([], "line 1"),
    ({"name": "X"}, "top level"),
    ({"messages": {"id": 1}}, "top level"),
    ({"chats": {"list": "nope"}}, "chats"),
    ({"chats": {"list": [3]}}, "chats #1"),
    ({"messages": ["text"]}, "message #1"),
    ({"messages": [{"id": 9, "date": "2024-01-01T00:00:00"}]}, "message 9"),
])
def test_structure_errors(tmp_path: Path, data, location):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=SAM)
    assert caught.value.location == location
