"""First words: how soon the owner sees a draft begin, from their message to the first visible text.

Issue 20's target: the first visible words within 0.3 s at the median on 2 cores. Measured from
outside, with the real bot: python-telegram-bot's Application runs unchanged against the fake Bot
API (bench/fakebotapi), with the real `EngineDrafter` (the embedded SmolLM2 on its default CPU
backend, llama.cpp on an fp16 GGUF; `--quick`: the tests' tiny random model, figures meaningless).
Each message is forwarded from another person, so each is another chat: only the system text is
in the prompt cache from the message before, as in real use. Timed per message, from the moment
the owner's message is handed to the fake server:

* "draft": `telegram.stream = "draft"`: the first `sendMessageDraft` call to arrive, and the final
  message with its buttons (the only thing the owner saw before drafts streamed);
* "edit": the server refuses sendMessageDraft (an older self-hosted server), so the fallback
  streams: the first preview message, and the final edit that gives it its buttons;
* "terminal": `twin chat`'s path (`loop.terminal.TerminalStream` on `Twin.draft_reply`): the
  first token printed, and the draft done;
* "off": `telegram.stream = "off"`, the path before streaming: the final message is the first
  thing shown, so what streaming costs the final draft is read against it.

    python -m bench.first_words --quick     # smoke test, tiny model (seconds)
    python -m bench.first_words             # SmolLM2, 32 messages per path (minutes)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from bench import common
from bench.corpus import ReplyPair, load_corpus

logger = logging.getLogger("bench.first_words")

SECTION = "first_words"
TARGET_FIRST_WORDS_S = 0.3
OWNER_TELEGRAM_ID = 4343
FRIEND_IDS = 700_000  # forwarded messages come from FRIEND_IDS + i: each message another chat


def as_gguf_base(model_dir: Path) -> bool:
    """Mark the quick run's tiny model as converted from the embedded GGUF file (it has the same
    vocabulary), so llama.cpp drafts it as it drafts SmolLM2; False where llama.cpp cannot run."""
    from training.inference.llamacpp import llamacpp_installed
    from training.model import COMPLETE_MARKER, EMBEDDED_GGUF, ModelLoadError, embedded_gguf_path

    try:
        embedded_gguf_path()
    except ModelLoadError:
        return False
    if not llamacpp_installed():
        return False
    (Path(model_dir) / COMPLETE_MARKER).write_text(EMBEDDED_GGUF + "\n", encoding="utf-8")
    return True


def build_twin(*, quick: bool, work: Path, threads: int, stream: str = "draft", interval_s: float = 0.3) -> Any:
    """A Twin on a fresh SQLite database with the real drafter, warmed up as `twin bot` warms it."""
    from loop.config import Config
    from loop.drafting import EngineDrafter
    from loop.twin import Twin
    from storage.db import open_database
    from training.config import GenerationSettings

    settings = common.model_settings(quick=quick, work=work, threads=threads, owner_name="Tim")
    config = Config(data_dir=work / "data", owners=[OWNER_TELEGRAM_ID], model=settings)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        from training.tiny import tiny_generation_settings

        as_gguf_base(Path(settings.base))
        config.generation = replace(tiny_generation_settings(), backend=GenerationSettings().backend)
    else:  # the embedded model, converted once and shared between runs
        common.share_models_dir(config.models_dir)
    config.telegram.stream, config.telegram.stream_interval_s = stream, interval_s
    database = open_database(config.db_url)
    twin = Twin(config, database, EngineDrafter.from_config(config))
    twin.warm_up()
    return twin


async def through_the_bot(twin: Any, pairs: Sequence[ReplyPair], *, refuse_drafts: bool,
                          offset: int) -> list[dict[str, float | None]]:
    """Per message: seconds to the first visible words and to the final message with its buttons.

    `offset` keeps this path's friends and message ids apart from an earlier path's, as the same
    database holds both."""
    from bench.fakebotapi import FakeBotApi
    from bot.app import build_application, polling

    timings = []
    async with FakeBotApi(first_message_id=offset + 1) as api:
        twin.config.telegram.base_url, twin.config.telegram.base_file_url = api.base_url, api.base_file_url
        api.refuse_message_drafts = refuse_drafts
        application = build_application(twin.config, twin, token=api.token)
        async with polling(application, timeout=5):
            owner = api.user(OWNER_TELEGRAM_ID, "Tim")
            for index, pair in enumerate([pairs[0], *pairs]):  # the first one warms up, not timed
                friend = {"id": FRIEND_IDS + offset + index, "is_bot": False, "first_name": pair.sender or "Friend"}
                before = len(api.calls)
                started = time.perf_counter()
                incoming = api.send_text(owner, pair.message, forward_from=friend)

                def final() -> Any:
                    return next((c for c in api.calls[before:] if c.ok and (c.params.get("reply_markup") or {})
                                 .get("inline_keyboard") and c.method in ("sendMessage", "editMessageText")), None)

                done = await api.wait_for(final, timeout=300, what=f"the draft for message {incoming['message_id']}")
                first = next((c for c in api.calls[before:] if c.ok and (
                    c.method == "sendMessageDraft" or (c.method == "sendMessage" and c.params.get("text")))), None)
                if index:
                    timings.append({"first_s": first.at - started if first is not None else None,
                                    "final_s": done.at - started, "streamed": first is not None and first is not done})
    return timings


def in_the_terminal(twin: Any, pairs: Sequence[ReplyPair]) -> list[dict[str, float | None]]:
    """`twin chat`'s drafting and printing, its console silent."""
    from rich.console import Console

    from loop.terminal import TerminalStream

    timings = []
    for index, pair in enumerate([pairs[0], *pairs]):
        stream = TerminalStream(Console(quiet=True))
        started = time.perf_counter()
        twin.draft_reply(telegram_id=OWNER_TELEGRAM_ID, chat_key=f"bench:terminal:{index}", incoming=pair.message,
                         on_text=stream.on_text)
        finished = time.perf_counter()
        if index:
            timings.append({"first_s": stream.first_at - started if stream.first_at else None,
                            "final_s": finished - started, "streamed": stream.first_at is not None})
    return timings


def summary(name: str, first_label: str, timings: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [t["first_s"] for t in timings if t["first_s"] is not None]
    finals = [t["final_s"] for t in timings]
    return {"path": name, "first": first_label, "n": len(timings), "streamed": sum(bool(t["streamed"]) for t in timings),
            "first_p50_s": common.percentile(firsts, 50), "first_p90_s": common.percentile(firsts, 90),
            "final_p50_s": common.percentile(finals, 50), "final_p90_s": common.percentile(finals, 90)}


def run(*, quick: bool, work: Path, threads: int, messages: int) -> dict[str, Any]:
    from loop.drafting import draft_from_many_threads

    draft_from_many_threads()  # as `twin run` does for the bot
    common.apply_threads(threads)
    facts = common.machine_facts()
    pairs = load_corpus()[:messages]
    twin = build_twin(quick=quick, work=work, threads=threads)
    backend = twin.drafter.engine.backend_for(twin.config.generation)
    rows = [summary("Telegram, sendMessageDraft", "first sendMessageDraft",
                    asyncio.run(through_the_bot(twin, pairs, refuse_drafts=False, offset=0))),
            summary("Telegram, refused: one edited message", "first preview message",
                    asyncio.run(through_the_bot(twin, pairs, refuse_drafts=True, offset=10_000))),
            summary("terminal (twin chat)", "first token printed", in_the_terminal(twin, pairs))]
    # The path before streaming, in the same run: what the owner waited for the draft, and what
    # streaming costs the final message.
    twin.config.telegram.stream = "off"
    rows.append(summary("Telegram, streaming off (before)", "the final message",
                        asyncio.run(through_the_bot(twin, pairs, refuse_drafts=False, offset=20_000))))
    twin.engine.dispose()
    first = rows[0]["first_p50_s"]
    report = {"facts": facts, "quick": quick, "messages": len(pairs), "backend": backend, "rows": rows,
              "target_met": first is not None and first <= TARGET_FIRST_WORDS_S,
              "new_tokens": twin.config.generation.max_new_tokens}
    (work / f"{SECTION}.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def markdown(report: dict[str, Any]) -> str:
    headers = ["path", "first visible", "messages", "streamed", "first words p50 s", "p90 s",
               "final draft p50 s", "p90 s"]
    rows = [[r["path"], r["first"], r["n"], r["streamed"], r["first_p50_s"], r["first_p90_s"], r["final_p50_s"],
             r["final_p90_s"]] for r in report["rows"]]
    return "\n".join([
        "## First words: streamed drafts", "",
        common.machine_markdown(report["facts"], quick=report["quick"]), "",
        f"{report['messages']} messages of the simulated owner's corpus, each forwarded from another person (another "
        f"chat), drafted by the real drafter (backend {report['backend']}, at most {report['new_tokens']} new tokens) "
        "behind the real bot and the fake Bot API; seconds from the owner's message to the first visible words and "
        "to the final draft with its buttons (before streaming, the final draft was the first thing shown).", "",
        common.markdown_table(headers, rows), "",
        f"Target: first words p50 ≤ {TARGET_FIRST_WORDS_S} s through sendMessageDraft: "
        f"{common.verdict(report['target_met'])}.", "",
        *_against_no_streaming(report["rows"]),
    ])


def _against_no_streaming(rows: list[dict[str, Any]]) -> list[str]:
    """What streaming changed for the owner, against the final-only path of the same run."""
    before = next((r for r in rows if r["path"].startswith("Telegram, streaming off")), None)
    streamed = rows[0]
    if before is None or before["final_p50_s"] is None or streamed["first_p50_s"] is None:
        return []
    later = streamed["final_p50_s"] - before["final_p50_s"]
    return [f"Against the final message only (before streaming, {common.fmt(before['final_p50_s'])} s at the "
            f"median): the first words come {common.fmt(before['final_p50_s'] - streamed['first_p50_s'])} s sooner, "
            f"and the final draft {common.fmt(abs(later))} s {'later' if later > 0 else 'sooner'}.", ""]


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=None, help="messages timed per path (default 32; quick 3)")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    with common.work_folder(args.work, "twin-bench-first-words-") as work:
        report = run(quick=args.quick, work=work, threads=args.threads, messages=args.messages or (3 if args.quick else 32))
    body = markdown(report)
    common.write_section(Path(args.out), SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
