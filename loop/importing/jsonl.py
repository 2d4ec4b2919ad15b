"""JSON Lines written by hand or by other tools: one sample per line.

A reply row: `{"context": [...], "message": "what they wrote", "reply": "what I answered"}`;
a monologue row: `{"text": "..."}`. Optional: "sender" (who wrote the message) and
"written_at" (ISO 8601). Context items are turn objects (`{"role": "owner"|"other", "text": ...,
"sender": ...}`; "assistant"/"user" and "content" are understood too) or plain strings, which
are read as an alternating dialogue whose last turn, just before the message, is the owner's.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from loop.importing.base import ImportFormatError, ParsedFile, Skip, aware, make_sample, read_text
from storage.models import SampleKind

logger = logging.getLogger(__name__)

_ROLES = {"owner": "owner", "me": "owner", "assistant": "owner", "other": "other", "user": "other"}


def _string(path: Path, location: str, row: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ImportFormatError(path, location, f"'{key}' must be a string")
    return value


def _context(path: Path, location: str, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ImportFormatError(path, location, "'context' must be a list of turns")
    turns: list[dict[str, Any]] = []
    for back, item in enumerate(reversed(value)):
        if isinstance(item, str):
            turns.append({"role": "owner" if back % 2 == 0 else "other", "text": item, "sender": None})
            continue
        if not isinstance(item, dict):
            raise ImportFormatError(path, location, "a context turn must be a string or an object")
        role = _ROLES.get(str(item.get("role", "")).casefold())
        text = item.get("text", item.get("content"))
        sender = item.get("sender")
        if role is None or not isinstance(text, str) or not (sender is None or isinstance(sender, str)):
            raise ImportFormatError(path, location, "a context turn needs 'role' (owner or other) and a string "
                                                    "'text'; 'sender' is a string when given")
        turns.append({"role": role, "text": text, "sender": sender})
    return [t for t in reversed(turns) if t["text"].strip()]


def _written_at(path: Path, location: str, row: dict[str, Any], tz: tzinfo | None) -> datetime | None:
    value = row.get("written_at", row.get("date"))
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImportFormatError(path, location, "'written_at' must be an ISO 8601 date and time string")
    try:
        return aware(datetime.fromisoformat(value), tz)
    except (ValueError, OverflowError, OSError):
        raise ImportFormatError(path, location, f"'written_at' is not an ISO 8601 date and time: {value!r:.40}") from None


def parse_jsonl(path: Path, *, tz: tzinfo | None = None) -> ParsedFile:
    parsed = ParsedFile(path=path, format="jsonl")
    source = f"jsonl:{path.name}"
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        location = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ImportFormatError(path, f"{location}, column {error.colno}", f"not valid JSON ({error.msg})") from None
        except (RecursionError, ValueError) as error:
            raise ImportFormatError(path, location, f"not valid JSON ({type(error).__name__})") from None
        if not isinstance(row, dict):
            raise ImportFormatError(path, location, "each line must be a JSON object")
        parsed.messages += 1
        written_at = _written_at(path, location, row, tz)
        if "reply" in row:
            reply = _string(path, location, row, "reply", required=True) or ""
            if "message" not in row:
                raise ImportFormatError(path, location, "a row with 'reply' needs the 'message' it answers")
            message = _string(path, location, row, "message", required=True) or ""
            context = _context(path, location, row.get("context"))
            sender = _string(path, location, row, "sender")
            if not reply.strip() or not message.strip():
                parsed.skipped[Skip.empty] += 1
                continue
            parsed.samples.append(make_sample(kind=SampleKind.reply, text=reply.strip(), prompt=message.strip(),
                                              context=context, sender=sender, written_at=written_at, source=source))
        elif "text" in row:
            text = _string(path, location, row, "text", required=True) or ""
            if not text.strip():
                parsed.skipped[Skip.empty] += 1
                continue
            parsed.samples.append(make_sample(kind=SampleKind.monologue, text=text.strip(),
                                              written_at=written_at, source=source))
        else:
            raise ImportFormatError(path, location, "a row needs 'reply' and 'message' (a reply) or 'text' "
                                                    "(a monologue)")
    return parsed
