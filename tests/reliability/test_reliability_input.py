"""Bad input through the real bot: odd texts, media, edits, groups, tampered buttons, uploads (one of
them swelling past the memory an import may use).

Every input is sent through the fake Bot API as Telegram would send it; the test then checks
what the owner saw and what the database holds. A refused input changes nothing.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from loop.importing import KNOWN_FORMATS
from storage.models import Draft, Feedback, Message, WritingSample
from bench.fakebotapi import FakeBotApi
from tests.reliability.figures import record
from tests.reliability.bot import feedback_data_of, harness  # noqa: F401 - fixture
from tests.bot.test_bot_harness import OWNER_ID, STRANGER_ID, Harness

ODD_TEXTS = {
    "only emoji": "😀🔥👍🏽👨‍👩‍👧‍👦🏳️‍🌈",
    "right-to-left": "\u200fمرحبا، كيف حالك؟ שלום, מה שלומך? 123",
    "markup characters": "<b>bold</b> <script>x</script> *star* _under_ `code` [link](http://x.y) &amp; </code> <i",
    "html entities and tags in a row": "&lt;&gt;&amp;&quot; <<>> <a href='x'>",
    "zero-width and combining": "a\u200bb\u2060c e\u0301 \ufeff z\u0336\u0336",
    "huge (Telegram's 4096 limit)": ("ж" * 2000 + "🙂" * 1048)[:4096],
    "astral and surrogate-heavy": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 200,
    "newlines only between words": "one\n\n\n\ntwo\r\nthree\tfour",
    "looks like a token": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1",
}


def raw_message(api: FakeBotApi, user: dict[str, Any], chat: dict[str, Any] | None = None,
                **fields: Any) -> dict[str, Any]:
    """A message with arbitrary fields (photo, voice, …), pushed as Telegram would send it."""
    message = api._new_message(user, chat)  # the fake server's own builders: ids, date, chat
    message.update(fields)
    return api._push_message(message)


def raw_update(api: FakeBotApi, **payload: Any) -> None:
    api._push_update(payload)


def count_rows(harness: Harness) -> dict[str, int]:
    with Session(harness.engine) as session:
        return {model.__name__: len(session.exec(select(model)).all())
                for model in (Message, Draft, Feedback, WritingSample)}


async def sync_point(harness: Harness, label: str) -> dict[str, Any]:
    """A plain message answered with a draft: every update sent before it has been handled."""
    return await harness.draft_for(f"sync point {label}")


async def test_odd_texts_are_stored_exactly_and_answered(harness: Harness) -> None:
    await harness.start()
    for name, text in ODD_TEXTS.items():
        shown = await harness.draft_for(text)
        assert shown["text"].startswith("draft"), name
        # ✏️ shows the draft inside HTML: every odd character must survive escaping.
        query = harness.api.press(shown, feedback_data_of(shown, "e"))
        assert "your version" in (await harness.answered(query))["text"], name
        prompt = await harness.bot_says("Send me your version", after=shown["message_id"])
        assert shown["text"][:200] in prompt["text"], name
        harness.api.send_text(harness.owner, f"my version of {name}", reply_to=prompt)
        await harness.bot_says("Saved your version", after=prompt["message_id"])
    with Session(harness.engine) as session:
        incoming = [m.text for m in session.exec(select(Message).where(Message.role == "other")
                                                 .order_by(Message.id)).all()]
        kept = [f.text for f in session.exec(select(Feedback).order_by(Feedback.id)).all()]
    assert incoming == list(ODD_TEXTS.values())
    assert kept == [f"my version of {name}" for name in ODD_TEXTS]
    assert not any(c.error_code for c in harness.api.calls if c.method in ("sendMessage", "editMessageText"))
    record("bad input: odd texts drafted and stored exactly", len(ODD_TEXTS))


async def test_empty_texts_and_a_bare_mention_are_ignored(harness: Harness) -> None:
    await harness.start()
    for text in (" ", "\n\t ", f"@{harness.api.bot_username}", f"@{harness.api.bot_username}   "):
        harness.api.send_text(harness.owner, text)
    await sync_point(harness, "after empties")
    assert count_rows(harness) == {"Message": 1, "Draft": 1, "Feedback": 0, "WritingSample": 0}
    assert len(harness.api.bot_messages(OWNER_ID)) == 1


MEDIA = {
    "photo": {"photo": [{"file_id": "P1", "file_unique_id": "p1", "width": 90, "height": 90, "file_size": 900}]},
    "photo with a caption": {"photo": [{"file_id": "P2", "file_unique_id": "p2", "width": 9, "height": 9}],
                             "caption": "look at this"},
    "voice": {"voice": {"file_id": "V1", "file_unique_id": "v1", "duration": 3, "mime_type": "audio/ogg"}},
    "video note": {"video_note": {"file_id": "N1", "file_unique_id": "n1", "length": 240, "duration": 2}},
    "location": {"location": {"latitude": 52.5, "longitude": 13.4}},
    "contact": {"contact": {"phone_number": "+491701234567", "first_name": "Ann"}},
    "dice": {"dice": {"emoji": "🎲", "value": 3}},
}


async def test_media_get_a_text_only_answer_and_nothing_is_stored(harness: Harness) -> None:
    await harness.start()
    harness.api.send_sticker(harness.owner)
    for fields in MEDIA.values():
        raw_message(harness.api, harness.owner, **fields)
    await sync_point(harness, "after media")
    hints = [m for m in harness.api.bot_messages(OWNER_ID) if "only draft replies to text" in (m.get("text") or "")]
    assert len(hints) == len(MEDIA) + 1
    assert count_rows(harness) == {"Message": 1, "Draft": 1, "Feedback": 0, "WritingSample": 0}
    assert not harness.api.calls_to("getFile")  # nothing was downloaded
    record("bad input: stickers and media answered 'text only', stored", f"{len(MEDIA) + 1}, 0")


async def test_edited_messages_and_channel_posts_are_ignored(harness: Harness) -> None:
    await harness.start()
    original = harness.api.send_text(harness.owner, "see you at 5")
    await harness.reply_to(original, with_buttons=True)
    edited = {**original, "text": "see you at 6", "edit_date": original["date"] + 5}
    raw_update(harness.api, edited_message=edited)
    raw_update(harness.api, channel_post={"message_id": 1, "date": original["date"],
                                          "chat": {"id": -1009, "type": "channel", "title": "News"},
                                          "text": "breaking"})
    await sync_point(harness, "after edits")
    assert [m.text for m in harness.messages() if m.role == "other"] == ["see you at 5", "sync point after edits"]
    assert len(harness.api.bot_messages(OWNER_ID)) == 2 and harness.api.bot_messages(-1009) == []


async def test_group_messages_are_ignored_unless_configured(harness: Harness) -> None:
    await harness.start()
    group = harness.api.group(-100777, "Family")
    stranger = harness.api.user(STRANGER_ID, "Eve")
    harness.api.send_text(harness.owner, "owner in a group", chat=group)
    harness.api.send_text(stranger, "stranger in a group", chat=group)
    raw_message(harness.api, harness.owner, chat=group, photo=MEDIA["photo"]["photo"])
    await sync_point(harness, "groups off")
    assert harness.api.bot_messages(-100777) == []
    assert count_rows(harness)["Message"] == 1

    harness.config.telegram.allow_groups = True
    harness.api.send_text(stranger, "stranger again", chat=group)
    served = await harness.reply_to(harness.api.send_text(harness.owner, "owner again", chat=group),
                                    with_buttons=True)
    assert served["text"].endswith("owner again")
    texts = [m.text for m in harness.messages() if m.role == "other"]
    assert "stranger again" not in texts and "owner again" in texts
    assert [m for m in harness.api.bot_messages(-100777) if "only answers its owner" in (m.get("text") or "")] == []


TAMPERED = [
    "", "fb", "fb:", "fb::a", "fb:0:a", "fb:-1:a", "fb:+1:a", "fb: 1:a", "fb:1 :a", "fb:1:", "fb:1:x", "fb:1:aa",
    "fb:1:a:extra", "fb:01:a", "fb:1.0:a", "fb:0x1:a", "fb:١:a", "fb:1:A", "FB:1:a", "fb:1:a\n", "\nfb:1:a",
    "fb:99999999999999999999:a", "fb:" + "9" * 60 + ":a", "fb:1;DROP TABLE feedback;:a", "fb:1:a%00",
    "forget:maybe", "forget:", "forget:yes:again", "x" * 64, "🙂", "fb:🙂:a", "null", "{\"fb\": 1}",
]


async def test_tampered_callback_data_changes_nothing(harness: Harness) -> None:
    await harness.start()
    shown = await harness.draft_for("one draft to aim at")
    draft_id = int(feedback_data_of(shown, "a").split(":")[1])
    before = count_rows(harness)
    queries = {data: harness.api.press(shown, data) for data in TAMPERED}
    queries["unknown draft"] = harness.api.press(shown, f"fb:{draft_id + 1000}:a")
    queries["another's draft via forged presser"] = harness.api.press(
        shown, f"fb:{draft_id}:a", user=harness.api.user(STRANGER_ID, "Eve"))
    await harness.api.wait_for(lambda: all(q in harness.api.answers for q in queries.values()),
                               what="an answer to every tampered press")
    answers = {data: harness.api.answers[q].get("text", "") for data, q in queries.items()}
    refusals = ("isn't one of mine", "don't know that draft", "only answers its owner", "expired")
    assert all(any(r in text for r in refusals) for text in answers.values()), answers
    assert count_rows(harness) == before
    # The draft still takes its real verdict afterwards.
    real = harness.api.press(shown, feedback_data_of(shown, "a"))
    assert "Saved" in (await harness.answered(real))["text"]
    assert count_rows(harness)["Feedback"] == 1
    record("bad input: tampered callback data refused, rows changed", f"{len(queries)}, 0")


# Uploads ----------------------------------------------------------------------------------------

WHATSAPP = "[01/02/2024, 10:00:00] Ann: are you coming?\n[01/02/2024, 10:01:00] Olga: yeah im coming\n"

PATH_LIKE_NAMES = [
    "../../../../etc/passwd.txt", "..\\..\\..\\evil.txt", "/etc/cron.d/job.txt", "a/b/../../c.txt",
    "C:\\Windows\\system32\\x.txt", ".hidden.txt", "..", "name\u202egpj.txt", "nul\u0000byte.txt",
    "x" * 300 + ".txt", "~/.ssh/authorized_keys.txt", "con.txt", "spaces and 'quotes'; rm -rf ~.txt",
]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


async def import_and_wait(harness: Harness, name: str, content: bytes, **kwargs: Any) -> str:
    message = harness.api.send_document(harness.owner, name, content, **kwargs)
    summary = await harness.api.wait_for(
        lambda: next((m for m in harness.api.bot_messages(OWNER_ID) if m["message_id"] > message["message_id"]
                      and not (m.get("text") or "").startswith("Importing")), None),
        what=f"the import summary of {name!r}")
    return summary["text"]


async def test_uploads_with_path_like_names_stay_inside_the_data_folder(harness: Harness, tmp_path: Path) -> None:
    await harness.start()
    outside_before = files_under(tmp_path) - files_under(harness.config.data_dir)
    summaries = []
    for index, name in enumerate(PATH_LIKE_NAMES):
        content = WHATSAPP.replace("coming", f"coming {index}").encode()
        summaries.append(await import_and_wait(harness, name, content))
    outside_after = files_under(tmp_path) - files_under(harness.config.data_dir)
    assert outside_after == outside_before, outside_after - outside_before
    uploads = harness.config.data_dir / "uploads"
    assert not uploads.exists() or files_under(uploads) == set(), "uploads are removed once imported"
    with Session(harness.engine) as session:
        sources = [s.source for s in session.exec(select(WritingSample)).all()]
    assert len(sources) == len(PATH_LIKE_NAMES)
    assert not any(".." in s.split(" ")[0] or "/" in s or "\\" in s or "\x00" in s for s in sources), sources
    assert all("Imported" in text for text in summaries), summaries
    record("bad input: uploads with path-like names, files written outside the data folder",
           f"{len(PATH_LIKE_NAMES)}, 0")


async def test_unknown_formats_are_refused_with_the_known_ones(harness: Harness) -> None:
    await harness.start()
    refused = {
        "photo.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "archive.zip": b"PK\x03\x04" + b"\x00" * 200,
        "binary-without-extension": bytes(range(256)) * 8,
        "notes.txt": b"\xff\xfe\x00\xd8 broken utf-16" + b"\x00\x00\xff" * 20,
        "result.json": b'{"messages": [ {"id": 1, "type": "message", "text": ',  # truncated export
    }
    for name, content in refused.items():
        text = await import_and_wait(harness, name, content)
        assert "could not import" in text and "Nothing of it was stored" in text, (name, text)
        if name in ("photo.png", "binary-without-extension"):
            assert all(fmt in text for fmt in KNOWN_FORMATS), text
    assert count_rows(harness)["WritingSample"] == 0
    record("bad input: unknown or broken uploads refused, samples stored", f"{len(refused)}, 0")


async def test_an_upload_over_the_size_limit_is_refused_before_download(harness: Harness) -> None:
    harness.config.telegram.max_upload_mb = 1
    await harness.start()
    big = (WHATSAPP * (1024 * 1024 // len(WHATSAPP) + 10)).encode()
    message = harness.api.send_document(harness.owner, "chat.txt", big)
    answer = await harness.bot_says("more than I take", after=message["message_id"])
    assert "1 MB" in answer["text"]
    await sync_point(harness, "after the big file")
    assert not harness.api.calls_to("getFile") and count_rows(harness)["WritingSample"] == 0


async def test_an_upload_without_a_declared_size_is_still_held_to_the_limit(harness: Harness) -> None:
    harness.config.telegram.max_upload_mb = 1
    await harness.start()
    big = (WHATSAPP * (1024 * 1024 // len(WHATSAPP) + 10)).encode()
    message = harness.api.send_document(harness.owner, "chat.txt", big)
    harness.api._updates[-1]["message"]["document"].pop("file_size")  # optional in the Bot API
    await harness.api.wait_for(
        lambda: any(m["message_id"] > message["message_id"] and not (m.get("text") or "").startswith("Importing")
                    for m in harness.api.bot_messages(OWNER_ID)), what="an answer to the upload")
    assert count_rows(harness)["WritingSample"] == 0


async def test_an_upload_that_swells_past_the_memory_limit_costs_its_import_not_the_bot(harness: Harness) -> None:
    harness.config.importing.child_memory_mb = 256
    await harness.start()
    # 18 MB of "{}," (18 KB zipped) that json.loads makes into 6 million dicts: about 500 MB.
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("result.json", b'{"messages": [' + b"{}," * 6_000_000 + b"{}]}")
    text = await import_and_wait(harness, "export.zip", packed.getvalue())
    assert "could not import export.zip" in text and "Nothing of it was stored" in text, text
    assert "more than the 256 MB of memory" in text and "importing.child_memory_mb" in text, text
    await sync_point(harness, "after the swelling upload")  # the bot still answers
    assert "Imported chat.txt" in await import_and_wait(harness, "chat.txt", WHATSAPP.encode())  # and imports
    assert count_rows(harness)["WritingSample"] == 1
    record("bad input: upload swelling past importing.child_memory_mb (256 MB; 18 KB zip, ~500 MB parsed)",
           "its import refused with the limit named; the bot answered the next message and imported the next file")


async def test_strangers_uploads_are_never_downloaded(harness: Harness) -> None:
    await harness.start()
    stranger = harness.api.user(STRANGER_ID, "Eve")
    harness.api.send_document(stranger, "result.json", json.dumps({"messages": []}).encode())
    await harness.bot_says("only answers its owner", chat_id=STRANGER_ID)
    await sync_point(harness, "after the stranger")
    assert not harness.api.calls_to("getFile") and count_rows(harness)["WritingSample"] == 0
