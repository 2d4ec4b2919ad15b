"""The fake Bot API server speaks Telegram as python-telegram-bot's plain `Bot` expects it."""

from __future__ import annotations

import asyncio

import pytest
from telegram import Bot, CopyTextButton, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, InvalidToken, RetryAfter

from bench.fakebotapi import NOT_MODIFIED, FakeBotApi


@pytest.fixture
async def api():
    async with FakeBotApi() as server:
        yield server


@pytest.fixture
async def bot(api):
    async with Bot(api.token, base_url=api.base_url, base_file_url=api.base_file_url) as client:
        yield client


async def test_get_me_is_a_complete_bot_user(bot, api):
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (api.bot_id, True, api.bot_username)


async def test_a_wrong_token_is_refused(api):
    with pytest.raises(InvalidToken):
        async with Bot("999:WRONG", base_url=api.base_url) as wrong:
            await wrong.get_me()


async def test_long_polling_waits_for_updates_and_offsets_confirm_them(bot, api):
    owner = api.user(1001, "Olga")
    polling = asyncio.ensure_future(bot.get_updates(timeout=20))
    await api.wait_for(lambda: api.calls_to("getMe"))  # the Bot initialised itself
    assert not polling.done()
    api.send_text(owner, "hello")
    [update] = await polling
    assert update.message.text == "hello" and update.message.from_user.id == 1001
    assert update.message.date.year >= 2024  # seconds, not milliseconds
    again = await bot.get_updates(timeout=0)
    assert [u.update_id for u in again] == [update.update_id]  # not confirmed yet
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()


async def test_messages_edits_and_telegram_errors(bot, api):
    api.user(1001, "Olga")
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("ok", callback_data="fb:1:a")]])
    sent = await bot.send_message(1001, "<b>hi</b> there", parse_mode="HTML", reply_markup=markup)
    assert sent.text == "hi there" and sent.reply_markup == markup
    edited = await bot.edit_message_text("changed", chat_id=1001, message_id=sent.message_id)
    assert edited.text == "changed" and edited.reply_markup is None  # no markup given: buttons removed
    with pytest.raises(BadRequest, match="(?i)message is not modified"):
        await bot.edit_message_text("changed", chat_id=1001, message_id=sent.message_id)
    with pytest.raises(BadRequest, match="[Cc]hat not found"):
        await bot.send_message(555, "nobody")
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(1001, "x" * 4097)
    with pytest.raises(BadRequest, match="(?i)button_data_invalid"):
        await bot.send_message(1001, "x", reply_markup=InlineKeyboardMarkup(
            [[InlineKeyboardButton("long", callback_data="x" * 65)]]))
    with pytest.raises(BadRequest, match="(?i)copy_text"):
        await bot.send_message(1001, "x", reply_markup=InlineKeyboardMarkup(
            [[InlineKeyboardButton("copy", copy_text=CopyTextButton("y" * 257))]]))
    with pytest.raises(BadRequest, match="(?i)unsupported start tag"):
        await bot.send_message(1001, "<blink>x</blink>", parse_mode="HTML")
    assert await bot.send_chat_action(1001, "typing")


async def test_failures_on_purpose_flood_control_included(bot, api):
    api.user(1001, "Olga")
    api.fail_next("sendMessage", error_code=429, retry_after=7)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(1001, "hi")
    assert caught.value.retry_after in (7, __import__("datetime").timedelta(seconds=7))
    api.fail_next("editMessageText", description=NOT_MODIFIED)
    sent = await bot.send_message(1001, "hi")
    with pytest.raises(BadRequest, match="(?i)not modified"):
        await bot.edit_message_text("new", chat_id=1001, message_id=sent.message_id)
    assert [(c.method, c.ok) for c in api.calls[-3:]] == [
        ("sendMessage", False), ("sendMessage", True), ("editMessageText", False)]


async def test_callback_queries_carry_chat_instance_and_are_answered_once(bot, api):
    owner = api.user(1001, "Olga")
    sent = await bot.send_message(1001, "pick", reply_markup=InlineKeyboardMarkup(
        [[InlineKeyboardButton("A", callback_data="fb:7:a")]]))
    query_id = api.press(api.message(1001, sent.message_id), "fb:7:a", user=owner)
    [update] = await bot.get_updates(timeout=0)
    query = update.callback_query
    assert (query.id, query.data, query.chat_instance, query.message.message_id) == (
        query_id, "fb:7:a", "ci1001", sent.message_id)
    assert await query.answer("done")
    with pytest.raises(BadRequest, match="(?i)query is too old"):
        await query.answer("again")
    assert api.answers[query_id]["text"] == "done"


async def test_files_up_and_down(bot, api, tmp_path):
    owner = api.user(1001, "Olga")
    api.send_document(owner, "notes.txt", b"my own words", mime_type="text/plain")
    [update] = await bot.get_updates(timeout=0)
    document = update.message.document
    assert (document.file_name, document.file_size) == ("notes.txt", 12)
    telegram_file = await bot.get_file(document.file_id)
    path = await telegram_file.download_to_drive(tmp_path / "notes.txt")
    assert path.read_bytes() == b"my own words"
    photo = tmp_path / "chart.png"
    photo.write_bytes(b"\x89PNG fake")
    with photo.open("rb") as handle:
        sent = await bot.send_photo(1001, handle, caption="chart")
    assert sent.caption == "chart" and api.files[sent.photo[0].file_id].content == b"\x89PNG fake"
    with photo.open("rb") as handle:
        sent = await bot.send_document(1001, handle, filename="chart.png")
    assert sent.document.file_name == "chart.png"


async def test_commands_webhook_and_unknown_methods(bot, api):
    await bot.set_my_commands([("start", "Start"), ("help", "Help")])
    assert [c.command for c in await bot.get_my_commands()] == ["start", "help"]
    assert await bot.set_webhook("http://127.0.0.1:9/hook", secret_token="s3cret")
    assert (await bot.get_webhook_info()).url == "http://127.0.0.1:9/hook"
    with pytest.raises(Exception, match="[Cc]onflict"):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook()
    with pytest.raises(Exception):
        await bot.do_api_request("noSuchMethod")


async def test_forwarded_messages_replies_and_stickers(bot, api):
    owner = api.user(1001, "Olga")
    alice = {"id": 2002, "is_bot": False, "first_name": "Alice"}
    first = api.send_text(owner, "are we on?", forward_from=alice)
    api.send_text(owner, "from a hidden account", forward_sender_name="Bob B.")
    api.send_text(owner, "a reply", reply_to=first)
    api.send_sticker(owner)
    api.send_command(owner, "/start")
    updates = await bot.get_updates(timeout=0)
    forwarded, hidden, reply, sticker, command = (u.message for u in updates)
    assert forwarded.forward_origin.sender_user.first_name == "Alice"
    assert hidden.forward_origin.sender_user_name == "Bob B."
    assert reply.reply_to_message.message_id == first["message_id"]
    assert sticker.sticker is not None and sticker.text is None
    assert command.entities[0].type == "bot_command"
