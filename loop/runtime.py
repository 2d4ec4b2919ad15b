"""Start-up shared by the CLI and the bot: logging, a private data folder, the migrated database.

Keeping this in one place means `twin run`, `twin chat` and the tests open the twin the same way.
"""

from __future__ import annotations

import logging
import os
import re
import sys
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


# The twin's own loggers; every other logger is a library's.
OWN_LOGGERS = frozenset({"loop", "bot", "storage", "training", "bench", "tests", "__main__"})
# Read by huggingface_hub when it is imported; transformers' bars ("Loading weights", and the
# GGUF conversion through training.model) follow it. Not tqdm's own TQDM_DISABLE: that would also
# hide the training progress `twin train` shows.
PROGRESS_BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS",)
_switched_off: set[str] = set()  # the switches this process set (and may take back with -v)


class _QuietLibraries(logging.Filter):
    """On the terminal, libraries speak only from WARNING up; the twin's own records all pass.

    APScheduler, python-telegram-bot, transformers & co. log their start-up at INFO: dozens of
    lines before the first prompt. `-v` or `log_level = "DEBUG"` leaves this filter out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OWN_LOGGERS


def is_verbose(config: Config, verbose: bool = False) -> bool:
    return verbose or config.log_level.upper() == "DEBUG"


def show_library_progress(show: bool) -> None:
    """Turn the progress bars of huggingface_hub and transformers on or off, for this process and
    the children it starts (an explicit HF_HUB_DISABLE_PROGRESS_BARS of the user is kept)."""
    for name in PROGRESS_BAR_SWITCHES:
        if not show and name not in os.environ:
            os.environ[name] = "1"
            _switched_off.add(name)
        elif show and name in _switched_off:
            os.environ.pop(name, None)
            _switched_off.discard(name)
    # Already imported (in-process callers, tests): the environment is read no more, tell them.
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if show else disable_progress_bars)()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        (transformers_logging.enable_progress_bar if show else transformers_logging.disable_progress_bar)()


def setup_logging(config: Config, *, log_file: Path | None = None, verbose: bool = False) -> None:
    """Log at `config.log_level`; on the terminal only the twin's own records and libraries'
    warnings, with no library progress bars, unless `verbose` (`-v`) or log_level is DEBUG."""
    verbose = is_verbose(config, verbose)
    console = logging.StreamHandler()
    if not verbose:
        console.addFilter(_QuietLibraries())
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=config.log_level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_library_progress(verbose)
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
