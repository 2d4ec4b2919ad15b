"""Learning curve: does the twin visibly learn a real person from imported writing and feedback?

The simulated owner is Tim Peters' mail on the spambayes list (bench/corpus.py), split into
(message, reply) pairs and ordered by time, or with `--corpus chat` a student's chats
(bench/chitchat.py), whose conversations stay whole. The oldest part is imported (`twin import`'s
JSON Lines reader; a Telegram export for the chats) and a cycle trains on it; the newest part is a fixed held-out set; the middle is
played in rounds: the twin drafts a reply to each incoming message through the serving path
(`Twin.draft_reply` with the real drafter and the active adapter), the simulated owner accepts a
draft that is already close to what he really wrote and otherwise edits it into his real reply
(`Twin.record_verdict`), then a cycle runs (`loop.cycle.run_cycle`), as the scheduler would.

At the end every adapter (base model, import-only, each cycle's candidate) and a plain baseline
(trl's SFT then DPO with defaults, one epoch each on the same data: bench/plain.py) are evaluated
together by `training.evaluate.evaluate` on the held-out set, so they share one attribution
classifier and the same sampled prompts and seeds: likelihood, preference accuracy (the owner's
real reply against the base model's draft), edit distance (with the empty and echo baselines),
attribution (with ceiling and floor), style distance and caricature flags. Beside them a yardstick,
`fit-all`: the project's SFT stage run for several epochs on every training reply at once, which
shows how far this corpus lets held-out likelihood fall at all.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import common
from bench.corpus import CORPORA, Corpus, ReplyPair, load_named
from bench.curve_report import (ACCEPT_DISTANCE, MAIL, REFERENCE, markdown, plot, print_summary, report_from_work,
                                rounds_table, targets)

logger = logging.getLogger("bench.learning_curve")

OWNER_TELEGRAM_ID = 4444
SEED = 7


@dataclass
class Plan:
    """Which pairs are imported, played in each round, and held out (all by time)."""

    imported: list[ReplyPair]
    rounds: list[list[ReplyPair]]
    heldout: list[ReplyPair]

    @classmethod
    def split(cls, pairs: Sequence[ReplyPair], *, heldout: int, imported: int, rounds: int) -> "Plan":
        """Oldest `imported`, then `rounds` chunks, then the newest `heldout` pairs.

        Pairs of a conversation (`thread`) stay together, ordered by the conversation's start: the
        import and the held-out set take whole conversations, each cut moved back to the start of
        the conversation it falls in (fewer imported, more held out than asked).
        """
        pairs = _by_conversation(pairs)
        if heldout + imported + rounds > len(pairs):
            raise ValueError(f"{len(pairs)} pairs cannot make {imported} imported, {rounds} rounds and "
                             f"{heldout} held out")
        first, last = _conversation_start(pairs, imported), _conversation_start(pairs, len(pairs) - heldout)
        if (imported and first == 0) or last - first < rounds:
            raise ValueError(f"whole conversations of {len(pairs)} pairs cannot make {imported} imported, "
                             f"{rounds} rounds and {heldout} held out")
        middle = pairs[first:last]
        size = len(middle) // rounds
        chunks = [middle[i * size:(i + 1) * size] for i in range(rounds - 1)] + [middle[(rounds - 1) * size:]]
        return cls(imported=list(pairs[:first]), rounds=chunks, heldout=list(pairs[last:]))

    @property
    def training(self) -> list[ReplyPair]:
        """Every pair the twin learns from: the imported ones, then each round's."""
        return self.imported + [pair for chunk in self.rounds for pair in chunk]


def _by_conversation(pairs: Sequence[ReplyPair]) -> list[ReplyPair]:
    """Oldest first; the pairs of one conversation together, at the time of its first pair."""
    starts: dict[str, Any] = {}
    for pair in pairs:
        if pair.thread is not None:
            starts[pair.thread] = min(starts.get(pair.thread, pair.written_at), pair.written_at)
    return sorted(pairs, key=lambda p: (starts.get(p.thread, p.written_at) if p.thread else p.written_at,
                                        p.thread or "", p.written_at))


def _conversation_start(pairs: Sequence[ReplyPair], index: int) -> int:
    """`index`, moved back to the first pair of its conversation (pairs without one are their own)."""
    while 0 < index < len(pairs) and pairs[index].thread is not None and pairs[index - 1].thread == pairs[index].thread:
        index -= 1
    return index


@dataclass
class RoundLog:
    name: str
    verdicts: dict[str, int] = field(default_factory=dict)
    live_edit_distance: float | None = None  # what the owner had to change in this round's drafts
    cycle: dict[str, Any] = field(default_factory=dict)
    drafts: list[tuple[ReplyPair, str]] = field(default_factory=list)


# The simulated owner ------------------------------------------------------------------------------

def play_round(twin: Any, database: Any, owner_id: int, pairs: Sequence[ReplyPair], log: RoundLog,
               offset: int, chat_prefix: str = "mail") -> None:
    """Draft each incoming message, then accept or edit it into the owner's real reply."""
    from training.metrics import edit_distance

    distances = []
    for index, pair in enumerate(pairs, start=offset):
        chat_key = f"{chat_prefix}:{index}"
        common.store_thread(database, owner_id=owner_id, chat_key=chat_key, turns=pair.context)
        draft = twin.draft_reply(telegram_id=OWNER_TELEGRAM_ID, chat_key=chat_key, incoming=pair.message,
                                 sender=pair.sender)
        distance = edit_distance(draft.text, pair.reply)
        distances.append(distance)
        if distance <= ACCEPT_DISTANCE:
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="accept")
            kind = "accept"
        else:
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="edit", text=pair.reply)
            kind = "edit"
        log.verdicts[kind] = log.verdicts.get(kind, 0) + 1
        log.drafts.append((pair, draft.text))
    log.live_edit_distance = common.mean(distances)


def cycle(config: Any, database: Any, log: RoundLog) -> int | None:
    """Run one cycle; returns the candidate adapter's version (None when none was trained)."""
    from loop.cycle import list_cycles, run_cycle

    started = time.perf_counter()
    outcome = run_cycle(config, database, telegram_id=OWNER_TELEGRAM_ID, force=True, trigger="bench")
    row = list_cycles(database, telegram_id=OWNER_TELEGRAM_ID)[-1]
    log.cycle = cycle_facts(row, seconds=time.perf_counter() - started, active_after=outcome.active_version)
    logger.info("%s: cycle %s (%s) in %.0f s", log.name, outcome.status, outcome.reason, log.cycle["seconds"])
    return outcome.candidate_version


def cycle_facts(row: dict[str, Any], *, seconds: float | None, active_after: int | None) -> dict[str, Any]:
    """What the report keeps of a cycle, from its row in `twin cycles --json`."""
    metrics = row.get("metrics") or {}
    return {"status": row.get("status"), "reason": row.get("reason"), "candidate": row.get("candidate_version"),
            "active_after": active_after, "seconds": seconds,
            "datasets": (row.get("counts") or {}).get("datasets", {}),
            "stages": common.stage_seconds(row),
            "peak_mb": max((stage.get("peak_rss_mb") or 0 for stage in
                            ((row.get("durations") or {}).get("stages") or {}).values() if isinstance(stage, dict)),
                           default=None) or None,
            # The cycle's own evaluation, on its own held-out slice: candidate against the active adapter.
            "gate_metrics": {side: {k: (metrics.get(side) or {}).get(k) for k in
                                    ("likelihood", "attribution", "lambdag", "edit_distance",
                                     "preference_accuracy")}
                             for side in ("active", "candidate")}}


def rebuilt_logs(database: Any, plan: Plan) -> tuple[list[RoundLog], dict[str, int | None]]:
    """The rounds of a run that stopped after its last cycle, from its database: each round's drafts and
    verdicts (drafts are stored in the order the rounds played them), and each cycle's row."""
    from loop.stats import list_cycles
    from storage import repo
    from storage.db import session_scope
    from training.metrics import edit_distance

    cycles = [row for row in list_cycles(database, telegram_id=OWNER_TELEGRAM_ID) if row["status"] != "running"]
    if len(cycles) != len(plan.rounds) + 1:
        raise ValueError(f"the work folder has {len(cycles)} finished cycles; a run of {len(plan.rounds)} rounds "
                         f"needs {len(plan.rounds) + 1} before it can be finished")
    with session_scope(database) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER_TELEGRAM_ID)
        drafts = [(draft.incoming, draft.text, feedback.kind.value if feedback else None)
                  for draft, feedback in repo.drafts_by_adapter(session=session, owner_id=owner.id)]
    played = [pair for chunk in plan.rounds for pair in chunk]
    if len(drafts) != len(played) or any(incoming != pair.message for (incoming, _, _), pair in zip(drafts, played)):
        raise ValueError("the work folder's drafts are not this plan's rounds: finish it with the sizes it was run with")
    logs, versions, active, position = [], {}, None, 0
    for number, row in enumerate(cycles):
        log = RoundLog("import" if number == 0 else f"cycle {number}")
        if number == 0:
            log.verdicts = {"imported": (row.get("counts") or {}).get("new_writing", 0)}
        else:
            chunk = plan.rounds[number - 1]
            for pair, (_, text, kind) in zip(chunk, drafts[position:position + len(chunk)]):
                log.verdicts[kind] = log.verdicts.get(kind, 0) + 1
                log.drafts.append((pair, text))
            log.live_edit_distance = common.mean([edit_distance(text, pair.reply) for pair, text in log.drafts])
            position += len(chunk)
        if row["status"] == "promoted":
            active = row.get("candidate_version")
        log.cycle = cycle_facts(row, seconds=(row.get("durations") or {}).get("total_seconds"), active_after=active)
        versions[log.name] = row.get("candidate_version")
        logs.append(log)
    return logs, versions


def adapter_path(database: Any, version: int) -> Path:
    from storage import repo
    from storage.db import session_scope

    with session_scope(database) as session:
        owner = repo.find_owner(session=session, telegram_id=OWNER_TELEGRAM_ID)
        return Path(repo.get_adapter(session=session, owner_id=owner.id, version=version).path)


def replies_as_writing(pairs: Sequence[ReplyPair]) -> list[Any]:
    """The owner's replies with their threads, as the import stores them."""
    from training.datasets import WritingExample
    from training.prompt import Conversation

    return [WritingExample(kind="reply", text=p.reply, conversation=Conversation.of(p.message, p.context),
                           written_at=p.written_at) for p in pairs]


# The plain baseline --------------------------------------------------------------------------------

def plain_baseline(*, base_path: str, settings: Any, plan: Plan, logs: Sequence[RoundLog], work: Path,
                   quick: bool, first_cycle_writing: int) -> tuple[Path, dict[str, Any]]:
    """trl's SFT then DPO (defaults, one epoch each) on what our cycles saw; returns the adapter folder."""
    from bench.plain import load_base, plain_dpo, plain_sft
    from training.artifacts import write_manifest
    from training.datasets import (FeedbackExample, build_dpo_rows, build_sft_rows, make_renderer,
                                   newest_distinct_writing)
    from training.prompt import Conversation

    model, tokenizer = load_base(base_path)
    render = make_renderer(tokenizer, settings)
    # The imported replies our import cycle trains on (a long chat history is cut the same way), so
    # both recipes learn from the same rows.
    writing = newest_distinct_writing(replies_as_writing(plan.imported), first_cycle_writing)
    feedback = [FeedbackExample(kind="edit", conversation=Conversation.of(pair.message, pair.context), draft=draft,
                                text=pair.reply, later_kept=None, created_at=pair.written_at)
                for log in logs for pair, draft in log.drafts]
    # Every imported reply once plus every verdict once (no replay sampling: a plain recipe has none).
    sft_rows = build_sft_rows(feedback, writing, render=render, replay_fraction=10.0, seed=SEED,
                              tokenizer=tokenizer, chunk_tokens=256)
    dpo_rows = build_dpo_rows(feedback, render=render)
    started = time.perf_counter()
    model, _ = plain_sft(model, tokenizer, sft_rows, work / "plain-sft", epochs=1.0)
    stats: dict[str, Any] = {"sft_rows": len(sft_rows), "dpo_rows": len(dpo_rows)}
    if dpo_rows:
        model, _ = plain_dpo(model, tokenizer, dpo_rows, work / "plain-dpo", epochs=1.0)
    stats["seconds"] = time.perf_counter() - started
    folder = work / "plain-adapter"
    model.save_pretrained(str(folder))
    # The engine loads only complete adapters (with their manifest and checksum).
    write_manifest(folder, {"base_model": settings.base, "made_by": "bench.plain (trl SFT + DPO, defaults)", **stats})
    return folder, stats


# The fit-all reference ------------------------------------------------------------------------------

REFERENCE_EPOCHS = 4  # held-out NLL had flattened by the third pass in a sweep on this corpus (3.80 at 3 and 4)


def fit_all_reference(*, config: Any, plan: Plan, work: Path) -> tuple[Path, dict[str, Any]]:
    """The project's SFT stage run hard on every training reply at once (imported and played).

    Not a twin anyone would ship (no gate, no preference stage, several passes over the same
    rows): it says how far this corpus lets held-out likelihood fall, so the cycles' NLL is read
    against what the data allows and not only against the issue's fixed -20%.
    """
    from dataclasses import replace

    from training.config import LoraSettings
    from training.datasets import build_sft_rows, make_renderer, write_datasets
    from training.model import load_tokenizer, resolve_base_model
    from training.train import TrainJob, run_training

    settings = config.model
    tokenizer = load_tokenizer(resolve_base_model(settings, config.models_dir))
    writing = replies_as_writing(plan.training)
    rows = build_sft_rows([], writing, render=make_renderer(tokenizer, settings), replay_fraction=10.0, seed=SEED,
                          tokenizer=tokenizer, chunk_tokens=config.training.monologue_chunk_tokens)
    datasets = work / "reference-data"
    write_datasets({"sft": rows}, datasets)
    training = replace(config.training, sft=replace(config.training.sft, epochs=float(REFERENCE_EPOCHS), min_steps=0),
                       dpo=replace(config.training.dpo, enabled=False), kto=replace(config.training.kto, enabled=False))
    folder = work / "reference-adapter"
    result = run_training(TrainJob(model=settings, lora=LoraSettings(), training=training,
                                   models_dir=config.models_dir, datasets_dir=datasets, init_adapter=None,
                                   output_dir=folder, log_file=work / "reference.log"), progress=False)
    stats = result.stages["sft"]
    return folder, {"sft_rows": len(rows), "epochs": REFERENCE_EPOCHS, "seconds": stats.get("seconds"),
                    "steps": stats.get("steps")}


# Evaluation --------------------------------------------------------------------------------------------

def heldout_feedback(engine: Any, settings: Any, generation: Any, pairs: Sequence[ReplyPair]) -> list[Any]:
    """The held-out set as edits: the owner's real reply over the base model's draft (fixed seeds)."""
    from dataclasses import replace

    from training.datasets import FeedbackExample, make_renderer
    from training.prompt import Conversation

    render = make_renderer(engine.tokenizer, settings)
    seeded = replace(generation, backend="transformers")  # CTranslate2 would not replay a draft from its seed
    items = []
    for index, pair in enumerate(pairs):
        conversation = Conversation.of(pair.message, pair.context)
        draft = engine.generate(render(conversation), settings=seeded, seed=10_000 + index).text
        items.append(FeedbackExample(kind="edit", conversation=conversation, draft=draft or "ok", text=pair.reply,
                                     later_kept=None, created_at=pair.written_at))
    return items


# The benchmark -------------------------------------------------------------------------------------------

def run(*, corpus: Corpus, quick: bool, out: Path, work: Path, threads: int, heldout: int, imported: int,
        rounds: int, pairs_limit: int | None, eval_items: int | None = None) -> dict[str, Any]:
    from loop.drafting import EngineDrafter
    from loop.importing.base import OwnerIdentity
    from loop.importing.runner import run_import
    from loop.twin import Twin
    from storage.db import open_database
    from training.inference.engine import Engine

    threads = common.apply_threads(threads)
    facts = common.machine_facts()
    started = time.perf_counter()
    pairs = corpus.pairs
    if pairs_limit:
        pairs = pairs[:pairs_limit]
    plan = Plan.split(pairs, heldout=heldout, imported=imported, rounds=rounds)
    config = curve_config(quick=quick, work=work, threads=threads, owner_name=corpus.owner)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not quick:
        common.share_models_dir(config.models_dir)
    database = open_database(config.db_url)
    engine = Engine.load(config.model, config.models_dir, max_adapters=rounds + 4)
    twin = Twin(config, database, EngineDrafter(engine, config.model, config.generation))
    owner_id = twin.owner_id(OWNER_TELEGRAM_ID, name=corpus.owner)

    logs: list[RoundLog] = []
    versions: dict[str, int | None] = {}
    import_log = RoundLog("import")
    # Unmasked, as the held-out pairs are; a Telegram export names its owner in personal_information.
    report_import = run_import(engine=database, owner_db_id=owner_id, owner=OwnerIdentity(),
                               format=corpus.import_format, paths=[corpus.write_import(plan.imported, work)], mask=False)
    import_log.verdicts = {"imported": sum(f.added for f in report_import.files)}
    versions["import"] = cycle(config, database, import_log)
    logs.append(import_log)
    write_progress(out, corpus, facts, quick, plan, logs, started)
    offset = 0
    for number, round_pairs in enumerate(plan.rounds, start=1):
        log = RoundLog(f"cycle {number}")
        play_round(twin, database, owner_id, round_pairs, log, offset, chat_prefix=corpus.name)
        offset += len(round_pairs)
        versions[log.name] = cycle(config, database, log)
        logs.append(log)
        write_progress(out, corpus, facts, quick, plan, logs, started)
        print(f"  {log.name}: {log.verdicts}, live edit distance {common.fmt(log.live_edit_distance)}, "
              f"cycle {log.cycle['status']} in {log.cycle['seconds']:.0f} s", flush=True)

    return conclude(config=config, database=database, engine=engine, corpus=corpus, plan=plan, logs=logs,
                    versions=versions, facts=facts, quick=quick, out=out, work=work, eval_items=eval_items,
                    pairs_count=len(pairs), seconds_before=0.0, started=started)


def conclude(*, config: Any, database: Any, engine: Any, corpus: Corpus, plan: Plan, logs: Sequence[RoundLog],
             versions: dict[str, int | None], facts: dict[str, Any], quick: bool, out: Path, work: Path,
             eval_items: int | None, pairs_count: int, seconds_before: float, started: float,
             finished_later: str | None = None) -> dict[str, Any]:
    """After the last cycle: the plain baseline (and the fit-all yardstick), then every adapter evaluated."""
    from training.model import resolve_base_model

    settings = config.model
    base_path = resolve_base_model(settings, common.models_dir())
    plain_dir, plain_stats = trained_once(work / "plain-adapter", lambda: plain_baseline(
        base_path=base_path, settings=settings, plan=plan, logs=logs[1:], work=work, quick=quick,
        first_cycle_writing=config.training.first_cycle_writing))
    adapters: dict[str, Path | None] = {"base": None}
    for name, version in versions.items():
        if version is not None:
            adapters[name] = adapter_path(database, version)
    adapters["plain"] = plain_dir
    reference_stats: dict[str, Any] = {}
    if corpus.with_reference or quick:
        reference_dir, reference_stats = trained_once(work / "reference-adapter",
                                                      lambda: fit_all_reference(config=config, plan=plan, work=work))
        adapters[REFERENCE] = reference_dir
    results = evaluate_all(config, engine, plan, adapters, corpus, eval_items)
    database.dispose()
    report = {"facts": facts, "quick": quick, "seconds": seconds_before + time.perf_counter() - started,
              "corpus": corpus.facts(),
              "plan": {"imported": len(plan.imported), "rounds": [len(r) for r in plan.rounds],
                       "heldout": len(plan.heldout), "pairs": pairs_count,
                       "evaluated": len(evenly_spread(plan.heldout, eval_items))},
              "rounds": _round_dicts(logs), "plain": plain_stats, "reference": reference_stats}
    if finished_later:
        report["finished_later"] = finished_later
    return finish(report, results, adapters, out=out, work=work)


def trained_once(folder: Path, train: Callable[[], tuple[Path, dict[str, Any]]]) -> tuple[Path, dict[str, Any]]:
    """A baseline adapter is trained once per work folder: a run stopped in its evaluation left a
    complete one (its checksum holds) with its figures beside it, and `--finish` takes both instead
    of training it again. A half-written folder is trained again."""
    from training.artifacts import atomic_file, verify_adapter
    from training.errors import CorruptAdapter

    figures = folder.with_name(folder.name + ".json")
    try:
        verify_adapter(folder)
        return folder, {**json.loads(figures.read_text(encoding="utf-8")), "reused": True}
    except (CorruptAdapter, FileNotFoundError, json.JSONDecodeError):
        shutil.rmtree(folder, ignore_errors=True)
    folder, stats = train()
    with atomic_file(figures) as staging:
        staging.write_text(json.dumps(stats, default=str), encoding="utf-8")
    return folder, stats


def finish_stopped(*, corpus: Corpus, quick: bool, out: Path, work: Path, threads: int, heldout: int,
                   imported: int, rounds: int, pairs_limit: int | None, eval_items: int | None) -> dict[str, Any]:
    """Finish a run that stopped after its last cycle (its --work folder): its rounds are rebuilt from its
    database, then the plain baseline is trained and every adapter evaluated, as the whole run would have."""
    from storage.db import open_database
    from training.inference.engine import Engine

    threads = common.apply_threads(threads)
    started = time.perf_counter()
    pairs = corpus.pairs[:pairs_limit] if pairs_limit else corpus.pairs
    plan = Plan.split(pairs, heldout=heldout, imported=imported, rounds=rounds)
    config = curve_config(quick=quick, work=work, threads=threads, owner_name=corpus.owner)
    database = open_database(config.db_url)
    logs, versions = rebuilt_logs(database, plan)
    engine = Engine.load(config.model, config.models_dir, max_adapters=rounds + 4)
    cycles_seconds = sum(log.cycle.get("seconds") or 0.0 for log in logs)
    facts = common.machine_facts()
    return conclude(config=config, database=database, engine=engine, corpus=corpus, plan=plan, logs=logs,
                    versions=versions, facts=facts, quick=quick, out=out, work=work,
                    eval_items=eval_items, pairs_count=len(pairs), seconds_before=cycles_seconds, started=started,
                    finished_later=facts["date"])


def curve_config(*, quick: bool, work: Path, threads: int, owner_name: str = "Tim") -> Any:
    """The simulated owner's twin config in `work`: the embedded model, or (quick) the tests' tiny one."""
    from loop.config import Config

    settings = common.model_settings(quick=quick, work=work, threads=threads, owner_name=owner_name)
    config = Config(data_dir=work / "twin", owners=[OWNER_TELEGRAM_ID], model=settings)
    if quick:
        from training.tiny import tiny_evaluation_settings, tiny_generation_settings, tiny_training_settings

        config.training = tiny_training_settings()
        config.generation = tiny_generation_settings()
        config.evaluation = tiny_evaluation_settings()
    return config


def evenly_spread(pairs: Sequence[ReplyPair], count: int | None) -> list[ReplyPair]:
    """`count` of `pairs` at even steps (all of them without a count): every held-out conversation is
    still drawn from, where the newest `count` alone would be one or two conversations."""
    if not count or count >= len(pairs):
        return list(pairs)
    return [pairs[(index * len(pairs)) // count] for index in range(count)]


def evaluate_all(config: Any, engine: Any, plan: Plan, adapters: dict[str, Path | None],
                 corpus: Corpus, eval_items: int | None = None) -> dict[str, Any]:
    """Every adapter on the held-out set in one `evaluate` call: one classifier, the same prompts and seeds."""
    from training.evaluate import evaluate

    training_pairs = plan.training
    evaluated = evenly_spread(plan.heldout, eval_items)
    drafted_for = {id(pair) for pair in evaluated}
    held = heldout_feedback(engine, config.model, config.generation, evaluated)
    eval_settings = config.evaluation
    eval_settings.max_eval_items = len(evaluated)
    return evaluate(model_settings=config.model, generation=config.generation, models_dir=config.models_dir,
                    adapters=adapters, heldout_feedback=held, heldout_writing=[],
                    owner_lines=[p.reply for p in training_pairs], other_lines=corpus.other_lines(training_pairs),
                    # The held-out replies not drafted for: no adapter trained on them, so the judges learn
                    # from those where there are enough (the chat owner's), not from the training replies.
                    unseen_owner_lines=[p.reply for p in plan.heldout if id(p) not in drafted_for],
                    eval_settings=eval_settings, seed=SEED, engine=engine)


def finish(report: dict[str, Any], results: dict[str, Any], adapters: dict[str, Path | None], *, out: Path,
           work: Path) -> dict[str, Any]:
    """Targets, the JSON in the work folder, the chart and the RESULTS.md section."""
    cycles = [name for name in adapters if name.startswith("cycle")]
    final = cycles[-1] if cycles else None
    report = {**report, "results": results, "order": list(adapters), "final": final,
              "adapters": {name: str(path) if path else None for name, path in adapters.items()},
              "targets": targets(results, final) if final else [],
              "targets_import": targets(results, "import", import_cycle=_import_cycle(report))
              if "import" in adapters else []}
    (work / "learning_curve.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    chart = plot(report, out)
    common.write_section(out, report.get("corpus", MAIL)["section"], markdown(report, chart))
    print_summary(report)
    return report


def _import_cycle(report: dict[str, Any]) -> dict[str, Any]:
    rounds = report.get("rounds") or []
    return next((log.get("cycle") or {} for log in rounds if log.get("name") == "import"), {})


def reevaluate(work: Path, out: Path, threads: int) -> dict[str, Any]:
    """Evaluate the adapters of a finished run (its --work folder) again, e.g. after a metric changed.

    No training: the rounds, the plain baseline's figures and the run's time are kept from its
    JSON; the held-out drafts are seeded, so an unchanged metric gives the same figures.
    """
    from storage.db import open_database
    from training.inference.engine import Engine

    report = json.loads((work / "learning_curve.json").read_text(encoding="utf-8"))
    common.apply_threads(threads)
    sizes = report["plan"]
    corpus = load_named(report.get("corpus", MAIL)["name"], quick=report["quick"])
    pairs = corpus.pairs[:sizes["pairs"]]
    plan = Plan.split(pairs, heldout=sizes["heldout"], imported=sizes["imported"], rounds=len(sizes["rounds"]))
    config = curve_config(quick=report["quick"], work=work, threads=threads, owner_name=corpus.owner)
    adapters: dict[str, Path | None] = {"base": None}
    if "adapters" in report:
        adapters = listed_adapters(report)
    else:  # a run from before the adapters were listed: each round's candidate, then the plain baseline
        database = open_database(config.db_url)
        for log in report["rounds"]:
            if log["cycle"].get("candidate") is not None:
                adapters[log["name"]] = adapter_path(database, log["cycle"]["candidate"])
        database.dispose()
        adapters["plain"] = work / "plain-adapter"
    engine = Engine.load(config.model, config.models_dir, max_adapters=len(adapters) + 1)
    results = evaluate_all(config, engine, plan, adapters, corpus, sizes.get("evaluated"))
    report["reevaluated"] = common.machine_facts()["date"]
    return finish(report, results, adapters, out=out, work=work)


def render(work: Path, out: Path) -> dict[str, Any]:
    """Write the section of a finished run (its --work folder) again from its JSON: no training, no
    evaluation, so a change of the report's layout or targets reaches a run that took hours."""
    report = json.loads((work / "learning_curve.json").read_text(encoding="utf-8"))
    return finish(report, report["results"], listed_adapters(report), out=out, work=work)


def listed_adapters(report: dict[str, Any]) -> dict[str, Path | None]:
    """The adapters a run's JSON lists, by name (None: the base model)."""
    return {name: Path(path) if path else None for name, path in report["adapters"].items()}


def _round_dicts(logs: Sequence[RoundLog]) -> list[dict[str, Any]]:
    return [{"name": log.name, "verdicts": log.verdicts, "live_edit_distance": log.live_edit_distance,
             "cycle": log.cycle} for log in logs]


def write_progress(out: Path, corpus: Corpus, facts: dict[str, Any], quick: bool, plan: Plan,
                   logs: Sequence[RoundLog], started: float) -> None:
    """After each cycle, the rounds so far: a long run stopped early still leaves its figures."""
    body = "\n".join([
        "## Learning curve (in progress)", "", common.machine_markdown(facts, quick=quick), "",
        f"{len(logs) - 1} of {len(plan.rounds)} feedback rounds done after {(time.perf_counter() - started) / 60:.0f} min; "
        "the held-out evaluation of every adapter and the plain baseline come at the end. The cycle's own metrics "
        "are on its own held-out slice.", "", rounds_table(_round_dicts(logs)),
    ])
    common.write_section(out, corpus.section, body)


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=CORPORA, default="mail",
                        help="the simulated owner: Tim Peters' mail (bench/data) or a student's chats (bench/chitchat.py, "
                             "needs the chitchat-dataset package; --quick uses its slice in bench/data); default mail")
    parser.add_argument("--heldout", type=int, default=None,
                        help="held-out pairs (default: mail 18; chat the newest 20%% of the conversations)")
    parser.add_argument("--imported", type=int, default=None,
                        help="imported pairs (default: mail 24; chat all the others but the rounds'); a chat "
                             "corpus cuts both at a conversation's start, importing fewer and holding out more")
    parser.add_argument("--rounds", type=int, default=None, help="feedback rounds, each followed by a cycle (default 3)")
    parser.add_argument("--eval-items", type=int, default=None, metavar="N",
                        help="evaluate every adapter on N held-out pairs spread evenly over the held-out set "
                             "(default all; the chat owner's 747 cost about an hour per adapter on 2 cores)")
    parser.add_argument("--report-from", type=Path, default=None, metavar="WORK",
                        help="only write the section of an earlier run (its --work folder) that stopped early")
    parser.add_argument("--finish", type=Path, default=None, metavar="WORK",
                        help="finish a run (its --work folder) that stopped after its last cycle: rebuild its rounds "
                             "from its database, train the plain baseline and evaluate every adapter; give it the "
                             "sizes the run had")
    parser.add_argument("--reevaluate", type=Path, default=None, metavar="WORK",
                        help="evaluate the adapters of a finished run (its --work folder) again, without training")
    parser.add_argument("--render", type=Path, default=None, metavar="WORK",
                        help="write the section of a finished run (its --work folder) again from its JSON, without "
                             "training or evaluating (after a change of the report's layout or targets)")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    if args.render:
        render(args.render, args.out)
        return 0
    if args.reevaluate:
        reevaluate(args.reevaluate, args.out, args.threads)
        return 0
    try:
        corpus = load_named(args.corpus, quick=args.quick)
    except ValueError as error:  # the chat package missing, or its data unreadable
        parser.exit(2, f"error: {error}\n")
    if args.report_from:
        print(report_from_work(args.report_from, args.out, telegram_id=OWNER_TELEGRAM_ID,
                               corpus=corpus.facts()))
        return 0
    sizes = corpus.default_sizes(quick=args.quick)
    sized = dict(heldout=args.heldout or sizes["heldout"], imported=args.imported or sizes["imported"],
                 rounds=args.rounds or sizes["rounds"], pairs_limit=sizes["pairs"], eval_items=args.eval_items)
    if args.finish:
        try:
            finish_stopped(corpus=corpus, quick=args.quick, out=args.out, work=args.finish, threads=args.threads, **sized)
        except ValueError as error:  # not a stopped run of these sizes
            parser.exit(2, f"error: {error}\n")
        return 0
    with common.work_folder(args.work, "twin-bench-curve-") as work:
        run(corpus=corpus, quick=args.quick, out=args.out, work=work, threads=args.threads, **sized)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
