"""The second simulated owner: one student's chats of the Chit-Chat Challenge, as a Telegram export.

Source: the PyPI package `chitchat-dataset` 0.9.0 (MIT, BYU Perception, Control & Cognition lab):
7,168 conversations between students in 2018, every utterance with a timestamp and a persistent
pseudonymous sender id. Its `dataset.json` maps a conversation id to
`{"messages": [[{"text", "timestamp", "sender"}, ...], ...], "prompt"?, "start", "ratings"?}`;
each inner list is one turn, consecutive utterances of one sender.

The owner is the sender whose id starts with `0f9fe1f8` (124 conversations). The older 80% of
their conversations, by the time of their first message, become a Telegram Desktop full-account
export (`result.json` with `chats.list`), imported with `twin import` as a user would; the newest
are held out, their (context, message, reply) items paired exactly as the importer pairs the
training ones (loop.importing.chat), so training and held-out items have the same shape. The
other people's lines in the training chats are the attribution negatives.

Each conversation is a chat of its own (a group named after the challenge's prompt): merged into
one chat per partner, a conversation's opening line would be paired with the end of the previous
one, which was often under the importer's 12-hour gap.

    pip install 'chitchat-dataset==0.9.0'          # or: pip install -e '.[bench]'
    python -m bench.chitchat --out /tmp/chitchat    # result.json, heldout.jsonl, summary.json

`bench/data/chitchat_owner_slice.json` is a few of the owner's conversations in the package's
format, so tests and `--quick` runs need neither the package nor a network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.corpus import DATA_DIR, Corpus, ReplyPair

OWNER_PREFIX = "0f9fe1f8"
HOLDOUT_FRACTION = 0.2
MAX_GAP = timedelta(hours=12)  # run_import's default: the pairs here are the ones `twin import` finds
SLICE_FILE = DATA_DIR / "chitchat_owner_slice.json"
PACKAGE = "chitchat-dataset==0.9.0"
# The slice: five of the owner's short two-sided conversations and one with only their lines (32 pairs).
SLICE_IDS = ("c6ae1c56-77d1-42d0-a16c-d804e3d95981", "00baa161-f5f6-458d-b89d-c44bac2b5f93",
             "38986fab-e88e-4a12-8631-405c8ff13c77", "2f90ee71-63d5-4864-b626-2784d4d29cf1",
             "15c96c88-17e4-4e8f-b88f-f32e59a435c4", "3e804da9-90c9-4491-ac9d-bdcb11c6ddc2")


class DatasetError(ValueError):
    """The dataset is missing, or not in the package's format; says where and why."""


@dataclass(frozen=True)
class Utterance:
    sender: str
    text: str
    at: datetime


@dataclass
class Conversation:
    id: str
    prompt: str | None
    utterances: list[Utterance]

    @property
    def start(self) -> datetime:
        return self.utterances[0].at


@dataclass
class OwnerCorpus:
    """What `build_owner_corpus` makes: the export of the training chats, the held-out items, the negatives."""

    owner: str
    export: dict[str, Any]
    train: list[ReplyPair]
    heldout: list[ReplyPair]
    negatives: list[str]
    train_conversations: list[Conversation]
    heldout_conversations: list[Conversation]

    def summary(self) -> dict[str, Any]:
        conversations = self.train_conversations + self.heldout_conversations
        owner_lines = sum(1 for c in conversations for u in c.utterances if u.sender == self.owner)
        others_lines = sum(1 for c in conversations for u in c.utterances if u.sender != self.owner)
        words = [len(p.reply.split()) for p in self.train + self.heldout]
        return {
            "owner": self.owner,
            "conversations": {"total": len(conversations), "train": len(self.train_conversations),
                              "heldout": len(self.heldout_conversations),
                              "one_sided": sum(1 for c in conversations if len({u.sender for u in c.utterances}) == 1)},
            "reply_pairs": {"total": len(words), "train": len(self.train), "heldout": len(self.heldout)},
            "owner_lines": owner_lines,
            "others_lines": others_lines,
            "negatives": len(self.negatives),
            "reply_words": {"mean": round(statistics.fmean(words), 2) if words else None,
                            "median": statistics.median(words) if words else None},
            "dates": {"first": _day(conversations[0].start) if conversations else None,
                      "last": _day(conversations[-1].utterances[-1].at) if conversations else None,
                      "heldout_from": _day(self.heldout_conversations[0].start) if self.heldout_conversations
                      else None},
        }


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


# Reading the dataset ---------------------------------------------------------------------------------

def load_dataset(source: Path | None = None) -> dict[str, Any]:
    """The dataset as a dict: `source` (the package's dataset.json or a slice of it), else the installed package's."""
    if source is None:
        try:
            import chitchat_dataset
        except ImportError:
            raise DatasetError(f"the chitchat dataset is not installed: pip install '{PACKAGE}' (or "
                               f"pip install -e '.[bench]'), or pass --source with its dataset.json") from None
        source = Path(chitchat_dataset.__file__).resolve().parent / "dataset.json"
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{source}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{source}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: the dataset is a JSON object of conversations by id")
    return data


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: 'timestamp' must be a string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"{where}: 'timestamp' is not an ISO time: {value!r:.40}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_conversation(conversation_id: str, raw: Any) -> Conversation:
    """One conversation of the dataset, its turns flattened into utterances, oldest first."""
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
        raise DatasetError(f"conversation {conversation_id}: needs a 'messages' list of turns")
    utterances: list[Utterance] = []
    for number, turn in enumerate(raw["messages"], start=1):
        if not isinstance(turn, list):
            raise DatasetError(f"conversation {conversation_id}, turn {number}: a turn is a list of utterances")
        for item in turn:
            where = f"conversation {conversation_id}, turn {number}"
            if not isinstance(item, dict) or not isinstance(item.get("sender"), str) \
                    or not isinstance(item.get("text"), str):
                raise DatasetError(f"{where}: an utterance needs string 'sender' and 'text'")
            utterances.append(Utterance(sender=item["sender"], text=item["text"], at=_time(item.get("timestamp"), where)))
    prompt = raw.get("prompt") if isinstance(raw.get("prompt"), str) and raw["prompt"].strip() else None
    # Stable: utterances of one second keep the order the dataset lists them in.
    return Conversation(id=conversation_id, prompt=prompt, utterances=sorted(utterances, key=lambda u: u.at))


def resolve_owner(dataset: dict[str, Any], owner_prefix: str) -> str:
    """The one sender id starting with `owner_prefix`."""
    senders = {item.get("sender") for raw in dataset.values() if isinstance(raw, dict)
               for turn in raw.get("messages") or [] if isinstance(turn, list)
               for item in turn if isinstance(item, dict) and isinstance(item.get("sender"), str)}
    matches = sorted(s for s in senders if s.startswith(owner_prefix))
    if len(matches) != 1:
        found = "no sender" if not matches else f"{len(matches)} senders ({', '.join(m[:13] for m in matches[:5])})"
        raise DatasetError(f"owner prefix {owner_prefix!r} matches {found}; give a longer, unique prefix")
    return matches[0]


def owner_conversations(dataset: dict[str, Any], owner: str) -> list[Conversation]:
    """The owner's conversations, oldest first by their first utterance."""
    conversations = [parse_conversation(cid, raw) for cid, raw in dataset.items()
                     if isinstance(raw, dict) and any(isinstance(item, dict) and item.get("sender") == owner
                                                      for turn in raw.get("messages") or [] if isinstance(turn, list)
                                                      for item in turn)]
    conversations = [c for c in conversations if c.utterances]
    return sorted(conversations, key=lambda c: (c.start, c.id))


# The Telegram export -----------------------------------------------------------------------------------

def telegram_user_id(key: str) -> int:
    """A stable Telegram-like id for a pseudonymous sender or a conversation (48 bits of a hash)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16)


def display_name(sender: str) -> str:
    return f"Student {sender[:8]}"


def _message(number: int, utterance: Utterance) -> dict[str, Any]:
    # `date` is the exporting machine's wall clock in Telegram Desktop; here UTC. The importer reads
    # `date_unixtime` first, so the pairing does not depend on the zone of the machine importing it.
    return {"id": number, "type": "message", "date": utterance.at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "date_unixtime": str(int(utterance.at.timestamp())), "from": display_name(utterance.sender),
            "from_id": f"user{telegram_user_id(utterance.sender)}", "text": utterance.text,
            "text_entities": [{"type": "plain", "text": utterance.text}]}


def telegram_export(conversations: Sequence[Conversation], owner: str) -> dict[str, Any]:
    """A Telegram Desktop full-account export (`result.json`) with one group chat per conversation."""
    number = 0
    chats = []
    for conversation in conversations:
        messages = []
        for utterance in conversation.utterances:
            number += 1
            messages.append(_message(number, utterance))
        chats.append({"name": conversation.prompt or f"Chit-chat {conversation.start:%Y-%m-%d %H:%M}",
                      "type": "private_group", "id": telegram_user_id(conversation.id), "messages": messages})
    return {
        "about": "Here is the data you requested. Remember: Telegram is ad free, it doesn't sell your data.",
        "personal_information": {"about": "This is your personal information.", "user_id": telegram_user_id(owner),
                                 "first_name": "Student", "last_name": owner[:8]},
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
    }


# Reply pairs --------------------------------------------------------------------------------------------

def reply_pairs(conversations: Iterable[Conversation], owner: str, *, max_gap: timedelta = MAX_GAP) -> list[ReplyPair]:
    """The (context, message, reply) items of the conversations, paired as `twin import` pairs a chat."""
    from loop.importing.chat import ChatMessage, chat_samples

    pairs: list[ReplyPair] = []
    for conversation in conversations:
        # As the Telegram importer reads them: stripped text, blank utterances left out.
        messages = [ChatMessage(text=u.text.strip(), sender=display_name(u.sender), is_owner=u.sender == owner, at=u.at)
                    for u in conversation.utterances if u.text.strip()]
        for sample in chat_samples(messages, max_gap=max_gap, source="chitchat", skipped=Counter()):
            pairs.append(ReplyPair(message=sample.prompt or "", reply=sample.text, written_at=sample.written_at,
                                   sender=sample.sender, context=[dict(turn) for turn in sample.context],
                                   thread=conversation.id))
    return pairs


def others_lines(conversations: Iterable[Conversation], owner: str) -> list[str]:
    """What the other people in these chats wrote: the attribution classifier's negatives."""
    return [u.text.strip() for c in conversations for u in c.utterances if u.sender != owner and u.text.strip()]


def build_owner_corpus(dataset: dict[str, Any], owner_prefix: str = OWNER_PREFIX,
                       holdout_fraction: float = HOLDOUT_FRACTION, *, max_gap: timedelta = MAX_GAP) -> OwnerCorpus:
    """Split the owner's conversations by time: the older ones as a Telegram export, the newest held out."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), not {holdout_fraction}")
    owner = resolve_owner(dataset, owner_prefix)
    conversations = owner_conversations(dataset, owner)
    held = round(len(conversations) * holdout_fraction)
    if holdout_fraction > 0 and len(conversations) >= 2:
        held = min(max(held, 1), len(conversations) - 1)  # something on each side
    train, heldout = conversations[:len(conversations) - held], conversations[len(conversations) - held:]
    return OwnerCorpus(owner=owner, export=telegram_export(train, owner), train=reply_pairs(train, owner, max_gap=max_gap),
                       heldout=reply_pairs(heldout, owner, max_gap=max_gap), negatives=others_lines(train, owner),
                       train_conversations=train, heldout_conversations=heldout)


# The corpus for the learning curve --------------------------------------------------------------------------

@dataclass
class ChatCorpus(Corpus):
    """The chats as a learning-curve corpus: its imported pairs reach the twin as a Telegram export."""

    owner_id: str = ""
    conversations: list[Conversation] = field(default_factory=list)
    import_format: str = "telegram"
    with_reference: bool = False

    def default_sizes(self, *, quick: bool) -> dict[str, int | None]:
        """As `build_owner_corpus` splits: the newest 20% of the conversations held out, the rest imported
        but for the last rounds' pairs (12 a round; 2 a round on the --quick slice)."""
        held = round(len(self.conversations) * HOLDOUT_FRACTION) or 1
        wanted = {c.id for c in self.conversations[len(self.conversations) - held:]}
        heldout = sum(1 for p in self.pairs if p.thread in wanted)
        rounds, per_round = (1, 2) if quick else (3, 12)
        return {"heldout": heldout, "imported": len(self.pairs) - heldout - rounds * per_round, "rounds": rounds,
                "pairs": None}

    def _threads(self, pairs: Sequence[ReplyPair]) -> list[Conversation]:
        wanted = {p.thread for p in pairs}
        return [c for c in self.conversations if c.id in wanted]

    def write_import(self, pairs: Sequence[ReplyPair], folder: Path) -> Path:
        """result.json with the whole conversations of `pairs` (the learning curve splits at their edges)."""
        path = Path(folder) / "result.json"
        path.write_text(json.dumps(telegram_export(self._threads(pairs), self.owner_id), ensure_ascii=False,
                                   indent=1), encoding="utf-8")
        return path

    def other_lines(self, pairs: Sequence[ReplyPair]) -> list[str]:
        return others_lines(self._threads(pairs), self.owner_id)


def chat_corpus(source: Path | None = None, owner_prefix: str = OWNER_PREFIX) -> ChatCorpus:
    """Every reply pair of the owner, oldest conversation first, from the package (or `source`)."""
    dataset = load_dataset(source)
    owner = resolve_owner(dataset, owner_prefix)
    conversations = owner_conversations(dataset, owner)
    return ChatCorpus(name="chat", owner=display_name(owner), pairs=reply_pairs(conversations, owner),
                      description=f"a student's chats in the Chit-Chat Challenge, 2018 ({len(conversations)} "
                                  f"conversations of sender {owner[:8]})",
                      source=f"PyPI {PACKAGE}, MIT" + (f", the slice {source.name}" if source else ""),
                      where="imported as a Telegram export, bench/chitchat.py",
                      owner_id=owner, conversations=conversations)


# Command line ---------------------------------------------------------------------------------------------

def write_outputs(corpus: OwnerCorpus, out: Path) -> dict[str, Any]:
    """result.json (the export), heldout.jsonl (held-out items), negatives.json and summary.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(corpus.export, ensure_ascii=False, indent=1), encoding="utf-8")
    with (out / "heldout.jsonl").open("w", encoding="utf-8") as handle:
        for pair in corpus.heldout:
            handle.write(json.dumps(pair.to_row(), ensure_ascii=False) + "\n")
    (out / "negatives.json").write_text(json.dumps(corpus.negatives, ensure_ascii=False), encoding="utf-8")
    summary = corpus.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def write_slice(dataset: dict[str, Any], conversation_ids: Sequence[str], path: Path = SLICE_FILE) -> Path:
    """A few conversations in the package's own format (the committed test and --quick slice)."""
    missing = [cid for cid in conversation_ids if cid not in dataset]
    if missing:
        raise DatasetError(f"no such conversation: {', '.join(missing)}")
    path.write_text(json.dumps({cid: dataset[cid] for cid in conversation_ids}, ensure_ascii=False, indent=1) + "\n",
                    encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for result.json, heldout.jsonl, summary.json")
    parser.add_argument("--source", type=Path, default=None,
                        help="the dataset's JSON (default: the installed chitchat-dataset package's)")
    parser.add_argument("--owner", default=OWNER_PREFIX, help="the owner's sender id or a unique prefix of it")
    parser.add_argument("--holdout", type=float, default=HOLDOUT_FRACTION,
                        help="share of the newest conversations held out (default 0.2)")
    parser.add_argument("--write-slice", action="store_true",
                        help=f"(re)write the committed slice {SLICE_FILE.relative_to(DATA_DIR.parent.parent)} instead")
    args = parser.parse_args(argv)
    if args.out is None and not args.write_slice:
        parser.error("--out is required (or --write-slice)")
    try:
        dataset = load_dataset(args.source)
        if args.write_slice:
            print(f"wrote {write_slice(dataset, SLICE_IDS)}")
            return 0
        corpus = build_owner_corpus(dataset, args.owner, args.holdout)
    except DatasetError as error:
        parser.exit(2, f"error: {error}\n")
    summary = write_outputs(corpus, args.out)
    conversations, pairs, words, dates = (summary["conversations"], summary["reply_pairs"], summary["reply_words"],
                                          summary["dates"])
    print(f"owner {summary['owner']}: {conversations['total']} conversations ({conversations['train']} in the export, "
          f"{conversations['heldout']} held out, {conversations['one_sided']} with only the owner's lines), "
          f"{pairs['total']} reply pairs ({pairs['train']} train, {pairs['heldout']} held out), "
          f"{summary['owner_lines']} owner lines, {summary['others_lines']} others' lines, replies "
          f"{words['mean']} words on average (median {words['median']}), {dates['first']} to {dates['last']} "
          f"(held out from {dates['heldout_from']}); written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
