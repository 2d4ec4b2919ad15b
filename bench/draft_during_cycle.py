"""Drafting while a cycle trains: the bot's draft latency idle and during a learning cycle, and the cycle's cost.

Issue 20 measured drafts at 8.4 s at the median during a cycle instead of 0.7 s (the training
child at nice 0). The child now trains at the lowest CPU priority (`loop.child.lower_priority`:
SCHED_IDLE, else nice 19). This measures, side by side in one run, on one database:

1. drafts idle: `Twin.draft_reply` with the real `EngineDrafter` (what the bot runs per message;
   each message another chat), p50 / p90;
2. the cycle alone: `loop.cycle.run_cycle` as /train runs it (forced), wall time;
3. the cycle again, with an owner drafting beside it (a draft, then `--gap` seconds of reading,
   then the next) for as long as it runs: draft p50 / p90 while it trained, and its wall time.

The two timed cycles are alike: each follows a round of `--feedback` new verdicts, and each has an
active adapter to beat, made by an untimed first cycle (the first cycle of an owner evaluates one
model fewer, and a forced cycle without new verdicts trains on replay only, so timing the first
cycle against the second once flattered or blamed the drafting beside it).
The verdicts come from bench.cycle_measure's made-up owner. `--priority normal` runs the child at
the parent's priority (TWIN_CHILD_PRIORITY=normal), the old behaviour, for comparison.
Targets: draft p50 during the cycle ≤ 1.5 × idle, the cycle ≤ 20% slower than alone.

    python -m bench.draft_during_cycle --quick                 # smoke test, tiny model (a minute)
    python -m bench.draft_during_cycle --feedback 100          # SmolLM2 (tens of minutes on 2 cores)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import common
from bench.corpus import load_corpus
from bench.cycle_measure import OWNER, give_verdicts, import_writing, made_up_conversations

logger = logging.getLogger("bench.draft_during_cycle")

SECTION = "draft_during_cycle"
TARGET_DRAFT_RATIO = 1.5
TARGET_CYCLE_SLOWDOWN = 0.20


def setup(*, quick: bool, work: Path, threads: int, feedback: int, writing: int) -> tuple[Any, Any, Any, Any]:
    """(config, database, drafting twin, a twin that gives verdicts): the made-up owner's replies imported
    and a first round of verdicts stored, the real drafter warmed up."""
    from bench.first_words import as_gguf_base
    from loop.config import Config
    from loop.drafting import EngineDrafter, FakeDrafter
    from loop.twin import Twin
    from storage.db import open_database
    from training.config import GenerationSettings

    config = Config(data_dir=work / "data", owners=[OWNER])
    config.model = common.model_settings(quick=quick, work=work, threads=threads, owner_name="Robin")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        from training.tiny import tiny_evaluation_settings, tiny_generation_settings, tiny_training_settings

        as_gguf_base(Path(config.model.base))
        config.training, config.evaluation = tiny_training_settings(), tiny_evaluation_settings()
        config.generation = replace(tiny_generation_settings(), backend=GenerationSettings().backend)
    else:
        common.share_models_dir(config.models_dir)
    database = open_database(config.db_url)
    # Drafts to give verdicts on, from a script: the model's time goes to the timed drafts only.
    scripted = Twin(config, database, FakeDrafter(replies=[r for _, _, r in made_up_conversations(6 * feedback, seed=99)]))
    owner_id = scripted.owner_id(OWNER, name="Robin")
    import_writing(database, owner_id, writing, seed=3)
    give_verdicts(scripted, feedback, seed=5)
    twin = Twin(config, database, EngineDrafter.from_config(config))
    twin.warm_up()
    return config, database, twin, scripted


class Owner:
    """Drafts one message after another (another chat each time), `gap_s` apart, timing each."""

    def __init__(self, twin: Any, gap_s: float):
        self.twin, self.gap_s = twin, gap_s
        self.pairs = load_corpus()
        self.count = 0

    def draft(self) -> float:
        pair = self.pairs[self.count % len(self.pairs)]
        self.count += 1
        started = time.perf_counter()
        self.twin.draft_reply(telegram_id=OWNER, chat_key=f"bench:during:{self.count}", incoming=pair.message)
        return time.perf_counter() - started

    def while_running(self, busy: threading.Event, done: threading.Event) -> list[float]:
        """Drafts from when `busy` is set until `done`; each pause cut short when the cycle ends."""
        busy.wait()
        latencies: list[float] = []
        while not done.is_set():
            latency = self.draft()
            if not done.is_set():  # a draft that outlived the cycle was not drafted under it throughout
                latencies.append(latency)
            done.wait(self.gap_s)
        return latencies


def timed_cycle(config: Any, database: Any, *, owner: Owner | None = None) -> dict[str, Any]:
    """One forced cycle (as /train runs it); with `owner`, drafts beside it the whole time."""
    from loop.cycle import list_cycles, run_cycle

    busy, done = threading.Event(), threading.Event()
    drafts: list[float] = []
    drafter = None
    if owner is not None:
        drafter = threading.Thread(target=lambda: drafts.extend(owner.while_running(busy, done)), daemon=True)
        drafter.start()
    started = time.perf_counter()
    busy.set()
    try:
        outcome = run_cycle(config, database, telegram_id=OWNER, force=True, trigger="bench")
    finally:
        wall = time.perf_counter() - started
        done.set()
        if drafter is not None:
            drafter.join()
    row = list_cycles(database, telegram_id=OWNER)[-1]
    return {"wall_s": wall, "status": outcome.status, "drafts": drafts,
            "datasets": (row.get("counts") or {}).get("datasets", {}), "stages": common.stage_seconds(row)}


def run(*, quick: bool, work: Path, threads: int, feedback: int, writing: int, idle_drafts: int, gap_s: float,
        priority: str) -> dict[str, Any]:
    from loop.drafting import draft_from_many_threads

    draft_from_many_threads()  # as `twin run` does for the bot: the owner drafts from a thread of its own
    common.apply_threads(threads)
    facts = common.machine_facts()
    if priority == "normal":
        os.environ["TWIN_CHILD_PRIORITY"] = "normal"  # read by the training child (loop.child.lower_priority)
    config, database, twin, scripted = setup(quick=quick, work=work, threads=threads, feedback=feedback,
                                             writing=writing)
    first = timed_cycle(config, database)  # untimed: it makes the active adapter both timed cycles must beat
    give_verdicts(scripted, feedback, seed=6)
    twin.warm_up()  # a promoted adapter is converted for drafting before the timing, as the bot does at start
    owner = Owner(twin, gap_s)
    owner.draft()  # warm-up, not timed
    idle = [owner.draft() for _ in range(idle_drafts)]
    alone = timed_cycle(config, database)
    give_verdicts(scripted, feedback, seed=7)
    twin.warm_up()
    owner.draft()
    beside = timed_cycle(config, database, owner=owner)
    database.dispose()
    idle_p50, during_p50 = common.percentile(idle, 50), common.percentile(beside["drafts"], 50)
    ratio = during_p50 / idle_p50 if idle_p50 and during_p50 else None
    slowdown = beside["wall_s"] / alone["wall_s"] - 1 if alone["wall_s"] else None
    report = {
        "facts": facts, "quick": quick, "feedback": feedback, "priority": priority, "gap_s": gap_s,
        "backend": twin.drafter.engine.backend_for(config.generation),
        "idle": {"n": len(idle), "p50_s": idle_p50, "p90_s": common.percentile(idle, 90)},
        "during": {"n": len(beside["drafts"]), "p50_s": during_p50, "p90_s": common.percentile(beside["drafts"], 90)},
        "cycle_alone_s": alone["wall_s"], "cycle_beside_s": beside["wall_s"],
        "statuses": [alone["status"], beside["status"]], "first_cycle": first["status"],
        "datasets": [alone["datasets"], beside["datasets"]], "stages": [alone["stages"], beside["stages"]],
        "draft_ratio": ratio, "cycle_slowdown": slowdown,
        "draft_target_met": ratio is not None and ratio <= TARGET_DRAFT_RATIO,
        "cycle_target_met": slowdown is not None and slowdown <= TARGET_CYCLE_SLOWDOWN,
    }
    (work / f"{SECTION}.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def markdown(report: dict[str, Any]) -> str:
    idle, during = report["idle"], report["during"]
    rows = [["drafts, idle", idle["n"], idle["p50_s"], idle["p90_s"], ""],
            ["drafts, while the cycle trains", during["n"], during["p50_s"], during["p90_s"],
             common.fmt(report["draft_ratio"])],
            ["cycle alone (wall s)", 1, report["cycle_alone_s"], "", ""],
            ["cycle with the owner drafting (wall s)", 1, report["cycle_beside_s"], "",
             common.fmt(1 + report["cycle_slowdown"]) if report["cycle_slowdown"] is not None else ""]]
    return "\n".join([
        "## Drafting while a cycle trains", "",
        common.machine_markdown(report["facts"], quick=report["quick"]), "",
        f"On one database, after an untimed first cycle ({report['first_cycle']}) that made the active adapter: "
        f"{report['feedback']} new verdicts and a forced cycle alone, then {report['feedback']} more and a forced "
        f"cycle with the owner drafting beside it (a draft every {report['gap_s']} s after the one before; each "
        f"message another chat; backend {report['backend']}). Training child priority: {report['priority']}. "
        f"Outcomes: {', '.join(report['statuses'])}.",
        "", common.markdown_table(["what", "n", "p50", "p90", "× idle / × alone"], rows), "",
        "By stage (seconds), alone and beside the drafting; training rows "
        + " and ".join(", ".join(f"{k} {v}" for k, v in sets.items()) for sets in report["datasets"]) + ":", "",
        _stage_table(report["stages"]), "",
        f"Targets: draft p50 during a cycle ≤ {TARGET_DRAFT_RATIO}× idle: {common.verdict(report['draft_target_met'])}; "
        f"the cycle at most {TARGET_CYCLE_SLOWDOWN:.0%} slower: {common.verdict(report['cycle_target_met'])}.", "",
    ])


def _stage_table(stages: list[dict[str, Any]]) -> str:
    alone, beside = stages
    names = [name for name in alone if name in beside]
    return common.markdown_table(["stage", "alone", "beside the drafting", "× alone"],
                                 [[name, alone[name], beside[name],
                                   common.fmt(beside[name] / alone[name]) if alone[name] and beside[name] else ""]
                                  for name in names])


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--feedback", type=int, default=None, help="verdicts before each cycle (default 300; quick 12)")
    parser.add_argument("--writing", type=int, default=None, help="imported replies (default 200; quick 24)")
    parser.add_argument("--idle-drafts", type=int, default=None, help="drafts timed idle (default 16; quick 3)")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between the owner's drafts (default 1)")
    parser.add_argument("--priority", choices=("idle", "normal"), default="idle",
                        help="the training child's priority: idle (the default) or normal (the old behaviour)")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    with common.work_folder(args.work, "twin-bench-during-cycle-") as work:
        report = run(quick=args.quick, work=work, threads=args.threads,
                     feedback=args.feedback if args.feedback is not None else (12 if args.quick else 300),
                     writing=args.writing if args.writing is not None else (24 if args.quick else 200),
                     idle_drafts=args.idle_drafts or (3 if args.quick else 16), gap_s=args.gap, priority=args.priority)
    body = markdown(report)
    common.write_section(Path(args.out), SECTION + ("" if report["priority"] == "idle" else "_normal"), body)
    print(body)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
