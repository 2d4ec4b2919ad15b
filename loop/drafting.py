"""Drafting: the `Drafter` interface, the real drafter on the generation engine, and a fake for tests.

The drafter is asked for one reply to a `Conversation` with a given adapter (or none: the base
model) and seed. It never touches the database: `loop.twin` stores what it returns. With
`on_text`, the reply so far is handed over while it is decoded (streamed drafts: the bot and the
terminal show it); only the returned, final text is ever stored.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from loop.errors import DraftingError
from training.prompt import Conversation

__all__ = ["AdapterRef", "Drafter", "DraftingError", "DraftResult", "FakeDrafter", "EngineDrafter", "TextCallback",
           "draft_from_many_threads"]

# Called with the reply so far (cleaned, growing) while a draft is decoded, from the drafting thread.
TextCallback = Callable[[str], None]

logger = logging.getLogger(__name__)


def draft_from_many_threads() -> None:
    """For a process whose drafts are asked for from several threads (the bot: a warm-up thread,
    asyncio's worker threads): llama.cpp then decodes on one thread of its own, which keeps its
    speed (training.inference.llamacpp.run_on_own_thread). Call it before the first draft."""
    from training.inference.llamacpp import run_on_own_thread

    run_on_own_thread()


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter a draft uses: `key` names it uniquely across owners (e.g. "42-v3"). `owner_id`
    and `checksum` name it on a drafting server (loop.server_drafting); 0 and "" when unknown."""

    key: str
    version: int
    path: str
    owner_id: int = 0
    checksum: str = ""


@dataclass
class DraftResult:
    text: str
    adapter_version: int
    sampling: dict[str, Any]
    seed: int
    latency_ms: int


class Drafter(Protocol):
    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int,
              on_text: TextCallback | None = None) -> DraftResult:
        """One reply in the owner's voice; raises DraftingError when none could be made.
        `on_text` (optional) follows the reply as it is written; a drafter that cannot stream
        calls it once with the final text, or not at all."""
        ...


@dataclass
class FakeDrafter:
    """A drafter for tests of other layers: answers from a script and records what it was asked.

    With `stream` and an `on_text` it hands the reply over word by word, `word_delay_s` apart
    (`delay_s` is spent before the first word), as a model decoding it would. Off by default: the
    tests of other things keep the bot's calls they had (a streamed draft costs extra requests).
    """

    replies: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    word_delay_s: float = 0.0
    stream: bool = False
    calls: list[tuple[Conversation, AdapterRef | None, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int,
              on_text: TextCallback | None = None) -> DraftResult:
        started = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.calls.append((conversation, adapter, seed))
            text = self.replies.pop(0) if self.replies else f"draft {seed}: {conversation.incoming[:200]}"
        if on_text is not None and self.stream:
            words = text.split(" ")
            for count in range(1, len(words) + 1):
                if count > 1 and self.word_delay_s:
                    time.sleep(self.word_delay_s)
                on_text(" ".join(words[:count]))
        return DraftResult(text=text, adapter_version=adapter.version if adapter else 0,
                           sampling={"fake": True}, seed=seed,
                           latency_ms=int((time.perf_counter() - started) * 1000))


class EngineDrafter:
    """The real drafter: the one prompt renderer, then `training.inference.engine.Engine`, which decodes
    on whichever backend `generation.backend` picks (llama.cpp, CTranslate2 or transformers + peft).

    An empty reply (the model closed its turn at once, or produced only template debris) is
    retried with seed + 1000 × attempt, up to `generation.max_attempts`; then DraftingError.
    Thread-safe: the engine serialises generation.
    """

    def __init__(self, engine: Any, model_settings: Any, generation_settings: Any):
        from training.datasets import make_renderer

        self.engine = engine
        self.model_settings = model_settings
        self.generation = generation_settings
        # The same renderer the dataset builders use, so the twin is asked what it was taught.
        self.render = make_renderer(engine.tokenizer, model_settings)

    @classmethod
    def from_config(cls, config: Any) -> "EngineDrafter":
        """Load the configured base model (converting the embedded one on first use)."""
        from training.inference.engine import Engine

        engine = Engine.load(config.model, config.models_dir,
                             llamacpp_weights=config.generation.llamacpp_weights)
        return cls(engine, config.model, config.generation)

    def prepare(self, adapter: AdapterRef | None) -> None:
        """Convert and load what drafting with `adapter` needs now rather than on the first draft,
        and read the system text into the prompt cache, where the backend keeps one (llama.cpp)."""
        spec = (adapter.key, adapter.path) if adapter is not None else None
        self.engine.prepare(spec, settings=self.generation)
        warm = getattr(self.engine, "warm_prompt", None)  # an engine without a prompt cache has none
        read = warm(self.prompt_opening(), spec, settings=self.generation) if warm is not None else 0
        if read:
            logger.info("read the %d tokens of the system text into the prompt cache", read)

    def prompt_opening(self) -> str:
        """What every rendered prompt opens with: the longest common start of two unlike prompts
        (the chat template's system turn up to where a contact line or the examples would go)."""
        first = self.render(Conversation.of("a", []))
        second = self.render(Conversation.of("z?", [{"role": "other", "text": "b"}], contact="Q"))
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return first[:shared]

    def sampling(self) -> dict[str, Any]:
        g = self.generation
        return {"temperature": g.temperature, "top_p": g.top_p, "repetition_penalty": g.repetition_penalty,
                "max_new_tokens": g.max_new_tokens}

    def draft(self, conversation: Conversation, *, adapter: AdapterRef | None, seed: int,
              on_text: TextCallback | None = None) -> DraftResult:
        started = time.perf_counter()
        from training.artifacts import CorruptAdapter

        prompt = self.render(conversation)
        spec = (adapter.key, adapter.path) if adapter is not None else None
        streaming = {"on_text": on_text} if on_text is not None else {}  # engines without streaming take none
        for attempt in range(self.generation.max_attempts):
            used_seed = seed + 1000 * attempt
            try:
                output = self.engine.generate(prompt, settings=self.generation, seed=used_seed, adapter=spec,
                                              **streaming)
            except CorruptAdapter as error:
                # The owner still gets a draft; it is recorded as the base model's (version 0).
                logger.error("adapter v%s refused, drafting with the base model: %s", adapter.version, error)
                adapter = spec = None
                output = self.engine.generate(prompt, settings=self.generation, seed=used_seed, adapter=None,
                                              **streaming)
            if output.text.strip():
                sampling = {**self.sampling(), "attempts": attempt + 1, "new_tokens": output.new_tokens,
                            "prefill_ms": output.prefill_ms, "backend": output.backend}
                return DraftResult(text=output.text, adapter_version=adapter.version if adapter else 0,
                                   sampling=sampling, seed=used_seed,
                                   latency_ms=int((time.perf_counter() - started) * 1000))
            logger.info("empty draft with seed %d (attempt %d of %d)", used_seed, attempt + 1,
                        self.generation.max_attempts)
        raise DraftingError(f"the model gave an empty reply {self.generation.max_attempts} times")
