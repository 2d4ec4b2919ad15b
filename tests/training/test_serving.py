"""CTranslate2 drafting: same distribution as transformers, conversions cached by checksum, safe fallback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from training.artifacts import CorruptAdapter
from training.config import ConfigError, GenerationSettings
from training.datasets import make_renderer
from training.inference.engine import Engine
from training.prompt import Conversation, Turn
from training.inference.serving import COMPLETE_MARKER, ServingCache, resolve_backend
from tests.tiny import build_random_adapter, tiny_generation_settings, tiny_model_settings

CONVERSATION = Conversation.of("are you coming tonight? the others are already there", [Turn("other", "hey")])


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("serving-adapter") / "a", seed=5)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving-models")


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, models_dir: Path) -> Engine:
    return Engine.load(tiny_model_settings(tiny_model_dir), models_dir)


def prompt(engine: Engine) -> str:
    return make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))(CONVERSATION)


def settings(backend: str, **overrides: object) -> GenerationSettings:
    return tiny_generation_settings(backend=backend, **overrides)


def conversions(*folders: Path) -> list[Path]:
    """Complete conversions of the base (under models/serving) or of adapters (inside each adapter)."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [p for p in folder.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).exists()]
    return sorted(found)


def own_adapter(tiny_model_dir: Path, folder: Path, seed: int = 5) -> Path:
    return build_random_adapter(tiny_model_dir, folder, seed=seed)


def test_auto_means_ctranslate2_on_a_cpu_and_transformers_on_a_gpu() -> None:
    assert resolve_backend("auto", "cpu") == "ctranslate2"
    assert resolve_backend("auto", "cuda") == "transformers"
    assert resolve_backend("transformers", "cpu") == "transformers"
    assert resolve_backend("ctranslate2-int8", "cpu") == "ctranslate2-int8"
    with pytest.raises(ConfigError, match="generation.backend"):
        GenerationSettings(backend="llama.cpp")


def test_both_backends_draw_the_same_reply_when_sampling_is_near_greedy(engine: Engine) -> None:
    # At a tiny temperature sampling is the arg-max: equal replies mean equal logits after the
    # repetition penalty, which covers only the reply's own tokens on both paths.
    near_greedy = {"temperature": 0.01, "top_p": 1.0, "repetition_penalty": 1.5, "max_new_tokens": 16}
    fast = engine.generate(prompt(engine), settings=settings("ctranslate2", **near_greedy), seed=1)
    slow = engine.generate(prompt(engine), settings=settings("transformers", **near_greedy), seed=1)
    assert fast.backend == "ctranslate2" and slow.backend == "transformers"
    assert fast.text == slow.text and fast.text


def test_the_converted_adapter_scores_text_as_the_adapter_does(engine: Engine, adapter: Path) -> None:
    import torch

    ids = engine.encode(prompt(engine) + "sure, see you at nine<|im_end|>")
    with engine.using(("a", adapter)) as model, torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    generator = engine.serving.generator(str(adapter), "ctranslate2")
    scored = generator.score_batch([engine.tokenizer.convert_ids_to_tokens(ids)])[0].log_probs
    assert torch.allclose(torch.tensor(scored), expected, atol=1e-3)
    # ...and not as the base model does: the merge really happened.
    base = engine.serving.generator(None, "ctranslate2").score_batch([engine.tokenizer.convert_ids_to_tokens(ids)])
    assert not torch.allclose(torch.tensor(base[0].log_probs), expected, atol=1e-2)


def test_ctranslate2_drafts_are_bounded_clean_and_sampled(engine: Engine, adapter: Path) -> None:
    # CTranslate2 seeds its sampler once per worker thread, so unlike the transformers path a
    # seed does not replay a draft: two calls sample two different replies.
    generation = settings("ctranslate2")
    first = engine.generate(prompt(engine), settings=generation, seed=5, adapter=("a", adapter))
    again = engine.generate(prompt(engine), settings=generation, seed=5, adapter=("a", adapter))
    assert first.backend == "ctranslate2" and first.text and first.text != again.text
    assert 1 <= first.new_tokens <= generation.max_new_tokens
    assert 0 < first.prefill_ms <= first.total_ms
    assert "<|im_" not in first.text


def test_a_conversion_is_made_once_and_lives_with_its_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    adapter = own_adapter(tiny_model_dir, tmp_path / "owners" / "7" / "adapters" / "v1")
    first = Engine.load(tiny_model_settings(tiny_model_dir), models)
    first.generate(prompt(first), settings=settings("ctranslate2"), seed=1, adapter=("a", adapter))
    made = conversions(adapter)
    # Inside the adapter's folder: deleting the owner's folder (twin forget) deletes the merged weights.
    assert len(made) == 1 and made[0].parent == adapter
    assert conversions(models / "serving") == []  # only the base goes to the shared folder
    stamp = (made[0] / "model.bin").stat().st_mtime_ns
    # Another process (here: another engine) reuses it, under any adapter key.
    second = Engine.load(tiny_model_settings(tiny_model_dir), models)
    second.generate(prompt(second), settings=settings("ctranslate2"), seed=1, adapter=("other-key", adapter))
    assert conversions(adapter) == made and (made[0] / "model.bin").stat().st_mtime_ns == stamp
    assert not [p for p in adapter.iterdir() if p.name.startswith(".")]  # no staging left
    # The base model's own conversion is shared.
    second.generate(prompt(second), settings=settings("ctranslate2"), seed=1)
    assert len(conversions(models / "serving")) == 1


def test_a_conversion_of_other_weights_is_never_reused(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path / "models")
    adapter = own_adapter(tiny_model_dir, tmp_path / "v1", seed=1)
    engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1, adapter=("k", adapter))
    stale = conversions(adapter)[0]
    retrained = own_adapter(tiny_model_dir, tmp_path / "retrained", seed=2)
    shutil.copytree(stale, retrained / stale.name)  # a conversion copied along, from other weights
    engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1, adapter=("k2", retrained))
    assert [p.name for p in conversions(retrained)] != [stale.name] and len(conversions(retrained)) == 2


def test_old_conversions_are_pruned(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path / "models")
    engine.serving.keep_on_disk = 2
    versions = [own_adapter(tiny_model_dir, tmp_path / "adapters" / f"v{n}", seed=n) for n in (1, 2, 3)]
    for n, folder in enumerate(versions, start=1):
        engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1, adapter=(f"k{n}", folder))
    assert [len(conversions(folder)) for folder in versions] == [0, 1, 1]
    assert all((folder / "adapter_model.safetensors").exists() for folder in versions)  # adapters untouched


def test_a_damaged_adapter_is_refused_before_it_is_converted(tiny_model_dir: Path, tmp_path: Path) -> None:
    damaged = own_adapter(tiny_model_dir, tmp_path / "damaged")
    with (damaged / "adapter_model.safetensors").open("r+b") as handle:
        handle.seek(-16, os.SEEK_END)
        handle.write(b"\0" * 16)
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path / "models")
    with pytest.raises(CorruptAdapter):
        engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1, adapter=("d", damaged))
    assert conversions(damaged, tmp_path / "models" / "serving") == []


def test_a_failing_conversion_falls_back_to_transformers(tiny_model_dir: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "serving").write_text("a file where the conversions folder should be", encoding="utf-8")
    engine = Engine.load(tiny_model_settings(tiny_model_dir), models)
    output = engine.generate(prompt(engine), settings=settings("auto"), seed=1)
    assert output.backend == "transformers" and output.text
    assert engine.serving_failure and "CTranslate2 drafting failed" in caplog.text
    # Given up once, not retried (and logged) on every draft.
    caplog.clear()
    assert engine.generate(prompt(engine), settings=settings("auto"), seed=2).backend == "transformers"
    assert "CTranslate2" not in caplog.text


def test_an_interrupted_conversion_is_redone(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = ServingCache(str(tiny_model_dir), tmp_path / "serving", tokenizer=None)
    target = cache.folder_for(None, "ctranslate2")
    target.mkdir(parents=True)
    (target / "model.bin").write_bytes(b"half")  # no completion marker: a killed conversion
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path)
    assert engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1).backend == "ctranslate2"
    assert (target / COMPLETE_MARKER).exists() and (target / "model.bin").stat().st_size > 1000


def test_the_base_can_be_converted_ahead_of_the_first_draft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.inference.serving import prepare_for_drafting

    models = tmp_path / "models"
    assert prepare_for_drafting(tiny_model_settings(tiny_model_dir), "transformers", models) is None
    folder = prepare_for_drafting(tiny_model_settings(tiny_model_dir), "auto", models)
    assert folder is not None and (folder / COMPLETE_MARKER).exists()
    engine = Engine.load(tiny_model_settings(tiny_model_dir), models)
    assert engine.serving.folder_for(None, "ctranslate2") == folder  # what the first draft will use



def test_a_loaded_adapter_drafts_without_touching_the_disk_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Verified and converted when loaded (as on the transformers path); later drafts neither
    # re-hash the weights nor read the manifest: here both are gone and drafting goes on.
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path / "models")
    adapter = own_adapter(tiny_model_dir, tmp_path / "v1")
    engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=1, adapter=("k", adapter))
    (adapter / "twin_adapter.json").unlink()
    shutil.rmtree(conversions(adapter)[0])
    output = engine.generate(prompt(engine), settings=settings("ctranslate2"), seed=2, adapter=("k", adapter))
    assert output.backend == "ctranslate2" and output.text and engine.serving_failure is None
