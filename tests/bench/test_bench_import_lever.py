"""bench/import_cycle.py with the retrieval lever: its own RESULTS.md section, and the lever named in it."""

from __future__ import annotations

from bench.import_cycle import SECTION, main, markdown, section_name


def test_a_run_with_the_lever_writes_beside_the_defaults_and_says_what_it_set():
    assert section_name(0, 0) == SECTION
    assert section_name(3, 2) != SECTION and section_name(3, 2) != section_name(3, 0)
    facts = {"date": "today", "cores": 2, "cpu": "cpu", "torch_threads": 2, "memory_gib": 8, "gpu": "none",
             "load_1min": 0.0, "versions": {}}
    cycle = {"metrics": {}, "counts": {"retrieved_examples": {"prompts": 25, "with_examples": 21, "examples": 73}}}
    result = {"cycle": cycle, "cycle_seconds": 60, "status": "promoted", "quick": True, "imported_pairs": 3,
              "added": 3, "import_seconds": 1.0, "report": "r", "retrieved_examples": 3, "contact_examples": 2}
    body = markdown(result, facts)
    assert "retrieval 3+2" in body.splitlines()[0]
    assert "generation.retrieved_examples = 3, contact_examples = 2" in body and "21 of 25 prompts got 73" in body
    assert "retrieval" not in markdown({**result, "retrieved_examples": 0, "contact_examples": 0}, facts)


def test_the_flags_are_documented_in_the_help(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    shown = capsys.readouterr().out
    assert "--retrieved-examples K" in shown and "--contact-examples N" in shown
