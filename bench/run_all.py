"""Run every benchmark in turn (`make bench`, or `make bench-quick` with --quick).

Each script writes its own section of bench/RESULTS.md and its charts; one that fails does not
stop the others, and the exit status says whether all of them ran.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from bench import common

logger = logging.getLogger("bench.run_all")

# Each benchmark by the name of its RESULTS.md section: the module and its arguments. The chat learning
# curve (issue 16) is the long one, about 2.5 h alone on 2 cores; --eval-items keeps its final evaluation
# of every adapter to 120 held-out pairs spread over the 747 (all of them would cost an hour per adapter).
SCRIPTS: dict[str, tuple[str, ...]] = {
    "draft_latency": ("bench.draft_latency",),
    "first_words": ("bench.first_words",),
    "draft_during_cycle": ("bench.draft_during_cycle",),
    "train_throughput": ("bench.train_throughput",),
    "cycle_measure": ("bench.cycle_measure",),
    "import_cycle": ("bench.import_cycle",),
    "judges": ("bench.judges",),
    "multi_owner": ("bench.multi_owner",),
    "learning_curve": ("bench.learning_curve",),
    "learning_curve_chat": ("bench.learning_curve", "--corpus", "chat", "--eval-items", "120"),
}


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(SCRIPTS), action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    passed: list[str] = []
    failed: list[str] = []
    for script, arguments in SCRIPTS.items():
        if args.only and script not in args.only:
            continue
        # One process per benchmark: each starts with a clean heap, so its peak memory is its own.
        command = [sys.executable, "-m", *arguments, "--out", str(args.out)]
        if args.quick:
            command.append("--quick")
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.verbose:
            command.append("--verbose")
        started = time.perf_counter()
        print(f"== {script} {'(quick)' if args.quick else ''}", flush=True)
        code = subprocess.call(command)
        print(f"== {script}: {'ok' if code == 0 else f'failed ({code})'} in {time.perf_counter() - started:.0f} s",
              flush=True)
        (passed if code == 0 else failed).append(script)
    print(f"{len(passed)} benchmark(s) ran, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    print(f"results: {args.out / common.RESULTS_NAME}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
