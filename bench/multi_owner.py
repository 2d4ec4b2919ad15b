"""Drafts per second for many owners through one shared drafting server (issue 21), against one local engine.

The server is llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), started
from the models file the twin writes (training.inference.openai_server): the embedded SmolLM2 GGUF
as its base and one LoRA alias per owner, with random adapters of the real shape
(training.tiny.build_random_gguf_adapters). Drafts go round the owners in turn, through the
twin's own client (the rendered prompt as a completion prompt, the twin's sampling settings, a
seed per draft). The local engine is llama.cpp in this process on the same base file with one
owner's LoRA applied (training.inference.llamacpp.LlamaGenerator): the same weights, no HTTP, no
switching. Both on `--threads` cores (default 2).

The llama.cpp server holds one model at a time: a draft for another owner than the last one
reloads the base with that owner's LoRA. vLLM batches many adapters in one step; that row needs a GPU.

    python -m bench.multi_owner [--owners 1 10 50] [--drafts 8]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

SECTION = "multi_owner"
MESSAGES = ["are you coming tonight?", "did you see the game", "lunch tomorrow?", "can you send me the file",
            "how was the trip", "running late, start without me", "what time is it there", "happy birthday!!"]


def _prompts() -> tuple[list[str], Any]:
    from training.config import ModelSettings
    from training.datasets import make_renderer
    from training.model import load_tokenizer
    from training.prompt import Conversation
    from training.tiny import smollm2_tokenizer_dir

    tokenizer = load_tokenizer(smollm2_tokenizer_dir())
    render = make_renderer(tokenizer, ModelSettings(owner_name="Ada"))
    return [render(Conversation.of(text)) for text in MESSAGES], tokenizer


def _local_rate(base: Path, lora: Path, prompts: list[str], tokenizer: Any, settings: Any, drafts: int,
                threads: int) -> dict[str, Any]:
    from training.inference.llamacpp import LlamaGenerator

    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>")] + [tokenizer.eos_token_id]
    generator = LlamaGenerator(base, threads=threads, context_tokens=1024, lora_gguf=lora)
    try:
        latencies, tokens = [], 0
        started = time.perf_counter()
        for index in range(drafts):
            begun = time.perf_counter()
            output = generator.generate(tokenizer(prompts[index % len(prompts)])["input_ids"], settings=settings,
                                        seed=index, stop_ids=stops)
            latencies.append(time.perf_counter() - begun)
            tokens += len(output.new_ids)
        wall = time.perf_counter() - started
    finally:
        generator.close()
    return {"path": "one local engine (llama.cpp in process, 1 owner's LoRA)", "owners": 1, "drafts": drafts,
            "drafts_per_s": drafts / wall, "p50_s": statistics.median(latencies), "tokens": tokens / drafts}


def _server_rate(client: Any, names: list[str], prompts: list[str], settings: Any, drafts: int) -> dict[str, Any]:
    latencies, tokens = [], 0
    client.complete(prompts[0], model=names[0], settings=settings, seed=0, stop=["<|im_end|>"])  # loaded once
    started = time.perf_counter()
    for index in range(drafts):
        begun = time.perf_counter()
        output = client.complete(prompts[index % len(prompts)], model=names[index % len(names)], settings=settings,
                                 seed=index, stop=["<|im_end|>", "<|im_start|>"])
        latencies.append(time.perf_counter() - begun)
        tokens += output.new_tokens
    wall = time.perf_counter() - started
    return {"path": "llama_cpp.server, owners in turn", "owners": len(names), "drafts": drafts,
            "drafts_per_s": drafts / wall, "p50_s": statistics.median(latencies), "tokens": tokens / drafts}


def run(owner_counts: list[int], drafts: int, threads: int, work: Path, max_new_tokens: int) -> list[dict[str, Any]]:
    from training.config import GenerationSettings
    from training.inference.llamacpp import write_lora_gguf
    from training.inference.openai_server import (
        CompletionsClient,
        adapter_name,
        llama_cpp_models_config,
        start_llama_cpp_server,
        wait_until_serving,
        write_models_config,
    )
    from training.model import embedded_gguf_path
    from training.tiny import build_random_gguf_adapters

    base = embedded_gguf_path()
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    prompts, tokenizer = _prompts()
    folders = build_random_gguf_adapters(base, work / "adapters", max(owner_counts), seed=100)
    loras = {adapter_name(i + 1, 1, f"{i:08x}"): write_lora_gguf(f, base, f / "lora.gguf") for i, f in enumerate(folders)}
    names = sorted(loras, key=lambda n: int(n.split("-")[1]))
    rows = [_local_rate(base, loras[names[0]], prompts, tokenizer, settings, drafts, threads)]
    for count in owner_counts:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        models = work / f"models-{count}.json"
        write_models_config(models, llama_cpp_models_config(base, {n: loras[n] for n in names[:count]},
                                                            host="127.0.0.1", port=port, threads=threads))
        process = start_llama_cpp_server(models, log=work / f"server-{count}.log")
        client = CompletionsClient(f"http://127.0.0.1:{port}", "llama_cpp", timeout_s=300)
        try:
            wait_until_serving(client, timeout_s=180, process=process)
            # Every owner of the row is drafted for at least once: with fewer drafts than owners the
            # row would measure the first few owners' adapters only.
            rows.append(_server_rate(client, names[:count], prompts, settings, max(drafts, count)))
        finally:
            client.close()
            process.terminate()
            process.wait()
    return rows


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any], *, drafts: int, max_new_tokens: int) -> str:
    table = common.markdown_table(
        ["path", "owners", "drafts", "drafts/s", "median s/draft", "new tokens/draft"],
        [[r["path"], r["owners"], r["drafts"], common.fmt(r["drafts_per_s"]), common.fmt(r["p50_s"]),
          common.fmt(r["tokens"], 1)] for r in rows])
    return "\n\n".join([
        "## Many owners through one drafting server (bench/multi_owner.py)",
        common.machine_markdown(facts, quick=False),
        f"At least {drafts} drafts per row and every owner of the row once, the owners taken in turn, up to "
        f"{max_new_tokens} new tokens, the embedded SmolLM2 Q4_1 GGUF as the base, one random LoRA (r 4, all "
        "linear modules) per owner.",
        table,
        *_reading(rows),
    ])


def _reading(rows: list[dict[str, Any]]) -> list[str]:
    """What the rows say, from their own figures."""
    local = rows[0]
    served = {r["owners"]: r for r in rows[1:]}
    lines = []
    if 1 in served:
        lines.append(f"One owner through the server: {common.fmt(served[1]['p50_s'])} s per draft against "
                     f"{common.fmt(local['p50_s'])} s in process.")
    switching = [(n, r["p50_s"] - served[1]["p50_s"]) for n, r in sorted(served.items()) if n > 1 and 1 in served]
    if switching:
        lines.append(
            "llama-cpp-python's server keeps one model in memory: each draft for another owner than the last "
            "reloads the base with that owner's LoRA, so with owners in turn every draft pays a switch: "
            + ", ".join(f"{common.fmt(cost)} s more per draft at {n} owners" for n, cost in switching)
            + ". It is the CPU stand-in that lets the tests run a real multi-adapter server; many owners at speed "
            "need vLLM's batched multi-LoRA serving on a GPU (no GPU was available for this run, so that row is "
            "missing).")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--owners", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--drafts", type=int, default=8, help="drafts per row")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    threads = args.threads or 2
    facts = common.machine_facts()
    work = args.work or Path(tempfile.mkdtemp(prefix="twin-multi-owner-"))
    try:
        owners = [1] if args.quick else args.owners
        rows = run(owners, 2 if args.quick else args.drafts, threads, work, 8 if args.quick else args.max_new_tokens)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, facts, drafts=rows[0]["drafts"], max_new_tokens=8 if args.quick else args.max_new_tokens)
    print(text)
    if not args.quick:
        common.write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
