"""The twin in a terminal: each message gets a draft, then accept / edit / reject / another.

Feedback goes through `Twin.record_verdict`, exactly as the bot stores it. Everything printed
goes through rich, which reads `[...]` as markup: the menu, drafts and errors are escaped so
they show as written.
"""

from __future__ import annotations

from typing import Callable

from rich.console import Console
from rich.markup import escape

from loop.errors import DraftingError, StorageError
from loop.twin import Twin

CHAT_KEY = "cli:chat"
HELP = escape("[a]ccept  [e]dit  [r]eject  a[n]other  [s]kip")  # the key in brackets


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
        try:
            draft = twin.draft_reply(telegram_id=telegram_id, chat_key=CHAT_KEY, incoming=incoming)
        except DraftingError as error:
            console.print(f"[red]{escape(str(error))}[/red]")
            continue
        while draft is not None:
            console.print(f"[green]twin>[/green] {escape(draft.text)}  [dim](v{draft.adapter_version}, {draft.latency_ms} ms)[/dim]")
            try:
                draft, saved = _verdict(twin, telegram_id, draft.id, ask, console)
            except (EOFError, KeyboardInterrupt):
                console.print()
                return stored
            stored += saved


def _verdict(twin: Twin, telegram_id: int, draft_id: int, ask: Callable[[str], str], console: Console):
    """Ask for one verdict; returns (the next draft to judge or None, verdicts stored)."""
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
                verdict = twin.record_verdict(telegram_id=telegram_id, draft_id=draft_id, kind="regenerate")
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
