"""How the cycle's child runs the training step: in its own process, or under `accelerate launch`.

`train(job)` is what the child calls. With `training.launcher = "python"` (the default) it is
`training.train.run_training` in the child itself. With `"accelerate"` the job is written to
`train_job.json` next to the datasets and `accelerate launch --config_file <yaml> -m
training.launch train_job.json` trains it on `num_processes` processes (DDP, FSDP or DeepSpeed,
the files in training/accelerate/); every rank trains, the main one (RANK 0) writes the adapter
folder and `train_result.json`, which `train` reads back. Datasets and evaluation stay in the
child on one process: only the training step needs the GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from training.config import LoraSettings, ModelSettings, TrainingSettings, training_settings_from_json
from training.errors import LaunchFailed

logger = logging.getLogger("training.launch")  # not __name__: run with -m, that is "__main__"

ACCELERATE_DIR = Path(__file__).parent / "accelerate"
SHIPPED_CONFIGS = ("ddp", "fsdp", "deepspeed")
JOB_FILE = "train_job.json"
RESULT_FILE = "train_result.json"


def accelerate_config_file(name_or_path: str) -> Path:
    """The yaml file that `training.accelerate_config` names: a shipped one by name, else a path."""
    if name_or_path in SHIPPED_CONFIGS:
        return ACCELERATE_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if not path.is_file():
        raise LaunchFailed(f"training.accelerate_config = {name_or_path!r}: no such file "
                           f"(or one of {', '.join(SHIPPED_CONFIGS)})")
    return path


def accelerate_command(training: TrainingSettings, job_file: Path) -> list[str]:
    """The command line that trains `job_file` under accelerate (by this Python, so the same venv)."""
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(accelerate_config_file(training.accelerate_config))]
    if training.num_processes > 0:
        command += ["--num_processes", str(training.num_processes)]
    return command + ["-m", "training.launch", str(job_file)]


def job_to_json(job: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(job), default=str))


def job_from_json(data: dict[str, Any]) -> Any:
    from training.train import TrainJob

    return TrainJob(model=ModelSettings(**data["model"]), lora=LoraSettings(**data["lora"]),
                    training=training_settings_from_json(data["training"]), models_dir=Path(data["models_dir"]),
                    datasets_dir=Path(data["datasets_dir"]),
                    init_adapter=Path(data["init_adapter"]) if data["init_adapter"] else None,
                    output_dir=Path(data["output_dir"]), log_file=Path(data["log_file"]),
                    metadata=data.get("metadata", {}))


def train(job: Any, *, progress: bool = False) -> Any:
    """Train `job` (a training.train.TrainJob) with the configured launcher; returns its TrainResult."""
    from training.train import NothingToTrain, TrainResult, run_training

    if job.training.launcher == "python":
        return run_training(job, progress=progress)
    folder = Path(job.datasets_dir).parent
    job_file, result_file = folder / JOB_FILE, folder / RESULT_FILE
    result_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps({"job": job_to_json(job), "progress": progress}, indent=2), encoding="utf-8")
    command = accelerate_command(job.training, job_file)
    logger.info("training under accelerate: %s", " ".join(command))
    # Killed with the child (PDEATHSIG), so a killed cycle leaves no launcher training on.
    returncode = subprocess.call(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else None
    if result and "nothing_to_train" in result:
        raise NothingToTrain(result["nothing_to_train"])
    if returncode != 0 or not result or "error" in result:
        why = result.get("error") if result else None
        raise LaunchFailed(f"accelerate launch exited with {returncode}" + (f": {why}" if why else ""))
    return TrainResult(adapter_dir=Path(result["adapter_dir"]), stages=result["stages"], checksum=result["checksum"],
                       skipped=result["skipped"])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked process
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def is_main_process() -> bool:
    """Rank 0 of a launched run, or a process that was not launched at all."""
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    """One rank of `accelerate launch -m training.launch train_job.json`."""
    from training.train import NothingToTrain, run_training

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: accelerate launch ... -m training.launch <train_job.json>", file=sys.stderr)
        return 2
    job_file = Path(args[0])
    data = json.loads(job_file.read_text(encoding="utf-8"))
    job = job_from_json(data["job"])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank {os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s")
    result_file = job_file.parent / RESULT_FILE
    try:
        trained = run_training(job, progress=bool(data.get("progress")) and is_main_process())
        result: dict[str, Any] = {"adapter_dir": str(trained.adapter_dir), "stages": trained.stages,
                                  "checksum": trained.checksum, "skipped": trained.skipped}
    except NothingToTrain as error:
        result = {"nothing_to_train": str(error)}
    except Exception as error:
        logger.exception("training failed")
        result = {"error": f"{type(error).__name__}: {error}"}
    if is_main_process():
        staging = result_file.with_name(f".{result_file.name}.tmp")
        staging.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        os.replace(staging, result_file)
    return 1 if "error" in result else 0


if __name__ == "__main__":  # pragma: no cover - run by accelerate launch
    sys.exit(main())
