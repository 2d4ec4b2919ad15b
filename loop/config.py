"""The twin's configuration: config.toml read into validated dataclasses.

The file is found from `--config`, then `TWIN_CONFIG`, then `./config.toml`. Relative paths in
it are relative to the file. The Telegram token is read from `TWIN_TELEGRAM_TOKEN` only, never
from the file. A wrong value fails at start with the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from training.config import (
    ConfigError,
    EvaluationSettings,
    GenerationSettings,
    InsightSettings,
    LoraSettings,
    ModelSettings,
    StageSettings,
    TrainingSettings,
)

TOKEN_ENV = "TWIN_TELEGRAM_TOKEN"
CONFIG_ENV = "TWIN_CONFIG"
LOCAL_OWNER_ID = 0  # the owner of the terminal when no Telegram owner is configured


STREAM_MODES = ("draft", "edit", "off")


@dataclass
class TelegramSettings:
    mode: str = "polling"  # polling | webhook
    base_url: str = ""  # a self-hosted Bot API server, e.g. "http://127.0.0.1:8081/bot"
    base_file_url: str = ""
    webhook_url: str = ""
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    max_upload_mb: int = 20
    draft_queue_size: int = 50  # drafts waiting per process; beyond it the owner is told "busy"
    allow_groups: bool = False
    business_quiet_s: float = 3.0  # a business chat is drafted once its contact has been quiet this long
    # The draft shown while it is written: "draft" (sendMessageDraft, falling back to "edit" where
    # refused), "edit" (one message edited as it grows) or "off" (the final message only).
    stream: str = "draft"
    stream_interval_s: float = 0.3  # at most one update of the partial text this often (edits: 1 s at least)

    def __post_init__(self) -> None:
        if self.stream not in STREAM_MODES:
            raise ConfigError("telegram.stream", self.stream, " | ".join(STREAM_MODES))
        if not 0.05 <= self.stream_interval_s <= 60:
            raise ConfigError("telegram.stream_interval_s", self.stream_interval_s, "0.05..60 seconds")
        if not 0 <= self.business_quiet_s <= 600:
            raise ConfigError("telegram.business_quiet_s", self.business_quiet_s, "0..600 seconds")
        if self.mode not in ("polling", "webhook"):
            raise ConfigError("telegram.mode", self.mode, "polling or webhook")
        if self.mode == "webhook" and not self.webhook_url:
            raise ConfigError("telegram.webhook_url", self.webhook_url, "an https URL when telegram.mode = webhook")
        if not 1 <= self.max_upload_mb <= 2000:
            raise ConfigError("telegram.max_upload_mb", self.max_upload_mb, "1..2000")
        if self.draft_queue_size < 1:
            raise ConfigError("telegram.draft_queue_size", self.draft_queue_size, "1 or more")


@dataclass
class ImportSettings:
    """What one imported file may cost: a larger or stranger file is refused with the limit named,
    and nothing of it is stored (a zip bomb, a 50 MB line, a file that eats the memory)."""

    max_file_mb: int = 200  # a file, or one file inside a zip, larger than this is refused
    max_line_kb: int = 1024  # longest line of a chat, text, JSON Lines or mail file
    max_unpacked_mb: int = 200  # the supported files of a zip together, unpacked
    max_entries: int = 10_000  # files and folders listed in a zip
    child_memory_mb: int = 2048  # address space of the process that parses a /import upload
    child_timeout_s: int = 600  # that process is stopped after this long

    def __post_init__(self) -> None:
        for name in ("max_file_mb", "max_line_kb", "max_unpacked_mb", "max_entries", "child_memory_mb",
                     "child_timeout_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"importing.{name}", getattr(self, name), "1 or more")


@dataclass
class ScheduleSettings:
    enabled: bool = True
    time: str = "03:00"  # HH:MM, local to `timezone`
    timezone: str = "local"  # "local" or an IANA name such as "Europe/Berlin"
    min_new_feedback: int = 20
    misfire_grace_hours: float = 12.0
    # True: the bot (or terminal) process trains, as on a laptop. False: its scheduler and /train only
    # queue cycles for `twin worker` processes (README, "Scale"), and the bot sends their reports.
    train_in_bot: bool = True

    def __post_init__(self) -> None:
        try:
            hour, minute = (int(part) for part in self.time.split(":"))
            valid = 0 <= hour < 24 and 0 <= minute < 60
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError("schedule.time", self.time, 'a time of day "HH:MM"')
        if self.timezone != "local":
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError("schedule.timezone", self.timezone, '"local" or an IANA time zone name') from None
        if self.min_new_feedback < 0:
            raise ConfigError("schedule.min_new_feedback", self.min_new_feedback, "0 or more")
        if self.misfire_grace_hours <= 0:
            raise ConfigError("schedule.misfire_grace_hours", self.misfire_grace_hours, "a number above 0")

    @property
    def hour(self) -> int:
        return int(self.time.split(":")[0])

    @property
    def minute(self) -> int:
        return int(self.time.split(":")[1])


@dataclass
class WorkerSettings:
    """`twin worker`: how many cycles it runs at once and how often it looks at the queue."""

    concurrency: int = 1  # cycles at once (each trains in its own child process); --concurrency overrides
    poll_s: float = 15.0  # seconds between looks at the queue while idle
    report_poll_s: float = 30.0  # the bot (schedule.train_in_bot = false): how often it sends finished reports

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= 64:
            raise ConfigError("worker.concurrency", self.concurrency, "1..64")
        for name in ("poll_s", "report_poll_s"):
            if not 0.1 <= getattr(self, name) <= 3600:
                raise ConfigError(f"worker.{name}", getattr(self, name), "0.1..3600 seconds")


@dataclass
class AdapterStoreSettings:
    """Where adapter folders are kept (loop.adapter_store): "local" (under data_dir, the default) or
    "s3", an S3-compatible bucket that a drafting server and workers on other machines all see.
    Credentials come from the usual AWS environment variables or files, never from this file."""

    kind: str = "local"  # local | s3
    bucket: str = ""
    prefix: str = "twin"  # key prefix inside the bucket
    endpoint_url: str = ""  # empty: AWS; else e.g. "http://127.0.0.1:9000" for MinIO or another S3-compatible server
    region: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "s3"):
            raise ConfigError("adapter_store.kind", self.kind, "local or s3")
        if self.kind == "s3" and not self.bucket:
            raise ConfigError("adapter_store.bucket", self.bucket, "a bucket name when adapter_store.kind = s3")


@dataclass
class Config:
    path: Path | None = None  # the file it came from
    data_dir: Path = Path("data")
    database_url: str = ""  # empty: SQLite file twin.db in data_dir
    database_busy_timeout_s: float = 30.0  # SQLite: how long a write waits for another process's lock
    owners: list[int] = field(default_factory=list)
    mask_personal_data: bool = True
    owner_names: list[str] = field(default_factory=list)  # the owner's names in chat exports (`twin import`)
    owner_emails: list[str] = field(default_factory=list)  # the owner's addresses, to find their sent mails
    log_level: str = "INFO"
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    importing: ImportSettings = field(default_factory=ImportSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    adapter_store: AdapterStoreSettings = field(default_factory=AdapterStoreSettings)
    insight: InsightSettings = field(default_factory=InsightSettings)

    def __post_init__(self) -> None:
        for owner in self.owners:
            if not isinstance(owner, int) or isinstance(owner, bool) or owner <= 0:
                raise ConfigError("owners", self.owners, "a list of Telegram user ids (positive integers)")
        if self.database_busy_timeout_s <= 0:
            raise ConfigError("database_busy_timeout_s", self.database_busy_timeout_s, "a number of seconds above 0")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level", self.log_level, "DEBUG, INFO, WARNING or ERROR")
        for name in ("sft", "dpo", "kto"):
            # trl drops a training row whose prompt fills max_length: a prompt budget that large
            # would make the nightly cycle train on nothing (training.train skips such stages).
            stage = getattr(self.training, name)
            if stage.enabled and self.model.max_prompt_tokens >= stage.max_length:
                raise ConfigError(f"training.{name}.max_length", stage.max_length,
                                  f"more than model.max_prompt_tokens ({self.model.max_prompt_tokens}) so a "
                                  "prompt leaves room for the reply")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'twin.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def owner_dir(self, telegram_id: int) -> Path:
        """Everything on disk that belongs to one owner: adapters, datasets, logs."""
        return self.data_dir / "owners" / str(telegram_id)

    @property
    def telegram_token(self) -> str | None:
        return os.environ.get(TOKEN_ENV) or None

    def default_owner(self) -> int:
        return self.owners[0] if self.owners else LOCAL_OWNER_ID


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(prefix.rstrip("."), values, "a table")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known or key == "path":
            raise ConfigError(prefix + key, value, f"one of the keys {', '.join(sorted(k for k in known if k != 'path'))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, hint)
    try:
        instance = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(prefix.rstrip(".") or "config", values, str(error)) from None
    if isinstance(instance, StageSettings):
        instance.validate(prefix.rstrip(".").split(".")[-1])
    return instance


def _coerce(key: str, value: Any, hint: Any) -> Any:
    text = str(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "a number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
    elif hint is Path:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a path (string)")
        value = Path(value)
    elif text.startswith("list[int]"):
        if not isinstance(value, list):
            raise ConfigError(key, value, "a list of integers")
    elif text.startswith("list[float]"):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise ConfigError(key, value, "a list of numbers")
        value = [float(v) for v in value]
    elif text.startswith("list[str]"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, "a list of strings")
    elif "str" in text and "list" in text:  # str | list[str]
        if not isinstance(value, (str, list)):
            raise ConfigError(key, value, "a string or a list of strings")
    return value


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path("config.toml")
    return local if local.exists() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration; defaults when there is no file at all."""
    found = find_config_path(path)
    if found is None:
        config = Config()
        config.data_dir = Path(config.data_dir).resolve()
        return config
    if not found.exists():
        raise ConfigError("--config", str(found), "an existing TOML file")
    try:
        values = tomllib.loads(found.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(found), "(unparsable)", f"valid TOML: {error}") from None
    config = _build(Config, values, "")
    config.path = found.resolve()
    base = config.path.parent
    config.data_dir = (base / config.data_dir).resolve()
    if config.model.base not in ("embedded",) and (base / config.model.base).exists():
        config.model.base = str((base / config.model.base).resolve())
    if (base / config.training.accelerate_config).is_file():  # a yaml of the owner's, next to the config
        config.training.accelerate_config = str((base / config.training.accelerate_config).resolve())
    generation = config.generation
    if generation.server_models_config:
        generation.server_models_config = str((base / generation.server_models_config).resolve())
    if generation.server_kind == "llama_cpp" and generation.server_base_model \
            and (base / generation.server_base_model).exists():
        generation.server_base_model = str((base / generation.server_base_model).resolve())
    return config
