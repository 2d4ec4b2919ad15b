"""Load through the real bot and the fake Bot API: a burst of 500 messages, and two owners at once.

python-telegram-bot runs unchanged against bench/fakebotapi/ on the test's database (SQLite,
and PostgreSQL in CI). The drafter is the FakeDrafter, held at a gate where a test needs the
queue full at a known moment; no test waits on a clock.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import psutil
from sqlmodel import Session, select

from bot import keyboards
from storage.models import Draft, Feedback, FeedbackKind, Message, Owner
from tests.reliability.bot import busy_notices, draft_messages, feedback_data_of, harness, until  # noqa: F401
from tests.reliability.figures import record
from tests.bot.test_bot_harness import OWNER_ID, GatedDrafter, Harness

BURST = 500
SECOND_OWNER_ID = 1002


def rows(harness: Harness, model: Any) -> list[Any]:
    with Session(harness.engine) as session:
        return list(session.exec(select(model)).all())


async def test_a_burst_of_500_messages_gets_a_draft_or_a_busy_notice_each(harness: Harness) -> None:
    drafter = GatedDrafter()
    await harness.start(drafter)
    queue = harness.state.queue
    high_water = 0
    submit = queue.submit

    def counting_submit(job: Any) -> int:
        nonlocal high_water
        ahead = submit(job)
        high_water = max(high_water, queue.waiting)
        return ahead

    queue.submit = counting_submit  # instrumentation only: the real queue does the work
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    loop = asyncio.get_running_loop()
    started = loop.time()

    incoming = [harness.api.send_text(harness.owner, f"burst message {i:03d}") for i in range(BURST)]
    capacity = queue.maxsize + 1  # the queued jobs and the one the worker holds at the gate
    assert await asyncio.to_thread(drafter.started.wait, 60)
    # Which messages find room depends on when the worker takes its first job; how many does not.
    await until(lambda: len(busy_notices(harness.api, OWNER_ID)) + queue.waiting + 1 == BURST,
                what="every message either queued or answered busy")
    assert queue.waiting == queue.maxsize
    drafter.gate.set()

    # The owner presses buttons while the queued drafts are still being written and sent.
    pressed: Counter[int] = Counter()
    expected: dict[int, FeedbackKind] = {}
    queries: list[str] = []
    seen: set[int] = set()
    while len(seen) < capacity:
        shown = await harness.api.wait_for(
            lambda: [m for m in draft_messages(harness.api, OWNER_ID) if m["message_id"] not in seen],
            timeout=60, what="more drafts")
        for message in shown:
            seen.add(message["message_id"])
            index = len(seen)
            action = "a" if index % 3 else "r"
            data = feedback_data_of(message, action)
            draft_id = keyboards.parse_feedback_data(data).draft_id
            presses = 2 if index % 5 == 0 else 1  # a double tap now and then
            for _ in range(presses):
                queries.append(harness.api.press(message, data))
                pressed[draft_id] += 1
            expected[draft_id] = keyboards.ACTIONS[action]
    await harness.api.wait_for(lambda: all(q in harness.api.answers for q in queries), timeout=60,
                               what="answers to every press")
    elapsed = loop.time() - started
    rss_growth_mb = (process.memory_info().rss - rss_before) / 2**20

    drafts_shown = draft_messages(harness.api, OWNER_ID)
    notices = busy_notices(harness.api, OWNER_ID)
    answered_ids = [m["reply_to_message"]["message_id"] for m in drafts_shown]
    refused_ids = [m.get("reply_to_message", {}).get("message_id") for m in notices]
    # Every message got exactly one answer: a draft (in the order sent) or a busy notice replying to it.
    assert len(drafts_shown) == capacity and len(notices) == BURST - capacity
    assert answered_ids == sorted(answered_ids) and answered_ids[0] == incoming[0]["message_id"]
    assert sorted(answered_ids + refused_ids) == [m["message_id"] for m in incoming]
    assert all("not taken" in m["text"] and "send it again" in m["text"] for m in notices)
    # Only messages that were taken are stored: the database holds exactly what the owner was shown.
    by_id = {m["message_id"]: m["text"] for m in incoming}
    stored_texts = [m.text for m in rows(harness, Message) if m.role == "other"]
    assert stored_texts == [by_id[i] for i in answered_ids]
    # Every verdict pressed during the burst is stored once, as pressed; double taps changed nothing.
    feedback = rows(harness, Feedback)
    assert Counter(f.draft_id for f in feedback) == Counter(set(pressed))
    assert {f.draft_id: f.kind for f in feedback} == expected
    answers = [harness.api.answers[q]["text"] for q in queries]
    assert sum("Saved" in a for a in answers) == len(expected)
    assert sum("already" in a for a in answers) == sum(pressed.values()) - len(expected)
    assert high_water <= queue.maxsize

    record("burst: messages from one owner", BURST)
    record("burst: drafts shown / busy notices", f"{len(drafts_shown)} / {len(notices)} (queue bound {queue.maxsize})")
    record("burst: queue high-water mark", high_water)
    record("burst: verdicts pressed / taps / stored", f"{len(expected)} / {sum(pressed.values())} / {len(feedback)}")
    record("burst: wall time (s)", round(elapsed, 1))
    record("burst: RSS growth (MiB)", round(rss_growth_mb, 1))


async def test_two_owners_at_once_never_see_or_decide_each_other_s_drafts(harness: Harness) -> None:
    harness.config.owners = [OWNER_ID, SECOND_OWNER_ID]
    await harness.start()
    owners = {OWNER_ID: harness.api.user(OWNER_ID, "Olga"), SECOND_OWNER_ID: harness.api.user(SECOND_OWNER_ID, "Pavel")}
    per_owner = 20  # within each owner's queue bound (50)
    for i in range(per_owner):  # interleaved, as two phones would send them
        for telegram_id, user in owners.items():
            harness.api.send_text(user, f"owner{telegram_id} says {i}")
    await harness.api.wait_for(
        lambda: all(len(draft_messages(harness.api, t)) == per_owner for t in owners), timeout=60,
        what="a draft for every message of both owners")

    # Each owner answers their own drafts; each also tries the other's draft ids from their own chat.
    shown = {t: draft_messages(harness.api, t) for t in owners}  # buttons as shown, before any press
    data = {t: [(feedback_data_of(m, "a"), feedback_data_of(m, "r")) for m in shown[t]] for t in owners}
    queries: dict[str, tuple[int, str]] = {}
    for index in range(per_owner):
        for telegram_id, user in owners.items():
            other = next(t for t in owners if t != telegram_id)
            message = shown[telegram_id][index]
            queries[harness.api.press(message, data[telegram_id][index][index % 2])] = (telegram_id, "own")
            queries[harness.api.press(message, data[other][index][0], user=user)] = (telegram_id, "foreign")
    await harness.api.wait_for(lambda: all(q in harness.api.answers for q in queries), timeout=60,
                               what="answers to every press")

    with Session(harness.engine) as session:
        owner_ids = {o.telegram_id: o.id for o in session.exec(select(Owner)).all()}
        drafts = list(session.exec(select(Draft)).all())
        feedback = list(session.exec(select(Feedback)).all())
        messages = list(session.exec(select(Message)).all())
    by_id = {d.id: d for d in drafts}
    for telegram_id in owners:
        db_id = owner_ids[telegram_id]
        mine = [d for d in drafts if d.owner_id == db_id]
        assert len(mine) == per_owner
        assert all(d.chat_id == telegram_id and f"owner{telegram_id} says" in d.incoming for d in mine)
        assert all(f"owner{telegram_id} says" in d.text for d in mine)  # the context never crossed either
        assert all(str(other) not in turn["text"] for d in mine for turn in d.context
                   for other in owners if other != telegram_id)
        assert all(m.owner_id == db_id for m in messages if f"owner{telegram_id} says" in m.text)
    # Only the owners' own presses were stored, each on a draft of the presser.
    assert len(feedback) == 2 * per_owner
    assert all(by_id[f.draft_id].owner_id == f.owner_id for f in feedback)
    foreign_answers = [harness.api.answers[q]["text"] for q, (_, kind) in queries.items() if kind == "foreign"]
    assert foreign_answers and all("don't know that draft" in a for a in foreign_answers)
    record("two owners: messages / verdicts / forged presses refused",
           f"{2 * per_owner} / {len(feedback)} / {len(foreign_answers)}")


async def test_one_owner_s_burst_neither_refuses_nor_delays_another_owner(harness: Harness) -> None:
    """The queue is bounded per owner and served in turn: one owner filling theirs changes nothing
    for the other, whose message is drafted next rather than after the whole burst."""
    harness.config.owners = [OWNER_ID, SECOND_OWNER_ID]
    drafter = GatedDrafter()
    await harness.start(drafter)
    api, queue = harness.api, harness.state.queue
    olga, pavel = harness.owner, api.user(SECOND_OWNER_ID, "Pavel")
    burst = [api.send_text(olga, f"olga's burst {i}") for i in range(queue.maxsize + 10)]
    assert await asyncio.to_thread(drafter.started.wait, 60)
    await until(lambda: len(busy_notices(api, OWNER_ID)) + queue.waiting_for(OWNER_ID) + 1 == len(burst),
                what="Olga's burst queued or answered busy")
    assert queue.waiting_for(OWNER_ID) == queue.maxsize
    api.send_text(pavel, "Pavel: lunch today?")
    await until(lambda: queue.waiting_for(SECOND_OWNER_ID) == 1, what="Pavel's message queued")
    drafter.gate.set()
    await api.wait_for(lambda: len(draft_messages(api, OWNER_ID)) == queue.maxsize + 1
                       and draft_messages(api, SECOND_OWNER_ID), timeout=60, what="every queued draft")

    assert busy_notices(api, SECOND_OWNER_ID) == []
    drafted = [d.incoming for d in sorted(rows(harness, Draft), key=lambda d: d.id)]
    ahead_of_pavel = drafted.index("Pavel: lunch today?")
    # Ahead of it: the draft the worker held when it came, and Olga's next (her turn came first);
    # a shared FIFO would have put her whole queue (50) ahead of it.
    assert ahead_of_pavel == 2
    record("two owners: one owner's burst (busy notices) / the other's message refused, drafts written before it",
           f"{len(busy_notices(api, OWNER_ID))} / 0, {ahead_of_pavel}")
