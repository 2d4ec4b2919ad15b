"""E-mail: `.mbox` mailboxes and single `.eml` messages.

Only the owner's sent mails become samples: mails from one of the owner's addresses, mails in a
mailbox named like "Sent", or mails Gmail labels "Sent". A sent mail whose parent (In-Reply-To,
References) is in the same file becomes a reply sample, with the earlier mails of the thread as
context; any other sent mail is a monologue. Quotes and signatures are stripped (mailtext).
"""

from __future__ import annotations

import email.errors
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from loop.importing.base import (
    MAX_CONTEXT_TURNS,
    ImportFormatError,
    OwnerIdentity,
    OwnerUnknownError,
    ParsedFile,
    Skip,
    make_sample,
    read_bytes,
)
from loop.importing.mailtext import html_to_text, strip_quotes_and_signature
from loop.importing.text import chunk_paragraphs
from storage.models import SampleKind

logger = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(r"<[^<>\s]{1,500}>")
_HEADER_LINE = re.compile(rb"^[!-9;-~]{1,100}:")
# A mailbox of sent mail, by its usual names ("Sent", "Sent Items", "[Gmail]/Sent Mail", "Gesendet", ...).
_SENT_BOX = re.compile(r"(?<![^\W\d_])(?:sent|gesendet|envoy[ée]s?|enviados|inviati|verzonden)(?![^\W\d_])",
                       re.IGNORECASE)
# The stdlib parser is lenient but some malformed headers make it raise these while reading.
_PARSER_ERRORS = (ValueError, TypeError, LookupError, AttributeError, IndexError, UnicodeError, RecursionError,
                  email.errors.MessageError)


@dataclass
class Mail:
    location: str
    message_id: str | None
    parents: list[str]  # In-Reply-To first, then References newest first
    name: str
    address: str
    written_at: datetime | None
    body: str
    labels: set[str] = field(default_factory=set)

    @property
    def sender(self) -> str:
        return self.name or self.address


def split_mbox(path: Path, data: bytes) -> list[tuple[int, bytes]]:
    """(line number, raw message) for each message of an mbox: a "From " line after a blank line."""
    lines = data.split(b"\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return []
    if not lines[first].startswith(b"From "):
        raise ImportFormatError(path, f"line {first + 1}", "an mbox file starts with a 'From ' line")
    messages: list[tuple[int, bytes]] = []
    start = first
    for index in range(first + 1, len(lines)):
        if lines[index].startswith(b"From ") and not lines[index - 1].strip():
            messages.append((start + 1, b"\n".join(lines[start + 1:index])))
            start = index
    messages.append((start + 1, b"\n".join(lines[start + 1:])))
    return messages


def _message_ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value or "")


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):  # an unknown or lying charset: read what can be read
        content = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        content = html_to_text(content)
    return strip_quotes_and_signature(content)


def read_mail(path: Path, raw: bytes, location: str) -> Mail:
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        name, address = (getaddresses([str(message.get("From", ""))]) or [("", "")])[0]
        written_at = None
        if message.get("Date"):
            try:
                written_at = parsedate_to_datetime(str(message["Date"]))
            except (TypeError, ValueError, IndexError, OverflowError):
                written_at = None
            if written_at is not None and written_at.tzinfo is None:
                written_at = written_at.replace(tzinfo=timezone.utc)
        ids = _message_ids(str(message.get("Message-ID", "")))
        parents = _message_ids(str(message.get("In-Reply-To", ""))) + \
            list(reversed(_message_ids(str(message.get("References", "")))))
        labels = {label.strip().casefold() for label in str(message.get("X-Gmail-Labels", "")).split(",")}
        return Mail(location=location, message_id=ids[0] if ids else None, parents=parents, name=name.strip(),
                    address=address.strip(), written_at=written_at, body=_body(message), labels=labels)
    except _PARSER_ERRORS as error:
        raise ImportFormatError(path, location, f"unreadable mail ({type(error).__name__}: {error})") from None


def _read_mails(path: Path) -> list[Mail]:
    data = read_bytes(path)
    if data.lstrip().startswith(b"From ") or path.suffix.lower() in (".mbox", ".mbx"):
        return [read_mail(path, raw, f"mail {number} (line {line})")
                for number, (line, raw) in enumerate(split_mbox(path, data), 1)]
    first = data.lstrip()[:1000]
    if not _HEADER_LINE.match(first):
        raise ImportFormatError(path, "line 1", "not an e-mail: a mail starts with header lines such as 'From: ...'")
    return [read_mail(path, data, "headers")]


def parse_email(path: Path, *, owner: OwnerIdentity) -> ParsedFile:
    mails = _read_mails(path)
    parsed = ParsedFile(path=path, format="email", messages=len(mails))
    sent_box = bool(_SENT_BOX.search(path.stem))

    def is_owner(mail: Mail) -> bool:
        return sent_box or "sent" in mail.labels or owner.has_email(mail.address)

    if mails and not any(is_owner(m) for m in mails):
        senders = Counter(m.address or m.name or "(no sender)" for m in mails)
        hint = ("Give your address with --email ADDRESS (or owner_emails in config.toml), "
                "or import your Sent mailbox.")
        raise OwnerUnknownError(path, senders=senders.most_common(), hint=hint)
    by_id = {m.message_id: m for m in mails if m.message_id}
    source = f"email:{path.name}"
    for mail in mails:
        if not is_owner(mail):
            parsed.skipped[Skip.not_owner] += 1
            continue
        if not mail.body:
            parsed.skipped[Skip.empty] += 1
            continue
        parent = next((by_id[i] for i in mail.parents if i in by_id and by_id[i] is not mail), None)
        if parent is not None and not is_owner(parent) and parent.body:
            parsed.samples.append(make_sample(
                kind=SampleKind.reply, text=mail.body, prompt=parent.body, sender=parent.sender,
                context=_thread_context(parent, by_id, is_owner), written_at=mail.written_at, source=source))
        else:
            for chunk in chunk_paragraphs(mail.body):
                parsed.samples.append(make_sample(kind=SampleKind.monologue, text=chunk,
                                                  written_at=mail.written_at, source=source))
    logger.info("%s: %d samples from %d mails", path, len(parsed.samples), len(mails))
    return parsed


def _thread_context(parent: Mail, by_id: dict[str, Mail], is_owner) -> list[dict[str, str | None]]:
    """The mails above `parent` in its thread, oldest first, as context turns."""
    turns: list[dict[str, str | None]] = []
    seen = {id(parent)}
    current = parent
    while len(turns) < MAX_CONTEXT_TURNS:
        above = next((by_id[i] for i in current.parents if i in by_id and id(by_id[i]) not in seen), None)
        if above is None:
            break
        seen.add(id(above))
        if above.body:
            turns.append({"role": "owner" if is_owner(above) else "other", "text": above.body,
                          "sender": above.sender})
        current = above
    return list(reversed(turns))
