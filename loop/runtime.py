"""Start-up shared by the CLI and the bot: logging, a private data folder, the migrated database.

Keeping this in one place means `twin run`, `twin chat` and the tests open the twin the same way.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import Engine

from loop.config import TOKEN_ENV, Config
from storage.db import open_database

logger = logging.getLogger(__name__)


class _RedactToken(logging.Filter):
    """Keep the bot token out of every log line: messages, tracebacks and stack traces.

    The token appears in Bot API URLs, also percent-encoded in file download URLs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        token = os.environ.get(TOKEN_ENV)
        message = record.getMessage()
        redacted = redact(message, token)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, token)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, token)
        return True


_TOKEN_PATTERN = re.compile(r"(?<![0-9])[0-9]{6,12}(?::|%3[Aa])[A-Za-z0-9_-]{30,}")


def redact(text: str, token: str | None = None) -> str:
    """`text` with the bot token (the configured one, or anything shaped like one) replaced."""
    if token:
        text = text.replace(token, "[token]").replace(quote(token, safe=""), "[token]")
    return _TOKEN_PATTERN.sub("[token]", text)


def install_token_redaction() -> None:
    """Attach the redacting filter to every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactToken) for f in handler.filters):
            handler.addFilter(_RedactToken())


def setup_logging(config: Config, *, log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=config.log_level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every Bot API URL, token included, at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl" on every command
    install_token_redaction()


def ensure_data_dir(config: Config) -> Path:
    """The data folder, created readable by its owner only: it holds private writing."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o700)
    return config.data_dir


def open_engine(config: Config) -> Engine:
    ensure_data_dir(config)
    return open_database(config.db_url, busy_timeout_s=config.database_busy_timeout_s)
