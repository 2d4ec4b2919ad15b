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

SCRIPTS = ("bench.draft_latency", "bench.first_words", "bench.draft_during_cycle", "bench.train_throughput",
           "bench.cycle_measure", "bench.import_cycle", "bench.judges", "bench.multi_owner", "bench.learning_curve")


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=[s.split(".")[-1] for s in SCRIPTS], action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    passed: list[str] = []
    failed: list[str] = []
    for script in SCRIPTS:
        if args.only and script.split(".")[-1] not in args.only:
            continue
        # One process per benchmark: each starts with a clean heap, so its peak memory is its own.
        command = [sys.executable, "-m", script, "--out", str(args.out)]
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
