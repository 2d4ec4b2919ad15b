"""One-off measurement of the learning core on the embedded SmolLM2 (CPU): not a test, not a benchmark suite.

Measures one SFT epoch on 100 reply examples and one DPO epoch on 100 (owner's text ≻ draft)
pairs with the default settings of training.config, then the latency of a 40-60 token draft with
the base model and with the trained adapter (unmerged LoRA). Prints a JSON summary.

    .venv/bin/python -m bench._measure_training --out /tmp/measure
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from training.config import GenerationSettings, LoraSettings, ModelSettings, StageSettings, TrainingSettings
from training.datasets import FeedbackExample, build_dpo_rows, build_sft_rows, make_renderer, write_datasets
from training.prompt import Conversation, Turn

logger = logging.getLogger(__name__)

SUBJECTS = ["the party", "the report", "dinner", "the train", "the film", "the meeting", "the gym", "the trip",
            "the exam", "the concert"]
QUESTIONS = ["Are you coming to {s} tonight?", "What did you think of {s}?", "Can we talk about {s} later?",
             "Did you sort out {s}?", "How was {s}?", "Should I book {s} for Friday?", "Is {s} still on?",
             "Who else is going to {s}?", "Why did you skip {s}?", "When does {s} start?"]
REPLIES = ["yeah ill be there after work, save me a seat", "honestly it was better than i expected lol",
           "sure, ping me after six and we can sort it", "not yet, been swamped all week sorry",
           "pretty good tbh, bit long but fun", "yes please that would be great thanks",
           "think so, havent heard otherwise", "just me and jo i think, maybe sam",
           "was knackered, needed a night in", "half seven i think, check the email"]


def examples(n: int) -> list[FeedbackExample]:
    rng = random.Random(0)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    items = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        incoming = QUESTIONS[(i // len(SUBJECTS)) % len(QUESTIONS)].format(s=subject)
        context = [Turn("other", f"hey, quick one about {subject}"), Turn("owner", "go on")]
        owner = rng.choice(REPLIES)
        draft = f"Hello! Regarding {subject}, I will let you know as soon as possible. Best regards."
        items.append(FeedbackExample(kind="edit", conversation=Conversation.of(incoming, context), draft=draft,
                                     text=owner, later_kept=None, created_at=t0 + timedelta(minutes=i)))
    return items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/twin-measure"))
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="stop each stage after this many steps (the epoch time is then extrapolated)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from training.inference.engine import Engine
    from training.model import load_tokenizer, resolve_base_model
    from training.train import TrainJob, run_training

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"load_average_start": os.getloadavg()}
    model_settings = ModelSettings(device="cpu")
    models_dir = out / "models"
    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve_base_model(model_settings, models_dir))
    summary["resolve_embedded_s"] = round(time.perf_counter() - started, 1)
    render = make_renderer(tokenizer, model_settings)
    feedback = examples(args.examples)
    rows = {"sft": build_sft_rows(feedback, [], render=render, replay_fraction=0, seed=0, tokenizer=tokenizer,
                                  chunk_tokens=256),
            "dpo": build_dpo_rows(feedback, render=render)}
    defaults = TrainingSettings()
    stamp = int(time.time())
    for stage in ("sft", "dpo"):
        write_datasets({stage: rows[stage]}, out / f"ds-{stage}")
        training = TrainingSettings(
            sft=StageSettings(**{**defaults.sft.__dict__, "epochs": 1.0, "max_steps": args.max_steps}),
            dpo=StageSettings(**{**defaults.dpo.__dict__, "epochs": 1.0, "max_steps": args.max_steps}),
            kto=defaults.kto)
        job = TrainJob(model=model_settings, lora=LoraSettings(), training=training, models_dir=models_dir,
                       datasets_dir=out / f"ds-{stage}",
                       init_adapter=out / f"adapter-sft-{stamp}" if stage == "dpo" else None,
                       output_dir=out / f"adapter-{stage}-{stamp}", log_file=out / f"{stage}.log")
        result = run_training(job, progress=False)
        summary[stage] = stats = dict(result.stages[stage])
        settings = getattr(training, stage)
        steps_per_epoch = -(-len(rows[stage]) // (settings.batch_size * settings.gradient_accumulation_steps))
        stats["epoch_seconds_estimate"] = round(stats["seconds"] / max(stats["steps"], 1) * steps_per_epoch, 1)
        print(stage, json.dumps(result.stages[stage]), flush=True)

    engine = Engine.load(model_settings, models_dir)
    generation = GenerationSettings(max_new_tokens=56, temperature=0.8, top_p=0.9, repetition_penalty=1.15)
    prompt = render(Conversation.of("Tell me everything about your week, in detail: work, friends, plans."))
    adapter = ("measure", out / f"adapter-dpo-{stamp}")
    engine.generate(prompt, settings=generation, seed=0)  # warm-up
    for name, spec in (("base", None), ("adapter", adapter)):
        runs = [engine.generate(prompt, settings=generation, seed=seed, adapter=spec) for seed in range(1, 6)]
        summary[f"draft_{name}"] = {
            "new_tokens": [r.new_tokens for r in runs], "total_ms": [r.total_ms for r in runs],
            "prefill_ms": [r.prefill_ms for r in runs],
            "tokens_per_s": round(sum(r.new_tokens for r in runs) / (sum(r.total_ms for r in runs) / 1000), 1)}
        print(name, json.dumps(summary[f"draft_{name}"]), flush=True)
    summary["load_average_end"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
