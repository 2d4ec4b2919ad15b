"""Generation engine and the real drafter, on the tiny model with random LoRA adapters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loop.config import Config
from loop.drafting import AdapterRef, DraftingError, EngineDrafter
from training.datasets import build_sft_rows, make_renderer
from training.inference.engine import Engine, GenerationOutput, clean_generated
from training.prompt import Conversation, Turn
from tests.tiny import build_random_adapter, tiny_generation_settings, tiny_model_settings

CONVERSATION = Conversation.of("are you coming tonight?", [Turn("other", "hey"), Turn("owner", "hi!")])


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_settings(tiny_model_dir), Path("unused-models-dir"), max_adapters=2)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: build_random_adapter(tiny_model_dir, root / name, seed=seed)
            for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def prompt(engine: Engine) -> str:
    return make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))(CONVERSATION)


def gen(engine: Engine, seed: int, adapter: tuple[str, Path] | None = None, **settings: Any) -> GenerationOutput:
    return engine.generate(prompt(engine), settings=tiny_generation_settings(**settings), seed=seed, adapter=adapter)


def test_generation_is_seeded_and_bounded(engine: Engine) -> None:
    first, again, other = gen(engine, 5), gen(engine, 5), gen(engine, 6)
    assert first.text == again.text and first.new_tokens == again.new_tokens
    assert first.text != other.text
    assert 1 <= first.new_tokens <= 12  # max_new_tokens honoured
    assert 0 < first.prefill_ms <= first.total_ms
    assert "<|im_" not in first.text


def test_adapters_switch_and_the_base_is_restored(engine: Engine, adapters: dict[str, Path]) -> None:
    base = gen(engine, 11).text
    with_a = gen(engine, 11, ("a", adapters["a"])).text
    with_b = gen(engine, 11, ("b", adapters["b"])).text
    assert len({base, with_a, with_b}) == 3
    assert gen(engine, 11).text == base  # adapters disabled = the base model again
    assert gen(engine, 11, ("a", adapters["a"])).text == with_a  # switching back gives the same weights


def test_least_recently_used_adapters_are_unloaded(engine: Engine, adapters: dict[str, Path]) -> None:
    for key in ("a", "b", "c"):
        gen(engine, 1, (key, adapters[key]))
    assert engine.loaded_adapters == ["b", "c"]  # max_adapters=2: "a" went first
    gen(engine, 1, ("b", adapters["b"]))
    gen(engine, 1, ("a", adapters["a"]))
    assert engine.loaded_adapters == ["b", "a"]
    # The same key pointing at another folder is reloaded, not served from stale weights.
    assert gen(engine, 3, ("a", adapters["c"])).text == gen(engine, 3, ("c", adapters["c"])).text


def test_unloading_the_last_adapter_restores_the_plain_model(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    fresh = Engine.load(tiny_model_settings(tiny_model_dir), Path("unused"))
    base = gen(fresh, 21).text
    plain_type = type(fresh.model)
    gen(fresh, 21, ("a", adapters["a"]))
    assert type(fresh.model) is not plain_type  # wrapped by peft while an adapter is loaded
    fresh.unload_adapter("a")
    assert type(fresh.model) is plain_type and fresh.loaded_adapters == []
    assert gen(fresh, 21).text == base


def test_batched_drafts_match_one_by_one_drafts_and_replay(engine: Engine, adapters: dict[str, Path]) -> None:
    # Prompts of different lengths are left-padded into one batch: near-greedy replies must equal
    # the one-by-one replies, so padding changes nothing, and the adapter applies to all of them.
    render = make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))
    prompts = [render(Conversation.of(text)) for text in
               ("hi", "are you coming tonight? the others are already there and asking " * 6, "ok?", "what time is it")]
    near_greedy = tiny_generation_settings(temperature=1e-4, top_p=1.0, repetition_penalty=1.5, max_new_tokens=12)
    spec = ("a", adapters["a"])
    batched = engine.generate_many(prompts, settings=near_greedy, seed=1, adapter=spec, batch_size=3)
    single = [engine.generate(p, settings=near_greedy, seed=1, adapter=spec) for p in prompts]
    assert [out.text for out in batched] == [out.text for out in single] and all(out.text for out in single)
    assert [out.new_tokens for out in batched] == [out.new_tokens for out in single]
    base = engine.generate_many(prompts, settings=near_greedy, seed=1)
    assert [out.text for out in base] != [out.text for out in single]
    sampled = tiny_generation_settings()
    first = [out.text for out in engine.generate_many([prompts[0]] * 3, settings=sampled, seed=7, adapter=spec)]
    again = [out.text for out in engine.generate_many([prompts[0]] * 3, settings=sampled, seed=7, adapter=spec)]
    assert first == again and len(set(first)) > 1  # replayed by the seed, yet three different samples


def test_left_padding_leaves_each_prompts_next_token_scores_unchanged(engine: Engine) -> None:
    import torch

    from training.inference.engine import left_padded

    short, long = engine.encode(prompt(engine)), engine.encode(prompt(engine) * 5)
    input_ids, attention = left_padded([short, long], engine.tokenizer.pad_token_id)
    assert input_ids.shape == (2, len(long)) and attention[0].sum() == len(short)
    with torch.inference_mode():
        padded = engine.model(input_ids=input_ids, attention_mask=attention).logits[:, -1]
        alone = engine.model(input_ids=torch.tensor([short])).logits[0, -1]
    assert torch.allclose(padded[0], alone, atol=1e-5)


def test_concurrent_drafts_match_sequential_ones(engine: Engine, adapters: dict[str, Path]) -> None:
    jobs = [(seed, key) for seed in (1, 2) for key in (None, "a", "b")]

    def spec(key: str | None) -> tuple[str, Path] | None:
        return (key, adapters[key]) if key else None

    expected = {job: gen(engine, job[0], spec(job[1])).text for job in jobs}
    results: dict[tuple[int, str | None], str] = {}

    def work(job: tuple[int, str | None]) -> None:
        results[job] = gen(engine, job[0], spec(job[1])).text

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


@pytest.mark.parametrize("raw, clean", [
    ("hello there<|im_end|>\n<|im_start|>user\nmore", "hello there"),
    ("assistant\nsure thing", "sure thing"),
    ("<|im_start|>assistant\nok ~<|im_end|>", "ok ~"),
    ("  yes <|endoftext|> junk", "yes"),
    ("<|im_end|>", ""),
    ("line one\nline two", "line one\nline two"),
    ("a <|unknown_token|> b", "a  b"),
])
def test_template_debris_is_stripped(raw: str, clean: str) -> None:
    assert clean_generated(raw) == clean


def test_drafting_and_training_see_the_same_prompt_tokens(engine: Engine, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """docs/architecture.md: the same renderer at draft and training time, down to the token ids trl trains on."""
    import torch

    from training.model import load_model
    from training.stages import build_trainer, common_arguments, lora_config
    from training.config import LoraSettings
    from tests.tiny import tiny_training_settings
    from training.datasets import FeedbackExample
    from datetime import datetime, timezone

    settings = tiny_model_settings(tiny_model_dir)
    drafter = EngineDrafter(engine, settings, tiny_generation_settings())
    draft_ids = engine.encode(drafter.render(CONVERSATION))

    feedback = [FeedbackExample(kind="accept", conversation=CONVERSATION, draft="sure ~", text=None, later_kept=None,
                                created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))]
    rows = build_sft_rows(feedback, [], render=make_renderer(engine.tokenizer, settings), replay_fraction=0,
                          seed=0, tokenizer=engine.tokenizer, chunk_tokens=64)
    training = tiny_training_settings()
    trainer = build_trainer("sft", model=load_model(tiny_model_dir, settings, for_training=True),
                            tokenizer=engine.tokenizer, rows=rows, settings=training.sft,
                            common=common_arguments(training.sft, scratch_dir=tmp_path, seed=0, device="cpu",
                                                    dtype=torch.float32, progress=False),
                            peft_config=lora_config(LoraSettings(r=2)))
    example = trainer.train_dataset[0]
    prompt_length = next(i for i, label in enumerate(example["labels"]) if label != -100)
    assert example["input_ids"][:prompt_length] == draft_ids


def test_drafter_returns_a_draft_with_its_settings(engine: Engine, tiny_model_dir: Path,
                                                   adapters: dict[str, Path]) -> None:
    drafter = EngineDrafter(engine, tiny_model_settings(tiny_model_dir), tiny_generation_settings())
    result = drafter.draft(CONVERSATION, adapter=AdapterRef(key="a", version=3, path=str(adapters["a"])), seed=9)
    assert result.text.strip() and result.adapter_version == 3
    assert result.sampling["temperature"] == 1.0 and result.sampling["max_new_tokens"] == 12
    assert result.seed in (9, 1009, 2009) and result.latency_ms >= 0
    base = drafter.draft(CONVERSATION, adapter=None, seed=9)
    assert base.adapter_version == 0 and base.text.strip()


@dataclass
class ScriptedEngine:
    """An engine stand-in that answers from a script, to drive the drafter's retry logic."""

    texts: list[str]
    tokenizer: Any
    seeds: list[int] = field(default_factory=list)

    def generate(self, prompt_text: str, *, settings: Any, seed: int, adapter: Any = None) -> GenerationOutput:
        self.seeds.append(seed)
        return GenerationOutput(text=self.texts.pop(0), new_tokens=1, prefill_ms=1.0, total_ms=2.0)


def test_empty_drafts_are_retried_with_other_seeds(engine: Engine, tiny_model_dir: Path) -> None:
    scripted = ScriptedEngine(texts=["", "  ", "finally ~"], tokenizer=engine.tokenizer)
    drafter = EngineDrafter(scripted, tiny_model_settings(tiny_model_dir), tiny_generation_settings())
    result = drafter.draft(CONVERSATION, adapter=None, seed=4)
    assert result.text == "finally ~" and result.seed == 2004 and result.sampling["attempts"] == 3
    assert scripted.seeds == [4, 1004, 2004]


def test_only_empty_drafts_raise_drafting_error(engine: Engine, tiny_model_dir: Path) -> None:
    scripted = ScriptedEngine(texts=["", "", ""], tokenizer=engine.tokenizer)
    drafter = EngineDrafter(scripted, tiny_model_settings(tiny_model_dir),
                                  tiny_generation_settings(max_attempts=2))
    with pytest.raises(DraftingError):
        drafter.draft(CONVERSATION, adapter=None, seed=0)
    assert scripted.seeds == [0, 1000]


def test_drafter_from_config_loads_the_configured_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    config.model = tiny_model_settings(tiny_model_dir)
    config.generation = tiny_generation_settings()
    drafter = EngineDrafter.from_config(config)
    assert drafter.draft(CONVERSATION, adapter=None, seed=1).text.strip()


def test_on_text_follows_the_transformers_draft_and_ends_on_its_final_text(engine: Engine) -> None:
    """Streamed drafts: the cleaned reply so far after each token, growing, the last one the draft
    itself; streaming changes nothing of what is sampled."""
    seen: list[str] = []
    streamed = engine.generate(prompt(engine), settings=tiny_generation_settings(), seed=5, on_text=seen.append)
    plain = gen(engine, 5)
    assert streamed.text == plain.text and streamed.backend == "transformers"
    if plain.text:
        assert seen and seen[-1] == plain.text
    assert len(seen) == len(set(seen)) and all("<|im_" not in text for text in seen)


def test_a_failing_on_text_costs_the_preview_never_the_draft(engine: Engine) -> None:
    calls: list[str] = []

    def broken(text: str) -> None:
        calls.append(text)
        raise RuntimeError("the chat went away")

    streamed = engine.generate(prompt(engine), settings=tiny_generation_settings(), seed=5, on_text=broken)
    assert streamed.text == gen(engine, 5).text
    assert len(calls) <= 1  # dropped after its first failure


def test_the_drafter_reads_the_system_text_as_the_opening_every_prompt_shares(engine: Engine, tiny_model_dir: Path) -> None:
    drafter = EngineDrafter(engine, tiny_model_settings(tiny_model_dir), tiny_generation_settings())
    opening = drafter.prompt_opening()
    assert opening and "are you coming" not in opening
    assert drafter.render(CONVERSATION).startswith(opening)
    assert drafter.render(Conversation.of("x", [], contact="Ann")).startswith(opening)
    assert engine.warm_prompt(opening, None, settings=tiny_generation_settings()) == 0  # transformers keeps no cache
