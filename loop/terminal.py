"""The twin in a terminal: each message gets a draft, then accept / edit / reject / another.

The draft is printed as it is written, token by token (`TerminalStream`); what is stored is the
final text, and it is printed whole again only if the model's cleaning changed what already showed.

Feedback goes through `Twin.record_verdict`, exactly as the bot stores it. Everything printed
goes through rich, which reads `[...]` as markup: the menu, drafts and errors are escaped so
they show as written.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.markup import escape

from loop.errors import DraftingError, StorageError
from loop.twin import Twin

CHAT_KEY = "cli:chat"
HELP = escape("[a]ccept  [e]dit  [r]eject  a[n]other  [s]kip")  # the key in brackets


class TerminalStream:
    """Prints a draft while it is written: "twin> " and then each new piece of the reply so far.

    `on_text` runs in the drafting call (the same thread here); `first_at` notes when the first
    words showed (time.perf_counter()), for bench/first_words.py.
    """

    def __init__(self, console: Console):
        self.console = console
        self.printed = ""
        self.first_at: float | None = None
        self.diverged = False

    def on_text(self, text: str) -> None:
        if self.diverged:
            return
        if not text.startswith(self.printed):  # cleaning changed what showed: the final line will say it
            self.diverged = True
            return
        if not self.printed:
            self.first_at = time.perf_counter()
            self.console.print("[green]twin>[/green] ", end="")
        self.console.print(escape(text[len(self.printed):]), end="", highlight=False, soft_wrap=True)
        self.printed = text

    def done(self, text: str, note: str) -> None:
        """End the draft's line: the note after the streamed text, or the whole text when it differs."""
        if self.printed and not self.diverged and text == self.printed:
            self.console.print(f"  [dim]{note}[/dim]", highlight=False)
            return
        if self.printed:
            self.console.print()
        self.console.print(f"[green]twin>[/green] {escape(text)}  [dim]{note}[/dim]", highlight=False)


def chat_loop(twin: Twin, *, telegram_id: int, console: Console, ask: Callable[[str], str] | None = None) -> int:
    """Run until end of input; returns the number of verdicts stored."""
    ask = ask or (lambda prompt: console.input(prompt))
    console.print("Type the message you received; the twin drafts your reply. Ctrl-D quits.")
    stored = 0
    while True:
        try:
            incoming = ask("[bold]they>[/bold] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return stored
        if not incoming:
            continue
        stream = TerminalStream(console)
        try:
            draft = twin.draft_reply(telegram_id=telegram_id, chat_key=CHAT_KEY, incoming=incoming,
                                     on_text=stream.on_text)
        except DraftingError as error:
            if stream.printed:
                console.print()
            console.print(f"[red]{escape(str(error))}[/red]")
            continue
        while draft is not None:
            stream.done(draft.text, f"(v{draft.adapter_version}, {draft.latency_ms} ms)")
            stream = TerminalStream(console)
            try:
                draft, saved = _verdict(twin, telegram_id, draft.id, ask, console, stream)
            except (EOFError, KeyboardInterrupt):
                console.print()
                return stored
            stored += saved


def _verdict(twin: Twin, telegram_id: int, draft_id: int, ask: Callable[[str], str], console: Console,
             stream: TerminalStream):
    """Ask for one verdict; returns (the next draft to judge or None, verdicts stored); "another"
    is printed through `stream` as it is written."""
    while True:
        choice = ask(f"{HELP} > ").strip().lower()[:1]
        try:
            if choice == "a":
                twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind="accept")
            elif choice == "e":
                text = ask("your text> ").strip()
                if not text:
                    console.print("[yellow]an edit needs your text; nothing saved[/yellow]")
                    continue
                twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind="edit", text=text)
            elif choice == "r":
                text = ask("what you would have sent (Enter to skip)> ").strip() or None
                twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind="reject", text=text)
            elif choice == "n":
                verdict = twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind="regenerate",
                                              on_text=stream.on_text)
                return verdict.new_draft, 1
            elif choice == "s":
                return None, 0
            else:
                console.print(HELP)
                continue
        except (StorageError, DraftingError) as error:
            console.print(f"[red]{escape(str(error))}[/red]")
            continue
        console.print("[dim]saved[/dim]")
        return None, 1
