"""The Bot API methods of the fake server, one `_m_<method>` coroutine each (names are
case-insensitive, as Telegram's). A mixin of `FakeBotApi`, whose state it reads and changes."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from typing import Any

from bench.fakebotapi.wire import ApiError, NOT_MODIFIED, QUERY_TOO_OLD, check_markup, visible_text, without_reply


class BotApiMethods:
    """getMe, getUpdates (long polling), webhooks, commands, messages, edits, callback answers, files."""

    # Attributes of FakeBotApi that the methods use.
    bot_id: int
    webhook_url: str
    webhook_secret: str | None
    commands: list[dict[str, Any]]
    answers: dict[str, dict[str, Any]]
    files: dict[str, Any]
    allowed_updates: list[str] | None
    message_drafts: dict[tuple[int, int], list[tuple[float, str]]]
    refuse_message_drafts: bool

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            chat_id = int(params.get("chat_id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ApiError(400, "Bad Request: chat not found") from None
        if chat_id not in self._chats:
            raise ApiError(400, "Bad Request: chat not found")
        return self._chats[chat_id]

    def _bot_message(self, chat: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        message = {"message_id": self._next_id(chat["id"]), "date": int(time.time()), "chat": dict(chat),
                   "from": self.bot_user}
        markup = params.get("reply_markup")
        if markup:
            check_markup(markup)
            # Telegram's Message carries only an inline keyboard; a ForceReply or a reply keyboard
            # acts on the client and is not returned (tests read it from the sendMessage call).
            if "inline_keyboard" in markup:
                message["reply_markup"] = markup
        reply = params.get("reply_parameters")
        if reply:
            replied = self._messages.get((chat["id"], reply.get("message_id")))
            if replied is not None:
                message["reply_to_message"] = without_reply(replied)
            elif not reply.get("allow_sending_without_reply"):
                raise ApiError(400, "Bad Request: message to be replied not found")
        return message

    def _editable(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        message = self._messages.get((chat["id"], int(params.get("message_id", 0))))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if message.get("from", {}).get("id") != self.bot_id:
            raise ApiError(400, "Bad Request: message can't be edited")
        return message


    async def _m_getme(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False, "can_connect_to_business": False, "has_main_web_app": False}

    async def _m_getupdates(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        if params.get("allowed_updates") is not None:
            self.allowed_updates = list(params["allowed_updates"]) or None
        offset = int(params.get("offset") or 0)
        if offset > 0:
            self._confirmed_below = max(self._confirmed_below, offset)
            self._updates = [u for u in self._updates if u["update_id"] >= self._confirmed_below]
        limit = int(params.get("limit") or 100)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params.get("timeout") or 0)
        assert self._changed is not None
        async with self._changed:
            while True:
                pending = self.pending_updates()
                remaining = deadline - loop.time()
                if pending or self._closing or remaining <= 0:
                    return copy.deepcopy(pending[:limit])
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def _m_deletewebhook(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        self.webhook_url, self.webhook_secret = "", None
        if params.get("drop_pending_updates"):
            self._confirmed_below = self._next_update_id
        return True

    async def _m_setwebhook(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        self.webhook_url, self.webhook_secret = params.get("url") or "", params.get("secret_token")
        if params.get("allowed_updates") is not None:
            self.allowed_updates = list(params["allowed_updates"]) or None
        return True

    async def _m_getwebhookinfo(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return {"url": self.webhook_url, "has_custom_certificate": False,
                "pending_update_count": len(self.pending_updates())}

    async def _m_setmycommands(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        commands = params.get("commands") or []
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command.get("command", "")) or not command.get("description"):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        self.commands = commands
        return True

    async def _m_getmycommands(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return self.commands

    async def _m_deletemycommands(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        self.commands = []
        return True

    async def _m_sendmessage(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        if params.get("business_connection_id"):
            return self._business_send(params)
        chat = self._chat(params)
        text = visible_text(params.get("text"), params.get("parse_mode"))
        message = self._bot_message(chat, params)
        message["text"] = text
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    async def _m_sendmessagedraft(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        """A partial message streamed to a private chat (Bot API 9.3): shown, animated, never stored."""
        if self.refuse_message_drafts:
            raise ApiError(404, "Not Found: method not found")
        chat = self._chat(params)
        if chat.get("type") != "private":
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        try:
            draft_id = int(params.get("draft_id") or 0)
        except (TypeError, ValueError):
            draft_id = 0
        if not draft_id:
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        text = visible_text(params.get("text"), params.get("parse_mode"))
        self.message_drafts.setdefault((chat["id"], draft_id), []).append((time.perf_counter(), text))
        return True

    async def _m_editmessagetext(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        message = self._editable(params)
        text = visible_text(params.get("text"), params.get("parse_mode"))
        markup = params.get("reply_markup") or None
        if markup:
            check_markup(markup)
        if text == message.get("text") and markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        message["text"], message["edit_date"] = text, int(time.time())
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)  # an edit without reply_markup removes the buttons
        return copy.deepcopy(message)

    async def _m_editmessagereplymarkup(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        message = self._editable(params)
        markup = params.get("reply_markup") or None
        if markup:
            check_markup(markup)
        if markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    async def _m_deletemessage(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        message = self._editable(params)
        del self._messages[(message["chat"]["id"], message["message_id"])]
        return True

    async def _m_answercallbackquery(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        query_id = str(params.get("callback_query_id"))
        if query_id not in self._queries or query_id in self.answers:
            raise ApiError(400, QUERY_TOO_OLD)
        if len(params.get("text") or "") > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        self.answers[query_id] = params
        return True

    async def _m_sendchataction(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        self._chat(params)
        if params.get("action") not in ("typing", "upload_photo", "upload_document", "record_voice", "choose_sticker"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _m_senddocument(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return self._send_file(params, uploads, "document")

    async def _m_sendphoto(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return self._send_file(params, uploads, "photo")

    def _send_file(self, params: dict[str, Any], uploads: dict[str, Any], kind: str) -> Any:
        chat = self._chat(params)
        if kind in uploads:
            name, content, mime = uploads[kind]
            file_id, stored = self._store_file(content, folder=f"{kind}s", file_name=name, mime_type=mime)
        elif isinstance(params.get(kind), str) and params[kind] in self.files:
            file_id, stored = params[kind], self.files[params[kind]]
        else:
            raise ApiError(400, f"Bad Request: there is no {kind} in the request")
        message = self._bot_message(chat, params)
        if kind == "photo":
            message["photo"] = [{"file_id": file_id, "file_unique_id": stored.unique_id, "width": 800,
                                 "height": 600, "file_size": len(stored.content)}]
        else:
            message["document"] = {"file_id": file_id, "file_unique_id": stored.unique_id,
                                   "file_name": stored.file_name, "mime_type": stored.mime_type,
                                   "file_size": len(stored.content)}
        if params.get("caption"):
            message["caption"] = visible_text(params["caption"], params.get("parse_mode"), limit=1024)
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    async def _m_getfile(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        stored = self.files.get(str(params.get("file_id")))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if len(stored.content) > 20 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        return {"file_id": params["file_id"], "file_unique_id": stored.unique_id, "file_size": len(stored.content),
                "file_path": stored.file_path}

    async def _m_close(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return True

    async def _m_logout(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        return True

