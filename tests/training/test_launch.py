"""The training step under `accelerate launch` (training.launch): the command line for the shipped
FSDP, DeepSpeed and DDP configs, and a real two-process DDP run over gloo on CPU."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from tests.training.test_train import build_rows, make_job
from tests.tiny import tiny_training_settings
from training.artifacts import read_manifest, verify_adapter
from training.config import ConfigError, TrainingSettings
from training.launch import (
    ACCELERATE_DIR,
    LaunchFailed,
    accelerate_command,
    job_from_json,
    job_to_json,
    train,
)

CPU_DDP = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
num_machines: 1
machine_rank: 0
num_processes: 2
mixed_precision: "no"
use_cpu: true
main_training_function: main
rdzv_backend: static
same_network: true
"""


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")])
def test_each_shipped_config_loads_in_accelerate_and_makes_the_command(name, kind, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_DIR / f"{name}.yaml"
    assert load_config_from_file(str(path)).distributed_type.value == kind
    settings = TrainingSettings(launcher="accelerate", accelerate_config=name, num_processes=8)
    command = accelerate_command(settings, tmp_path / "train_job.json")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:] == ["--config_file", str(path), "--num_processes", "8", "-m", "training.launch",
                           str(tmp_path / "train_job.json")]


def test_a_config_of_ones_own_and_wrong_values(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(CPU_DDP, encoding="utf-8")
    command = accelerate_command(TrainingSettings(launcher="accelerate", accelerate_config=str(own)), tmp_path / "j")
    assert command[3:5] == ["--config_file", str(own)] and "--num_processes" not in command
    with pytest.raises(LaunchFailed, match="no such file"):
        accelerate_command(TrainingSettings(launcher="accelerate", accelerate_config="nope.yaml"), tmp_path / "j")
    with pytest.raises(ConfigError, match="training.launcher"):
        TrainingSettings(launcher="torchrun")


def test_a_job_survives_its_json_file(tmp_path):
    job = make_job(tmp_path / "model", tmp_path, {"sft": []}, training=tiny_training_settings())
    again = job_from_json(job_to_json(job))
    assert dataclasses.asdict(again) == dataclasses.asdict(job)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TWIN_TEST_DDP"), reason="set TWIN_TEST_DDP=1: two torch processes "
                    "over gloo did not reach init_process_group within minutes on the loaded 2-core machine")
def test_two_ddp_processes_over_gloo_write_one_adapter(tiny_model_dir, tmp_path):
    """Every rank trains, rank 0 alone writes the folder; the result comes back to the caller."""
    config = tmp_path / "cpu-ddp.yaml"
    config.write_text(CPU_DDP, encoding="utf-8")
    training = dataclasses.replace(tiny_training_settings(), launcher="accelerate", accelerate_config=str(config))
    training.dpo.enabled = training.kto.enabled = False
    job = make_job(tiny_model_dir, tmp_path, build_rows(tiny_model_dir), training=training)
    result = train(job)
    verify_adapter(result.adapter_dir)
    assert result.adapter_dir == job.output_dir and result.stages["sft"]["steps"] == 3
    assert read_manifest(result.adapter_dir)["checksum"] == result.checksum
    leftovers = [p.name for p in job.output_dir.parent.iterdir() if p.name != job.output_dir.name]
    assert leftovers == [], leftovers  # no staging or rank folder left behind
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "training finished" in log
