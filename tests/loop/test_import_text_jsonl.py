"""Plain text, Markdown and JSON Lines importers, and chunking at paragraph boundaries."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from loop.importing import ImportFormatError, OwnerIdentity, Skip, parse_file
from loop.importing.text import MAX_CHUNK_CHARS, chunk_paragraphs

FIXTURES = Path(__file__).parents[1] / "fixtures"
WRITING = FIXTURES / "writing"
NOBODY = OwnerIdentity()


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def test_journal_is_chunked_at_paragraph_boundaries():
    parsed = parse_file(WRITING / "journal.txt", owner=NOBODY)
    assert parsed.format == "text"
    assert [s.kind.value for s in parsed.samples] == ["monologue", "monologue"]
    assert all(len(s.text) <= MAX_CHUNK_CHARS for s in parsed.samples)
    source = _paragraphs((WRITING / "journal.txt").read_text(encoding="utf-8"))
    chunked = [p for s in parsed.samples for p in _paragraphs(s.text)]
    assert chunked == source  # every paragraph whole, in order, none lost
    assert parsed.samples[0].written_at.tzinfo is not None
    assert parsed.samples[0].source == "text:journal.txt"


def test_markdown_drops_front_matter_code_and_comments():
    parsed = parse_file(WRITING / "posts" / "first-post.md", owner=NOBODY)
    (sample,) = parsed.samples
    assert sample.text.startswith("# Why I write things down\n\nI used to think notes")
    assert "title:" not in sample.text and "TODO" not in sample.text and "exec" not in sample.text
    assert sample.text.endswith("future me will be glad.")
    assert dict(parsed.skipped) == {Skip.code: 1}


def test_long_paragraph_is_cut_at_sentences_then_spaces():
    sentence = "This sentence is exactly forty-four chars. "
    paragraph = sentence * 100
    chunks = chunk_paragraphs(f"short one\n\n{paragraph}\n\nlast one", max_chars=500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(c.endswith((".", "last one")) for c in chunks[1:])
    assert " ".join(" ".join(c.split()) for c in chunks) == " ".join(f"short one {paragraph} last one".split())
    word = "x" * 1200
    assert [len(c) for c in chunk_paragraphs(word, max_chars=500)] == [500, 500, 200]


def test_empty_text_file_yields_nothing(tmp_path: Path):
    path = tmp_path / "empty.md"
    path.write_text("\n\n   \n", encoding="utf-8")
    parsed = parse_file(path, owner=NOBODY)
    assert parsed.samples == [] and dict(parsed.skipped) == {Skip.empty: 1}


def test_text_in_another_encoding_is_refused_with_the_byte(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_bytes("Grüße aus Köln".encode("cp1252"))
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=NOBODY)
    assert str(caught.value) == "notes.txt, byte 2: not UTF-8 text; save the file as UTF-8 and import it again"


def test_utf16_with_bom_is_read(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_bytes("Grüße aus Köln.\r\n\r\nZweiter Absatz.".encode("utf-16"))
    (sample,) = parse_file(path, owner=NOBODY).samples
    assert sample.text == "Grüße aus Köln.\n\nZweiter Absatz."


def test_jsonl_rows():
    parsed = parse_file(FIXTURES / "samples.jsonl", owner=NOBODY)
    assert parsed.format == "jsonl" and parsed.messages == 5
    assert dict(parsed.skipped) == {Skip.empty: 1}
    pizza, lunch, walk, bug = parsed.samples
    assert (pizza.kind.value, pizza.prompt, pizza.text, pizza.sender) == ("reply", "there will be pizza",
                                                                          "ok fine im in", "Alice")
    assert pizza.context == [{"role": "other", "text": "are you coming tonight?", "sender": "Alice"},
                             {"role": "owner", "text": "depends", "sender": None}]
    assert pizza.written_at == datetime(2024, 6, 1, 19, 30, tzinfo=timezone.utc)
    # Plain strings alternate, the owner speaking just before the message.
    assert [(t["role"], t["text"]) for t in lunch.context] == [("owner", "hi"), ("other", "hey!"),
                                                               ("owner", "what are you up to")]
    assert walk.kind.value == "monologue" and walk.prompt is None
    assert [t["role"] for t in bug.context] == ["other", "owner"]  # user/assistant roles understood


@pytest.mark.parametrize("lines, location, words", [
    (['{"text": "fine"}', '{"text": "broken'], "line 2, column 10", "not valid JSON"),
    (['{"text": "fine"}', '', '["a list"]'], "line 3", "must be a JSON object"),
    (['{"reply": "yes"}'], "line 1", "needs the 'message'"),
    (['{"message": "q", "reply": 5}'], "line 1", "'reply' must be a string"),
    (['{"message": "q", "reply": "a", "context": "nope"}'], "line 1", "'context' must be a list"),
    (['{"message": "q", "reply": "a", "context": [{"role": "boss", "text": "x"}]}'], "line 1", "needs 'role'"),
    (['{"text": "x", "written_at": "soon"}'], "line 1", "'written_at' is not"),
    (['{"prompt": "x"}'], "line 1", "a row needs"),
])
def test_jsonl_errors_are_located(tmp_path: Path, lines, location, words):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ImportFormatError) as caught:
        parse_file(path, owner=NOBODY)
    assert caught.value.location == location and words in str(caught.value)
    assert str(caught.value).startswith(f"rows.jsonl, {location}: ")


def test_jsonl_accepts_a_bom_and_crlf(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "hello"}).encode() + b"\r\n")
    assert [s.text for s in parse_file(path, owner=NOBODY).samples] == ["hello"]
