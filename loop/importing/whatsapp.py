"""WhatsApp chat export (`.txt`): Android (`31/12/2023, 23:59 - Name: text`) and iOS
(`[31/12/2023, 23:59:59] Name: text`), 12- or 24-hour clocks, multi-line messages.

Dates are day-first or month-first depending on the phone's locale; one order holds for the
whole file, chosen from the dates themselves (a day above 12 settles it; otherwise the order
under which the chat runs forward in time). The owner is a name given by the caller: the most
frequent sender is not assumed to be the owner.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from loop.importing.base import (
    ImportFormatError,
    OwnerIdentity,
    OwnerUnknownError,
    ParsedFile,
    Skip,
    aware,
    read_text,
)
from loop.importing.chat import ChatMessage, chat_samples

logger = logging.getLogger(__name__)

_SPACE = "[ \u202f\u00a0]"
_DATE = r"(?P<d1>\d{1,4})(?P<sep>[./-])(?P<d2>\d{1,2})(?P=sep)(?P<d3>\d{1,4})"
_TIME = (rf"(?P<h>\d{{1,2}})[:.](?P<mi>\d{{2}})(?:[:.](?P<s>\d{{2}}))?"
         rf"(?:{_SPACE}?(?P<ampm>[AaPp])\.?{_SPACE}?[Mm]\.?)?")
BRACKET_LINE = re.compile(rf"^[\u200e\u200f]?\[{_DATE},?{_SPACE}{_TIME}\]{_SPACE}?(?P<rest>.*)$")
DASH_LINE = re.compile(rf"^[\u200e\u200f]?{_DATE},?{_SPACE}{_TIME}{_SPACE}[-–]{_SPACE}(?P<rest>.*)$")

MEDIA_MARKERS = {"<media omitted>", "image omitted", "video omitted", "audio omitted", "sticker omitted",
                 "gif omitted", "document omitted", "contact card omitted", "<video note omitted>"}
DELETED_MARKERS = {"this message was deleted", "you deleted this message", "waiting for this message",
                   "this message was deleted.", "you deleted this message."}
EDITED_SUFFIX = re.compile(r"\s*\u200e?<This message was edited>\s*$")
LINE_EXAMPLE = "'[31/12/2023, 23:59:59] Name: text' or '31/12/2023, 23:59 - Name: text'"


def looks_like_whatsapp(text: str) -> bool:
    """Whether the first non-empty line of `text` is a WhatsApp message line."""
    for line in text.split("\n", 20)[:20]:
        if line.strip():
            return bool(BRACKET_LINE.match(line) or DASH_LINE.match(line))
    return False


class _Entry:
    __slots__ = ("line", "match", "lines")

    def __init__(self, line: int, match: re.Match[str]):
        self.line, self.match, self.lines = line, match, [match.group("rest")]


def _entries(path: Path, text: str) -> list[_Entry]:
    entries: list[_Entry] = []
    pattern: re.Pattern[str] | None = None
    for number, line in enumerate(text.split("\n"), 1):
        match = (pattern.match(line) if pattern else (BRACKET_LINE.match(line) or DASH_LINE.match(line)))
        if match:
            pattern = match.re  # one export uses one style; other lines are message continuations
            entries.append(_Entry(number, match))
        elif entries:
            entries[-1].lines.append(line)
        elif line.strip():
            raise ImportFormatError(path, f"line {number}", f"not a WhatsApp message line; expected {LINE_EXAMPLE}")
    return entries


def _day_first(path: Path, entries: list[_Entry]) -> bool:
    """Whether dates read day/month/year (else month/day/year), decided once for the file."""
    day_first_line = month_first_line = None
    for entry in entries:
        first, second = int(entry.match.group("d1")), int(entry.match.group("d2"))
        if len(entry.match.group("d1")) < 3:
            if first > 12 and day_first_line is None:
                day_first_line = entry.line
            if second > 12 and month_first_line is None:
                month_first_line = entry.line
    if day_first_line and month_first_line:
        raise ImportFormatError(path, f"line {max(day_first_line, month_first_line)}",
                                f"dates mix day/month orders (see line {min(day_first_line, month_first_line)})")
    if day_first_line or month_first_line:
        return bool(day_first_line)

    def backwards(day_first: bool) -> int:
        keys = []
        for entry in entries:
            first, second, year = (int(entry.match.group(k)) for k in ("d1", "d2", "d3"))
            keys.append((year, second, first) if day_first else (year, first, second))
        return sum(1 for a, b in zip(keys, keys[1:]) if b < a)

    return backwards(True) <= backwards(False)


def _timestamp(path: Path, entry: _Entry, day_first: bool, tz: tzinfo | None) -> datetime:
    group = entry.match.group
    location = f"line {entry.line}"
    d1, d2, d3 = group("d1"), group("d2"), group("d3")
    if len(d1) >= 3:
        year, month, day = int(d1), int(d2), int(d3)
    elif len(d3) in (2, 4):
        year = int(d3) + (2000 if len(d3) == 2 else 0)
        day, month = (int(d1), int(d2)) if day_first else (int(d2), int(d1))
    else:
        raise ImportFormatError(path, location, f"not a date: {d1}{group('sep')}{d2}{group('sep')}{d3}")
    hour, minute, second = int(group("h")), int(group("mi")), int(group("s") or 0)
    if group("ampm"):
        if not 1 <= hour <= 12:
            raise ImportFormatError(path, location, f"not a 12-hour time: {hour}:{minute:02d}")
        hour = hour % 12 + (12 if group("ampm").lower() == "p" else 0)
    try:
        return aware(datetime(year, month, day, hour, minute, second), tz)
    except (ValueError, OverflowError, OSError) as error:
        raise ImportFormatError(path, location, f"not a valid date and time ({error})") from None


def _classify(sender: str | None, body: str) -> str | None:
    """The reason a message is left out, or None for the owner's or someone's words."""
    if sender is None:
        return Skip.service
    plain = body.strip().lstrip("\u200e\u200f").strip()
    lowered = plain.casefold()
    if lowered in MEDIA_MARKERS or lowered.endswith("document omitted") or lowered.startswith("<attached:") \
            or lowered.startswith("location: https://"):
        return Skip.media
    if lowered in DELETED_MARKERS:
        return Skip.deleted
    if body.lstrip().startswith("\u200e"):
        return Skip.service  # iOS marks calls, encryption notices and other system texts this way
    if not plain:
        return Skip.empty
    return None


def parse_whatsapp(path: Path, *, owner: OwnerIdentity, max_gap: timedelta, tz: tzinfo | None = None) -> ParsedFile:
    entries = _entries(path, read_text(path))
    parsed = ParsedFile(path=path, format="whatsapp", messages=len(entries))
    day_first = _day_first(path, entries)
    senders: Counter[str] = Counter()
    pending: list[tuple[str, str, datetime]] = []
    for entry in entries:
        at = _timestamp(path, entry, day_first, tz)
        head = entry.lines[0]
        sender, separator, first = head.partition(": ")
        if not separator:
            sender, first = (head[:-1], "") if head.endswith(":") else (None, head)
        body = EDITED_SUFFIX.sub("", "\n".join([first, *entry.lines[1:]]))
        reason = _classify(sender, body)
        if reason:
            parsed.skipped[reason] += 1
            continue
        sender = sender.strip().strip("\u200e\u200f\u202a\u202c").strip()  # type: ignore[union-attr]
        senders[sender] += 1
        pending.append((sender, body.strip(), at))
    if senders and not any(owner.has_name(name) for name in senders):
        hint = ("Choose with --me NAME (your name exactly as the chat shows it), or set owner_names in "
                "config.toml; the most frequent sender is not assumed to be you.")
        raise OwnerUnknownError(path, senders=senders.most_common(), hint=hint)
    messages = [ChatMessage(text=text, sender=sender, is_owner=owner.has_name(sender), at=at)
                for sender, text, at in pending]
    parsed.samples = chat_samples(messages, max_gap=max_gap, source=f"whatsapp:{path.name}", skipped=parsed.skipped)
    logger.info("%s: %d samples from %d messages", path, len(parsed.samples), parsed.messages)
    return parsed
