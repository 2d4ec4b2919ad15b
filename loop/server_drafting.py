"""Drafts from a shared multi-LoRA server (`generation.backend = "openai"`), and which adapters it serves.

`ServerDrafter` is a `loop.drafting.Drafter`: the prompt comes from the one renderer, the reply from
the server's completions endpoint with the owner's active adapter (training.inference.openai_server).
A server that is down or refuses raises `DraftingUnavailable`: the incoming message was stored
before drafting began, so nothing is lost; the bot's draft queue tries again later.

`ServedAdapters` keeps the server serving every owner's active adapter and nothing retired, under
the versioned names of `adapter_name`. It follows promotions and rollbacks (`sync_served_adapters`,
called after each), drafts ask it for their adapter (registered on first use, so a promotion made by a
worker on another machine is served from the next draft on), and `twin register-adapters` syncs all.
On vLLM it loads and unloads at run time; for llama-cpp-python's server it writes the models file
(one alias per adapter, its LoRA converted to a llama.cpp file inside the adapter folder), which
the server reads at start: an adapter added there is served after the server's restart.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.engine import Engine

from loop.config import Config
from loop.drafting import AdapterRef, DraftResult, TextCallback
from loop.errors import DraftingError, DraftingUnavailable
from storage import repo
from storage.db import read_scope
from training.prompt import Conversation

logger = logging.getLogger(__name__)

MODELS_FILE = "llama_cpp_models.json"


def models_config_path(config: Config) -> Path:
    """The llama.cpp server's --config_file that the twin writes."""
    configured = config.generation.server_models_config
    return Path(configured) if configured else config.data_dir / "server" / MODELS_FILE


@dataclass
class SyncReport:
    """What a sync did: names loaded and unloaded, and whether the server must restart to apply them."""

    served: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    models_file: Path | None = None
    restart_needed: bool = False


class ServedAdapters:
    """The owners' adapters on one drafting server: loaded on promotion, unloaded when retired."""

    def __init__(self, config: Config, client: Any):
        self.config, self.client = config, client
        self.generation = config.generation

    # Names ----------------------------------------------------------------------------------
    def base_name(self) -> str:
        """What the server calls the base model (drafts of an owner without an adapter)."""
        from training.inference.openai_server import BASE_ALIAS

        if self.client.kind == "llama_cpp":
            return BASE_ALIAS
        if not self.generation.server_base_model:
            raise DraftingUnavailable("generation.server_base_model must name the base model vLLM serves")
        return self.generation.server_base_model

    @staticmethod
    def checksum(adapter: AdapterRef) -> str:
        if adapter.checksum:
            return adapter.checksum
        from training.artifacts import read_manifest

        return str(read_manifest(Path(adapter.path)).get("checksum", ""))

    def name_for(self, adapter: AdapterRef) -> str:
        from training.inference.openai_server import adapter_name

        return adapter_name(adapter.owner_id, adapter.version, self.checksum(adapter))

    # llama.cpp's files ------------------------------------------------------------------------
    def base_gguf(self) -> Path:
        """The base model the llama.cpp server loads: `server_base_model`, else the twin's own fp16 GGUF."""
        if self.generation.server_base_model:
            return Path(self.generation.server_base_model)
        from training.inference.llamacpp import MODEL_FILE
        from training.inference.serving import prepare_for_drafting

        folder = prepare_for_drafting(self.config.model, "llamacpp", self.config.models_dir)
        if folder is None:
            raise DraftingError("the llama.cpp server needs a GGUF base: set generation.server_base_model")
        return folder / MODEL_FILE

    def lora_file(self, adapter: AdapterRef) -> Path:
        """The adapter as a llama.cpp LoRA file in its own folder, converted once (verified first)."""
        from training.artifacts import verify_adapter
        from training.inference.llamacpp import lora_gguf_name, write_lora_gguf

        target = Path(adapter.path) / lora_gguf_name(self.checksum(adapter))
        if target.is_file():
            return target
        verify_adapter(Path(adapter.path))  # damaged weights must never speak for the owner
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            write_lora_gguf(Path(adapter.path), self.base_gguf(), staging)
            os.replace(staging, target)
        finally:
            staging.unlink(missing_ok=True)
        return target

    def _write_models_file(self, adapters: dict[str, Path]) -> bool:
        from training.inference.openai_server import llama_cpp_models_config, write_models_config

        url = urlparse(self.client.url)
        threads = self.config.model.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                else os.cpu_count() or 1)
        return write_models_config(models_config_path(self.config), llama_cpp_models_config(
            self.base_gguf(), adapters, host=url.hostname or "127.0.0.1", port=url.port or 8000, threads=threads))

    # Serving ----------------------------------------------------------------------------------
    def ensure(self, adapter: AdapterRef) -> str:
        """The served name of `adapter`, registering it first when the server does not serve it.

        Raises CorruptAdapter for damaged files, ServerUnavailable when the server cannot be asked
        or (llama.cpp) serves the adapter only after a restart.
        """
        from training.inference.openai_server import ServerUnavailable, owner_of_name

        name = self.name_for(adapter)
        if name in self.client.models() or name in self.client.models(refresh=True):  # a restart may have added it
            return name
        if self.client.loads_at_run_time:
            from training.artifacts import verify_adapter

            verify_adapter(Path(adapter.path))
            self.client.load_adapter(name, adapter.path)
            for old in self.client.models(refresh=True):  # the owner's retired versions
                if old != name and owner_of_name(old) == adapter.owner_id:
                    self.client.unload_adapter(old)
            logger.info("the drafting server serves %s now", name)
            return name
        from training.inference.openai_server import read_models_config

        current = read_models_config(models_config_path(self.config))
        wanted = {alias: Path(path) for alias, path in current.items() if owner_of_name(alias) != adapter.owner_id}
        wanted[name] = self.lora_file(adapter)
        self._write_models_file(wanted)
        raise ServerUnavailable(f"{name} was added to {models_config_path(self.config)}; the llama.cpp server "
                                "serves it after a restart")

    def sync(self, adapters: list[AdapterRef]) -> SyncReport:
        """Serve exactly `adapters` (every owner's active one): load the missing, unload the retired."""
        from training.inference.openai_server import ServerError, owner_of_name

        wanted = {self.name_for(adapter): adapter for adapter in adapters}
        report = SyncReport(served=sorted(wanted))
        if self.client.loads_at_run_time:
            served = self.client.models(refresh=True)
            for name, adapter in wanted.items():
                if name not in served:
                    self.ensure(adapter)
                    report.loaded.append(name)
            for name in sorted(served):
                if owner_of_name(name) is not None and name not in wanted:
                    self.client.unload_adapter(name)
                    report.unloaded.append(name)
            return report
        from training.inference.openai_server import read_models_config

        before = set(read_models_config(models_config_path(self.config)))
        self._write_models_file({name: self.lora_file(adapter) for name, adapter in wanted.items()})
        report.loaded, report.unloaded = sorted(set(wanted) - before), sorted(before - set(wanted))
        report.models_file = models_config_path(self.config)
        try:
            served = {n for n in self.client.models(refresh=True) if owner_of_name(n) is not None}
            report.restart_needed = served != set(wanted)
        except ServerError:  # a server that is down reads the file when it starts
            report.restart_needed = True
        return report


def make_client(config: Config) -> Any:
    from training.inference.openai_server import CompletionsClient

    g = config.generation
    return CompletionsClient(g.server_url, g.server_kind, timeout_s=g.server_timeout_s)


def active_adapter_refs(engine: Engine) -> list[AdapterRef]:
    """Every owner's active adapter, as drafting refers to it."""
    with read_scope(engine) as session:
        return [AdapterRef(key=f"{a.owner_id}-v{a.version}", version=a.version, path=a.path,
                           owner_id=a.owner_id, checksum=a.checksum or "")
                for a in repo.active_adapters(session=session)]


def sync_served_adapters(config: Config, engine: Engine) -> SyncReport | None:
    """After a promotion or a rollback: have the server serve every active adapter, no retired one.

    None when drafts do not come from a server. Failures are logged, not raised: the promotion
    stands, and the next draft registers its adapter itself (or says the server is unavailable).
    """
    if config.generation.backend != "openai":
        return None
    client = make_client(config)
    try:
        return ServedAdapters(config, client).sync(active_adapter_refs(engine))
    except Exception as error:  # noqa: BLE001 - the database already holds the truth
        logger.warning("could not update the adapters of the drafting server: %s", error)
        return None
    finally:
        client.close()


class ServerDrafter:
    """Drafts with the owner's adapter on the shared server; same prompt, same sampling as local drafts.

    An empty reply is retried with seed + 1000 × attempt, as `EngineDrafter` does. A damaged
    adapter is not served: the draft comes from the base model (recorded as v0).
    """

    def __init__(self, client: Any, tokenizer: Any, config: Config):
        from training.datasets import make_renderer

        self.client, self.config, self.generation = client, config, config.generation
        self.adapters = ServedAdapters(config, client)
        self.render = make_renderer(tokenizer, config.model)  # the renderer the dataset builders use

    @classmethod
    def from_config(cls, config: Config) -> "ServerDrafter":
        """The client of `generation.server_url` and the base model's tokenizer (no weights are loaded)."""
        from training.model import load_tokenizer, resolve_base_model

        return cls(make_client(config), load_tokenizer(resolve_base_model(config.model, config.models_dir)), config)

    def prepare(self, adapter: AdapterRef | None) -> None:
        """Register the adapter with the server before the first draft needs it."""
        if adapter is not None:
            self.adapters.ensure(adapter)

    def sampling(self) -> dict[str, Any]:
        g = self.generation
        return {"temperature": g.temperature, "top_p": g.top_p, "repetition_penalty": g.repetition_penalty,
                "max_new_tokens": g.max_new_tokens}

    def _model(self, adapter: AdapterRef | None) -> tuple[str, AdapterRef | None]:
        from training.artifacts import CorruptAdapter
        from training.inference.openai_server import ServerError

        try:
            if adapter is not None:
                try:
                    return self.adapters.ensure(adapter), adapter
                except CorruptAdapter as error:
                    logger.error("adapter v%s refused, drafting with the base model: %s", adapter.version, error)
            return self.adapters.base_name(), None
        except ServerError as error:
            raise DraftingUnavailable(str(error)) from None

    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int,
              on_text: TextCallback | None = None) -> DraftResult:
        # The server's answer comes whole (no `stream=True` yet): `on_text` sees the final text once.
        from training.inference.engine import _STOP_MARKERS, clean_generated  # the local engines' end of turn
        from training.inference.openai_server import ServerError

        started = time.perf_counter()
        prompt = self.render(conversation)
        model, adapter = self._model(adapter)
        for attempt in range(self.generation.max_attempts):
            used_seed = seed + 1000 * attempt
            try:
                output = self.client.complete(prompt, model=model, settings=self.generation, seed=used_seed,
                                              stop=_STOP_MARKERS)
            except ServerError as error:
                raise DraftingUnavailable(str(error)) from None
            text = clean_generated(output.text)
            if text.strip():
                sampling = {**self.sampling(), "attempts": attempt + 1, "new_tokens": output.new_tokens,
                            "prompt_tokens": output.prompt_tokens, "backend": f"openai:{self.client.kind}",
                            "server_model": model}
                result = DraftResult(text=text, adapter_version=adapter.version if adapter else 0, sampling=sampling,
                                     seed=used_seed, latency_ms=int((time.perf_counter() - started) * 1000))
                if on_text is not None:
                    on_text(text)
                return result
            logger.info("empty draft from the server with seed %d (attempt %d of %d)", used_seed, attempt + 1,
                        self.generation.max_attempts)
        raise DraftingError(f"the model gave an empty reply {self.generation.max_attempts} times")
