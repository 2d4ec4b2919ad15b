"""WhatsApp chat exports: Android and iOS line formats, 12/24-hour clocks, date orders, owner choice."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loop.importing import ImportFormatError, OwnerIdentity, OwnerUnknownError, Skip, parse_file

FIXTURES = Path(__file__).parents[1] / "fixtures" / "whatsapp"
ANDROID = FIXTURES / "WhatsApp Chat with Alice Nguyen.txt"
IOS = FIXTURES / "_chat.txt"
SAM = OwnerIdentity(names=["Sam Carter"])
UTC = timezone.utc


def _parse(path: Path, owner: OwnerIdentity = SAM, **kwargs):
    return parse_file(path, owner=owner, tz=UTC, **kwargs)


def test_android_24h_export():
    parsed = _parse(ANDROID)
    assert parsed.format == "whatsapp"
    assert parsed.messages == 11
    assert dict(parsed.skipped) == {Skip.service: 1, Skip.media: 2, Skip.deleted: 1}
    first, second, third = parsed.samples
    assert first.prompt == "morning!! did you finish the report"
    assert first.text == "almost\nsending it by noon\npromise"  # a multi-line message joins its block
    assert first.written_at == datetime(2024, 3, 15, 9, 4, tzinfo=UTC)
    assert first.source == "whatsapp:WhatsApp Chat with Alice Nguyen.txt"
    assert second.prompt == "ok great\ncall me at +44 7700 900123 if anything"
    assert second.text == "done, check your inbox"  # the "edited" marker is not the owner's text
    assert [t["role"] for t in second.context] == ["other", "owner", "owner"]
    # The next evening is another conversation: no context crosses the night.
    assert (third.prompt, third.text, third.context) == ("dinner tomorrow?", "yes please", [])


def test_ios_12h_bracket_export():
    parsed = _parse(IOS)
    assert parsed.messages == 11
    assert dict(parsed.skipped) == {Skip.service: 2, Skip.media: 2}  # encryption notice, missed call
    first, second, third = parsed.samples
    assert (first.prompt, first.text) == ("are you watching the game", "obviously\nthat last goal!!")
    assert first.written_at == datetime(2024, 3, 2, 21, 20, 11, tzinfo=UTC)  # month first, 9:20 PM
    assert (second.prompt, second.text) == ("going to bed, talk tmrw", "night!")
    assert second.written_at == datetime(2024, 3, 3, 0, 1, 15, tzinfo=UTC)  # 12:01 AM
    assert third.prompt == "happy pi day\nhere's a long one:\n3.14159"
    assert third.text == "nerd 😂"


def test_owner_names_compare_loosely():
    parsed = _parse(IOS, owner=OwnerIdentity(names=["  sam   CARTER "]))
    assert len(parsed.samples) == 3


def test_unknown_owner_lists_senders_and_option():
    with pytest.raises(OwnerUnknownError) as caught:
        _parse(ANDROID, owner=OwnerIdentity(names=["Someone Else"]))
    message = str(caught.value)
    assert "Sam Carter: 4 messages; Alice Nguyen: 3 messages" in message
    assert "--me NAME" in message and "owner_names" in message
    assert caught.value.senders == [("Sam Carter", 4), ("Alice Nguyen", 3)]


def _write(tmp_path: Path, text: str, name: str = "chat.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_ambiguous_dates_follow_the_order_that_runs_forward(tmp_path: Path):
    path = _write(tmp_path, "12/01/2024, 10:00 - Ann: hi\n01/02/2024, 10:00 - Me: hello\n"
                            "01/02/2024, 10:01 - Ann: how are you\n01/02/2024, 10:02 - Me: fine\n")
    first, second = _parse(path, owner=OwnerIdentity(names=["Me"]), max_gap=timedelta(days=60)).samples
    assert first.written_at == datetime(2024, 2, 1, 10, 0, tzinfo=UTC)  # day first: 12 Jan, then 1 Feb
    assert first.prompt == "hi"


@pytest.mark.parametrize("line, expected", [
    ("2024-03-15, 21:05 - Ann: x", datetime(2024, 3, 15, 21, 5)),
    ("15.03.24, 21:05 - Ann: x", datetime(2024, 3, 15, 21, 5)),
    ("3/15/24, 9:05 p.m. - Ann: x", datetime(2024, 3, 15, 21, 5)),
    ("[15/03/2024, 21:05:09] Ann: x", datetime(2024, 3, 15, 21, 5, 9)),
    ("[15/03/2024 12:05:09 AM] Ann: x", datetime(2024, 3, 15, 0, 5, 9)),
])
def test_line_formats(tmp_path: Path, line: str, expected: datetime):
    reply_line = line.replace(": x", ": yes").replace("Ann", "Me")
    path = _write(tmp_path, f"{line}\n{reply_line}\n")
    (sample,) = _parse(path, owner=OwnerIdentity(names=["Me"])).samples
    assert sample.written_at == expected.replace(tzinfo=UTC)
    assert (sample.prompt, sample.text) == ("x", "yes")


@pytest.mark.parametrize("text, location, words", [
    ("hello there\n15/03/2024, 21:05 - Ann: x\n", "line 1", "not a WhatsApp message line"),
    ("15/03/2024, 21:05 - Ann: x\n31/02/2024, 21:06 - Me: y\n", "line 2", "not a valid date"),
    ("15/03/2024, 21:05 - Ann: x\n03/15/2024, 21:06 - Me: y\n", "line 2", "mix day/month"),
    ("15/03/2024, 13:05 PM - Ann: x\n", "line 1", "12-hour"),
])
def test_malformed_lines_are_located(tmp_path: Path, text: str, location: str, words: str):
    path = _write(tmp_path, text)
    with pytest.raises(ImportFormatError) as caught:
        _parse(path, owner=OwnerIdentity(names=["Me"]), format="whatsapp")
    assert caught.value.location == location
    assert words in str(caught.value) and str(caught.value).startswith("chat.txt, ")


def test_not_utf8_is_reported_with_the_byte(tmp_path: Path):
    path = tmp_path / "chat.txt"
    path.write_bytes("15/03/2024, 21:05 - Ann: café\n".encode("latin-1"))
    with pytest.raises(ImportFormatError) as caught:
        _parse(path, format="whatsapp")
    assert caught.value.location == "byte 28" and "UTF-8" in str(caught.value)
