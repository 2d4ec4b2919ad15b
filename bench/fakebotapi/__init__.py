"""A small fake Telegram Bot API server for end-to-end tests of the bot (aiohttp on 127.0.0.1).

It speaks enough of the Bot API for python-telegram-bot 22 to run unchanged against it, with
`ApplicationBuilder().base_url(api.base_url).base_file_url(api.base_file_url)`:

- `getMe` (a full bot User), long-polling `getUpdates` (offset confirms, timeout waits),
  `setWebhook` / `deleteWebhook` / `getWebhookInfo` (with a webhook set, updates are POSTed to it
  with the secret header and `getUpdates` answers 409), `setMyCommands` / `getMyCommands`;
- `sendMessage`, `editMessageText` and `editMessageReplyMarkup` (which return the Message),
  `sendMessageDraft` (private chats only; what was streamed is kept in `message_drafts`, and
  `refuse_message_drafts` answers 404 as a Bot API server without the method does),
  `deleteMessage` (the bot's own), `answerCallbackQuery`, `sendChatAction`, `sendDocument` / `sendPhoto` (multipart), `getFile`
  and file downloads under `/file/bot<token>/<path>`;
- Telegram's errors as Telegram sends them: `{"ok": false, "error_code": 400, "description":
  "Bad Request: message is not modified: ..."}`, 429 with `parameters.retry_after`, 404 for
  unknown methods, 401 for a wrong token; checks of text length (4096 UTF-16 units after HTML
  parsing), callback data (64 bytes), copy-text buttons (256 chars), unknown chats and messages.
  `fail_next` makes the next call(s) of a method fail on purpose.

It lives in bench/ (not tests/) because benchmarks drive the real bot through it too
(bench/first_words.py); tests import it from here. Dates are in seconds; callback queries carry `chat_instance`. Tests inject updates with
`send_text` (optionally forwarded or as a reply), `send_command`, `press`, `send_document`,
`send_sticker`, and read what the bot did with `bot_messages`, `calls`, `answers` and
`wait_for(predicate)`. Everything runs on the test's event loop.
"""

from bench.fakebotapi.server import FakeBotApi
from bench.fakebotapi.wire import NOT_MODIFIED, QUERY_TOO_OLD, ApiError, Call, StoredFile

__all__ = ["NOT_MODIFIED", "QUERY_TOO_OLD", "ApiError", "Call", "FakeBotApi", "StoredFile"]
