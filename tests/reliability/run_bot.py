"""`twin run` for the kill -9 tests: the real bot process with the FakeDrafter (the real model is
too slow for a test), against a Bot API at a given URL.

    TWIN_TELEGRAM_TOKEN=... python -m tests.reliability.run_bot \\
        --data-dir DIR --database-url URL --owner 1001 --base-url http://127.0.0.1:PORT/bot \\
        --base-file-url http://127.0.0.1:PORT/file/bot [--draft-delay 0.05] [--webhook-port PORT]

It starts exactly as `twin run` does with a token (loop.runtime: logging with token redaction,
private data folder, migrated database; bot.app.run_bot: long polling, or with --webhook-port a webhook
on 127.0.0.1, until a signal), only the drafter differs. The nightly scheduler is off.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bot.app import run_bot
from loop.config import Config
from loop.drafting import FakeDrafter
from loop.runtime import open_engine, setup_logging
from loop.twin import Twin

logger = logging.getLogger("tests.reliability.run_bot")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--owner", type=int, action="append", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--base-file-url", required=True)
    parser.add_argument("--draft-delay", type=float, default=0.0, help="seconds each fake draft takes")
    parser.add_argument("--webhook-port", type=int, help="webhook mode: listen on 127.0.0.1:PORT/tg/hook")
    parser.add_argument("--business-quiet", type=float, default=0.2, help="telegram.business_quiet_s")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = Config(data_dir=args.data_dir, database_url=args.database_url, owners=args.owner,
                    log_level=args.log_level)
    config.telegram.base_url, config.telegram.base_file_url = args.base_url, args.base_file_url
    config.schedule.enabled = False
    config.telegram.business_quiet_s = args.business_quiet
    if args.webhook_port:
        config.telegram.mode, config.telegram.webhook_port = "webhook", args.webhook_port
        config.telegram.webhook_url = f"http://127.0.0.1:{args.webhook_port}/tg/hook"
    setup_logging(config)
    twin = Twin(config, open_engine(config), FakeDrafter(delay_s=args.draft_delay))
    logger.info("bot process ready for owners %s", config.owners)
    run_bot(config, twin, run_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
