"""Telegram Desktop export (`result.json`): a single chat, or a full account export with `chats.list`.

Personal chats and groups become reply samples (loop.importing.chat); the saved-messages chat is
the owner's own notes, so each note is a monologue. Channels and bot chats are left out. The
owner is `user<id>` in `from_id`, with the id from the config or the export's
`personal_information`; service messages, stickers and media without a caption, and forwarded
messages (someone else's words) are counted and left out.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from loop.importing.base import (
    ImportFormatError,
    OwnerIdentity,
    OwnerUnknownError,
    ParsedFile,
    Skip,
    aware,
    decode_text,
    make_sample,
    read_bytes,
)
from loop.importing.chat import ChatMessage, chat_samples
from loop.importing.text import chunk_paragraphs
from storage.models import SampleKind

logger = logging.getLogger(__name__)

SKIPPED_CHAT_TYPES = {"bot_chat", "private_channel", "public_channel"}
# Keys that mark a message as carrying media; such a message without a caption has no writing.
MEDIA_KEYS = ("media_type", "photo", "file", "sticker_emoji", "poll", "location_information",
              "contact_information", "game_title", "invoice_information", "live_location_period_seconds")


def load_json(path: Path) -> Any:
    text = decode_text(path, read_bytes(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ImportFormatError(path, f"line {error.lineno}, column {error.colno}",
                                f"not valid JSON ({error.msg})") from None
    except RecursionError:
        raise ImportFormatError(path, None, "not valid JSON (nested too deeply)") from None
    except ValueError as error:  # e.g. an integer longer than Python converts
        raise ImportFormatError(path, None, f"not valid JSON ({error})") from None


def flatten_text(value: Any, *, path: Path, location: str) -> str:
    """The visible text of a message: a string, or a list of strings and entity objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                # A text_link's href and a mention's user id are not the owner's words: keep the text.
                parts.append(item["text"])
            else:
                raise ImportFormatError(path, location, "'text' must be a string or a list of entities "
                                                        "(strings or objects with a string 'text')")
        return "".join(parts)
    raise ImportFormatError(path, location, "'text' must be a string or a list of entities")


def message_time(raw: dict[str, Any], *, path: Path, location: str, tz: tzinfo | None) -> datetime:
    unixtime = raw.get("date_unixtime")
    if unixtime is not None:
        try:
            return datetime.fromtimestamp(int(unixtime), timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            raise ImportFormatError(path, location, f"'date_unixtime' is not a time: {unixtime!r:.40}") from None
    date = raw.get("date")
    if not isinstance(date, str):
        raise ImportFormatError(path, location, "a message needs a 'date' (or 'date_unixtime')")
    try:
        return aware(datetime.fromisoformat(date), tz)
    except (ValueError, OverflowError, OSError):
        raise ImportFormatError(path, location, f"'date' is not an ISO date and time: {date!r:.40}") from None


class _Chat:
    """One chat's messages converted, with the owner decided by the export's ids or names."""

    def __init__(self, path: Path, owner_ids: set[str], owner: OwnerIdentity, tz: tzinfo | None):
        self.path, self.owner_ids, self.owner, self.tz = path, owner_ids, owner, tz
        self.senders: Counter[str] = Counter()

    def is_owner(self, raw: dict[str, Any]) -> bool:
        if self.owner_ids:
            from_id = raw.get("from_id")
            return isinstance(from_id, str) and from_id in self.owner_ids
        return self.owner.has_name(raw.get("from") if isinstance(raw.get("from"), str) else None)

    def convert(self, messages: list[Any], prefix: str, skipped: Counter[str]) -> list[ChatMessage]:
        converted: list[ChatMessage] = []
        for index, raw in enumerate(messages):
            if not isinstance(raw, dict):
                raise ImportFormatError(self.path, f"{prefix}message #{index + 1}", "a message must be a JSON object")
            mid = raw.get("id")
            location = f"{prefix}message {mid}" if isinstance(mid, int) else f"{prefix}message #{index + 1}"
            kind = raw.get("type")
            if not isinstance(kind, str):
                raise ImportFormatError(self.path, location, "a message needs a string 'type'")
            at = message_time(raw, path=self.path, location=location, tz=self.tz)
            if kind != "message":
                skipped[Skip.service] += 1
                continue
            text = flatten_text(raw.get("text", ""), path=self.path, location=location).strip()
            sender = raw.get("from") if isinstance(raw.get("from"), str) else "Deleted Account"
            self.senders[f"{sender} ({raw.get('from_id')})"] += 1
            if raw.get("forwarded_from") is not None or raw.get("via_bot") is not None:
                skipped[Skip.forwarded] += 1
            elif not text:
                skipped[Skip.media if any(k in raw for k in MEDIA_KEYS) else Skip.empty] += 1
            else:
                converted.append(ChatMessage(text=text, sender=sender, is_owner=self.is_owner(raw), at=at))
        return converted


def parse_telegram(path: Path, *, owner: OwnerIdentity, max_gap: timedelta, tz: tzinfo | None = None) -> ParsedFile:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ImportFormatError(path, "line 1", "a Telegram export is a JSON object with 'messages' or 'chats'")
    owner_ids = {f"user{i}" for i in owner.telegram_ids}
    personal = data.get("personal_information")
    if isinstance(personal, dict) and isinstance(personal.get("user_id"), int):
        owner_ids.add(f"user{personal['user_id']}")
    chats = _chat_list(path, data)
    parsed = ParsedFile(path=path, format="telegram")
    source = f"telegram:{path.name}"
    converter = _Chat(path, owner_ids, owner, tz)
    any_owner = False
    for chat, prefix in chats:
        messages = chat.get("messages", [])
        if not isinstance(messages, list):
            raise ImportFormatError(path, prefix.rstrip(", ") or "top level", "'messages' must be a list")
        parsed.messages += len(messages)
        chat_type = chat.get("type") if isinstance(chat.get("type"), str) else None
        if chat_type in SKIPPED_CHAT_TYPES:
            if messages:
                parsed.skipped[Skip.channel] += len(messages)
            continue
        converted = converter.convert(messages, prefix, parsed.skipped)
        if chat_type == "saved_messages":
            # Notes to self: every one is the owner's, whoever the export says sent it.
            for message in converted:
                for chunk in chunk_paragraphs(message.text):
                    parsed.samples.append(make_sample(kind=SampleKind.monologue, text=chunk,
                                                      written_at=message.at, source=source))
            any_owner = any_owner or bool(converted)
            continue
        any_owner = any_owner or any(m.is_owner for m in converted)
        parsed.samples.extend(chat_samples(converted, max_gap=max_gap, source=source, skipped=parsed.skipped))
    if not any_owner and converter.senders:
        hint = ("Set `owners` (your Telegram user id) in config.toml, or pass --me NAME with your name as "
                "the export shows it; a full-account export names you in personal_information.")
        raise OwnerUnknownError(path, senders=converter.senders.most_common(), hint=hint)
    logger.info("%s: %d samples from %d messages", path, len(parsed.samples), parsed.messages)
    return parsed


def _chat_list(path: Path, data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(chat, location prefix) pairs: the one chat of a single-chat export, or every listed chat."""
    if "messages" in data:
        return [(data, "")]
    if "chats" not in data:
        raise ImportFormatError(path, "top level", "neither 'messages' (a single-chat export) nor 'chats' "
                                                   "(a full-account export) is present")
    chats: list[tuple[dict[str, Any], str]] = []
    for key in ("chats", "left_chats"):
        section = data.get(key)
        if section is None and key == "left_chats":
            continue
        if not isinstance(section, dict) or not isinstance(section.get("list"), list):
            raise ImportFormatError(path, key, f"'{key}' must be an object with a 'list' of chats")
        for index, chat in enumerate(section["list"]):
            if not isinstance(chat, dict):
                raise ImportFormatError(path, f"{key} #{index + 1}", "a chat must be a JSON object")
            chat_id = chat.get("id")
            name = f"chat {chat_id}" if isinstance(chat_id, int) else f"{key} #{index + 1}"
            chats.append((chat, f"{name}, "))
    return chats
