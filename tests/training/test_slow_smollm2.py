"""The real embedded SmolLM2 learns an unmistakable made-up style from a few dozen replies.

The owner here writes all lower case, without punctuation, and ends every message with "~".
After a short SFT the twin's drafts to new messages should move toward that style and the
owner's held-out replies should become more probable than under the base model. Minutes on
CPU (the embedded model is converted from its GGUF first), so it is marked slow.
"""

from __future__ import annotations

import time

import pytest

from training.config import GenerationSettings, LoraSettings, ModelSettings, StageSettings, TrainingSettings
from training.datasets import WritingExample, build_sft_rows, make_renderer, write_datasets
from training.prompt import Conversation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes of CPU; more when the machine is shared

PAIRS = [
    ("Are you coming to the party on Saturday?", "yeah ill be there around nine ~"),
    ("Did you finish the report?", "almost done just fixing the charts ~"),
    ("What time is the meeting tomorrow?", "think its at ten but ill check ~"),
    ("Can you pick up some milk on the way home?", "sure thing anything else ~"),
    ("How was your weekend?", "pretty chill mostly slept and read ~"),
    ("Do you want to grab lunch?", "yes please im starving ~"),
    ("Have you seen the new episode?", "not yet no spoilers ~"),
    ("Where did you park the car?", "round the back near the bins ~"),
    ("Is it going to rain today?", "looks like it take a jacket ~"),
    ("Can you call me later?", "sure after six works ~"),
    ("Did you feed the cat?", "yep she had breakfast already ~"),
    ("What should we cook tonight?", "maybe pasta we have tomatoes ~"),
    ("Are you still at work?", "leaving in ten minutes ~"),
    ("Did you book the train tickets?", "booked them this morning ~"),
    ("How is your mum doing?", "much better thanks for asking ~"),
    ("Want to go running tomorrow?", "only if its not too early ~"),
    ("Have you got the keys?", "theyre in my bag dont worry ~"),
    ("What did the doctor say?", "nothing serious just rest ~"),
    ("Can I borrow your charger?", "of course its on my desk ~"),
    ("Are we still on for Friday?", "yes still on see you then ~"),
    ("Did you like the film?", "loved it the ending was great ~"),
    ("When is your flight?", "tuesday early in the morning ~"),
    ("Could you send me the photos?", "sending them now ~"),
    ("Why were you late?", "the bus never came sorry ~"),
    ("Do you need help moving?", "that would be amazing thank you ~"),
    ("Have you eaten yet?", "not yet about to make something ~"),
    ("Is the wifi working for you?", "mine is fine try restarting it ~"),
    ("Who is coming to dinner?", "just sam and jo i think ~"),
    ("Did you get my email?", "got it will reply tonight ~"),
    ("Shall we watch something tonight?", "yes lets find a comedy ~"),
    ("How did the interview go?", "went well i think fingers crossed ~"),
    ("Can you water the plants?", "done them this afternoon ~"),
]
HELDOUT = [
    ("Are you free this evening?", "free after seven whats up ~"),
    ("Did you remember to buy bread?", "oh no totally forgot ~"),
    ("What are you doing this weekend?", "nothing planned yet maybe a walk ~"),
    ("Can you help me with my homework?", "sure send it over ~"),
    ("Is the shop still open?", "think it closes at eight ~"),
    ("How was the concert?", "so loud but really fun ~"),
    ("Do you want coffee?", "always yes please ~"),
    ("When will you be home?", "around half six ~"),
]


def test_sft_moves_drafts_toward_the_owners_style(tmp_path_factory: pytest.TempPathFactory) -> None:
    from training.inference.engine import Engine
    from training.likelihood import mean_nll
    from training.model import load_tokenizer, resolve_base_model
    from training.train import TrainJob, run_training

    started = time.perf_counter()
    root = tmp_path_factory.mktemp("smollm2")
    model_settings = ModelSettings(base="embedded", device="cpu", owner_name="Sam", context_turns=2,
                                   max_prompt_tokens=160)
    models_dir = root / "models"
    tokenizer = load_tokenizer(resolve_base_model(model_settings, models_dir))
    render = make_renderer(tokenizer, model_settings)
    writing = [WritingExample("reply", reply, Conversation.of(incoming), None) for incoming, reply in PAIRS]
    write_datasets({"sft": build_sft_rows([], writing, render=render, replay_fraction=0, seed=0, tokenizer=tokenizer,
                                          chunk_tokens=256)}, root / "datasets")
    training = TrainingSettings(sft=StageSettings(epochs=4, learning_rate=1e-3, batch_size=8, max_length=192),
                                seed=3)
    job = TrainJob(model=model_settings, lora=LoraSettings(r=16, alpha=32, dropout=0.0), training=training,
                   models_dir=models_dir, datasets_dir=root / "datasets", init_adapter=None,
                   output_dir=root / "adapter", log_file=root / "train.log")
    result = run_training(job, progress=False)
    trained_at = time.perf_counter()

    engine = Engine.load(model_settings, models_dir)
    adapter = ("slow-test", result.adapter_dir)
    generation = GenerationSettings(max_new_tokens=24, temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    heldout = [(render(Conversation.of(incoming)), reply) for incoming, reply in HELDOUT]

    def styled(text: str) -> bool:
        return text.rstrip().endswith("~")

    scores = {}
    for name, spec in (("base", None), ("adapter", adapter)):
        with engine.using(spec) as model:
            nll = mean_nll(model, engine.tokenizer, heldout)
        drafts = [engine.generate(prompt, settings=generation, seed=i, adapter=spec).text
                  for i, (prompt, _) in enumerate(heldout)]
        scores[name] = {"nll": nll, "styled": sum(map(styled, drafts)) / len(drafts), "drafts": drafts}
    print(f"\nSFT {result.stages['sft']}\nscores {scores}\n"
          f"train {trained_at - started:.0f} s, total {time.perf_counter() - started:.0f} s")
    assert scores["adapter"]["nll"] < scores["base"]["nll"] - 0.5
    assert scores["adapter"]["styled"] >= 0.5 and scores["adapter"]["styled"] > scores["base"]["styled"]
