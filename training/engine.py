"""Generation engine: one base model in memory, LoRA adapters loaded once and switched per call.

`Engine(model, tokenizer)` takes its parts, so tests run it on a tiny model; `Engine.load`
builds it from settings. Adapters are loaded through transformers' peft integration under their
key (e.g. "42-v3"), switched with `set_adapter`, and the base model is the same weights with
adapters disabled. A small LRU keeps memory bounded when versions come and go. One lock
serialises generation: the bot calls from worker threads and the adapter switch is global state.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from training.config import GenerationSettings, ModelSettings

logger = logging.getLogger(__name__)

AdapterSpec = tuple[str, "str | Path"]  # (key, folder)

_STOP_MARKERS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
_ROLE_HEADER = re.compile(r"^\s*(?:<\|im_start\|>)?\s*(?:assistant|user|system)\s*:?\s*\n", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


@dataclass(frozen=True)
class GenerationOutput:
    text: str  # cleaned reply text ("" when the model produced nothing usable)
    new_tokens: int
    prefill_ms: float
    total_ms: float


def clean_generated(text: str) -> str:
    """The reply alone: without role headers, cut at the end of the turn, no template tokens."""
    while True:  # a model may open with "assistant\n" (or a whole turn header) before the text
        stripped = _ROLE_HEADER.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    cuts = [index for index in (text.find(marker) for marker in _STOP_MARKERS) if index >= 0]
    if cuts:
        text = text[:min(cuts)]
    return _SPECIAL_TOKEN.sub("", text).strip()


class _PrefillTimer:
    """A logits processor that notes when the first token's logits arrive (end of prefill)."""

    def __init__(self) -> None:
        self.first_call: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        return scores


class Engine:
    """Drafts text with a base model and any of its loaded adapters."""

    def __init__(self, model: Any, tokenizer: Any, *, max_adapters: int = 4):
        self.model = model
        self.tokenizer = tokenizer
        self.max_adapters = max(1, max_adapters)
        self._adapters: OrderedDict[str, str] = OrderedDict()  # key -> folder, least recently used first
        self._lock = threading.RLock()
        self.model.eval()

    @classmethod
    def load(cls, settings: ModelSettings, models_dir: Path, *, max_adapters: int = 4) -> "Engine":
        """Resolve, load and wrap the configured base model (the embedded one is converted once)."""
        from training.model import load_model, load_tokenizer, resolve_base_model

        path = resolve_base_model(settings, Path(models_dir))
        return cls(load_model(path, settings), load_tokenizer(path), max_adapters=max_adapters)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def encode(self, prompt_text: str) -> list[int]:
        """Prompt token ids, tokenised exactly as trl tokenises a training prompt."""
        return list(self.tokenizer(prompt_text)["input_ids"])

    def stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for marker in ("<|im_end|>", "<|im_start|>"):
            token = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(token, int) and token != self.tokenizer.unk_token_id:
                ids.add(token)
        return sorted(i for i in ids if i is not None)

    # Adapters ----------------------------------------------------------------------------------
    # peft's own API: transformers 5.24's `model.load_adapter` integration needs peft >= 0.22,
    # and we pin peft 0.21. The base model is wrapped in a PeftModel on the first adapter and
    # unwrapped again when the last one is unloaded.

    @staticmethod
    def adapter_name(key: str) -> str:
        """peft's name for an adapter key: module-name-safe, and never a substring of "lora_"
        (peft warns that such names, e.g. "a", can reinitialise weights on load)."""
        return "twin_" + re.sub(r"[^A-Za-z0-9_-]", "_", key)

    def _ensure_adapter(self, key: str, path: str | Path) -> None:
        folder = str(path)
        if self._adapters.get(key) == folder:
            self._adapters.move_to_end(key)
            return
        if key in self._adapters:  # same key, other folder: the old weights are stale
            self.unload_adapter(key)
        from training.artifacts import verify_adapter

        verify_adapter(folder)  # damaged weights must never speak for the owner
        started = time.perf_counter()
        if self._adapters:
            self.model.load_adapter(folder, adapter_name=self.adapter_name(key))
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=self.adapter_name(key))
            self.model.eval()
        self._adapters[key] = folder
        logger.info("loaded adapter %s from %s in %.2f s", key, folder, time.perf_counter() - started)
        while len(self._adapters) > self.max_adapters:  # evict after loading: one adapter always remains
            oldest = next(iter(self._adapters))
            logger.info("unloading adapter %s (least recently used)", oldest)
            self.unload_adapter(oldest)

    def unload_adapter(self, key: str) -> None:
        """Free an adapter's weights; the base model is unwrapped when no adapter is left."""
        with self._lock:
            if self._adapters.pop(key, None) is None:
                return
            if self._adapters:
                name = self.adapter_name(key)
                if name in self.model.active_adapters:
                    self.model.set_adapter(self.adapter_name(next(reversed(self._adapters))))
                self.model.delete_adapter(name)
            else:
                self.model = self.model.unload()  # removes the LoRA layers, restores the plain modules

    @contextlib.contextmanager
    def using(self, adapter: AdapterSpec | None) -> Iterator[Any]:
        """Hold the engine with `adapter` active (None: the base model) and yield the model."""
        with self._lock:
            if adapter is None:
                with self.model.disable_adapter() if self._adapters else contextlib.nullcontext():
                    yield self.model
                return
            key, path = adapter
            self._ensure_adapter(key, path)
            self.model.set_adapter(self.adapter_name(key))
            yield self.model

    # Generation ----------------------------------------------------------------------------------

    def generate(self, prompt_text: str, *, settings: GenerationSettings, seed: int,
                 adapter: AdapterSpec | None = None) -> GenerationOutput:
        """Sample one reply to a rendered prompt; stops at the end of the turn or max_new_tokens."""
        import torch
        from transformers import LogitsProcessorList

        started = time.perf_counter()
        with self.using(adapter) as model:
            input_ids = torch.tensor([self.encode(prompt_text)], device=self.device)
            timer = _PrefillTimer()
            # Sampling draws from torch's global generator: seeding it under the lock makes a
            # (prompt, adapter, seed) triple reproducible even with several threads drafting.
            torch.manual_seed(seed)
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                    repetition_penalty=settings.repetition_penalty, max_new_tokens=settings.max_new_tokens,
                    eos_token_id=self.stop_token_ids(), pad_token_id=self.tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList([timer]))
        new_ids = output[0, input_ids.shape[1]:].tolist()
        finished = time.perf_counter()
        raw = self.tokenizer.decode(new_ids, skip_special_tokens=False)
        prefill = ((timer.first_call or finished) - started) * 1000
        return GenerationOutput(text=clean_generated(raw), new_tokens=len(new_ids),
                                prefill_ms=round(prefill, 1), total_ms=round((finished - started) * 1000, 1))
