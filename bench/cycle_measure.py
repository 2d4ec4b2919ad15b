"""Wall time and peak memory, stage by stage, of one learning cycle with the embedded model.

A made-up owner ("Robin": lower-case, drops apostrophes, says "haha", short replies) answers
made-up messages from friends. Their imported replies form the replay pool; then ~300 verdicts
of every kind (accept, edit, reject with and without a replacement, regenerate followed by an
edit) are given to scripted drafts (a FakeDrafter answering with another of Robin's replies, so
drafts look like the owner's habits but miss the content). Then `loop.cycle.run_cycle` runs once,
exactly as the nightly job does, with the default settings of config.toml: one epoch per stage,
LoRA r16 all-linear, 60 sampled drafts per model in the evaluation. Figures come from the cycle
row (per stage: seconds and the child's peak resident memory so far).

`--lever SETTING=VALUE` runs the same cycle a second time, on a fresh copy of the same data, with
one setting changed, and writes the two side by side (stage seconds, rows, the gate's outcome and
the candidate's held-out figures) into a section of that lever's own, instead of the plain run's.
`--nights 2` runs an untimed cycle on the import first, so the timed one is a later night.

    python -m bench.cycle_measure                  # the real measurement (tens of minutes on 2 cores)
    python -m bench.cycle_measure --quick          # smoke test on the tests' tiny model
    python -m bench.cycle_measure --feedback 100   # a smaller cycle
    python -m bench.cycle_measure --lever training.kto.desirable_ratio=1   # defaults beside one lever
    python -m bench.cycle_measure --nights 2 --feedback 100 --lever evaluation.keep_scores=false
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench import common

logger = logging.getLogger("bench.cycle_measure")

SECTION = "cycle_measure"
TARGET_MINUTES = 10  # issue 20's night (15 before it)
TARGET_PEAK_MB = 4096
OWNER = 5151
STAGES = ("collect", "datasets", "sft", "dpo", "kto", "evaluate", "serving", "insight", "child")

_FRIENDS = ["Sam", "Alex", "Jo", "Priya", "Tom", "Mia"]
_PLACES = ["the lake", "mums", "the new bar", "the office", "the station", "the gym", "the market", "the cinema"]
_TIMES = ["tonight", "tomorrow", "on friday", "at the weekend", "later", "next week", "on sunday"]
_THINGS = ["the tickets", "the keys", "my charger", "the photos", "that book", "the rent", "the recipe"]
_ASKS = [
    "Are you coming to {place} {time}?", "Did you remember to bring {thing}?", "Can we move dinner to {time}?",
    "Have you seen {thing} anywhere? I can't find them.", "What did you think of {place}?",
    "Shall I pick you up from {place} {time}?", "Do you still have {thing} from last month?",
    "How was {place} {time}? Tell me everything!", "Is it okay if I bring {friend} along {time}?",
    "Did {friend} ever pay you back for {thing}?",
]
_REPLIES = [
    "yeah im in, see you at {place} haha", "nah cant make it {time}, sorry", "ill bring {thing}, dont worry",
    "havent seen {thing} since {time} tbh", "{place} was alright, bit loud haha", "sure thing, text me when youre at {place}",
    "lol no, {friend} still owes me", "{time} works, {place}?", "omg yes bring {friend} haha",
    "i think {thing} is at {place}", "hmm maybe, depends on work {time}", "cant wait haha, {place} it is",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(place=rng.choice(_PLACES), time=rng.choice(_TIMES), thing=rng.choice(_THINGS),
                           friend=rng.choice(_FRIENDS))


def made_up_conversations(n: int, *, seed: int) -> list[tuple[str, str, str]]:
    """(friend, incoming message, Robin's reply) triples."""
    rng = random.Random(seed)
    return [(rng.choice(_FRIENDS), _fill(rng.choice(_ASKS), rng), _fill(rng.choice(_REPLIES), rng)) for _ in range(n)]


def import_writing(engine: Any, owner_id: int, n: int, *, seed: int) -> int:
    from storage import repo
    from storage.db import session_scope
    from storage.models import SampleKind, WritingSampleCreate

    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    samples = []
    for i, (friend, incoming, reply) in enumerate(made_up_conversations(n, seed=seed)):
        earlier = [{"role": "other", "text": f"hey robin its {friend}", "sender": friend},
                   {"role": "owner", "text": "heyy whats up", "sender": None}]
        samples.append(WritingSampleCreate(kind=SampleKind.reply, text=reply, prompt=incoming, sender=friend,
                                           context=earlier, written_at=start + timedelta(hours=7 * i),
                                           source="made-up"))
    with session_scope(engine) as session:
        added, _ = repo.add_writing_samples(session=session, owner_id=owner_id, samples=samples)
    return added


def give_verdicts(twin: Any, n: int, *, seed: int) -> dict[str, int]:
    """`n` verdicts in a realistic mix; a regenerate is followed by an edit of the new draft (not counted)."""
    mix = ("accept", "edit", "edit", "accept", "reject", "edit", "regenerate", "accept", "edit", "reject_empty")
    counts = {"accept": 0, "edit": 0, "reject": 0, "regenerate": 0}
    for i, (friend, incoming, reply) in enumerate(made_up_conversations(n, seed=seed + 1)):
        draft = twin.draft_reply(telegram_id=OWNER, chat_key=f"tg:{i % 40}", incoming=incoming, sender=friend)
        kind = mix[i % len(mix)]
        if kind == "regenerate":
            again = twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="regenerate").new_draft
            twin.record_verdict(telegram_id=OWNER, draft_id=again.id, kind="edit", text=reply)
        elif kind in ("reject", "reject_empty"):
            text = reply if kind == "reject" else None
            twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="reject", text=text,
                                reason=None if text else "not me")
            kind = "reject"
        elif kind == "edit":
            twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="edit", text=reply)
        else:
            twin.record_verdict(telegram_id=OWNER, draft_id=draft.id, kind="accept")
        counts[kind] += 1
    return counts


def lever_section(setting: str) -> str:
    """Each lever's side-by-side run has a section of its own, so measuring one leaves the others."""
    return "cycle_lever_" + re.sub(r"[^A-Za-z0-9]+", "_", setting).strip("_")


def apply_setting(config: Any, setting: str, raw: str) -> Any:
    """Set a dotted config setting (`training.kto.desirable_ratio`) from text, typed as its default; returns the value."""
    *path, name = setting.split(".")
    target = config
    for part in path:
        target = getattr(target, part)
    current = getattr(target, name)  # an unknown setting fails here, before any training
    value: Any = raw.lower() in ("1", "true", "yes", "on") if isinstance(current, bool) else type(current)(raw)
    setattr(target, name, value)
    return value


def measure(*, quick: bool, work: Path, threads: int, feedback: int, writing: int, progress: bool,
            lever: tuple[str, str] | None = None, nights: int = 1) -> dict[str, Any]:
    from loop.config import Config
    from loop.cycle import list_cycles, run_cycle
    from loop.drafting import FakeDrafter
    from loop.twin import Twin
    from storage.db import open_database

    config = Config(data_dir=work / "data", owners=[OWNER])
    config.model = common.model_settings(quick=quick, work=work, threads=threads, owner_name="Robin")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        from training.tiny import tiny_evaluation_settings, tiny_generation_settings, tiny_training_settings

        config.training, config.generation = tiny_training_settings(), tiny_generation_settings()
        config.evaluation = tiny_evaluation_settings()
    else:  # the embedded model, converted once and shared between runs
        common.share_models_dir(config.models_dir)
    if lever is not None:
        apply_setting(config, *lever)
    engine = open_database(config.db_url)
    drafts = [reply for _, _, reply in made_up_conversations(2 * feedback, seed=99)]
    twin = Twin(config, engine, FakeDrafter(replies=drafts))
    owner_id = twin.owner_id(OWNER, name="Robin")
    imported = import_writing(engine, owner_id, writing, seed=3)
    first_nights = []
    for _ in range(nights - 1):  # untimed: the import's cycle makes an active adapter, as on a later night
        first_nights.append(run_cycle(config, engine, telegram_id=OWNER, force=True, trigger="bench").status)
    verdicts = give_verdicts(twin, feedback, seed=5)
    import psutil

    parent_before_mb = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    with common.PeakMemory() as parent_memory:
        outcome = run_cycle(config, engine, telegram_id=OWNER, force=True, trigger="bench", progress=progress)
    wall = time.perf_counter() - started
    cycle = list_cycles(engine, telegram_id=OWNER)[-1]
    engine.dispose()
    metrics = cycle.get("metrics") or {}
    gate = metrics.get("gate") or {}
    rungs = gate.get("rungs") or [{}]
    return {"quick": quick, "feedback": feedback, "threads": config.model.threads, "verdicts": verdicts, "imported": imported,
            "status": outcome.status, "reason": outcome.reason, "wall_seconds": round(wall, 1),
            "earlier_nights": first_nights, "scores_kept": (metrics.get("baselines") or {}).get("scores_kept"),
            "strength": gate.get("strength"),
            "refused_at_full": rungs[0].get("reason") if (gate.get("strength") or 1) < 1 else None,
            "parent_growth_mb": round(parent_memory.peak_mb - parent_before_mb, 1), "counts": cycle.get("counts", {}),
            "stages": (cycle.get("durations") or {}).get("stages", {}), "report": outcome.report_text,
            "metrics": {name: {k: v for k, v in metrics.get(name, {}).items()
                               if k in ("likelihood", "edit_distance", "attribution", "preference_accuracy")}
                        for name in ("base", "active", "candidate")}}


def markdown(result: dict[str, Any], facts: dict[str, Any]) -> str:
    stages = result["stages"]
    peaks = [v.get("peak_rss_mb") for v in stages.values() if isinstance(v, dict) and v.get("peak_rss_mb")]
    peak = max(peaks) if peaks else None
    rows = [[name, common.fmt(stages[name].get("seconds"), 1),
             common.fmt((stages[name].get("seconds") or 0) / 60, 1), stages[name].get("steps", ""),
             stages[name].get("examples", ""), common.fmt(stages[name].get("peak_rss_mb"), 0)]
            for name in STAGES if name in stages]
    datasets = result["counts"].get("datasets", {})
    return "\n".join([
        "## One learning cycle with the embedded model", "",
        common.machine_markdown(facts, quick=result["quick"]), "",
        f"{result['feedback']} verdicts ({', '.join(f'{k} {v}' for k, v in result['verdicts'].items())}) plus "
        f"{result['imported']} imported replies as the replay pool"
        + (f", after {len(result['earlier_nights'])} untimed cycle(s) on the import alone "
           f"({', '.join(result['earlier_nights'])}): the timed one is a later night, with an active adapter"
           if result.get("earlier_nights") else "") + "; default settings (one epoch per stage), "
        f"torch threads in the training child: {result['threads'] or 'default'}. "
        f"Rows: {', '.join(f'{k.upper()} {v}' for k, v in datasets.items())}. Outcome: {result['status']}.", "",
        common.markdown_table(["stage", "seconds", "minutes", "steps", "examples", "peak RSS MB (child, so far)"],
                              rows), "",
        ("evaluate: the candidate, the active adapter and the base model on the held-out items (likelihood, "
         "preference pairs, drafts in batches), the active adapter's and the base model's scores of items the night "
         f"before saw found kept ({result.get('scores_kept') or 0} of them; training.kept_scores). "
         if result.get("earlier_nights") else
         "evaluate: the candidate and the base model, the active one at this first cycle, on the held-out items "
         "(likelihood, preference pairs, drafts in batches); a later night also evaluates the active adapter and "
         "finds its and the base model's scores of the items they saw before kept (training.kept_scores). ") +
        "serving: the "
        "promoted adapter merged and converted for fast drafting (an fp16 GGUF file for llama.cpp, the embedded "
        "model's drafting backend on a CPU). insight: what the promoted adapter learnt, for the report.", "",
        f"Whole cycle: {result['wall_seconds'] / 60:.1f} min. The calling process (the bot or the CLI) grew by "
        f"{result['parent_growth_mb']:.0f} MB during the cycle: the model lives in the child only.", "",
        f"Targets (full cycle ≤ {TARGET_MINUTES} min, peak memory ≤ {TARGET_PEAK_MB / 1024:.0f} GB on 2 CPU cores, "
        f"promoted): time {common.verdict(result['wall_seconds'] <= TARGET_MINUTES * 60)}, memory "
        f"{common.verdict(peak is not None and peak <= TARGET_PEAK_MB)} (child peak {common.fmt(peak, 0)} MB), "
        f"promoted {common.verdict(result['status'] == 'promoted')}.", "",
    ])


def lever_markdown(defaults: dict[str, Any], lever: dict[str, Any], setting: str, facts: dict[str, Any]) -> str:
    """The same cycle with one setting changed beside the defaults: seconds per stage, rows, the gate's figures."""
    names = [name for name in STAGES if name in defaults["stages"] or name in lever["stages"]]

    def seconds(result: dict[str, Any], name: str) -> float | None:
        return (result["stages"].get(name) or {}).get("seconds")

    def examples(result: dict[str, Any], name: str) -> Any:
        return (result["stages"].get(name) or {}).get("examples", "")

    rows = []
    for name in names:
        before, after = seconds(defaults, name), seconds(lever, name)
        rows.append([name, common.fmt(before, 1), common.fmt(after, 1),
                     common.fmt(after / before, 2) if before and after is not None else "",
                     f"{examples(defaults, name)} → {examples(lever, name)}".strip(" →")])
    rows.append(["whole cycle (wall)", common.fmt(defaults["wall_seconds"], 1), common.fmt(lever["wall_seconds"], 1),
                 common.fmt(lever["wall_seconds"] / defaults["wall_seconds"], 2), ""])
    figures = [[name, *(common.fmt(result["metrics"].get("candidate", {}).get(name), 3) for result in (defaults, lever))]
               for name in ("likelihood", "preference_accuracy", "edit_distance", "attribution")]
    return "\n".join([
        f"## A lever of the night: `{setting}` (bench/cycle_measure.py --lever)", "",
        common.machine_markdown(facts, quick=defaults["quick"]), "",
        f"The cycle of \"One learning cycle\" ({defaults['feedback']} verdicts"
        + (", a later night" if defaults.get("earlier_nights") else "") + "), run twice on fresh copies of the same "
        f"data: with the defaults, and with `{setting}`.", "",
        common.markdown_table(["stage", "defaults s", "lever s", "× defaults", "examples (defaults → lever)"], rows), "",
        f"Outcome: defaults {_outcome(defaults)}; lever {_outcome(lever)}. Evaluate covers every strength the gate "
        f"tried: defaults {_strengths(defaults)}, lever {_strengths(lever)}; held-out scores found kept from the night "
        f"before: defaults {defaults.get('scores_kept') or 0}, lever {lever.get('scores_kept') or 0}. The promoted "
        "candidate's held-out figures "
        "(same items and seeds):", "",
        common.markdown_table(["metric", "defaults", "lever"], figures), "",
    ])


def _strengths(result: dict[str, Any]) -> Any:
    return (result["stages"].get("evaluate") or {}).get("strengths_tried", 1)


def _outcome(result: dict[str, Any]) -> str:
    strength = result.get("strength")
    if result["status"] == "promoted" and strength is not None and strength < 1:
        return f"promoted at {strength:.0%} strength ({result.get('refused_at_full') or 'full strength refused'})"
    return str(result["status"])


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--feedback", type=int, default=None, help="verdicts before the cycle (default 300)")
    parser.add_argument("--writing", type=int, default=200, help="imported replies, the replay pool (default 200)")
    parser.add_argument("--progress", action="store_true", help="echo the training log while it runs")
    parser.add_argument("--nights", type=int, choices=(1, 2), default=1,
                        help="2: an untimed cycle on the import first, so the timed one has an active adapter")
    parser.add_argument("--lever", metavar="SETTING=VALUE", default=None,
                        help="also run the cycle with this setting changed (e.g. training.kto.desirable_ratio=1) and "
                             "write both side by side")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    feedback = args.feedback if args.feedback is not None else (12 if args.quick else 300)
    facts = common.machine_facts()
    with common.work_folder(args.work, "twin-cycle-measure-") as work:
        kwargs = dict(quick=args.quick, threads=args.threads, feedback=feedback,
                      writing=args.writing if not args.quick else 24, progress=args.progress, nights=args.nights)
        lever = tuple(args.lever.split("=", 1)) if args.lever else None
        if lever is not None and len(lever) != 2:
            parser.error("--lever takes SETTING=VALUE")
        result = measure(work=work / "defaults", **kwargs)
        if lever is not None:
            result["lever"] = {"setting": "=".join(lever), **measure(work=work / "lever", lever=lever, **kwargs)}
        (work / f"{SECTION}.json").write_text(json.dumps({"facts": facts, **result}, indent=2, default=str))
    if "lever" in result:  # the defaults beside the lever; "One learning cycle" stays the plain run's
        setting = result["lever"]["setting"]
        common.write_section(Path(args.out), lever_section(setting), lever_markdown(result, result["lever"], setting, facts))
    else:
        common.write_section(Path(args.out), SECTION, markdown(result, facts))
    print(markdown(result, facts))
    print(result["report"])
    return 0 if result["status"] in ("promoted", "kept") else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
