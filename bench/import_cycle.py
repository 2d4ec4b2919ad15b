"""The import cycle on a real person's chat history: is the owner's first adapter promoted, how fast, how big?

The first thing a new owner does (issue 16): import a Telegram export of the older 80% of the
chitchat owner's conversations (bench/chitchat.py, about 3,700 replies) and run `twin train
--force`. Here that is `loop.importing.runner.run_import` and `loop.cycle.run_cycle` with the
shipped defaults of config.toml (the embedded SmolLM2, `training.first_cycle_writing`, the gate
with its strength ladder), exactly the paths the CLI takes. Reported: wall time and peak memory
by stage, the decision and the strength promoted, what it traded, and the cycle's own held-out
metrics (NLL against the base model, attribution by the n-gram classifier and by LambdaG against
the owner's own lines and the others').

    python -m bench.import_cycle            # the real run (about a quarter of an hour on 2 cores)
    python -m bench.import_cycle --quick    # the tests' tiny model on the committed slice
    python -m bench.import_cycle --retrieved-examples 3 --contact-examples 2   # issue 16's retrieval lever

With the retrieval lever on (generation.retrieved_examples / contact_examples, training.retrieval) the
run writes its own section of RESULTS.md, beside the defaults' one, so both can be compared.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.corpus import load_named

logger = logging.getLogger("bench.import_cycle")

SECTION = "import_cycle"
TARGET_MINUTES = 15
TARGET_PEAK_MB = 4096
OWNER = 4545


def section_name(retrieved: int, contact: int) -> str:
    """The RESULTS.md section of a run: the defaults' one, or one per setting of the retrieval lever."""
    return SECTION if not (retrieved or contact) else f"{SECTION}_retrieval_{retrieved}_{contact}"


def measure(*, quick: bool, work: Path, threads: int, retrieved: int = 0, contact: int = 0) -> dict[str, Any]:
    from bench.learning_curve import curve_config
    from loop.cycle import list_cycles, run_cycle
    from loop.importing.base import OwnerIdentity
    from loop.importing.runner import run_import
    from storage import repo
    from storage.db import open_database, session_scope

    threads = common.apply_threads(threads)
    corpus = load_named("chat", quick=quick)
    sizes = corpus.default_sizes(quick=quick)
    pairs = corpus.pairs[:sizes["pairs"]] if sizes.get("pairs") else corpus.pairs
    heldout = {pair.thread for pair in pairs[len(pairs) - sizes["heldout"]:]}
    imported = [pair for pair in pairs if pair.thread not in heldout]
    config = curve_config(quick=quick, work=work, threads=threads, owner_name=corpus.owner)
    config.owners = [OWNER]
    config.generation.retrieved_examples, config.generation.contact_examples = retrieved, contact
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not quick:
        common.share_models_dir(config.models_dir)
    database = open_database(config.db_url)
    with session_scope(database) as session:
        owner_id = repo.get_or_create_owner(session=session, telegram_id=OWNER, name=corpus.owner).id
    started = time.perf_counter()
    report = run_import(engine=database, owner_db_id=owner_id, owner=OwnerIdentity(), format=corpus.import_format,
                        paths=[corpus.write_import(imported, work)], mask=True)
    import_seconds = time.perf_counter() - started
    started = time.perf_counter()
    outcome = run_cycle(config, database, telegram_id=OWNER, force=True, trigger="bench")
    cycle_seconds = time.perf_counter() - started
    row = list_cycles(database, telegram_id=OWNER)[-1]
    database.dispose()
    return {"quick": quick, "imported_pairs": len(imported), "added": sum(f.added for f in report.files),
            "import_seconds": import_seconds, "cycle_seconds": cycle_seconds, "status": outcome.status,
            "reason": outcome.reason, "report": outcome.report_text, "cycle": row,
            "retrieved_examples": retrieved, "contact_examples": contact}


def markdown(result: dict[str, Any], facts: dict[str, Any]) -> str:
    cycle = result["cycle"]
    stages = (cycle.get("durations") or {}).get("stages") or {}
    metrics = cycle.get("metrics") or {}
    gate = metrics.get("gate") or {}
    peak = max((info.get("peak_rss_mb") or 0 for info in stages.values() if isinstance(info, dict)), default=0)
    minutes = result["cycle_seconds"] / 60
    candidate, base = metrics.get("candidate") or {}, metrics.get("base") or {}
    baselines = metrics.get("baselines") or {}
    rows = [
        ["import cycle promoted (not kept)", f"{result['status']} at {float(gate.get('strength', 1)):.0%} strength",
         common.verdict(result["status"] == "promoted")],
        [f"wall time ≤ {TARGET_MINUTES} min", f"{minutes:.1f} min", common.verdict(minutes <= TARGET_MINUTES)],
        [f"peak memory ≤ {TARGET_PEAK_MB / 1024:.0f} GB", f"{peak / 1024:.1f} GB", common.verdict(peak <= TARGET_PEAK_MB)],
    ]
    stage_rows = [[name, common.fmt(info.get("seconds"), 1), common.fmt(info.get("peak_rss_mb"), 0)]
                  for name, info in stages.items() if isinstance(info, dict)]
    rung_rows = [[f"{rung['strength']:.0%}", "passes" if rung["promote"] else "refused", common.fmt(rung["likelihood"], 3),
                  common.fmt(rung["attribution"]), common.fmt(rung.get("lambdag")),
                  "; ".join(rung["caricature_flags"]) or "none", rung["reason"]]
                 for rung in gate.get("rungs") or []]
    return "\n".join([
        "## The import cycle on a real chat history (bench/import_cycle.py)"
        + (f", retrieval {result.get('retrieved_examples', 0)}+{result.get('contact_examples', 0)}"
           if _lever(result) else ""), "",
        common.machine_markdown(facts, quick=result["quick"]), "",
        f"{result['imported_pairs']} reply pairs of the chitchat owner's older conversations imported as a "
        f"Telegram export ({result['added']} samples, {result['import_seconds']:.1f} s), then `twin train --force` "
        f"with the shipped defaults{_lever(result)}; training rows {cycle.get('counts', {}).get('datasets', {})}.", "",
        common.markdown_table(["target", "measured", "met?"], rows), "",
        f"Held-out NLL {common.fmt(base.get('likelihood'), 3)} (base) → {common.fmt(candidate.get('likelihood'), 3)}; "
        + "; ".join(f"{label} {common.fmt(base.get(key))} (base) → {common.fmt(candidate.get(key))}, "
                    f"{common.judge_bounds(baselines, key)}" for key, label in common.JUDGES)
        + " (the gate judges by attribution; LambdaG is the second judge beside it).", "",
        "Strengths the gate tried:", "",
        common.markdown_table(["strength", "gate", "NLL", "attribution", "LambdaG", "caricature flags", "first reason"],
                              rung_rows),
        "", "By stage:", "", common.markdown_table(["stage", "seconds", "peak MB"], stage_rows), "",
        "The owner's report:", "", "```", result["report"], "```",
    ])


def _lever(result: dict[str, Any]) -> str:
    retrieved, contact = result.get("retrieved_examples", 0), result.get("contact_examples", 0)
    if not (retrieved or contact):
        return ""
    reached = ((result.get("cycle") or {}).get("counts") or {}).get("retrieved_examples") or {}
    return (f" but the retrieval lever on (generation.retrieved_examples = {retrieved}, "
            f"contact_examples = {contact}: the owner's past replies in every prompt; "
            f"{reached.get('with_examples', 0)} of {reached.get('prompts', 0)} prompts got "
            f"{reached.get('examples', 0)} in all, before the prompt budget)")


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--retrieved-examples", type=int, default=0, metavar="K",
                        help="generation.retrieved_examples for this run: the owner's replies to the K most "
                             "similar past messages in every prompt (default 0: off, the shipped default)")
    parser.add_argument("--contact-examples", type=int, default=0, metavar="N",
                        help="generation.contact_examples for this run: the owner's N latest earlier replies "
                             "in the same conversation in every prompt (default 0: off)")
    args = parser.parse_args(argv)
    common.offline_environment()
    common.setup_logging(args.verbose)
    facts = common.machine_facts()
    with common.work_folder(args.work, "twin-bench-import-") as work:
        result = measure(quick=args.quick, work=work, threads=args.threads, retrieved=args.retrieved_examples,
                         contact=args.contact_examples)
    body = markdown(result, facts)
    common.write_section(args.out, section_name(args.retrieved_examples, args.contact_examples), body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
