"""The two judges of "reads as the owner": how well each tells the owner's held-out lines from other people's.

The character n-gram classifier (training.attribution, what the gate uses) and LambdaG
(training.lambdag_judge) on the benchmarks' two owners: Tim Peters' mail replies (bench/data) and
the chitchat student's chat lines (the `chitchat-dataset` package; with --quick, or without the
package, the slice in bench/data). Each judge learns from 80% of the owner's lines against 80% of
the others' (training.attribution.holdout_split, as training.evaluate does) and judges the rest,
alone or grouped into documents of at least N words (training.lambdag_judge.group_documents):
the ceiling is the share of the owner's held-out documents judged the owner's, the floor the
share of the others'. Also LambdaG's cost per evaluation: its fit, the ceiling and floor, and
judging 60 drafts (here 60 of the owner's held-out lines stand in for them).

    python -m bench.judges            # both owners, the whole chat corpus (about two minutes on 2 cores)
    python -m bench.judges --quick    # the slice: seconds
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from bench import common

logger = logging.getLogger("bench.judges")

SECTION = "judges"
WORDS = (1, 20, 40)  # 1: every line its own document, as the classifier judges drafts
MAX_HELDOUT = 600  # held-out lines judged per side (the chat owner has about 2,000)
DRAFTS = 60  # evaluation.max_eval_items


def owners(*, quick: bool) -> list[tuple[str, list[str], list[str]]]:
    """(name, the owner's lines, the others' lines) of each benchmark owner, duplicates once."""
    from bench.corpus import load_named

    mail = load_named("mail")
    found = [("mail (Tim Peters' replies)", [p.reply for p in mail.pairs], [p.message for p in mail.pairs])]
    try:
        chat = load_named("chat", quick=quick)
    except Exception as error:  # the package is missing or unreadable: the slice still says something
        logger.warning("chitchat corpus not available (%s): using the slice in bench/data", error)
        chat = load_named("chat", quick=True)
    owner = [u.text.strip() for c in chat.conversations for u in c.utterances
             if u.sender == chat.owner_id and u.text.strip()]
    name = f"chat ({'the slice' if quick or len(chat.conversations) < 20 else 'the chitchat owner'})"
    found.append((name, list(dict.fromkeys(owner)), list(dict.fromkeys(chat.other_lines(chat.pairs)))))
    return found


def _share(probabilities: Sequence[float]) -> float | None:
    return sum(p >= 0.5 for p in probabilities) / len(probabilities) if probabilities else None


def _auc(owner: Sequence[float], other: Sequence[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(owner) + [0] * len(other), [*owner, *other])) if owner and other else None


def measure(*, quick: bool) -> dict[str, Any]:
    from training.attribution import AttributionClassifier, holdout_split
    from training.lambdag_judge import LambdaGJudge, group_documents, lambdag_method

    lambdag_method()  # imports the library (and scikit-learn) before anything is timed
    rows, costs = [], []
    for name, owner, other in owners(quick=quick):
        owner_train, owner_held = holdout_split(owner)
        other_train, other_held = holdout_split(other)
        owner_held, other_held = owner_held[:MAX_HELDOUT], other_held[:MAX_HELDOUT]
        started = time.perf_counter()
        lambdag = LambdaGJudge().fit(owner_train, other_train)
        fitted = time.perf_counter()
        lambdag.score(owner_held), lambdag.score(other_held)
        bounded = time.perf_counter()
        lambdag.score(owner_held[:DRAFTS])
        scored = time.perf_counter()
        costs.append([name, len(owner_train), len(other_train), lambdag.counts["owner_sentences"],
                      fitted - started, bounded - fitted, scored - bounded, scored - started])
        judges = {"n-gram classifier": AttributionClassifier().fit(owner_train, other_train), "LambdaG": lambdag}
        for judge_name, judge in judges.items():
            for words in WORDS:
                owner_docs, other_docs = group_documents(owner_held, words), group_documents(other_held, words)
                p_owner, p_other = judge.predict_proba(owner_docs), judge.predict_proba(other_docs)
                rows.append([name, judge_name, words, len(group_documents(owner_held[:DRAFTS], words)),
                             _share(p_owner), _share(p_other), _auc(p_owner, p_other),
                             f"{len(owner_docs)} + {len(other_docs)}"])
    return {"quick": quick, "rows": rows, "costs": costs}


def markdown(result: dict[str, Any], facts: dict[str, Any]) -> str:
    return "\n".join([
        "## The two judges of \"reads as the owner\" (bench/judges.py)", "",
        common.machine_markdown(facts, quick=result["quick"]), "",
        "Each judge learns from 80% of the owner's lines against 80% of the other people's and judges the "
        f"held-out rest (at most {MAX_HELDOUT} a side), every line alone (1) or consecutive lines grouped into "
        "documents of at least N words. Ceiling: the share of the owner's documents judged the owner's; floor: "
        "the others'. The gate uses the classifier on single drafts; LambdaG is reported beside it on documents of "
        "at least 20 words (training/lambdag_judge.py).", "",
        common.markdown_table(["owner", "judge", "words per document", f"documents from {DRAFTS} lines", "ceiling",
                               "floor", "AUC", "documents judged"], result["rows"]), "",
        f"LambdaG's cost per evaluation (seconds; {DRAFTS} of the owner's held-out lines stand in for the drafts):", "",
        common.markdown_table(["owner", "owner's lines", "others' lines", "owner's sentences modelled", "fit",
                               "ceiling and floor", f"{DRAFTS} drafts", "total"], result["costs"]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose)
    facts = common.machine_facts()
    body = markdown(measure(quick=args.quick), facts)
    common.write_section(args.out, SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
