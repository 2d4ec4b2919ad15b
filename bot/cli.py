"""The `twin` console script: loop's commands plus `twin run`, the one that may start the bot.

The composition root sits here, above every room, so no room depends on one above it: loop's
CLI (`loop.cli.app`) knows nothing of Telegram, and `run` starts the bot (`bot.app.run_bot`) when
TWIN_TELEGRAM_TOKEN is set, else loop's terminal chat. `twin --help` lists every command.
"""

from __future__ import annotations

import sys
import threading

from loop.cli import OwnerOption, app, fail, get_config, prepare_run, run_terminal
from loop.drafting import draft_from_many_threads

__all__ = ["app"]


@app.command()
def run(owner: OwnerOption = None) -> None:
    """Run the twin: the Telegram bot if TWIN_TELEGRAM_TOKEN is set (else the terminal chat), with the nightly scheduler.

    Drafts are written in this process, or with generation.backend = "openai" by a shared drafting
    server at generation.server_url (API key from TWIN_SERVER_API_KEY; see `twin register-adapters`).
    """
    config = get_config()
    if config.telegram_token:
        draft_from_many_threads()  # the bot drafts from a warm-up thread and asyncio's worker threads
    telegram_id, twin = prepare_run(config, owner)
    if not config.telegram_token:
        run_terminal(config, twin, telegram_id)
        return
    if not config.owners:
        fail("Set `owners` in the config to your Telegram user id first: the bot serves configured owners only.", 2)
    from bot.app import run_bot

    # Converting the active adapters for fast drafting takes seconds each: do it while the bot starts.
    threading.Thread(target=twin.warm_up, name="twin-warm-up", daemon=True).start()
    run_bot(config, twin)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
