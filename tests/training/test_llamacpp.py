"""llama.cpp drafting: the fp16 GGUF scores text as torch does, samples as transformers does, falls back safely."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from training.config import GenerationSettings
from training.datasets import make_renderer
from training.inference.engine import Engine
from training.inference.llamacpp import llamacpp_installed
from training.model import COMPLETE_MARKER as BASE_MARKER, EMBEDDED_GGUF, embedded_gguf_path
from training.prompt import Conversation, Turn
from training.inference.serving import COMPLETE_MARKER, resolve_backend
from tests.tiny import build_random_adapter, tiny_generation_settings, tiny_model_settings

# Without the optional package (make EXTRAS=dev) these tests cannot run; CI installs it and must run them.
pytestmark = pytest.mark.skipif(not llamacpp_installed() and not os.environ.get("CI"),
                                reason="llama-cpp-python is not installed (make setup builds it)")

CONVERSATION = Conversation.of("are you coming tonight? the others are already there", [Turn("other", "hey")])


@pytest.fixture(scope="module")
def gguf_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as if converted from the embedded GGUF file (it has the same vocabulary):
    llama.cpp takes its vocabulary from there, the shape and weights from the tiny model."""
    folder = tmp_path_factory.mktemp("gguf-base") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / BASE_MARKER).write_text(EMBEDDED_GGUF + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def adapter(gguf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_adapter(gguf_model_dir, tmp_path_factory.mktemp("llamacpp-adapter") / "a", seed=5)


@pytest.fixture(scope="module")
def engine(gguf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_model_settings(gguf_model_dir), tmp_path_factory.mktemp("llamacpp-models"))


def prompt(engine: Engine) -> str:
    return make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))(CONVERSATION)


def settings(**overrides: object) -> GenerationSettings:
    return tiny_generation_settings(**{"backend": "llamacpp", **overrides})


def log_probs(model: object, ids: list[int]) -> list[float]:
    """torch's log-probability of each of ids[1:] given the tokens before it."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()  # type: ignore[operator]
    return torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()


def torch_log_probs(engine: Engine, ids: list[int], adapter: Path | None) -> list[float]:
    with engine.using(("a", adapter) if adapter else None) as model:
        return log_probs(model, ids)


def test_auto_means_llamacpp_on_a_cpu_for_a_base_from_a_gguf_file(engine: Engine, tiny_model_dir: Path) -> None:
    assert resolve_backend("auto", "cpu", gguf_source=embedded_gguf_path()) == "llamacpp"
    assert resolve_backend("auto", "cuda", gguf_source=embedded_gguf_path()) == "transformers"
    assert resolve_backend("auto", "cpu") == "ctranslate2"  # a hub model or folder without a GGUF source
    assert engine.backend_for(settings(backend="auto")) == "llamacpp"
    plain = Engine.load(tiny_model_settings(tiny_model_dir), Path(engine.serving.folder).parent)
    assert plain.serving.gguf_source is None and plain.backend_for(settings(backend="auto")) == "ctranslate2"


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "adapter"])
def test_the_gguf_file_scores_text_as_torch_does(engine: Engine, adapter: Path, with_adapter: bool) -> None:
    ids = engine.encode(prompt(engine) + "sure, see you at nine<|im_end|>")
    expected = torch_log_probs(engine, ids, adapter if with_adapter else None)
    generator = engine.serving.generator(str(adapter) if with_adapter else None, "llamacpp")
    scored = generator.log_likelihoods(ids, 1)
    # fp16 weights: agreement to a few thousandths of a nat on every token.
    assert max(abs(a - b) for a, b in zip(scored, expected)) < 5e-3
    if with_adapter:  # ...and not as the base model does: the merge really happened
        base = torch_log_probs(engine, ids, None)
        assert max(abs(a - b) for a, b in zip(scored, base)) > 5e-2


@pytest.mark.parametrize("row_order", ["llama.cpp's", "Hugging Face's"])
def test_query_and_key_rows_are_written_in_llama_cpp_order(engine: Engine, tmp_path: Path, row_order: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny model's random attention is nearly uniform, whatever the row order: sharpen it so
    # that rotary positions matter, then only llama.cpp's order scores text as torch does.
    import torch

    import training.inference.llamacpp as llamacpp

    model = engine.serving._fp32_model(None)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(40.0)
    if row_order == "Hugging Face's":
        monkeypatch.setattr(llamacpp, "llama_cpp_row_order", lambda rows, heads: rows)
    generator = llamacpp.LlamaGenerator(llamacpp.write_model_gguf(model, embedded_gguf_path(), tmp_path / "m.gguf"),
                                        threads=1, context_tokens=256)
    ids = engine.encode(prompt(engine) + "sure, see you at nine<|im_end|>")
    try:
        scored = generator.log_likelihoods(ids, 1)
    finally:
        generator.close()
    gap = max(abs(a - b) for a, b in zip(scored, log_probs(model, ids)))
    assert (gap < 2e-2) if row_order == "llama.cpp's" else (gap > 0.2), gap


def test_both_backends_draw_the_same_reply_when_sampling_is_near_greedy(gguf_model_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # At a tiny temperature sampling is the arg-max: equal replies mean equal logits after the
    # repetition penalty, which covers only the reply's own tokens on both paths. fp32 weights
    # here (MATRIX_DTYPE, the default of the writer): the random model's top logits are so close
    # that fp16 rounding may swap them.
    import training.inference.llamacpp as llamacpp

    monkeypatch.setattr(llamacpp, "MATRIX_DTYPE", "float32")
    engine = Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models")
    adapter = build_random_adapter(gguf_model_dir, tmp_path / "a", seed=5)
    # The random model's logits lie within hundredths of each other: at 0.01 sampling is not yet the arg-max.
    near_greedy = {"temperature": 1e-4, "top_p": 1.0, "repetition_penalty": 1.5, "max_new_tokens": 16}
    fast = engine.generate(prompt(engine), settings=settings(**near_greedy), seed=1, adapter=("a", adapter))
    slow = engine.generate(prompt(engine), settings=settings(backend="transformers", **near_greedy), seed=1,
                           adapter=("a", adapter))
    assert fast.backend == "llamacpp" and slow.backend == "transformers"
    assert fast.text == slow.text and fast.text


def test_a_seed_replays_a_draft_and_another_seed_samples_another(engine: Engine, adapter: Path) -> None:
    drafts = [engine.generate(prompt(engine), settings=settings(), seed=seed, adapter=("a", adapter))
              for seed in (3, 3, 4, 5)]
    assert all(d.backend == "llamacpp" and 1 <= d.new_tokens <= 12 and "<|im_" not in d.text for d in drafts)
    assert drafts[0].text == drafts[1].text
    assert len({d.text for d in drafts[1:]}) > 1
    assert 0 < drafts[0].prefill_ms <= drafts[0].total_ms


def test_a_prompt_sharing_the_last_ones_start_samples_as_a_fresh_context_would(adapter: Path, gguf_model_dir: Path,
                                                                               tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The second prompt reuses the cached keys and values of the first one's shared start. Both
    # engines are new: a cache filled token by token (as scoring does) may differ in the last bit
    # from one filled in a batch, and sampling the random model's flat distribution shows that.
    def fresh_engine() -> Engine:
        return Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models")

    warm_engine = fresh_engine()
    render = make_renderer(warm_engine.tokenizer, tiny_model_settings(Path("x")))
    first = render(Conversation.of("and tomorrow?", CONVERSATION.context))
    second = render(Conversation.of("what about friday then", CONVERSATION.context))
    warm_engine.generate(first, settings=settings(), seed=9, adapter=("a", adapter))
    llama = warm_engine.serving.generator(str(adapter), "llamacpp").llama
    evaluated: list[int] = []
    evaluate = llama.eval
    monkeypatch.setattr(llama, "eval", lambda tokens: (evaluated.append(len(tokens)), evaluate(tokens))[1])
    warm = warm_engine.generate(second, settings=settings(), seed=9, adapter=("a", adapter))
    first_ids, second_ids = warm_engine.encode(first), warm_engine.encode(second)
    shared = next(i for i, (a, b) in enumerate(zip(first_ids, second_ids)) if a != b)
    assert shared > 10 and evaluated[0] == len(second_ids) - shared  # only the new part of the prompt
    assert warm.text == fresh_engine().generate(second, settings=settings(), seed=9, adapter=("a", adapter)).text


def test_a_prompt_longer_than_the_context_gets_a_larger_one(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.inference.serving as serving

    monkeypatch.setattr(serving, "LLAMACPP_CONTEXT", 64)
    engine.serving._loaded.clear()
    long_prompt = make_renderer(engine.tokenizer, tiny_model_settings(Path("x")))(
        Conversation.of("so " * 40 + "are you in?", [Turn("other", "hey there, " * 10)]))
    output = engine.generate(long_prompt, settings=settings(), seed=1)
    assert output.backend == "llamacpp" and engine.serving_failure is None
    assert engine.serving.generator(None, "llamacpp").context_tokens >= len(engine.encode(long_prompt)) + 12


def test_the_conversion_lives_with_its_adapter(gguf_model_dir: Path, tmp_path: Path) -> None:
    engine = Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models")
    adapter = build_random_adapter(gguf_model_dir, tmp_path / "owners" / "7" / "adapters" / "v1", seed=2)
    engine.generate(prompt(engine), settings=settings(), seed=1, adapter=("k", adapter))
    made = [p for p in adapter.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).exists()]
    assert len(made) == 1 and made[0].name.endswith("llamacpp-float16") and (made[0] / "model.gguf").is_file()
    assert not [p for p in adapter.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_base_without_a_gguf_source_falls_back_to_transformers(tiny_model_dir: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine.load(tiny_model_settings(tiny_model_dir), tmp_path / "models")
    output = engine.generate(prompt(engine), settings=settings(), seed=1)
    assert output.backend == "transformers" and output.text
    assert "llama.cpp drafting failed" in caplog.text and "GGUF" in (engine.serving_failure or "")


def test_writing_a_gguf_file_does_not_chatter(engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The terminal chat shows INFO logs: gguf's writer would print its progress between a message and its draft.
    import logging

    from training.inference.llamacpp import write_model_gguf

    with caplog.at_level(logging.INFO):
        write_model_gguf(engine.serving._fp32_model(None), embedded_gguf_path(), tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").stat().st_size > 0
    assert not [record for record in caplog.records if record.name.startswith("gguf")]


def test_llamacpp_streams_the_draft_token_by_token_and_samples_the_same(engine: Engine, adapter: Path) -> None:
    seen: list[str] = []
    streamed = engine.generate(prompt(engine), settings=settings(), seed=3, adapter=("a", adapter), on_text=seen.append)
    plain = engine.generate(prompt(engine), settings=settings(), seed=3, adapter=("a", adapter))
    assert streamed.backend == "llamacpp" and streamed.text == plain.text
    if plain.text:
        assert seen[-1] == plain.text
    assert all(text and "<|im_" not in text for text in seen)


@pytest.mark.parametrize("own_thread", [True, False], ids=["bot", "elsewhere"])
def test_a_process_drafting_from_many_threads_runs_llama_cpp_on_one(engine: Engine, adapter: Path,
                                                                    own_thread: bool) -> None:
    # The bot drafts from asyncio's worker threads; llama.cpp's OpenMP teams, one per calling thread,
    # made every draft about twice as slow once a second thread had called (bench/first_words.py).
    # Elsewhere (torch on the main thread beside it) llama.cpp stays on the calling thread.
    from training.inference.llamacpp import run_on_own_thread

    calling: set[int] = set()

    def draft(seed: int) -> None:
        engine.generate(prompt(engine), settings=settings(), seed=seed, adapter=("a", adapter),
                        on_text=lambda _text: calling.add(threading.get_ident()))

    run_on_own_thread(own_thread)
    try:
        threads = [threading.Thread(target=draft, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        draft(3)
    finally:
        run_on_own_thread(False)
    callers = {threading.get_ident(), *(thread.ident for thread in threads)}
    if own_thread:
        assert len(calling) == 1 and calling.isdisjoint(callers)
    else:
        assert calling == callers


def test_the_warm_up_reads_the_system_text_once_and_drafts_read_only_the_rest(gguf_model_dir: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from loop.drafting import EngineDrafter

    engine = Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models")
    drafter = EngineDrafter(engine, tiny_model_settings(Path("x")), settings())
    drafter.prepare(None)
    opening_ids = engine.encode(drafter.prompt_opening())
    llama = engine.serving.generator(None, "llamacpp").llama
    assert llama.n_tokens == len(opening_ids) > 10
    assert engine.warm_prompt(drafter.prompt_opening(), None, settings=settings()) == 0  # read already
    evaluated: list[int] = []
    evaluate = llama.eval
    monkeypatch.setattr(llama, "eval", lambda tokens: (evaluated.append(len(tokens)), evaluate(tokens))[1])
    for incoming in ("first chat", "another chat, another person"):  # each message another chat
        evaluated.clear()
        ids = engine.encode(drafter.render(Conversation.of(incoming, [])))
        drafter.draft(Conversation.of(incoming, []), adapter=None, seed=1)
        shared = len(os.path.commonprefix([opening_ids, ids]))
        assert shared >= len(opening_ids) - 1 and evaluated[0] <= len(ids) - shared + 1  # the system text was not read again


def test_f16_conversions_keep_the_folder_names_they_had(engine: Engine, adapter: Path) -> None:
    # Conversions made before there were other weight types stay valid: no reconversion on upgrade.
    assert engine.serving.llamacpp_weights == "f16"
    assert engine.serving.folder_for(None, "llamacpp").name.endswith("-base-llamacpp-float16")
    assert engine.serving.folder_for(adapter, "llamacpp").name.endswith("-llamacpp-float16")


@pytest.fixture(scope="module")
def q8_engine(gguf_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(tiny_model_settings(gguf_model_dir), tmp_path_factory.mktemp("llamacpp-q8-models"),
                       llamacpp_weights="q8_0")


def test_a_q8_0_conversion_drafts_from_a_folder_of_its_own(engine: Engine, q8_engine: Engine, adapter: Path) -> None:
    import gguf

    output = q8_engine.generate(prompt(q8_engine), settings=settings(), seed=1, adapter=("a", adapter))
    assert output.backend == "llamacpp" and q8_engine.serving_failure is None  # drafted by llama.cpp, no fallback
    folder = q8_engine.serving.folder_for(adapter, "llamacpp")
    assert folder.name.endswith("-llamacpp-q8_0") and (folder / COMPLETE_MARKER).exists()
    assert folder.name != engine.serving.folder_for(adapter, "llamacpp").name
    assert sorted(p.name for p in folder.iterdir()) == sorted([COMPLETE_MARKER, "model.gguf"])  # the fp16 step is gone
    reader = gguf.GGUFReader(str(folder / "model.gguf"))
    assert int(reader.get_field("general.file_type").contents()) == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay fp32


def test_q8_0_scores_text_about_as_fp16_does(engine: Engine, q8_engine: Engine, adapter: Path) -> None:
    ids = engine.encode(prompt(engine))
    fp16 = engine.serving.generator(str(adapter), "llamacpp").log_likelihoods(ids, 1)
    q8 = q8_engine.serving.generator(str(adapter), "llamacpp").log_likelihoods(ids, 1)
    assert q8 != fp16  # really other weights
    # The rule for keeping a weight type: the text's NLL moves by under 0.5% (single tokens
    # of a random model move more).
    assert abs(sum(q8) - sum(fp16)) < 0.005 * abs(sum(fp16))


def test_a_bf16_conversion_is_written_from_the_fp32_weights_and_scores_text_as_fp16_does(
        engine: Engine, gguf_model_dir: Path, adapter: Path, tmp_path: Path) -> None:
    import gguf

    bf16_engine = Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models", llamacpp_weights="bf16")
    output = bf16_engine.generate(prompt(bf16_engine), settings=settings(), seed=1, adapter=("a", adapter))
    assert output.backend == "llamacpp" and bf16_engine.serving_failure is None
    folder = bf16_engine.serving.folder_for(adapter, "llamacpp")
    assert folder.name.endswith("-llamacpp-bf16")
    assert sorted(p.name for p in folder.iterdir()) == sorted([COMPLETE_MARKER, "model.gguf"])  # no fp16 step
    reader = gguf.GGUFReader(str(folder / "model.gguf"))
    assert int(reader.get_field("general.file_type").contents()) == 32  # LLAMA_FTYPE_MOSTLY_BF16
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay fp32
    ids = engine.encode(prompt(engine))
    fp16 = engine.serving.generator(str(adapter), "llamacpp").log_likelihoods(ids, 1)
    bf16 = bf16_engine.serving.generator(str(adapter), "llamacpp").log_likelihoods(ids, 1)
    assert bf16 != fp16  # really other weights
    assert abs(sum(bf16) - sum(fp16)) < 0.005 * abs(sum(fp16))  # the rule for keeping a weight type


def test_the_twin_drafts_on_q8_0_weights_unless_configured_otherwise(gguf_model_dir: Path, tmp_path: Path) -> None:
    # Issue 20's rule kept Q8_0 (held-out NLL +0.2-0.3%, attribution within f16's standard error, a token
    # decoded about a quarter sooner): the shipped configuration drafts on it, and a named type is honoured.
    from loop.config import Config
    from loop.drafting import EngineDrafter

    for configured, suffix in ((None, "-llamacpp-q8_0"), ("f16", "-llamacpp-float16")):
        config = Config(data_dir=tmp_path / f"data-{configured}")
        config.model = tiny_model_settings(gguf_model_dir)
        if configured:
            config.generation.llamacpp_weights = configured
        drafter = EngineDrafter.from_config(config)
        assert drafter.engine.serving.folder_for(None, "llamacpp").name.endswith(suffix)


def test_k_quants_fall_back_per_tensor_when_rows_do_not_split_into_their_blocks(gguf_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    # The tiny model's rows (64, 128 values) are no multiple of the K types' 256: llama.cpp gives those
    # matrices a type that fits, and the file still drafts.
    engine = Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models", llamacpp_weights="q6_k")
    output = engine.generate(prompt(engine), settings=settings(), seed=2)
    assert output.backend == "llamacpp" and engine.serving_failure is None
    assert engine.serving.folder_for(None, "llamacpp").name.endswith("-base-llamacpp-q6_k")


def test_an_unknown_weight_type_is_refused_with_the_types_there_are(gguf_model_dir: Path, tmp_path: Path) -> None:
    from training.errors import ServingError
    from training.inference.llamacpp import quantize_gguf

    with pytest.raises(ServingError, match="q4_0.*f16, bf16, q8_0, q6_k, q5_k_m"):
        Engine.load(tiny_model_settings(gguf_model_dir), tmp_path / "models", llamacpp_weights="q4_0")
    for written_directly in ("f16", "bf16"):
        with pytest.raises(ServingError, match=f"cannot quantize to '{written_directly}'.*q8_0, q6_k, q5_k_m$"):
            quantize_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", written_directly)


def test_every_weight_type_the_config_names_has_a_llama_cpp_file_type() -> None:
    # The names live in the settings (the leaf of training), the file types with the quantizer.
    from training.config import LLAMACPP_WEIGHTS
    from training.inference.llamacpp import WEIGHT_FTYPES

    assert tuple(WEIGHT_FTYPES) == LLAMACPP_WEIGHTS


def test_a_failed_quantization_is_a_serving_error(tmp_path: Path) -> None:
    from training.errors import ServingError
    from training.inference.llamacpp import quantize_gguf

    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ServingError, match="could not quantize broken.gguf to q8_0"):
        quantize_gguf(tmp_path / "broken.gguf", tmp_path / "out.gguf", "q8_0")
