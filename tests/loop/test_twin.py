"""The Twin service with the fake drafter: drafts and verdicts are stored, owners kept apart."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from loop.drafting import FakeDrafter
from loop.terminal import chat_loop
from loop.twin import NotAnOwner, Twin
from storage import repo
from storage.db import session_scope
from rich.console import Console


@pytest.fixture
def twin(config, engine) -> Twin:
    return Twin(config, engine, FakeDrafter())


def test_draft_is_stored_with_its_context_and_adapter_version(twin: Twin, engine) -> None:
    first = twin.draft_reply(telegram_id=1001, chat_key="tg:1", incoming="hi there", sender="Ann")
    twin.record_verdict(telegram_id=1001, draft_id=first.id, kind="edit", text="heyy")
    second = twin.draft_reply(telegram_id=1001, chat_key="tg:1", incoming="how are you?")
    assert first.adapter_version == 0 and first.context == []
    assert [turn["text"] for turn in second.context] == ["hi there", "heyy"]
    assert [turn["role"] for turn in second.context] == ["other", "owner"]
    conversation, adapter, seed = twin.drafter.calls[-1]
    assert conversation.incoming == "how are you?" and adapter is None and seed == 0


def test_strangers_are_refused_before_any_model_time(twin: Twin, engine) -> None:
    with pytest.raises(NotAnOwner):
        twin.draft_reply(telegram_id=666, chat_key="tg:666", incoming="let me in")
    assert twin.drafter.calls == []
    with session_scope(engine) as session:
        assert repo.find_owner(session=session, telegram_id=666) is None


def test_another_draft_is_a_weak_reject_and_uses_the_next_seed(twin: Twin, engine) -> None:
    draft = twin.draft_reply(telegram_id=1001, chat_key="tg:1", incoming="dinner?")
    verdict = twin.record_verdict(telegram_id=1001, draft_id=draft.id, kind="regenerate")
    assert verdict.feedback.kind.value == "regenerate"
    assert verdict.new_draft.regenerated_from == draft.id and verdict.new_draft.seed == draft.seed + 1
    assert verdict.new_draft.message_id == draft.message_id
    assert twin.status(1001)["feedback"]["regenerate"] == 1 and twin.status(1001)["drafts"] == 2


def test_promoted_adapter_is_used_from_the_next_draft(twin: Twin, engine) -> None:
    owner_db_id = twin.owner_id(1001)
    twin.draft_reply(telegram_id=1001, chat_key="tg:1", incoming="one")
    with session_scope(engine) as session:  # as a cycle in another process would
        repo.add_adapter(session=session, owner_id=owner_db_id, version=1, path="/adapters/v1", parent_version=0,
                         cycle_id=None, checksum="", data_counts={}, metrics={})
        repo.activate_adapter(session=session, owner_id=owner_db_id, version=1)
    draft = twin.draft_reply(telegram_id=1001, chat_key="tg:1", incoming="two")
    assert draft.adapter_version == 1 and twin.drafter.calls[-1][1].path == "/adapters/v1"


def test_terminal_chat_stores_feedback_exactly_as_the_bot_would(twin: Twin) -> None:
    answers = iter(["hello", "a", "what's up", "e", "not much, you?", "dinner?", "n", "r", "", "bye", "x", "s"])

    def ask(_prompt: str) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    stored = chat_loop(twin, telegram_id=1001, console=Console(quiet=True), ask=ask)
    status = twin.status(1001)
    assert stored == 4
    assert status["feedback"] == {"accept": 1, "edit": 1, "reject": 1, "regenerate": 1}
    assert status["drafts"] == 5


def test_terminal_chat_prints_the_menu_keys_and_drafts_as_written(twin: Twin, monkeypatch) -> None:
    """rich reads `[a]ccept` as markup: unescaped, the menu printed "ccept  dit  eject  aother  kip"."""
    import io

    twin.drafter.replies = ["see [b]you[/b] at [5]"]
    # The default prompt (console.input) reads stdin: the real path of `twin chat`.
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nx\ns\n"))
    out = io.StringIO()
    chat_loop(twin, telegram_id=1001, console=Console(file=out, force_terminal=False, width=200))
    printed = out.getvalue()
    assert "[a]ccept  [e]dit  [r]eject  a[n]other  [s]kip >" in printed
    assert printed.count("[a]ccept") == 3  # the prompt twice, and the menu again after "x"
    assert "ccept  dit" not in printed
    assert "twin> see [b]you[/b] at [5]" in printed


def _count_commits(engine) -> list[object]:
    """Every COMMIT the engine sends from now on (SQLAlchemy's "commit" event of each connection)."""
    commits: list[object] = []
    event.listen(engine, "commit", commits.append)
    return commits


def test_one_drafted_message_and_one_verdict_take_one_commit_each_step(twin: Twin, engine) -> None:
    """One unit of work per owner action: the message is one commit, its draft one more (the model
    writes between them), a verdict one; lookups commit nothing. Each Twin method used to open its
    own get-or-create session for the owner: 6 commits for a message and its draft, 4 for ✅."""
    commits = _count_commits(engine)
    for telegram_message_id in (10, 11):  # the first message of a new owner creates it in the same transaction
        commits.clear()
        stored = twin.record_incoming(telegram_id=1001, chat_key="tg:5", incoming="dinner?", chat_id=5,
                                      telegram_message_id=telegram_message_id)
        assert len(commits) == 1
        draft = twin.draft_for_message(telegram_id=1001, message_id=stored.message_id, chat_id=5)
        assert len(commits) == 2
    commits.clear()
    twin.is_recorded(telegram_id=1001, chat_id=5, telegram_message_id=11)
    twin.get_draft(telegram_id=1001, draft_id=draft.id)
    twin.draft_state(telegram_id=1001, draft_id=draft.id)
    assert commits == []
    verdict = twin.record_verdict(telegram_id=1001, draft_id=draft.id, kind="accept")
    assert len(commits) == 1
    assert verdict.draft.id == draft.id and verdict.draft.text == draft.text  # nothing left to read again
    commits.clear()
    first = twin.draft_reply(telegram_id=1001, chat_key="tg:5", incoming="and now?")
    assert len(commits) == 2
    commits.clear()
    twin.record_verdict(telegram_id=1001, draft_id=first.id, kind="regenerate")
    assert len(commits) == 2  # the verdict, then the new draft written after the model's time


def test_terminal_chat_prints_the_draft_as_it_is_written_and_stores_the_final_text(twin: Twin) -> None:
    import io

    twin.drafter.replies = ["see you [at] nine then"]
    twin.drafter.stream = True
    answers = iter(["dinner?", "s"])

    def ask(_prompt: str) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    seen: list[str] = []
    real_draft = twin.drafter.draft

    def watched(*args, on_text=None, **kwargs):
        # What the terminal printed while the drafter was still writing: the stream, not the final line.
        def spy(text: str) -> None:
            on_text(text)
            seen.append(out.getvalue())
        return real_draft(*args, on_text=spy, **kwargs)

    twin.drafter.draft = watched  # type: ignore[method-assign]
    out = io.StringIO()
    chat_loop(twin, telegram_id=1001, console=Console(file=out, force_terminal=False, width=200),
              ask=ask)
    assert seen[0].rstrip().endswith("twin> see") and seen[-1].rstrip().endswith("twin> see you [at] nine then")
    printed = out.getvalue()
    assert printed.count("see you [at] nine then") == 1  # not printed again once done
    assert "twin> see you [at] nine then  (v0," in printed
    assert twin.status(1001)["drafts"] == 1
