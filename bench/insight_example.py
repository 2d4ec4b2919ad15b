"""The README's insight example: a short real cycle on the embedded SmolLM2, then `twin insight`, timed.

What it does, through the `twin` command line as an owner would (each step a subprocess, so the
wall time of `twin insight` includes starting Python and loading the model):

1. writes a config into the work folder (the embedded model, drafts with transformers, a cycle cut
   short: SFT for `--steps` steps of 4 rows, a few held-out items, no milder strengths);
2. `twin import bench/data/owner_replies.jsonl`: the simulated owner of bench/corpus.py (a real
   person's mailing-list replies: "<wink>", "OTOH", long explanations);
3. `twin train --force`: one cycle; a promoted adapter gets its insight section in the report when
   it is measured within `insight.cycle_budget_s`;
4. `twin insight --out OUT [VERSION]`: on demand, timed; the PNGs land in OUT (docs/insight/).

    python -m bench.insight_example --work /tmp/twin-insight --out docs/insight

A few minutes on 2 cores (the first run also converts the embedded model, about 20 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench import common

OWNER = 4242
CORPUS = common.BENCH_DIR / "data" / "owner_replies.jsonl"

CONFIG = """owners = [{owner}]
data_dir = "data"
[schedule]
enabled = false
min_new_feedback = 0
[model]
device = "cpu"
owner_name = "Tim"
context_turns = 2
max_prompt_tokens = 192
[generation]
backend = "transformers"
max_new_tokens = 48
[training.sft]
learning_rate = 5e-4
batch_size = 4
max_length = 320
max_steps = {steps}
min_steps = 0
[evaluation]
max_eval_items = 6
max_likelihood_items = 16
milder_strengths = []
"""


def twin(config: Path, *args: str) -> tuple[float, str]:
    """Run `twin -c CONFIG ARGS…`; returns (wall seconds, stdout); a failure stops the script."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bot.cli", "-c", str(config), *args], capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 and args[0] != "train":
        sys.exit(f"twin {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (config, database, model)")
    parser.add_argument("--out", type=Path, default=Path("docs/insight"), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=8, help="SFT steps of the cycle (4 rows each)")
    args = parser.parse_args(argv)
    common.offline_environment()
    args.work.mkdir(parents=True, exist_ok=True)
    config = args.work / "config.toml"
    config.write_text(CONFIG.format(owner=OWNER, steps=args.steps), encoding="utf-8")
    seconds, output = twin(config, "import", str(CORPUS))
    print(f"import: {seconds:.0f} s\n{output}")
    seconds, output = twin(config, "train", "--force")
    print(f"train: {seconds:.0f} s\n{output}")
    seconds, output = twin(config, "insight", "--out", str(args.out), *([] if "Promoted" in output else ["1"]))
    print(f"insight: {seconds:.0f} s wall (process start, model load and measurement)\n{output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
