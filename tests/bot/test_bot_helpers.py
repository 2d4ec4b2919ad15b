"""The bot's pure helpers without Telegram: callback data, keyboards, texts, and the draft queue."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import keyboards, texts
from bot.queue import DraftJob, DraftQueue, QueueFull
from storage.models import FeedbackKind


# Callback data -----------------------------------------------------------------------------------

@given(draft_id=st.integers(min_value=1, max_value=10**18 - 1), action=st.sampled_from("aern"))
def test_feedback_data_round_trips_within_64_bytes(draft_id, action):
    data = keyboards.feedback_data(draft_id, action)
    assert len(data.encode()) <= 64
    press = keyboards.parse_feedback_data(data)
    assert (press.draft_id, press.action) == (draft_id, action)
    assert press.kind == keyboards.ACTIONS[action]


@pytest.mark.parametrize("data", [None, "", "fb:", "fb:1", "fb:1:x", "fb:01:a", "fb:0:a", "fb:-1:a", "fb:1:a ",
                                  "fb:1:a\n", " fb:1:a", "fb:1:aa", "fb:1e3:a", "FB:1:a", "fb:1:a:extra",
                                  "fb:1234567890123456789:a", "fb:١:a", "forget:yes"])
def test_malformed_callback_data_is_refused(data):
    assert keyboards.parse_feedback_data(data) is None


def test_feedback_data_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError):
        keyboards.feedback_data(1, "z")
    with pytest.raises(ValueError):
        keyboards.feedback_data(0, "a")
    with pytest.raises(ValueError):
        keyboards.feedback_data(10**18, "a")


def test_forget_pattern_is_anchored():
    assert keyboards.FORGET_PATTERN.match("forget:yes") and keyboards.FORGET_PATTERN.match("forget:no")
    assert not keyboards.FORGET_PATTERN.match("forget:yes\n") and not keyboards.FORGET_PATTERN.match("forget:yess")


# Keyboards ---------------------------------------------------------------------------------------

def test_draft_keyboard_copies_short_drafts_only():
    short = keyboards.draft_keyboard(7, "see you at 8")
    assert [[b.text for b in row] for row in short.inline_keyboard] == [
        ["✅ Accept", "✏️ Edit"], ["🗑 Reject", "🔄 Another"], ["📋 Copy"]]
    assert short.inline_keyboard[2][0].copy_text.text == "see you at 8"
    assert [b.callback_data for b in short.inline_keyboard[0] + short.inline_keyboard[1]] == [
        "fb:7:a", "fb:7:e", "fb:7:r", "fb:7:n"]
    assert len(keyboards.draft_keyboard(7, "x" * 257).inline_keyboard) == 2
    assert keyboards.draft_id_of(short) == 7
    assert keyboards.draft_id_of(keyboards.forget_keyboard()) is None
    assert keyboards.draft_id_of(None) is None


def test_edit_keyboard_prefills_the_input_field():
    markup = keyboards.edit_keyboard("on my way")
    assert markup.inline_keyboard[0][0].switch_inline_query_current_chat == "on my way"
    assert markup.inline_keyboard[1][0].copy_text.text == "on my way"
    assert keyboards.edit_keyboard("x" * 300) is None


# Texts -------------------------------------------------------------------------------------------

@given(st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "😀", "𝄞"]), max_size=400),
       st.integers(min_value=8, max_value=60))
def test_split_message_keeps_every_part_within_the_limit(text, limit):
    parts = texts.split_message(text, limit)
    assert all(texts.utf16_len(part) <= limit for part in parts)
    # Nothing but the separators at the cuts is lost, and surrogate pairs are never cut.
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


def test_split_message_prefers_line_breaks():
    text = "\n".join(f"line {i:03d}" for i in range(1000))
    parts = texts.split_message(text)
    assert len(parts) == 3 and all(texts.utf16_len(p) <= 4096 for p in parts)
    assert all(p.startswith("line ") and p.rstrip()[-3:].isdigit() for p in parts)
    assert texts.split_message("short") == ["short"]


def test_trim_and_draft_with_verdict_fit_one_message():
    assert texts.trim("abcdef", 4) == "abc…"
    assert texts.trim("abc", 4) == "abc"
    shown = texts.draft_with_verdict("😀" * 5000, FeedbackKind.accept)
    assert texts.utf16_len(shown) <= 4096 and shown.endswith("✅ Accepted")
    assert texts.draft_with_verdict("hi", "reject", text="no way").endswith("🗑 Rejected: your version is saved")
    assert texts.draft_with_verdict("hi", "reject", reason="because").endswith("🗑 Rejected: your reason is saved")
    assert texts.draft_with_verdict("hi", "edit", text="yo") == "hi\n\n✏️ Edited: your version is saved"


def test_reject_detail_and_bot_mention():
    assert texts.split_reject_detail("  make it 9 ") == ("make it 9", None)
    assert texts.split_reject_detail("because too formal") == (None, "because too formal")
    assert texts.split_reject_detail("Reason: wrong facts") == (None, "wrong facts")
    assert texts.split_reject_detail("becauseofyou is a song") == ("becauseofyou is a song", None)
    assert texts.strip_bot_mention("@Twin_Bot  fixed text", "twin_bot") == ("fixed text", True)
    assert texts.strip_bot_mention("@twin_bots text", "twin_bot") == ("@twin_bots text", False)
    assert texts.strip_bot_mention("hi @twin_bot", "twin_bot") == ("hi @twin_bot", False)


def test_edit_prompt_escapes_the_draft():
    html = texts.edit_prompt_html("<b>1 < 2</b> & co")
    assert "<code>&lt;b&gt;1 &lt; 2&lt;/b&gt; &amp; co</code>" in html


def test_status_and_stats_texts():
    status = {"active_adapter": 2, "writing_samples": 40, "drafts": 9,
              "feedback": {"accept": 3, "edit": 2, "reject": 1, "regenerate": 0},
              "last_cycle": {"id": 4, "status": "promoted", "trigger": "schedule", "reason": "",
                             "started_at": "2026-01-02T03:00:00+00:00"}}
    text = texts.status_text(status, datetime(2026, 1, 3, 3, 0, tzinfo=timezone.utc))
    assert "Active version: v2\n" in text + "\n" and "Last cycle: #4 promoted (schedule)" in text
    assert "accept 3" in text and "Next run: 2026-01-0" in text
    assert "Next run: not scheduled" in texts.status_text({"last_cycle": None}, None)
    rows = [{"version": 0, "drafts": 4, "accept_rate": 0.25, "edit_distance": 0.5},
            {"version": 1, "drafts": 2, "accept_rate": None, "edit_distance": None}]
    assert texts.stats_text(rows).splitlines()[1:] == [
        "v0: 4 drafts, 25% accepted, edit distance 0.50", "v1: 2 drafts, – accepted, edit distance –"]
    assert "No drafts yet" in texts.stats_text([])
    assert texts.already_decided("regenerate") == "That draft is already replaced by another draft. Nothing was changed."


# The draft queue ---------------------------------------------------------------------------------

async def test_queue_runs_jobs_in_order_off_the_loop_and_bounds_the_waiting():
    errors, typing, delivered = [], [], []
    gate = threading.Event()
    main = threading.get_ident()

    async def on_error(update, error):
        errors.append((update, error))

    async def on_typing(chat_id):
        typing.append(chat_id)

    queue = DraftQueue(2, error_callback=on_error, typing=on_typing)
    queue.start()

    def work(n):
        assert threading.get_ident() != main  # never on the event loop's thread
        assert gate.wait(10)
        return n

    async def deliver(n):
        delivered.append(n)

    assert queue.submit(DraftJob(chat_id=1, work=lambda: work(0), deliver=deliver)) == 0
    while not queue._busy:  # the worker has taken job 0
        await asyncio.sleep(0)
    assert queue.submit(DraftJob(chat_id=1, work=lambda: work(1), deliver=deliver)) == 1
    assert queue.submit(DraftJob(chat_id=2, work=lambda: work(2), deliver=deliver)) == 2
    with pytest.raises(QueueFull):
        queue.submit(DraftJob(chat_id=1, work=lambda: work(3), deliver=deliver))
    gate.set()
    await queue.drain()
    assert delivered == [0, 1, 2] and errors == []
    assert typing[0] == 1 and 2 in typing
    await queue.stop()
    assert not queue.running


async def test_queue_bounds_each_owner_and_takes_the_owners_in_turn():
    async def on_error(update, error):
        raise AssertionError(error)

    gate, order = threading.Event(), []
    queue = DraftQueue(2, error_callback=on_error)
    queue.start()

    def job(owner, tag):
        def work():
            assert gate.wait(10)
            return tag

        async def deliver(value):
            order.append(value)

        return DraftJob(chat_id=owner, owner=owner, work=work, deliver=deliver)

    queue.submit(job("A", "a0"))
    while not queue._busy:  # the worker holds a0
        await asyncio.sleep(0)
    queue.submit(job("A", "a1"))
    queue.submit(job("A", "a2"))
    with pytest.raises(QueueFull):  # A's lane is full …
        queue.submit(job("A", "a3"))
    assert queue.has_room("B") and queue.waiting_for("A") == 2
    queue.submit(job("B", "b1"))  # … B's is not
    queue.submit(job("B", "b2"))
    queue.submit(job("A", "a3"), force=True)  # work recovered after a restart goes past the bound
    gate.set()
    await queue.drain()
    assert order == ["a0", "a1", "b1", "a2", "b2", "a3"]  # in turn; each owner's own jobs in order
    await queue.stop()


async def test_a_failing_job_goes_to_its_handler_or_the_error_callback_and_the_queue_goes_on():
    errors, handled, delivered = [], [], []

    async def on_error(update, error):
        errors.append((update, str(error)))

    queue = DraftQueue(5, error_callback=on_error)
    queue.start()

    def boom():
        raise RuntimeError("boom")

    async def handle(error):
        handled.append(str(error))
        return True

    async def deliver(value):
        delivered.append(value)

    queue.submit(DraftJob(chat_id=1, work=boom, deliver=deliver, update="u1"))
    queue.submit(DraftJob(chat_id=1, work=boom, deliver=deliver, update="u2", on_error=handle))
    queue.submit(DraftJob(chat_id=1, work=lambda: "ok", deliver=deliver))
    await queue.drain()
    assert errors == [("u1", "boom")] and handled == ["boom"] and delivered == ["ok"]
    await queue.stop()
    with pytest.raises(RuntimeError):
        queue.submit(DraftJob(chat_id=1, work=lambda: None, deliver=deliver))
