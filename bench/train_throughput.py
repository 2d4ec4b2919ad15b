"""Training throughput: our SFT and DPO stages against trl's plain recipe, and a full nightly cycle.

Part 1, on the same rows (the simulated owner's messages and replies as edits of wrong drafts,
built by the project's dataset builders) and one epoch each: tokens per second, peak memory and
the loss each recipe reaches, measured after training with one formula for both (SFT: NLL of
the completions; DPO: sigmoid DPO loss against the base model, and preference accuracy).
"Ours" is `training.train.run_training` with the project's default settings; "plain" is
`bench.plain` (trl's documented SFTTrainer/DPOTrainer + LoRA, defaults apart from what a CPU
needs). Each run is a fresh child process so its peak memory is its own.

Part 2: a full cycle as the scheduler runs it (`loop.cycle.run_cycle`) after 300 verdicts
(accept, edit, reject with and without a replacement, regenerate) on top of the imported
writing (the replay pool): time per stage and the child's peak memory.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any, Sequence

from bench import common
from bench.corpus import CORPUS_FILE, ReplyPair, load_corpus

logger = logging.getLogger("bench.train_throughput")

SECTION = "train_throughput"
TARGET_RATIO = 1.3
TARGET_CYCLE_S = 15 * 60
TARGET_PEAK_MB = 4096
OWNER_TELEGRAM_ID = 4343


# Data --------------------------------------------------------------------------------------------

def feedback_examples(pairs: Sequence[ReplyPair], n: int, *, seed: int = 0) -> list[Any]:
    """`n` edits: the owner's real reply over a wrong draft (another reply of theirs, of similar length)."""
    from datetime import timedelta

    from training.datasets import FeedbackExample
    from training.prompt import Conversation

    rng = random.Random(seed)
    examples = []
    for i in range(n):
        pair = pairs[i % len(pairs)]
        draft = pairs[(i * 7 + 3 + rng.randrange(len(pairs) - 1)) % len(pairs)].reply
        if draft == pair.reply:
            draft = pairs[(i + 1) % len(pairs)].reply
        examples.append(FeedbackExample(kind="edit", conversation=Conversation.of(pair.message, pair.context),
                                        draft=draft, text=pair.reply, later_kept=None,
                                        created_at=pair.written_at + timedelta(days=i)))
    return examples


def stage_rows(settings: Any, tokenizer: Any, pairs: Sequence[ReplyPair], *, sft_rows: int,
               dpo_rows: int) -> dict[str, list[dict[str, Any]]]:
    from training.datasets import build_dpo_rows, build_sft_rows, make_renderer

    render = make_renderer(tokenizer, settings)
    sft = build_sft_rows(feedback_examples(pairs, sft_rows), [], render=render, replay_fraction=0.0, seed=0,
                         tokenizer=tokenizer, chunk_tokens=256)
    dpo = build_dpo_rows(feedback_examples(pairs, dpo_rows, seed=1), render=render)
    return {"sft": sft, "dpo": dpo}


def count_tokens(tokenizer: Any, stage: str, rows: Sequence[dict[str, Any]]) -> int:
    """Tokens one epoch feeds the model: prompt+completion (DPO: prompt+chosen and prompt+rejected)."""
    def n(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    if stage == "sft":
        return sum(n(r["prompt"] + r["completion"]) for r in rows)
    return sum(n(r["prompt"] + r["chosen"]) + n(r["prompt"] + r["rejected"]) for r in rows)


# One recipe × stage, in a child process --------------------------------------------------------------

def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one stage with one recipe and score the result; runs in a fresh process when it can."""
    common.offline_environment()
    common.setup_logging(job.get("verbose", False))
    common.apply_threads(job["threads"])
    rows, stage, work = job["rows"], job["stage"], Path(job["work"])
    if job["recipe"] == "ours":
        return _run_ours(job, rows, stage, work)
    return _run_plain(job, rows, stage, work)


def _score(model: Any, tokenizer: Any, stage: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from bench.plain import dpo_scores, sft_nll

    if stage == "sft":
        return {"sft_nll": sft_nll(model, tokenizer, rows)}
    return dpo_scores(model, tokenizer, rows)


def _run_ours(job: dict[str, Any], rows: list[dict[str, Any]], stage: str, work: Path) -> dict[str, Any]:
    from peft import PeftModel

    from training.config import LoraSettings, ModelSettings, StageSettings, TrainingSettings
    from training.datasets import write_datasets
    from training.model import load_model, load_tokenizer
    from training.train import TrainJob, run_training

    model_settings = ModelSettings(**job["model"])
    training = TrainingSettings(**{**job["training"], **{k: StageSettings(**v) for k, v in job["stages"].items()}})
    datasets = work / f"ours-{stage}-data"
    write_datasets({stage: rows}, datasets)
    train_job = TrainJob(model=model_settings, lora=LoraSettings(), training=training,
                         models_dir=Path(job["models_dir"]), datasets_dir=datasets, init_adapter=None,
                         output_dir=work / f"ours-{stage}-adapter", log_file=work / f"ours-{stage}.log")
    with common.PeakMemory() as memory:
        result = run_training(train_job, progress=False)
    stats = result.stages[stage]
    base = load_model(job["base_path"], model_settings)
    tokenizer = load_tokenizer(job["base_path"])
    model = PeftModel.from_pretrained(base, str(result.adapter_dir))
    return {"seconds": stats["seconds"], "steps": stats["steps"], "train_loss": stats["train_loss"],
            "peak_mb": memory.peak_mb, "stage_peak_mb": stats["peak_rss_mb"], **_score(model, tokenizer, stage, rows)}


def _run_plain(job: dict[str, Any], rows: list[dict[str, Any]], stage: str, work: Path) -> dict[str, Any]:
    from bench.plain import load_base, plain_dpo, plain_sft

    model, tokenizer = load_base(job["base_path"])
    train = plain_sft if stage == "sft" else plain_dpo
    with common.PeakMemory() as memory:
        started = time.perf_counter()
        trained, output = train(model, tokenizer, rows, work / f"plain-{stage}")
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": int(output.global_step), "train_loss": float(output.training_loss),
            "peak_mb": memory.peak_mb, **_score(trained, tokenizer, stage, rows)}


def run_isolated(job: dict[str, Any], isolate: bool) -> dict[str, Any]:
    if not isolate:
        return run_job(job)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_job, job).result()


# The full cycle --------------------------------------------------------------------------------------

def give_feedback(twin: Any, pairs: Sequence[ReplyPair], n: int) -> dict[str, int]:
    """`n` verdicts of every kind on scripted drafts (a FakeDrafter answers with the owner's other replies)."""
    counts = {"accept": 0, "edit": 0, "reject": 0, "regenerate": 0}
    for i in range(n):
        pair = pairs[i % len(pairs)]
        draft = twin.draft_reply(telegram_id=OWNER_TELEGRAM_ID, chat_key=f"mail:{i}", incoming=pair.message)
        kind = ("edit", "accept", "edit", "reject", "edit", "regenerate", "edit", "reject", "accept", "edit")[i % 10]
        if kind == "regenerate":
            again = twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="regenerate")
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=again.new_draft.id, kind="edit",
                                text=pair.reply)
        elif kind == "reject":
            text = pair.reply if i % 20 < 10 else None  # half with a replacement, half without
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="reject", text=text,
                                reason=None if text else "not me")
        elif kind == "edit":
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="edit", text=pair.reply)
        else:
            twin.record_verdict(telegram_id=OWNER_TELEGRAM_ID, draft_id=draft.id, kind="accept")
        counts[kind] += 1
    return counts


def run_cycle_bench(*, quick: bool, work: Path, threads: int, items: int, settings: Any) -> dict[str, Any]:
    from loop.config import Config
    from loop.cycle import list_cycles, run_cycle
    from loop.drafting import FakeDrafter
    from loop.importing.base import OwnerIdentity
    from loop.importing.runner import run_import
    from loop.twin import Twin
    from storage.db import open_database

    pairs = load_corpus()
    config = Config(data_dir=work / "cycle", owners=[OWNER_TELEGRAM_ID], model=settings)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.models_dir.parent.mkdir(parents=True, exist_ok=True)
    if not quick:
        common.share_models_dir(config.models_dir)
    if quick:
        from training.tiny import tiny_evaluation_settings, tiny_generation_settings, tiny_training_settings

        config.training = tiny_training_settings()
        config.generation = tiny_generation_settings()
        config.evaluation = tiny_evaluation_settings()
    config.model.threads = threads
    database = open_database(config.db_url)
    # A FakeDrafter scripts the drafts: the cycle, not drafting, is what is timed here.
    drafts = [pairs[(i * 7 + 3) % len(pairs)].reply for i in range(2 * items)]
    twin = Twin(config, database, FakeDrafter(replies=drafts))
    owner_id = twin.owner_id(OWNER_TELEGRAM_ID, name="bench")
    imported = run_import(engine=database, owner_db_id=owner_id, paths=[CORPUS_FILE], owner=OwnerIdentity(),
                          format="jsonl", mask=False)
    counts = give_feedback(twin, pairs, items)
    started = time.perf_counter()
    with common.PeakMemory(interval_s=0.2, children=True) as child_memory:
        outcome = run_cycle(config, database, telegram_id=OWNER_TELEGRAM_ID, force=True, trigger="bench")
    wall = time.perf_counter() - started
    cycle = list_cycles(database, telegram_id=OWNER_TELEGRAM_ID)[-1]
    database.dispose()
    stages = cycle.get("durations", {}).get("stages", {})
    return {"items": items, "verdicts": counts, "imported": sum(f.added for f in imported.files),
            "status": outcome.status, "reason": outcome.reason, "wall_seconds": wall,
            "stages": {name: value for name, value in stages.items() if isinstance(value, dict)},
            "datasets": cycle.get("counts", {}).get("datasets", {}),
            "peak_mb": child_memory.peak_mb, "child_reported_peak_mb": (stages.get("child") or {}).get("peak_rss_mb")}


# The benchmark -------------------------------------------------------------------------------------------

def run(*, quick: bool, out: Path, work: Path, threads: int, sft_rows: int, dpo_rows: int, cycle_items: int,
        isolate: bool, verbose: bool) -> dict[str, Any]:
    import dataclasses

    from training.config import TrainingSettings
    from training.model import load_tokenizer, resolve_base_model
    from training.stages import memory_plan
    from training.train import longest_row_tokens

    threads = common.apply_threads(threads)
    facts = common.machine_facts()
    settings = common.model_settings(quick=quick, work=work, threads=threads, owner_name="Tim")
    base_path = resolve_base_model(settings, common.models_dir())
    tokenizer = load_tokenizer(base_path)
    pairs = load_corpus()
    rows = stage_rows(settings, tokenizer, pairs, sft_rows=sft_rows, dpo_rows=dpo_rows)
    training = TrainingSettings()
    stages = {name: dataclasses.asdict(getattr(training, name)) for name in ("sft", "dpo", "kto")}
    for stage in stages.values():  # exactly one epoch, as the plain recipe: min_steps would add passes
        stage["min_steps"] = 0
    if quick:
        for stage in stages.values():
            stage["max_steps"] = 2
    base_job = {"model": dataclasses.asdict(settings), "base_path": base_path, "models_dir": str(common.models_dir()),
                "threads": threads, "work": str(work), "verbose": verbose,
                "training": {"seed": training.seed, "replay_fraction": training.replay_fraction},
                "stages": stages}
    longest = {name: longest_row_tokens(rows[name], lambda text: len(tokenizer(text=text)["input_ids"]))
               if rows.get(name) else None for name in stages}
    comparisons: list[dict[str, Any]] = []
    report: dict[str, Any] = {"facts": facts, "quick": quick, "comparisons": comparisons, "cycle": None,
                              "settings": {"ours": {k: {"batch": v["batch_size"], "lr": v["learning_rate"],
                                                        "max_length": v["max_length"], "loss": v["loss_type"],
                                                        "plan": dataclasses.asdict(memory_plan(
                                                            k, getattr(training, k), training, "cpu",
                                                            longest_row_tokens=longest[k]))}
                                                    for k, v in stages.items()}}}
    for stage in ("sft", "dpo"):
        tokens = count_tokens(tokenizer, stage, rows[stage])
        row: dict[str, Any] = {"stage": stage, "rows": len(rows[stage]), "tokens": tokens}
        for recipe in ("plain", "ours"):
            logger.info("%s %s on %d rows", recipe, stage, len(rows[stage]))
            result = run_isolated({**base_job, "recipe": recipe, "stage": stage, "rows": rows[stage]}, isolate)
            result["tokens_per_s"] = tokens / result["seconds"] if result["seconds"] else None
            row[recipe] = result
            logger.info("%s %s: %s", recipe, stage, result)
        row["ratio"] = (row["ours"]["tokens_per_s"] / row["plain"]["tokens_per_s"]
                        if row["plain"]["tokens_per_s"] else None)
        key = "sft_nll" if stage == "sft" else "dpo_loss"
        ours_loss, plain_loss = row["ours"].get(key), row["plain"].get(key)
        row["no_loss_in_quality"] = None if ours_loss is None or plain_loss is None else ours_loss <= plain_loss
        comparisons.append(row)
        publish({**report, "comparisons": comparisons}, out)  # a run stopped early keeps what it measured

    cycle = None
    if cycle_items > 0:
        cycle = run_cycle_bench(quick=quick, work=work, threads=threads, items=cycle_items,
                                settings=common.model_settings(quick=quick, work=work, threads=threads,
                                                               owner_name="Tim"))
    report["cycle"] = cycle
    publish(report, out)
    print_summary(report)
    (work / "train_throughput.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


def publish(report: dict[str, Any], out: Path) -> None:
    common.write_section(out, SECTION, markdown(report, plot(report, out)))


def plot(report: dict[str, Any], out: Path) -> Path:
    plt = common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    stages = [row["stage"].upper() for row in report["comparisons"]]
    xs = range(len(stages))
    for offset, recipe, color in ((-0.2, "plain", "#9aa5b1"), (0.2, "ours", "#3b6ea8")):
        left.bar([x + offset for x in xs], [row[recipe]["tokens_per_s"] or 0 for row in report["comparisons"]],
                 width=0.4, color=color, label="trl plain recipe" if recipe == "plain" else "ours")
    left.set_xticks(list(xs), stages)
    left.set_ylabel("tokens per second")
    left.set_title("Training throughput, same rows, one epoch")
    left.legend()
    cycle = report.get("cycle")
    if cycle and cycle.get("stages"):
        names = [n for n in ("collect", "datasets", "sft", "dpo", "kto", "evaluate") if n in cycle["stages"]]
        seconds = [float(cycle["stages"][n].get("seconds") or 0) / 60 for n in names]
        bottom = 0.0
        for name, value in zip(names, seconds):
            right.bar([0], [value], bottom=bottom, label=name)
            bottom += value
        right.axhline(TARGET_CYCLE_S / 60, color="#c0392b", linestyle="--", label="target 15 min")
        right.set_xticks([0], [f"cycle, {cycle['items']} verdicts"])
        right.set_ylabel("minutes")
        right.set_title("A full cycle by stage")
        right.legend(fontsize=8)
    else:
        right.axis("off")
    if report["quick"]:
        figure.suptitle("quick smoke run: meaningless figures")
    return common.save_chart(figure, out, "train_throughput")


def _plan_text(plan: dict[str, Any] | None) -> str:
    if not plan:
        return "one forward pass, no checkpointing"
    return (f"{plan['per_device_batch']} per pass x {plan['accumulation']} accumulated"
            + (", activation checkpointing" if plan["checkpointing"] else ""))


def markdown(report: dict[str, Any], chart: Path) -> str:
    headers = ["stage", "rows", "tokens", "recipe", "steps", "seconds", "tokens/s", "peak RSS MB", "train loss",
               "loss after (same formula)", "preference acc."]
    table = []
    for row in report["comparisons"]:
        key = "sft_nll" if row["stage"] == "sft" else "dpo_loss"
        for recipe in ("plain", "ours"):
            r = row[recipe]
            table.append([row["stage"].upper(), row["rows"], row["tokens"], recipe, r["steps"], r["seconds"],
                          r["tokens_per_s"], r["peak_mb"], r["train_loss"], r.get(key), r.get("preference_accuracy")])
    ours = report["settings"]["ours"]
    lines = [
        "## Training throughput", "",
        common.machine_markdown(report["facts"], quick=report["quick"]), "",
        "Same rows for both recipes, one epoch, each run in a fresh process. Ours: "
        + "; ".join(f"{k.upper()} batch {v['batch']} ({_plan_text(v.get('plan'))}), lr {v['lr']}, "
                    f"max_length {v['max_length']}"
                    + (f", loss {'+'.join(v['loss'])}" if k == "dpo" else "") for k, v in ours.items() if k != "kto")
        + ", LoRA r16 all-linear. Plain: trl defaults (batch 8, gradient checkpointing, "
        "max_length 1024, SFT lr 2e-5, DPO lr 1e-6) with LoRA r16/alpha 32 all-linear. \"Loss after\" is measured "
        "on the training rows after training, with one formula for both: SFT completion NLL; DPO sigmoid loss "
        "(β 0.1) against the base model.", "",
        common.markdown_table(headers, table), "",
    ]
    for row in report["comparisons"]:
        met = row["ratio"] is not None and row["ratio"] >= TARGET_RATIO and bool(row["no_loss_in_quality"])
        lines.append(f"- {row['stage'].upper()}: ours / plain throughput × {common.fmt(row['ratio'])}, loss after "
                     f"training {'not worse' if row['no_loss_in_quality'] else 'worse'}: target ≥ {TARGET_RATIO} × "
                     f"with no loss in final loss {common.verdict(met)}.")
    cycle = report.get("cycle")
    if cycle:
        stages = cycle["stages"]
        names = [n for n in ("collect", "datasets", "sft", "dpo", "kto", "evaluate", "child") if n in stages]
        cycle_rows = [[n, stages[n].get("seconds"), stages[n].get("examples", stages[n].get("rows")),
                       stages[n].get("steps"), stages[n].get("peak_rss_mb")] for n in names]
        total = cycle["wall_seconds"]
        peak = cycle.get("peak_mb")
        lines += [
            "", f"### A full cycle: {cycle['items']} verdicts ({', '.join(f'{v} {k}' for k, v in cycle['verdicts'].items())})"
            f" plus {cycle['imported']} imported replies as the replay pool", "",
            f"Outcome: {cycle['status']}. Datasets: {', '.join(f'{k} {v}' for k, v in cycle['datasets'].items())}.", "",
            common.markdown_table(["stage", "seconds", "examples", "steps", "peak RSS MB"], cycle_rows), "",
            f"Total {total / 60:.1f} min (target ≤ 15 min: {common.verdict(total <= TARGET_CYCLE_S)}); peak memory of the "
            f"training child {common.fmt(peak, 0)} MB, sampled (target ≤ 4 GB: "
            f"{common.verdict(peak is not None and peak <= TARGET_PEAK_MB)}). The child reports "
            f"{common.fmt(cycle.get('child_reported_peak_mb'), 0)} MB itself (`ru_maxrss`, which on Linux also counts "
            "what the parent held when it forked).",
        ]
    lines += ["", f"![training throughput]({chart.name})"]
    return "\n".join(lines)


def print_summary(report: dict[str, Any]) -> None:
    print("training throughput:")
    for row in report["comparisons"]:
        for recipe in ("plain", "ours"):
            r = row[recipe]
            print(f"  {row['stage']:<4} {recipe:<6} {r['seconds']:.1f}s {common.fmt(r['tokens_per_s'], 1)} tok/s "
                  f"peak {r['peak_mb']:.0f} MB train loss {common.fmt(r['train_loss'], 3)} "
                  f"after {common.fmt(r.get('sft_nll', r.get('dpo_loss')), 3)}")
        print(f"  {row['stage']:<4} ours/plain x{common.fmt(row['ratio'])}")
    cycle = report.get("cycle")
    if cycle:
        print(f"  cycle ({cycle['items']} verdicts): {cycle['status']} in {cycle['wall_seconds'] / 60:.1f} min, "
              f"peak {common.fmt(cycle.get('peak_mb'), 0)} MB; stages "
              + ", ".join(f"{k} {common.fmt(v.get('seconds'), 0)}s" for k, v in cycle["stages"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sft-rows", type=int, default=None, help="SFT rows per recipe (default 64)")
    parser.add_argument("--dpo-rows", type=int, default=None, help="DPO pairs per recipe (default 32)")
    parser.add_argument("--cycle-items", type=int, default=None, help="verdicts before the full cycle (default 300; 0 skips it)")
    parser.add_argument("--in-process", action="store_true", help="no child processes (peak memory then mixes runs)")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    with common.work_folder(args.work, "twin-bench-train-") as work:
        run(quick=args.quick, out=args.out, work=work, threads=args.threads,
            sft_rows=args.sft_rows or (4 if args.quick else 64), dpo_rows=args.dpo_rows or (4 if args.quick else 32),
            cycle_items=args.cycle_items if args.cycle_items is not None else (6 if args.quick else 300),
            isolate=not (args.in_process or args.quick), verbose=args.verbose)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
