"""E-mail importer: mbox threads, single .eml files, quotes and signatures stripped."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from loop.importing import ImportFormatError, OwnerIdentity, OwnerUnknownError, Skip, parse_file
from loop.importing.mailtext import html_to_text, strip_quotes_and_signature

FIXTURES = Path(__file__).parents[1] / "fixtures" / "email"
SAM = OwnerIdentity(emails=["Sam@Example.org"])


def test_mbox_thread_becomes_replies_and_monologues():
    parsed = parse_file(FIXTURES / "inbox.mbox", owner=SAM)
    assert parsed.format == "email" and parsed.messages == 7
    assert dict(parsed.skipped) == {Skip.not_owner: 3}
    may, driving, guidebook, html = parsed.samples
    assert [s.kind.value for s in parsed.samples] == ["reply", "reply", "monologue", "reply"]
    # Attribution, quoted lines and the "-- " signature with a phone number are gone.
    assert may.text == "May it is then. Last two weeks of May work for me, the cottage is free\nfrom the 18th."
    assert may.prompt.startswith("Hi Sam,\n\nAre we doing the lake district")
    assert (may.sender, may.context) == ("Alice Nguyen", [])
    assert may.written_at == datetime(2024, 3, 5, 12, 15, tzinfo=timezone.utc)
    # Top-posted reply with a wrapped "On ... wrote:" and "Sent from my iPhone".
    assert driving.text == "Driving, I'll pick you up. Train with all the gear is a nightmare."
    assert driving.prompt == "Perfect. Should I book the train or are we driving?"
    assert [(t["role"], t["sender"]) for t in driving.context] == [("other", "Alice Nguyen"), ("owner", "Sam Carter")]
    assert driving.context[1]["text"] == may.text
    # Quoted-printable UTF-8 decoded; "--" signature cut.
    assert guidebook.text.startswith("Bob,\n\nFound the guidebook") and "Münich" in guidebook.text
    assert guidebook.text.endswith("Bring chalk on Thursday, I'm out.")
    # An HTML-only reply: text extracted, the gmail_quote block dropped.
    assert html.text == "Absolutely, count me in.\n\nI'll be there by 7."
    assert html.prompt == "Are you still up for the new wall on Thursday? Carol's coming too."


def test_eml_without_its_parent_is_a_monologue():
    parsed = parse_file(FIXTURES / "reply.eml", owner=SAM)
    (sample,) = parsed.samples
    assert sample.kind.value == "monologue"
    assert sample.text == ("Hi Dana,\n\nPaid this morning, it should land by Wednesday. Card ending 1111, in\n"
                           "case your team needs it.\n\nThanks,\nSam")


def test_unknown_owner_asks_for_an_address():
    with pytest.raises(OwnerUnknownError) as caught:
        parse_file(FIXTURES / "inbox.mbox", owner=OwnerIdentity())
    assert "sam@example.org: 4 messages" in str(caught.value) and "--email ADDRESS" in str(caught.value)


SENT_MAIL = """From sam@example.org Thu Mar  7 21:40:00 2024
From: Sam <sam@work.example>
Subject: notes
Date: Thu, 07 Mar 2024 21:40:00 +0000
{label}
Remember to water the plants.

From sam@example.org Thu Mar  7 22:40:00 2024
From: Someone <someone@example.com>
Subject: hello
Date: Thu, 07 Mar 2024 22:40:00 +0000

Not the owner's words.
"""


def test_sent_mailbox_is_the_owners(tmp_path: Path):
    path = tmp_path / "Sent Items.mbox"
    path.write_text(SENT_MAIL.format(label=""), encoding="utf-8")
    parsed = parse_file(path, owner=OwnerIdentity())
    assert [s.text for s in parsed.samples] == ["Remember to water the plants.", "Not the owner's words."]


def test_a_name_merely_containing_sent_is_not_a_sent_mailbox(tmp_path: Path):
    path = tmp_path / "Presentations.mbox"
    path.write_text(SENT_MAIL.format(label=""), encoding="utf-8")
    with pytest.raises(OwnerUnknownError):
        parse_file(path, owner=OwnerIdentity())


def test_gmail_sent_label_marks_the_owners_mail(tmp_path: Path):
    path = tmp_path / "All mail.mbox"
    path.write_text(SENT_MAIL.format(label="X-Gmail-Labels: Important,Sent\n"), encoding="utf-8")
    parsed = parse_file(path, owner=OwnerIdentity())
    assert [s.text for s in parsed.samples] == ["Remember to water the plants."]
    assert dict(parsed.skipped) == {Skip.not_owner: 1}


def test_interleaved_reply_keeps_owner_lines():
    body = ("On Mon, 4 Mar 2024, Ann wrote:\n> Can you come?\nYes, gladly.\n\n> What time?\nSeven.\n\n"
            "--\nSam\n")
    assert strip_quotes_and_signature(body) == "Yes, gladly.\n\nSeven."


@pytest.mark.parametrize("tail", [
    "Le lun. 4 mars 2024 à 10:00, Ann <ann@example.com> a écrit :\nVoici le texte.",
    "-----Original Message-----\nFrom: Ann\nSent: today\nhi",
    "From: Ann <ann@example.com>\nDate: Monday\nSubject: x\n\nhi",
    "On Mon, 4 Mar 2024 at 10:00, Ann wrote:\n\nunmarked quoted text",
])
def test_quote_headers_end_the_owners_part(tail: str):
    assert strip_quotes_and_signature(f"Sounds good.\n\n{tail}\n") == "Sounds good."


def test_html_to_text_skips_styles_and_quotes():
    html = ("<style>.x{}</style><div>One<br>Two</div><blockquote><div>quoted</div></blockquote>"
            "<p>Three &amp; four</p>")
    assert html_to_text(html) == "One\nTwo\n\nThree & four"


def test_mbox_must_start_with_from_line(tmp_path: Path):
    path = tmp_path / "box.mbox"
    path.write_text("Subject: hi\n\nbody\n", encoding="utf-8")
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=SAM)
    assert str(caught.value) == "box.mbox, line 1: an mbox file starts with a 'From ' line"


def test_eml_without_headers_is_refused(tmp_path: Path):
    path = tmp_path / "note.eml"
    path.write_text("just some words\nno headers\n", encoding="utf-8")
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=SAM)
    assert caught.value.location == "line 1" and "not an e-mail" in str(caught.value)
