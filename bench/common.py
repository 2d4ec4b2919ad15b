"""What every benchmark shares: arguments, the machine it ran on, memory sampling, RESULTS.md sections.

Each script writes one section of `RESULTS.md`, between markers of its own, so any script can run
alone and replace only its own figures. A section opens with the date, the machine (cores,
memory, GPU, load at the start: the CPU is often shared) and the library versions, because a
figure without them cannot be compared.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_NAME = "RESULTS.md"
RESULTS_TITLE = "# twin benchmarks\n\nRegenerate with `make bench` (all) or `python -m bench.<script>` (one); " \
                "`--quick` is the smoke test CI runs, on a tiny random model: its figures mean nothing.\n"
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "scikit-learn", "lambdag")


def offline_environment() -> None:
    """No hub downloads, no trackers: everything the benchmarks load is local or made here."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (CI smoke test) and --out (where results go)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny random model, a handful of items (figures are meaningless)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR,
                        help="folder for RESULTS.md and the PNG charts (default: bench/)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the project code does")
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
        except ImportError:  # pragma: no cover - transformers is a dependency
            pass


def apply_threads(threads: int) -> int:
    """Set torch's CPU threads when asked; returns the number in force."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# The machine --------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    return versions


def machine_facts() -> dict[str, Any]:
    """Date, CPU, usable cores, memory, GPU, load and library versions of this run."""
    import psutil
    import torch

    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "load_1min": round(load[0], 2),
        "versions": library_versions(),
    }


def machine_markdown(facts: dict[str, Any], *, quick: bool) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
    shared = facts["load_1min"] > 0.5 * facts["cores"]
    lines = [
        f"*{facts['date']}* · {facts['cores']} usable cores ({facts['cpu']}), torch threads "
        f"{facts['torch_threads']} · {facts['memory_gib']} GiB RAM · GPU: {facts['gpu']} · "
        f"load at start {facts['load_1min']}" + (" (the CPU was shared with other work: times are pessimistic)"
                                                  if shared else ""),
        f"Versions: {versions}.",
    ]
    if quick:
        lines.insert(0, "**Quick smoke run on a tiny random model: these figures mean nothing.**")
    return "\n\n".join(lines)


# RESULTS.md ---------------------------------------------------------------------------------------

def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(out_dir: Path, name: str, body: str) -> Path:
    """Replace (or append) section `name` of `out_dir/RESULTS.md`, leaving the other sections alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_NAME
    text = path.read_text(encoding="utf-8") if path.exists() else RESULTS_TITLE
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    temporary = path.with_suffix(f".md.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_section(out_dir: Path, name: str) -> str | None:
    path = Path(out_dir) / RESULTS_NAME
    if not path.exists():
        return None
    start, end = _markers(name)
    match = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), path.read_text(encoding="utf-8"), re.DOTALL)
    return match.group(1) if match else None


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


# The two judges of "reads as the owner" that training.evaluate reports: (metric key, name in a table).
JUDGES = (("attribution", "attribution"), ("lambdag", "LambdaG"))


def judge_bounds(baselines: dict[str, Any], key: str) -> str:
    """A judge's ceiling and floor as the benchmark sections say them."""
    return (f"ceiling (the owner's own held-out lines) {fmt(baselines.get(f'{key}_ceiling'))}, floor (other "
            f"people's) {fmt(baselines.get(f'{key}_floor'))}")


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "not met")


# Measurement ----------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def stage_seconds(cycle_row: dict[str, Any]) -> dict[str, float | None]:
    """Seconds per stage of a cycle, from its row in `twin cycles --json`."""
    stages = (cycle_row.get("durations") or {}).get("stages", {})
    return {name: stage.get("seconds") for name, stage in stages.items() if isinstance(stage, dict)}


@dataclass
class PeakMemory:
    """Samples resident memory in a thread; `peak_mb` is the highest seen.

    This process's by default: what a user's machine must hold while it runs. With `children`,
    the largest child process's instead (a cycle trains in a child; its own `ru_maxrss` would
    include what the parent held when it forked, as Linux keeps the high-water mark across exec).
    """

    interval_s: float = 0.02
    children: bool = False
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            try:
                if self.children:
                    rss = max((c.memory_info().rss for c in process.children(recursive=True)), default=0)
                else:
                    rss = process.memory_info().rss
            except psutil.Error:  # a child that ended between listing and reading
                rss = 0
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakMemory":
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


# Models ---------------------------------------------------------------------------------------------

def model_settings(*, quick: bool, work: Path, threads: int = 0, **overrides: Any) -> Any:
    """The embedded SmolLM2 on CPU in fp32, or (quick) the tests' tiny random Llama with the same tokenizer."""
    from training.config import ModelSettings

    if quick:
        from training.tiny import build_tiny_model_dir, tiny_model_settings

        tiny = work / "tiny-model"
        if not (tiny / "config.json").exists():
            build_tiny_model_dir(tiny)
        return tiny_model_settings(tiny, threads=threads, **overrides)
    values: dict[str, Any] = {"device": "cpu", "precision": "fp32", "threads": threads}
    values.update(overrides)
    return ModelSettings(**values)


def store_thread(database: Any, *, owner_id: int, chat_key: str, turns: Sequence[dict[str, Any]]) -> None:
    """The earlier turns of a thread stored in its conversation, as the bot would have them before drafting."""
    from storage import repo
    from storage.db import session_scope

    with session_scope(database) as session:
        conversation = repo.get_or_create_conversation(session=session, owner_id=owner_id, chat_key=chat_key)
        for turn in turns:
            repo.add_message(session=session, owner_id=owner_id, conversation_id=conversation.id,
                             role=turn["role"], text=turn["text"], sender=turn.get("sender"))


def models_dir() -> Path:
    """Where the embedded model is converted once and kept between runs (not the scratch folder)."""
    return Path(os.environ.get("TWIN_BENCH_MODELS", BENCH_DIR.parent / "data" / "models"))


def share_models_dir(scratch_models_dir: Path) -> None:
    """Point a run's models folder at `models_dir()`, so the embedded model is converted once for all runs.

    The shared folder is made first: on a fresh checkout it does not exist yet, and a link to nowhere
    made the model's conversion fail with "File exists" (the link) on the first real run.
    """
    shared = models_dir()
    shared.mkdir(parents=True, exist_ok=True)
    scratch_models_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch_models_dir.symlink_to(shared.resolve(), target_is_directory=True)


def plot_path(out_dir: Path, name: str) -> Path:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Path(out_dir) / f"{name}.png"


def save_chart(figure: Any, out_dir: Path, name: str) -> Path:
    """Write `figure` as out_dir/name.png and free it; every benchmark's chart is saved alike."""
    path = plot_path(out_dir, name)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """The folder a benchmark works in: `given` (kept afterwards) or a temporary one (removed)."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)
