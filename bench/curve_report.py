"""The learning curve's report: targets, tables, the chart and RESULTS.md sections (bench.learning_curve).

Pure presentation of what the run measured, kept apart from the run itself so each stays short.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from bench import common
from bench.corpus import OWNER_NAME, Corpus

# A report from before corpora were named was run on the mail corpus (section and chart `learning_curve`).
MAIL = Corpus(name="mail", owner=OWNER_NAME, pairs=[]).facts()

logger = logging.getLogger(__name__)

ACCEPT_DISTANCE = 0.25  # the simulated owner sends a draft as it is when it is this close to his reply
REFERENCE = "fit-all"  # SFT run hard on every training reply: how low held-out NLL can go on this corpus


# Issue 16's targets, after the import cycle and after the last one.
ATTRIBUTION_POINTS = 0.03  # from the owner's own held-out lines, either way: above them is a caricature
NLL_DROP = 0.15  # below the base model (the aim is 20%)
PREFERENCE_TARGET = 0.8
LENGTH_TOLERANCE = 0.2  # the drafts' median length against the owner's
EDIT_DROP = 0.25  # below the base model's edit distance
IMPORT_SECONDS, IMPORT_MB = 15 * 60, 4096


def targets(results: dict[str, dict[str, Any]], final: str,
            import_cycle: dict[str, Any] | None = None) -> list[tuple[str, bool | None, str]]:
    """(target, met, figures) for the adapter `final` (the import cycle's or the last cycle's), per
    issue 16's table; with `import_cycle` (its round's cycle facts) also the import cycle's own target."""
    base, last, plain, bounds = results["base"], results.get(final, {}), results.get("plain", {}), results["baselines"]
    rows: list[tuple[str, bool | None, str]] = []

    def known(*values: Any) -> bool:
        return all(v is not None for v in values)

    def error(result: dict[str, Any], key: str) -> float | None:
        return (result.get("standard_errors") or {}).get(key)

    def within_noise(key: str, ours: Any, theirs: Any) -> bool:
        """The two adapters' figures differ by less than two standard errors of the difference."""
        errors = [error(last, key), error(plain, key)]
        return known(ours, theirs, *errors) and abs(ours - theirs) < 2 * (errors[0] ** 2 + errors[1] ** 2) ** 0.5

    a, ceiling, plain_a = last.get("attribution"), bounds.get("attribution_ceiling"), plain.get("attribution")
    a_error = error(last, "attribution")
    close = known(a, ceiling) and abs(a - ceiling) <= ATTRIBUTION_POINTS + 1e-9
    closer = not known(a, ceiling, plain_a) or abs(a - ceiling) < abs(plain_a - ceiling)
    rows.append((f"attribution within ±{ATTRIBUTION_POINTS * 100:.0f} points of the owner's own held-out lines, "
                 "closer to them than the plain recipe",
                 close and closer if known(a, ceiling) else None,
                 f"{common.fmt(a)}{f' ± {common.fmt(a_error)}' if a_error is not None else ''} vs ceiling "
                 f"{common.fmt(ceiling)} (floor {common.fmt(bounds.get('attribution_floor'))})"
                 + (f"; plain {common.fmt(plain_a)}" if plain_a is not None else "")
                 + ("; above the owner's own lines: a caricature" if known(a, ceiling) and a > ceiling + ATTRIBUTION_POINTS
                    else "")
                 + (f"; LambdaG, not a target: {common.fmt(last.get('lambdag'))} vs ceiling "
                    f"{common.fmt(bounds.get('lambdag_ceiling'))} (floor {common.fmt(bounds.get('lambdag_floor'))})"
                    if "lambdag" in last else "")))
    nll, base_nll = last.get("likelihood"), base.get("likelihood")
    reference_nll = results.get(REFERENCE, {}).get("likelihood")

    def lower(value: Any) -> str:
        return f" ({100 * (1 - value / base_nll):.0f}% lower)" if known(value, base_nll) else ""

    rows.append((f"held-out NLL ≥ {NLL_DROP * 100:.0f}% below the base model (aim 20%)",
                 nll <= (1 - NLL_DROP) * base_nll if known(nll, base_nll) else None,
                 f"{common.fmt(nll, 3)} vs base {common.fmt(base_nll, 3)}{lower(nll)}"
                 + (f"; the {REFERENCE} reference reaches {common.fmt(reference_nll, 3)}{lower(reference_nll)}"
                    if reference_nll is not None else "")))
    pref = last.get("preference_accuracy")
    rows.append((f"preference accuracy ≥ {PREFERENCE_TARGET * 100:.0f}% as a reward model (implicit reward "
                 "β·(log π − log π_base))",
                 pref >= PREFERENCE_TARGET if pref is not None else None,
                 f"{common.fmt(pref)} (raw likelihood comparison: {common.fmt(last.get('preference_accuracy_raw'))})"))
    style, plain_style = _overall(last), _overall(plain)
    words, owner_words = last.get("median_draft_words"), bounds.get("median_kept_words")
    length_ok = known(words, owner_words) and abs(words - owner_words) <= LENGTH_TOLERANCE * owner_words
    style_ok = not known(style, plain_style) or style <= plain_style
    rows.append((f"style distance no worse than the plain recipe's; median draft length within "
                 f"{LENGTH_TOLERANCE * 100:.0f}% of the owner's",
                 style_ok and length_ok if known(style, words, owner_words) else None,
                 f"style {common.fmt(style)} vs plain {common.fmt(plain_style)}; median draft "
                 f"{common.fmt(words, 1)} words vs the owner's {common.fmt(owner_words, 1)}"))
    edit, echo, base_edit = last.get("edit_distance"), bounds.get("edit_distance_echo"), base.get("edit_distance")
    rows.append((f"edit distance below the echo baseline and ≥ {EDIT_DROP * 100:.0f}% below the base model",
                 edit < echo and edit <= (1 - EDIT_DROP) * base_edit if known(edit, echo, base_edit) else None,
                 f"{common.fmt(edit)} vs echo {common.fmt(echo)} (empty {common.fmt(bounds.get('edit_distance_empty'))}), "
                 f"base {common.fmt(base_edit)}"
                 + (f" ({100 * (1 - edit / base_edit):.0f}% lower)" if known(edit, base_edit) and base_edit else "")))
    flags = last.get("caricature_flags")
    rows.append(("no caricature flag", (not flags) if flags is not None else None,
                 "none" if not flags else "; ".join(flags)))
    if import_cycle is not None:
        status, seconds, peak = import_cycle.get("status"), import_cycle.get("seconds"), import_cycle.get("peak_mb")
        rows.append((f"the import cycle promoted, in ≤ {IMPORT_SECONDS // 60} min on 2 cores and ≤ {IMPORT_MB // 1024} GB",
                     status == "promoted" and known(seconds) and seconds <= IMPORT_SECONDS
                     and (peak is None or peak <= IMPORT_MB),
                     f"{status}; {common.fmt(seconds / 60 if seconds is not None else None, 1)} min; peak "
                     f"{common.fmt(peak, 0)} MB"))
    comparisons = [
        ("likelihood", lambda o, p: o < p), ("preference_accuracy", lambda o, p: o > p),
        ("edit_distance", lambda o, p: o < p), ("attribution", lambda o, p: o > p),
        ("style", lambda o, p: o < p),
    ]
    better, figures = [], []
    for key, wins in comparisons:
        ours = _overall(last) if key == "style" else last.get(key)
        theirs = _overall(plain) if key == "style" else plain.get(key)
        if known(ours, theirs):
            better.append(wins(ours, theirs))
            figures.append(f"{key.replace('_', ' ')} {common.fmt(ours)} vs {common.fmt(theirs)}"
                           + (" (within sampling noise)" if not wins(ours, theirs) and within_noise(key, ours, theirs)
                              else ""))
    rows.append(("beside the plain recipe: every figure better (not a target)", all(better) if better else None,
                 "; ".join(figures)))
    return rows


def rounds_table(rounds: Sequence[dict[str, Any]]) -> str:
    def gate(log: dict[str, Any], key: str) -> str:
        sides = log["cycle"].get("gate_metrics") or {}
        return f"{common.fmt((sides.get('active') or {}).get(key))} → {common.fmt((sides.get('candidate') or {}).get(key))}"

    rows = [[log["name"], ", ".join(f"{v} {k}" for k, v in log["verdicts"].items()), log["live_edit_distance"],
             log["cycle"].get("status"), log["cycle"].get("seconds"),
             ", ".join(f"{k} {v}" for k, v in (log["cycle"].get("datasets") or {}).items()),
             gate(log, "likelihood"), gate(log, "attribution"), gate(log, "lambdag")] for log in rounds]
    return common.markdown_table(["round", "verdicts", "live edit distance", "cycle", "cycle seconds", "datasets",
                                  "cycle's own NLL (active → candidate)", "attribution (active → candidate)",
                                  "LambdaG (active → candidate)"], rows)


def report_from_work(work: Path, out: Path, *, telegram_id: int, corpus: dict[str, str] = MAIL) -> str:
    """The section of a run that stopped before its final evaluation, rebuilt from its database.

    Per cycle: what it trained on and its own gate evaluation (candidate against the active adapter on
    the cycle's held-out slice); per drafting adapter: the live edit distance of its drafts.
    """
    from loop.stats import list_cycles, owner_stats
    from storage.db import open_database

    database = open_database(f"sqlite:///{Path(work) / 'twin' / 'twin.db'}")
    cycles = list_cycles(database, telegram_id=telegram_id)
    usage = owner_stats(database, telegram_id=telegram_id)
    database.dispose()

    def pair(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
        active, candidate = (metrics.get("active") or {}).get(key), (metrics.get("candidate") or {}).get(key)
        return f"{common.fmt(active, digits)} → {common.fmt(candidate, digits)}"

    cycle_rows = [[c.get("id"), c.get("status"), c.get("candidate_version"),
                   ", ".join(f"{k} {v}" for k, v in ((c.get("counts") or {}).get("datasets") or {}).items()),
                   (c.get("durations") or {}).get("total_seconds"), pair(c.get("metrics") or {}, "likelihood"),
                   pair(c.get("metrics") or {}, "attribution", 2), pair(c.get("metrics") or {}, "lambdag", 2),
                   pair(c.get("metrics") or {}, "edit_distance", 2),
                   *(((c.get("metrics") or {}).get("baselines") or {}).get(f"{key}_{bound}")
                     for key, _ in common.JUDGES for bound in ("ceiling", "floor"))]
                  for c in cycles]
    usage_rows = [[row.get("version"), row.get("drafts"),
                   ", ".join(f"{n} {kind}" for kind, n in (row.get("by_kind") or {}).items() if n),
                   row.get("edit_distance")] for row in usage]
    body = "\n".join([
        "## Learning curve (stopped before the final evaluation)", "",
        common.machine_markdown(common.machine_facts(), quick=False) + " (when this section was written)", "",
        f"Simulated owner: {corpus['description']} ({corpus['where']}). Cycle 1 trains on the imported "
        "replies; each later cycle follows a round of drafts answered with accept or edit. A cycle still "
        "\"running\" here is the one the run was stopped in.", "",
        f"Rebuilt from the run's database ({work}). Each cycle's own evaluation: candidate against the adapter "
        "active before it, on that cycle's held-out slice (the newest 15% of verdicts and of imported replies).", "",
        common.markdown_table(["cycle", "status", "candidate", "datasets", "seconds", "NLL (active → candidate)",
                               "attribution", "LambdaG", "edit distance",
                               *(f"{name} {bound}" for _, name in common.JUDGES for bound in ("ceiling", "floor"))],
                              cycle_rows), "",
        "Live drafts by the adapter that wrote them (what the simulated owner had to change):", "",
        common.markdown_table(["adapter version", "drafts", "verdicts", "edit distance"], usage_rows),
    ])
    common.write_section(out, corpus["section"], body)
    return body


def _overall(result: dict[str, Any]) -> float | None:
    return (result.get("style_distance") or {}).get("overall")


# The held-out table's measured metrics, each shown with its standard error where the evaluation has one.
HELD_OUT_METRICS = (("likelihood", 3), ("preference_accuracy", 2), ("preference_accuracy_raw", 2),
                    ("edit_distance", 2), ("attribution", 2), ("lambdag", 2))


def with_error(result: dict[str, Any], key: str, digits: int) -> str:
    """A metric's cell: its value, then ± its standard error when one was measured."""
    value, error = result.get(key), (result.get("standard_errors") or {}).get(key)
    if value is None or error is None:
        return common.fmt(value, digits)
    return f"{common.fmt(value, digits)} ± {common.fmt(error, digits)}"


def plot(report: dict[str, Any], out: Path) -> Path:
    plt = common.pyplot()
    results, bounds = report["results"], report["results"]["baselines"]
    names = [n for n in report["order"] if n not in ("plain", REFERENCE)]
    plain, reference = results.get("plain", {}), results.get(REFERENCE, {})
    panels = [
        ("held-out NLL (lower is better)", lambda r: r.get("likelihood"), []),
        ("preference accuracy", lambda r: r.get("preference_accuracy"), [("target 0.8", 0.8, "#c0392b")]),
        ("edit distance", lambda r: r.get("edit_distance"),
         [("empty draft", bounds.get("edit_distance_empty"), "#7f8c8d"),
          ("echo", bounds.get("edit_distance_echo"), "#c0392b")]),
        ("attribution to the owner", lambda r: r.get("attribution"),
         [("ceiling (owner's lines)", bounds.get("attribution_ceiling"), "#27ae60"),
          ("floor (others' lines)", bounds.get("attribution_floor"), "#7f8c8d")]),
        ("style distance (overall)", _overall, []),
        ("caricature flags", lambda r: len(r.get("caricature_flags") or []), []),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    xs = list(range(len(names)))
    for axis, (title, value, lines) in zip(axes.flat, panels):
        ys = [value(results.get(n, {})) for n in names]
        axis.plot([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], "o-",
                  color="#3b6ea8", label="twin")
        plain_value = value(plain) if plain else None
        if plain_value is not None:
            axis.axhline(plain_value, color="#e67e22", linestyle=":", label="plain trl SFT+DPO")
        reference_value = value(reference) if reference else None
        if reference_value is not None:
            axis.axhline(reference_value, color="#8e44ad", linestyle="-.", label=f"{REFERENCE} SFT reference")
        for label, level, color in lines:
            if level is not None:
                axis.axhline(level, color=color, linestyle="--", linewidth=1, label=label)
        axis.set_xticks(xs, names, rotation=20, fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
    figure.suptitle("Learning curve of the simulated owner (held-out set)"
                    + (" — quick smoke run: meaningless" if report["quick"] else ""))
    return common.save_chart(figure, out, report.get("corpus", MAIL)["section"])


def _evaluated_part(plan: dict[str, Any]) -> str:
    evaluated = plan.get("evaluated")
    if not evaluated or evaluated >= plan["heldout"]:
        return ""
    return f" (evaluated on {evaluated} of them, spread evenly over the held-out conversations)"


def markdown(report: dict[str, Any], chart: Path) -> str:
    results, bounds = report["results"], report["results"]["baselines"]
    plan, corpus = report["plan"], report.get("corpus", MAIL)
    headers = ["model", "NLL", "preference acc. (reward)", "preference acc. (raw)", "edit distance", "attribution",
               "LambdaG", "style distance", "median words", "caricature flags", "empty drafts"]
    rows = []
    for name in report["order"]:
        r = results.get(name, {})
        rows.append([name, *(with_error(r, key, digits) for key, digits in HELD_OUT_METRICS), _overall(r),
                     r.get("median_draft_words"), len(r.get("caricature_flags") or []), r.get("empty_drafts")])
    lines = [
        "## Learning curve", "",
        common.machine_markdown(report["facts"], quick=report["quick"]), "",
        f"Simulated owner: {corpus['description']} ({corpus['source']}, "
        f"{plan['pairs']} reply pairs; {corpus['where']}). Imported: the oldest {plan['imported']}; rounds of "
        f"{', '.join(map(str, plan['rounds']))} incoming messages drafted through `Twin.draft_reply` and accepted "
        f"(edit distance ≤ {ACCEPT_DISTANCE}) or edited into the real reply, each followed by a cycle; held out: the "
        f"newest {plan['heldout']}"
        f"{_evaluated_part(plan)}, each with the base model's draft as the rejected text. Whole run "
        f"{report['seconds'] / 60:.1f} min.", "",
        "### Rounds", "",
        rounds_table(report["rounds"]), "",
        "### Held-out metrics (one evaluation of every adapter: same judges, prompts and seeds)", "",
        *([f"Evaluated again on {report['reevaluated']} from the same adapters (`--reevaluate`, no training).", ""]
          if report.get("reevaluated") else []),
        *([f"Finished on {report['finished_later']} by a second process (`--finish`): the plain baseline and this "
           "evaluation ran after the cycles' run had stopped; the whole run's minutes are the cycles' own plus "
           "this process's.", ""] if report.get("finished_later") else []),
        common.markdown_table(headers, rows), "",
        f"Baselines: edit distance of an empty draft {common.fmt(bounds.get('edit_distance_empty'))}, of echoing the "
        f"message {common.fmt(bounds.get('edit_distance_echo'))}; the owner's replies: median "
        f"{common.fmt(bounds.get('median_kept_words'), 1)} words; "
        + "; ".join(f"{label} {common.judge_bounds(bounds, key)}" for key, label in common.JUDGES)
        + " (LambdaG: the second judge, drafts in groups of at least 20 words, not gated). "
        f"Plain baseline: trl SFT ({report['plain'].get('sft_rows')} rows)"
        f" then DPO ({report['plain'].get('dpo_rows')} pairs), one epoch each, defaults."
        + (f" `{REFERENCE}`: not a twin but a yardstick, the project's SFT stage for {reference['epochs']} epochs on "
           f"every training reply at once ({reference['sft_rows']} rows, no gate, no preference stage): how far this "
           f"corpus lets held-out NLL fall." if (reference := report.get("reference")) else ""), "",
        *(part for name, rows in (("the import cycle", report.get("targets_import")),
                                  (f"the last cycle ({report.get('final')})", report["targets"])) if rows
          for part in (f"### Targets after {name}", "",
                       common.markdown_table(["target", "met", "figures"],
                                             [[t, common.verdict(m), f] for t, m, f in rows]), "")),
        *([f"Judges: learnt from {bounds.get('judges_trained_on', {}).get('owner')} held-out lines of the owner no "
           "adapter was trained on (those not drafted for)." if bounds.get("judges_learnt_from_unseen") else
           "Judges: learnt from the owner's training replies (too few held-out ones to spare)."]
          if "judges_learnt_from_unseen" in bounds else []),
    ]
    flags = {name: results[name].get("caricature_flags") for name in report["order"]
             if results.get(name, {}).get("caricature_flags")}
    if flags:
        lines += ["", "Caricature flags: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in flags.items())]
    final = report.get("final")
    samples = results.get(final, {}).get("samples") or [] if final else []
    if samples:
        lines += ["", f"Sample drafts of `{final}`:", ""]
        lines += [f"- *{s['incoming'][:120]}* → draft: \"{s['draft'][:160]}\" · kept: \"{s['kept'][:160]}\""
                  .replace("\n", " ") for s in samples[:3]]
    lines += ["", f"![learning curve]({chart.name})"]
    return "\n".join(lines)


def print_summary(report: dict[str, Any]) -> None:
    print(f"learning curve ({report['seconds'] / 60:.1f} min):")
    for name in report["order"]:
        r = report["results"].get(name, {})
        print(f"  {name:<8} NLL {common.fmt(r.get('likelihood'), 3)} pref {common.fmt(r.get('preference_accuracy'))} "
              f"edit {common.fmt(r.get('edit_distance'))} attribution {common.fmt(r.get('attribution'))} "
              f"LambdaG {common.fmt(r.get('lambdag'))} "
              f"style {common.fmt(_overall(r))} flags {len(r.get('caricature_flags') or [])}")
    for target, met, figures in report["targets"]:
        print(f"  [{'x' if met else ' '}] {target}: {figures}")
