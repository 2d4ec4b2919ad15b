"""Telegram Business in the fake Bot API: connections, the owner's real chats, posts as the owner.

Test helpers: `business_connect(owner)` (a `business_connection` update; `enabled=False` for a
disconnect), `contact(id, name)`, `business_message(connection_id, contact, text, from_user=...)`
(a contact's or the owner's own message in the chat, as a `business_message` update; `date` to set
its age), `business_edit` (`edited_business_message`), `business_delete`
(`deleted_business_messages`), `business_chat(connection_id, chat_id)` to read a real chat.

Methods: `getBusinessConnection`, and `sendMessage` with `business_connection_id`: the message lands
in the contact's chat as sent by the owner (`from` the owner, `sender_business_bot` the bot,
`business_connection_id` set) and, as Telegram does, comes back as a `business_message` update
(`echo_business_posts`). Errors, as Telegram answers them (strings of Telegram's API error list):
- unknown or removed connection: 400 "Bad Request: BUSINESS_CONNECTION_INVALID";
- no `can_reply` right: 400 "Bad Request: BOT_ACCESS_FORBIDDEN" (the error Telegram documents for an
  operation the connection does not permit; the exact Bot API wording for this case is unverified);
- the contact's last message older than 24 hours (or none): 400
  "Bad Request: BUSINESS_PEER_USAGE_MISSING" ("you cannot send a message to a user through a business
  connection if the user hasn't recently contacted us").
"""

from __future__ import annotations

import copy
import time
from typing import Any

from bench.fakebotapi.wire import ApiError, visible_text

CONNECTION_INVALID = "Bad Request: BUSINESS_CONNECTION_INVALID"
NO_REPLY_RIGHT = "Bad Request: BOT_ACCESS_FORBIDDEN"
WINDOW_CLOSED = "Bad Request: BUSINESS_PEER_USAGE_MISSING"
REPLY_WINDOW_S = 24 * 3600


class BusinessMixin:
    """Business connections and chats of `FakeBotApi`."""

    business_connections: dict[str, dict[str, Any]]
    business_chats: dict[tuple[str, int], list[dict[str, Any]]]
    echo_business_posts: bool
    bot_user: dict[str, Any]

    def business_connect(self, owner: dict[str, Any], *, connection_id: str = "bc-1", can_reply: bool = True,
                         enabled: bool = True) -> dict[str, Any]:
        """The owner connects the bot in Settings → Telegram Business → Chatbots (or changes / removes it)."""
        connection = {"id": connection_id, "user": dict(owner), "user_chat_id": owner["id"],
                      "date": int(time.time()), "is_enabled": enabled,
                      "rights": {"can_reply": can_reply, "can_read_messages": True}}
        self.business_connections[connection_id] = connection
        self._push_update({"business_connection": connection})  # type: ignore[attr-defined]
        return connection

    def contact(self, user_id: int, first_name: str) -> dict[str, Any]:
        """A person who writes to the owner (not a user of the bot)."""
        return {"id": user_id, "is_bot": False, "first_name": first_name}

    def business_chat(self, connection_id: str, chat_id: int) -> list[dict[str, Any]]:
        return self.business_chats.setdefault((connection_id, chat_id), [])

    def business_message(self, connection_id: str, contact: dict[str, Any], text: str, *,
                         from_user: dict[str, Any] | None = None, date: int | None = None) -> dict[str, Any]:
        """A message in the owner's chat with `contact`: by the contact, or by `from_user` (the owner)."""
        message = self._business_new(connection_id, contact, from_user or contact, date=date)
        message["text"] = text
        self._push_update({"business_message": message})  # type: ignore[attr-defined]
        return message

    def business_edit(self, message: dict[str, Any], text: str) -> dict[str, Any]:
        current = next(m for m in self.business_chat(message["business_connection_id"], message["chat"]["id"])
                       if m["message_id"] == message["message_id"])
        current["text"], current["edit_date"] = text, int(time.time())
        self._push_update({"edited_business_message": current})  # type: ignore[attr-defined]
        return current

    def business_delete(self, connection_id: str, contact: dict[str, Any], message_ids: list[int]) -> None:
        chat = self.business_chat(connection_id, contact["id"])
        chat[:] = [m for m in chat if m["message_id"] not in message_ids]
        self._push_update({"deleted_business_messages": {  # type: ignore[attr-defined]
            "business_connection_id": connection_id, "chat": self._contact_chat(contact),
            "message_ids": list(message_ids)}})

    @staticmethod
    def _contact_chat(contact: dict[str, Any]) -> dict[str, Any]:
        return {"id": contact["id"], "type": "private", "first_name": contact["first_name"]}

    def _business_new(self, connection_id: str, contact: dict[str, Any], sender: dict[str, Any], *,
                      date: int | None = None) -> dict[str, Any]:
        chat = self.business_chat(connection_id, contact["id"])
        message = {"message_id": (chat[-1]["message_id"] + 1) if chat else 1, "date": date or int(time.time()),
                   "chat": self._contact_chat(contact), "from": dict(sender), "business_connection_id": connection_id}
        chat.append(message)
        return message

    async def _m_getbusinessconnection(self, params: dict[str, Any], uploads: dict[str, Any]) -> Any:
        connection = self.business_connections.get(str(params.get("business_connection_id")))
        if connection is None:
            raise ApiError(400, CONNECTION_INVALID)
        return copy.deepcopy(connection)

    def _business_send(self, params: dict[str, Any]) -> Any:
        connection = self.business_connections.get(str(params["business_connection_id"]))
        if connection is None or not connection["is_enabled"]:
            raise ApiError(400, CONNECTION_INVALID)
        if not connection["rights"].get("can_reply"):
            raise ApiError(400, NO_REPLY_RIGHT)
        chat_id = int(params.get("chat_id"))  # type: ignore[arg-type]
        chat = self.business_chat(connection["id"], chat_id)
        owner_id = connection["user"]["id"]
        last = max((m["date"] for m in chat if m["from"]["id"] != owner_id), default=None)
        if last is None or time.time() - last > REPLY_WINDOW_S:
            raise ApiError(400, WINDOW_CLOSED)
        text = visible_text(params.get("text"), params.get("parse_mode"))
        contact = next(m["chat"] for m in chat)
        message = self._business_new(connection["id"], {"id": chat_id, "first_name": contact.get("first_name", "")},
                                     connection["user"])
        message["text"], message["sender_business_bot"] = text, dict(self.bot_user)
        if self.echo_business_posts:
            self._push_update({"business_message": message})  # type: ignore[attr-defined]
        return copy.deepcopy(message)
