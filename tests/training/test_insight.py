"""training.insight on the tiny model: LoRA update sizes, word shifts toward a made-up habit,
attention differences, and the charts of training.insight_charts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.tiny import build_random_adapter, tiny_generation_settings, tiny_model_settings, tiny_training_settings
from tests.training.test_slow_smollm2 import HELDOUT, PAIRS
from training.config import InsightSettings, LoraSettings, StageSettings
from training.datasets import WritingExample, build_sft_rows, make_renderer, write_datasets
from training.inference.engine import Engine
from training.insight import (
    END_LABEL,
    Insight,
    attention_shift,
    band_grid,
    base_weights,
    insight_lines,
    measure_insight,
    update_sizes,
    usage_rate,
)
from training.insight_charts import CHART_NAMES, write_insight_charts
from training.prompt import Conversation

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(tiny_model_settings(tiny_model_dir), Path("unused-models-dir"), max_adapters=3)


def test_update_sizes_of_a_hand_made_adapter_are_the_known_norms(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    r, alpha = 2, 6
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    weights = {name: w.detach().clone() for name, w in base_weights(model).items()}
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    # Every A entry a, every B entry b: B·A has r·a·b in each of its out × in cells.
    values = {}
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                layer = int(name.split(".layers.")[1].split(".")[0])
                a, b = 0.01 * (layer + 1), 0.02 if "q_proj" in name else 0.05
                module.lora_A["default"].weight.fill_(a)
                module.lora_B["default"].weight.fill_(b)
                values[(layer, name.rsplit(".", 1)[-1])] = (a, b, *module.lora_B["default"].weight.shape[:1],
                                                            module.lora_A["default"].weight.shape[1])
    peft_model.save_pretrained(str(tmp_path / "adapter"))

    changes = update_sizes(tmp_path / "adapter", base_weights(peft_model))
    assert [(c.layer, c.module) for c in changes] == sorted(values)
    for change in changes:
        a, b, rows, columns = values[(change.layer, change.module)]
        expected = (alpha / r) * r * a * b * math.sqrt(rows * columns)
        weight = weights[f"model.layers.{change.layer}.self_attn.{change.module}"]
        assert change.update_norm == pytest.approx(expected, rel=1e-5)
        assert change.weight_norm == pytest.approx(float(weight.norm()), rel=1e-6)  # the base weight, not W+ΔW
        assert change.ratio == pytest.approx(expected / float(weight.norm()), rel=1e-5)
    rows, columns, grid = band_grid(changes, bands=6)
    assert rows == ["layer 1", "layer 2"] and columns == ["query", "value"]
    assert grid[1][0] == pytest.approx(changes[2].ratio)  # layer 2, query


def test_attention_difference_is_zero_for_the_base_model_against_itself(engine: Engine, tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    render = make_renderer(engine.tokenizer, tiny_model_settings(tiny_model_dir))
    items = [(render(Conversation.of(incoming)), reply) for incoming, reply in HELDOUT[:3]]
    def implementation() -> str:
        return getattr(engine.model, "get_base_model", lambda: engine.model)().config._attn_implementation

    before = implementation()
    same, example = attention_shift(engine, None, None, items)
    assert same.items == 3 and len(same.kl) == 2 and len(same.kl_per_head[0]) == 4
    assert all(value == 0.0 for value in same.kl) and all(value == 0.0 for value in same.entropy_change)
    assert example is not None and example.tokens and all(g == 0.0 for g in example.gain)
    longest = max(HELDOUT[:3], key=lambda pair: len(render(Conversation.of(pair[0]))))[0]
    assert longest in "".join(example.tokens)  # the context shown is the example's own message

    adapter = ("random", build_random_adapter(tiny_model_dir, tmp_path / "random", seed=3))
    moved, _ = attention_shift(engine, adapter, None, items)
    assert all(value > 0 for value in moved.kl)
    assert implementation() == before  # eager for the measurement only


def test_usage_rate_counts_messages_that_use_a_word_or_phrase() -> None:
    texts = ["yes please ~", "no thanks", "yes ~ yes", "Yes"]
    assert usage_rate("yes", texts) == 0.5  # case is a habit too
    assert usage_rate("~", texts) == 0.5
    assert usage_rate("yes please", texts) == 0.25
    assert usage_rate(END_LABEL, texts) is None and usage_rate("yes", []) is None


@pytest.fixture(scope="module")
def habit_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained for a few dozen steps on the slow test's owner: lower case, every reply ending in "~"."""
    from training.model import load_tokenizer
    from training.train import TrainJob, run_training

    root = tmp_path_factory.mktemp("habit")
    settings = tiny_model_settings(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    writing = [WritingExample("reply", reply, Conversation.of(incoming), None) for incoming, reply in PAIRS]
    rows = build_sft_rows([], writing, render=make_renderer(tokenizer, settings), replay_fraction=0, seed=0,
                          tokenizer=tokenizer, chunk_tokens=64)
    write_datasets({"sft": rows}, root / "datasets")
    training = tiny_training_settings(sft=StageSettings(epochs=1.0, learning_rate=5e-3, batch_size=8, max_length=192,
                                                        max_steps=30))
    job = TrainJob(model=settings, lora=LoraSettings(r=8, alpha=16, dropout=0.0), training=training,
                   models_dir=root / "models", datasets_dir=root / "datasets", init_adapter=None,
                   output_dir=root / "adapter", log_file=root / "train.log", metadata={"version": 1})
    return run_training(job, progress=False).adapter_dir


def test_an_adapter_trained_toward_a_habit_favours_the_habits_tokens(engine: Engine, tiny_model_dir: Path,
                                                                    habit_adapter: Path, tmp_path: Path) -> None:
    render = make_renderer(engine.tokenizer, tiny_model_settings(tiny_model_dir))
    items = [(render(Conversation.of(incoming)), reply) for incoming, reply in HELDOUT]
    owner = [reply for _, reply in PAIRS]
    previous = build_random_adapter(tiny_model_dir, tmp_path / "previous", seed=5, r=8)
    insight = measure_insight(engine, adapter_dir=habit_adapter, version=2, items=items, owner_texts=owner,
                              generation=tiny_generation_settings(max_new_tokens=10),
                              settings=InsightSettings(drafts=3, attention_items=2), previous_dir=previous,
                              previous_version=1)
    words = [p.text for p in insight.rose]
    assert "~" in words[:3], [(p.text, round(p.shift, 2)) for p in insight.rose]
    tilde = next(p for p in insight.rose if p.text == "~")
    assert tilde.owner_rate == 1.0 and tilde.shift > 0.5  # every reply of the owner ends with it
    assert all(p.shift < 0 for p in insight.fell) and all(p.shift > 0 for p in insight.rose)
    assert insight.items == len(HELDOUT) and len(insight.changes) == 2 * 7  # all-linear: 7 modules a layer
    assert len(insight.previous_changes) == 14 and insight.previous == 1
    assert insight.attention is not None and max(insight.attention.kl) > 0
    assert set(insight.profiles) == {"owner", "against drafts", "twin drafts"}
    assert set(insight.seconds) >= {"update sizes", "drafts", "word shifts", "attention", "style"}

    # Plain data: a cycle stores it as JSON and its report rebuilds the same sentences.
    import json

    again = Insight.from_json(json.loads(json.dumps(insight.to_json())))
    assert insight_lines(again) == insight_lines(insight)
    text = "\n".join(insight_lines(insight))
    assert "What v2 changed, against the base model" in text and "'~'" in text and "Grew most since v1" in text

    charts = write_insight_charts(again, tmp_path / "charts")
    assert [p.name for p in charts] == [f"insight-{name}.png" for name in CHART_NAMES]
    assert all(p.read_bytes().startswith(PNG) for p in charts)
