"""Drafting through an OpenAI-compatible completions server that serves many owners' LoRA adapters.

In production the server is vLLM with `--enable-lora`; on a CPU (and in the tests) it is
llama-cpp-python's own server (`python -m llama_cpp.server --config_file FILE`). The same client
talks to both: the prompt is the text of the one renderer (training.prompt), sent as a completion
prompt, so drafting and training see identical prompts; the sampling settings are the twin's own,
and the seed is passed (both servers take one per request).

Everything that differs between the two servers is in `DIALECTS`, and nowhere else:

| | vLLM | llama-cpp-python server |
|---|---|---|
| adapters come and go | at run time: POST /v1/load_lora_adapter, /v1/unload_lora_adapter (needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) | at start only: one model alias per adapter in the --config_file the twin writes (`llama_cpp_models_config`); restart to apply |
| an unknown model name | 404 | silently answered by the first model of the file: so the client checks GET /v1/models first |
| repetition penalty | `repetition_penalty` | `repeat_penalty` (over the last 64 tokens, prompt included) |
| top-k off | `top_k: -1` | `top_k: 0`; also `min_p: 0` (its default is 0.05) |
| switching adapters | batched, many adapters in one step | one model at a time: another alias reloads base + LoRA |

Both servers apply a penalty to the prompt's tokens too, where the twin's own engines penalise only
the reply (training.inference.engine): the settings are the same, that detail of their meaning is not.

Adapters are addressed by versioned names, `owner-<id>-v<version>-<checksum8>` (`adapter_name`):
a name always means the same weights, so vLLM's prefix cache, which can keep entries of an
adapter unloaded and loaded again under the same name, can never serve another adapter's keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from training.errors import ServerError, ServerUnavailable

logger = logging.getLogger(__name__)

API_KEY_ENV = "TWIN_SERVER_API_KEY"  # sent as a bearer token; never written to a file
ADAPTER_PREFIX = "owner-"
BASE_ALIAS = "twin-base"  # the base model's alias in the llama.cpp server's models file
MODELS_CACHE_S = 5.0  # how long a list of served models is trusted before it is asked again


@dataclass(frozen=True)
class Dialect:
    """What one kind of server calls things (see the module's table)."""

    label: str
    load_path: str | None  # POST here loads an adapter at run time; None: only at server start
    unload_path: str | None
    repetition_penalty: str
    no_top_k: int
    extra: Mapping[str, Any] = field(default_factory=dict)


DIALECTS: dict[str, Dialect] = {
    "vllm": Dialect(label="vLLM", load_path="/v1/load_lora_adapter", unload_path="/v1/unload_lora_adapter",
                    repetition_penalty="repetition_penalty", no_top_k=-1),
    "llama_cpp": Dialect(label="llama-cpp-python server", load_path=None, unload_path=None,
                         repetition_penalty="repeat_penalty", no_top_k=0, extra={"min_p": 0.0}),
}


def adapter_name(owner_id: int, version: int, checksum: str) -> str:
    """The served name of an owner's adapter version: `owner-<id>-v<version>-<checksum8>`."""
    return f"{ADAPTER_PREFIX}{owner_id}-v{version}-{checksum[:8]}"


def owner_of_name(name: str) -> int | None:
    """The owner id in a served adapter name, None for any other model name."""
    match = re.fullmatch(rf"{ADAPTER_PREFIX}(\d+)-v\d+-[0-9a-f]+", name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Completion:
    text: str  # as the server returned it (not cleaned)
    new_tokens: int
    prompt_tokens: int
    finish_reason: str | None
    total_ms: float


class CompletionsClient:
    """A small client of one server: /v1/models, /v1/completions and, on vLLM, adapter loading."""

    def __init__(self, url: str, kind: str, *, timeout_s: float = 30.0, api_key: str | None = None,
                 transport: Any = None):
        import httpx

        if kind not in DIALECTS:
            raise ServerError(f"unknown server kind {kind!r}; expected one of {', '.join(DIALECTS)}")
        self.url, self.kind, self.dialect = url.rstrip("/"), kind, DIALECTS[kind]
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers, transport=transport)
        self._models: tuple[float, frozenset[str]] | None = None

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The response, or ServerUnavailable saying what went wrong (never the API key)."""
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise ServerUnavailable(f"{self.dialect.label} at {self.url} did not answer {path} in time "
                                    f"({type(error).__name__})") from None
        except httpx.HTTPError as error:
            raise ServerUnavailable(f"{self.dialect.label} at {self.url} cannot be reached "
                                    f"({type(error).__name__}: {error})") from None
        if response.status_code >= 400:
            raise ServerUnavailable(f"{self.dialect.label} at {self.url} refused {method} {path}: "
                                    f"HTTP {response.status_code} {response.text[:300]}")
        return response

    def models(self, *, refresh: bool = False) -> frozenset[str]:
        """The model names (base and adapters) the server serves now; cached for a few seconds."""
        now = time.monotonic()
        if refresh or self._models is None or now - self._models[0] > MODELS_CACHE_S:
            data = self._request("GET", "/v1/models").json().get("data", [])
            self._models = (now, frozenset(str(item["id"]) for item in data))
        return self._models[1]

    def forget_models(self) -> None:
        self._models = None

    def complete(self, prompt: str, *, model: str, settings: Any, seed: int, stop: Iterable[str]) -> Completion:
        """One sampled completion of `prompt` by `model`; ServerUnavailable when the server does not
        serve `model` (llama.cpp's server would silently answer with another one)."""
        if model not in self.models() and model not in self.models(refresh=True):
            raise ServerUnavailable(f"{self.dialect.label} at {self.url} does not serve {model!r} (yet)")
        d = self.dialect
        body = {"model": model, "prompt": prompt, "max_tokens": settings.max_new_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p, "top_k": d.no_top_k,
                d.repetition_penalty: settings.repetition_penalty, "seed": int(seed) & 0xFFFFFFFF,
                "stop": list(stop), "n": 1, "stream": False, **d.extra}
        started = time.perf_counter()
        data = self._request("POST", "/v1/completions", json=body).json()
        choice = (data.get("choices") or [{}])[0]
        usage = data.get("usage") or {}
        return Completion(text=str(choice.get("text") or ""), new_tokens=int(usage.get("completion_tokens") or 0),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          finish_reason=choice.get("finish_reason"),
                          total_ms=round((time.perf_counter() - started) * 1000, 1))

    @property
    def loads_at_run_time(self) -> bool:
        return self.dialect.load_path is not None

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Serve the adapter folder `path` (as the server's machine sees it) under `name` (vLLM)."""
        if self.dialect.load_path is None:
            raise ServerError(f"the {self.dialect.label} loads adapters at start only (its --config_file)")
        try:
            self._request("POST", self.dialect.load_path, json={"lora_name": name, "lora_path": str(path)})
        except ServerUnavailable as error:
            if "already" not in str(error):  # loaded before, by this or another process: same name, same weights
                raise
        self.forget_models()

    def unload_adapter(self, name: str) -> None:
        """Stop serving `name` (vLLM); the name is never loaded again with other weights."""
        if self.dialect.unload_path is None:
            raise ServerError(f"the {self.dialect.label} unloads adapters at restart only (its --config_file)")
        self._request("POST", self.dialect.unload_path, json={"lora_name": name})
        self.forget_models()


# The llama-cpp-python server's models file -----------------------------------------------------------

def llama_cpp_models_config(base_gguf: str | Path, adapters: Mapping[str, str | Path], *, host: str, port: int,
                            threads: int, context_tokens: int = 2048) -> dict[str, Any]:
    """The --config_file of `python -m llama_cpp.server`: the base model, then one alias per adapter
    (its LoRA file applied on the same base). The first entry is what unknown names get."""
    def entry(alias: str, lora: str | Path | None) -> dict[str, Any]:
        model: dict[str, Any] = {"model": str(base_gguf), "model_alias": alias, "n_ctx": context_tokens,
                                 "n_threads": threads, "n_threads_batch": threads, "verbose": False}
        if lora is not None:
            model["lora_path"] = str(lora)
        return model

    return {"host": host, "port": port,
            "models": [entry(BASE_ALIAS, None), *(entry(alias, adapters[alias]) for alias in sorted(adapters))]}


def read_models_config(path: Path) -> dict[str, str]:
    """alias -> LoRA file of the adapters in a models file the twin wrote (empty when there is none)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return {m["model_alias"]: m["lora_path"] for m in data.get("models", []) if m.get("lora_path")}


def write_models_config(path: Path, config: dict[str, Any]) -> bool:
    """Write the models file atomically, readable by its owner only; False when it already said exactly this.

    With --config_file the llama.cpp server takes its API key from the file alone, so the key of
    TWIN_SERVER_API_KEY, when set, goes in (the one place it is written down).
    """
    path = Path(path)
    api_key = os.environ.get(API_KEY_ENV)
    text = json.dumps({**config, **({"api_key": api_key} if api_key else {})}, indent=2) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.touch(mode=0o600)
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
    return True


def llama_cpp_server_installed() -> bool:
    """Whether `python -m llama_cpp.server` can start here (llama-cpp-python plus its `server` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None
               for name in ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"))


def start_llama_cpp_server(models_file: Path, *, log: Path | None = None) -> Any:
    """Start `python -m llama_cpp.server --config_file models_file` (tests, benchmarks, one machine);
    returns the process. Wait for it with `wait_until_serving`, stop it with terminate()."""
    import subprocess
    import sys

    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(models_file)],
                            stdout=output, stderr=subprocess.STDOUT)


def wait_until_serving(client: CompletionsClient, *, timeout_s: float = 60.0, process: Any = None) -> frozenset[str]:
    """The served model names, once the server answers; ServerUnavailable after `timeout_s` (or
    when `process` exits first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.models(refresh=True)
        except ServerUnavailable:
            if process is not None and process.poll() is not None:
                raise ServerUnavailable(f"the server exited with code {process.returncode} before it served") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
