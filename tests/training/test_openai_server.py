"""The drafting server's pieces: llama.cpp LoRA files that equal the merged adapter, and the client
against a real llama-cpp-python server (embedded GGUF, one alias per adapter)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.llama_server import free_port, requires_server, running_server
from tests.tiny import build_random_adapter, tiny_generation_settings
from training.inference.llamacpp import LlamaGenerator, llamacpp_installed, write_lora_gguf, write_model_gguf
from training.inference.openai_server import (
    BASE_ALIAS,
    CompletionsClient,
    ServerUnavailable,
    adapter_name,
    llama_cpp_models_config,
    owner_of_name,
    write_models_config,
)
from training.model import embedded_gguf_path
from training.prompt import Conversation, Turn

PROMPT_CONVERSATION = Conversation.of("are you coming tonight?", [Turn("other", "hey")])


def test_adapter_names_carry_owner_version_and_checksum() -> None:
    name = adapter_name(42, 3, "0123456789abcdef")
    assert name == "owner-42-v3-01234567"
    assert owner_of_name(name) == 42 and owner_of_name(BASE_ALIAS) is None and owner_of_name("owner-x") is None


@pytest.mark.skipif(not llamacpp_installed(), reason="llama-cpp-python is not installed")
def test_a_lora_file_on_the_base_scores_text_as_the_merged_adapter_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The q/k rows of B must be put in llama.cpp's order: a wrong order changes every score."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = build_random_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    base_gguf = write_model_gguf(base, embedded_gguf_path(), tmp_path / "base.gguf", matrix_dtype="float32")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter))
    merged_gguf = write_model_gguf(merged.merge_and_unload(), embedded_gguf_path(), tmp_path / "merged.gguf",
                                   matrix_dtype="float32")
    lora_gguf = write_lora_gguf(adapter, base_gguf, tmp_path / "lora.gguf")
    ids = AutoTokenizer.from_pretrained(str(tiny_model_dir))("hey there, are you coming tonight?")["input_ids"]

    def scores(model: Path, lora: Path | None = None) -> list[float]:
        generator = LlamaGenerator(model, threads=2, context_tokens=128, lora_gguf=lora)
        try:
            return generator.log_likelihoods(ids, 1)
        finally:
            generator.close()

    on_the_fly, merged_scores, plain = scores(base_gguf, lora_gguf), scores(merged_gguf), scores(base_gguf)
    assert on_the_fly == pytest.approx(merged_scores, abs=2e-3)
    assert max(abs(a - b) for a, b in zip(plain, merged_scores)) > 0.05  # the adapter does change the scores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The embedded GGUF with two owners' random adapters, served by llama-cpp-python's server."""
    from training.tiny import build_random_gguf_adapters

    folder = tmp_path_factory.mktemp("openai-server")
    base = embedded_gguf_path()
    adapters = build_random_gguf_adapters(base, folder / "adapters", 2, seed=11)
    names = [adapter_name(owner, 1, f"{owner:08d}") for owner in (1, 2)]
    loras = {name: write_lora_gguf(path, base, path / "lora.gguf") for name, path in zip(names, adapters)}
    port = free_port()
    models = folder / "models.json"
    write_models_config(models, llama_cpp_models_config(base, loras, host="127.0.0.1", port=port, threads=2))
    with running_server(models, f"http://127.0.0.1:{port}", log=folder / "server.log") as client:
        yield client, names




def _prompt() -> str:
    from training.datasets import make_renderer
    from training.model import load_tokenizer
    from training.tiny import smollm2_tokenizer_dir, tiny_model_settings

    tokenizer = load_tokenizer(smollm2_tokenizer_dir())
    return make_renderer(tokenizer, tiny_model_settings(Path("x")))(PROMPT_CONVERSATION), tokenizer


@pytest.mark.server
@requires_server
def test_each_alias_drafts_with_its_own_adapter_and_a_seed_replays_a_draft(server) -> None:
    client, (first, second) = server
    prompt, tokenizer = _prompt()
    settings = tiny_generation_settings(max_new_tokens=8)
    draft = lambda model, seed=5: client.complete(prompt, model=model, settings=settings, seed=seed,  # noqa: E731
                                                  stop=["<|im_end|>"])
    base, one, two = draft(BASE_ALIAS), draft(first), draft(second)
    assert len({base.text, one.text, two.text}) == 3, (base, one, two)
    assert draft(second).text == two.text  # the seed is passed and honoured
    # The server tokenised the rendered prompt to the very tokens training sees.
    assert one.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert client.models() == {BASE_ALIAS, first, second}


@pytest.mark.server
@requires_server
def test_a_name_the_server_does_not_serve_is_refused_not_answered_by_another_model(server) -> None:
    client, _ = server
    with pytest.raises(ServerUnavailable, match="does not serve 'owner-3-v1"):
        client.complete("hi", model=adapter_name(3, 1, "ffffffff"), settings=tiny_generation_settings(), seed=0,
                        stop=[])


def test_a_server_that_is_down_is_unavailable_not_an_error_of_the_draft() -> None:
    client = CompletionsClient(f"http://127.0.0.1:{free_port()}", "llama_cpp", timeout_s=5)
    with pytest.raises(ServerUnavailable, match="cannot be reached"):
        client.models()
