"""The fake Bot API server: aiohttp on 127.0.0.1, test helpers to inject updates and inspect calls."""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from bench.fakebotapi.business import BusinessMixin
from bench.fakebotapi.methods import BotApiMethods
from bench.fakebotapi.wire import (
    NOT_MODIFIED,
    ApiError,
    Call,
    Failure,
    StoredFile,
    error_response,
    read_params,
    utf16_len,
    without_reply,
)


DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query")


@dataclass
class FakeBotApi(BusinessMixin, BotApiMethods):
    """One bot's Bot API: start it, point the bot's base_url at it, inject updates, read calls."""

    token: str = "123456:TEST-fake-token"
    bot_id: int = 123456
    bot_username: str = "twin_test_bot"
    host: str = "127.0.0.1"
    port: int = 0

    calls: list[Call] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # callback query id -> answer params
    commands: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, StoredFile] = field(default_factory=dict)
    webhook_url: str = ""
    webhook_secret: str | None = None
    webhook_posts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (HTTP status, update)
    # Update types the bot asked for (getUpdates / setWebhook `allowed_updates`; Telegram keeps the
    # last list given). None: the default, which in this fake means messages and button presses only,
    # as the bot's list was before it asked for business updates.
    allowed_updates: list[str] | None = None
    # Telegram Business: connection id -> BusinessConnection; (connection id, chat id) -> messages.
    business_connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    business_chats: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    echo_business_posts: bool = True  # the bot's own posts come back as business_message updates
    # sendMessageDraft: (chat id, draft id) -> the texts streamed, in order, with when each came
    # (time.perf_counter()); `refuse_message_drafts` answers it as a server without the method does.
    message_drafts: dict[tuple[int, int], list[tuple[float, str]]] = field(default_factory=dict)
    refuse_message_drafts: bool = False
    # Where message ids start in every chat. A server that follows another against the same bot
    # database (a benchmark's second path) starts above the first one's ids: the bot rightly skips
    # a message id it has already stored for that chat as one taken before a restart.
    first_message_id: int = 1

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._confirmed_below = 0  # updates with a smaller id were confirmed by an offset
        self._chats: dict[int, dict[str, Any]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._next_message_id: dict[int, int] = {}
        self._queries: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, list[Failure]] = {}
        self._holds: dict[str, list[asyncio.Event]] = {}
        self.webhook_sending: list[int] = []  # ids of updates whose POST to the webhook has begun
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._closing = False
        self._counter = 0
        self._background: set[asyncio.Task[Any]] = set()

    # Server ------------------------------------------------------------------------------
    async def start(self) -> "FakeBotApi":
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        self._closing = True
        for holds in self._holds.values():
            for hold in holds:
                hold.set()
        await self._notify()
        for task in list(self._background):
            task.cancel()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "FakeBotApi":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    @property
    def bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Twin", "username": self.bot_username}

    # Users, chats and injected updates ---------------------------------------------------
    def user(self, user_id: int, first_name: str = "Owner", *, last_name: str | None = None,
             username: str | None = None) -> dict[str, Any]:
        """A human user; their private chat with the bot exists from now on."""
        user = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        chat = {"id": user_id, "type": "private", "first_name": first_name}
        self._chats.setdefault(user_id, chat)
        return user

    def group(self, chat_id: int, title: str = "A group") -> dict[str, Any]:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        self._chats[chat_id] = chat
        return chat

    def send_text(self, user: dict[str, Any], text: str, *, chat: dict[str, Any] | None = None,
                  reply_to: dict[str, Any] | None = None, forward_from: dict[str, Any] | None = None,
                  forward_sender_name: str | None = None) -> dict[str, Any]:
        """The user sends (or forwards) a text; returns the Message as the bot will get it."""
        message = self._new_message(user, chat)
        message["text"] = text
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(command)}]
        if reply_to is not None:
            message["reply_to_message"] = without_reply(reply_to)
        if forward_from is not None:
            message["forward_origin"] = {"type": "user", "date": message["date"] - 60, "sender_user": forward_from}
        elif forward_sender_name is not None:
            message["forward_origin"] = {"type": "hidden_user", "date": message["date"] - 60,
                                         "sender_user_name": forward_sender_name}
        return self._push_message(message)

    def send_command(self, user: dict[str, Any], command: str) -> dict[str, Any]:
        return self.send_text(user, command if command.startswith("/") else f"/{command}")

    def send_document(self, user: dict[str, Any], file_name: str, content: bytes, *,
                      mime_type: str = "application/octet-stream", caption: str | None = None) -> dict[str, Any]:
        stored = self._store_file(content, folder="documents", file_name=file_name, mime_type=mime_type)
        message = self._new_message(user, None)
        message["document"] = {"file_id": stored[0], "file_unique_id": stored[1].unique_id,
                               "file_name": file_name, "mime_type": mime_type, "file_size": len(content)}
        if caption:
            message["caption"] = caption
        return self._push_message(message)

    def send_sticker(self, user: dict[str, Any]) -> dict[str, Any]:
        stored = self._store_file(b"RIFF....WEBP", folder="stickers", file_name="sticker.webp", mime_type="image/webp")
        message = self._new_message(user, None)
        message["sticker"] = {"file_id": stored[0], "file_unique_id": stored[1].unique_id, "type": "regular",
                              "width": 512, "height": 512, "is_animated": False, "is_video": False, "emoji": "👍"}
        return self._push_message(message)

    def press(self, message: dict[str, Any], data: str, *, user: dict[str, Any] | None = None) -> str:
        """The user presses a button with `data` under `message` (a bot message); returns the query id."""
        chat_id = message["chat"]["id"]
        current = self._messages.get((chat_id, message["message_id"]), message)
        presser = user or {"id": chat_id, "is_bot": False, "first_name": current["chat"].get("first_name", "User")}
        self._counter += 1
        query_id = f"{self._counter}{int(time.time())}"
        query = {"id": query_id, "from": presser, "message": copy.deepcopy(current), "chat_instance": f"ci{chat_id}",
                 "data": data}
        self._queries[query_id] = query
        self._push_update({"callback_query": query})
        return query_id

    def deliver_again(self, message: dict[str, Any]) -> None:
        """A new update for a message already delivered, as Telegram sends when the bot was killed
        after handling it but before its next getUpdates confirmed it."""
        self._push_update({"message": self._messages[(message["chat"]["id"], message["message_id"])]})

    def button_data(self, message: dict[str, Any], text_contains: str) -> str:
        """The callback data of the button of `message` whose label contains `text_contains`."""
        current = self._messages.get((message["chat"]["id"], message["message_id"]), message)
        for row in (current.get("reply_markup") or {}).get("inline_keyboard", []):
            for button in row:
                if text_contains in button.get("text", "") and "callback_data" in button:
                    return button["callback_data"]
        raise LookupError(f"no button {text_contains!r} under message {message['message_id']}")

    # Inspection --------------------------------------------------------------------------
    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """What the bot sent to a chat, oldest first, as each message looks now (after edits)."""
        return [m for (cid, _), m in sorted(self._messages.items()) if cid == chat_id
                and m.get("from", {}).get("id") == self.bot_id]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        return self._messages[(chat_id, message_id)]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def pending_updates(self) -> list[dict[str, Any]]:
        return [u for u in self._updates if u["update_id"] >= self._confirmed_below and self._wanted(u)]

    def _wanted(self, update: dict[str, Any]) -> bool:
        allowed = self.allowed_updates or DEFAULT_ALLOWED_UPDATES
        return any(kind in update for kind in allowed)

    async def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 90.0, what: str = "") -> Any:
        """Wait until `predicate()` is truthy (checked after every request and injection) and return it.

        The timeout is a safety net against hanging forever, not a measurement: on a starved CPU a
        request can time out in the client and be retried by `bot.telegram_io` after pauses that
        add up to 30 s, which a 30 s wait once mistook for a lost edit.
        """
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(f"gave up waiting for {what or predicate}")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def fail_next(self, method: str, *, error_code: int = 400, description: str | None = None,
                  retry_after: int | None = None, times: int = 1) -> None:
        """Make the next `times` calls of `method` fail as Telegram would (e.g. 429 with retry_after)."""
        if description is None:
            description = (f"Too Many Requests: retry after {retry_after}" if error_code == 429
                           else NOT_MODIFIED if error_code == 400 else "Internal Server Error")
        self._failures.setdefault(method.lower(), []).append(Failure(error_code, description, retry_after, times))

    def hold_next(self, method: str) -> asyncio.Event:
        """Carry out the next call of `method` (a sent message is in the chat) but answer it only once
        the returned event is set: the caller waits, as a bot killed mid-request never got its answer."""
        hold = asyncio.Event()
        self._holds.setdefault(method.lower(), []).append(hold)
        return hold

    # Internals: updates ------------------------------------------------------------------
    def _new_message(self, user: dict[str, Any], chat: dict[str, Any] | None) -> dict[str, Any]:
        if chat is None:
            if user["id"] not in self._chats:
                self.user(user["id"], user.get("first_name", "User"))
            chat = self._chats[user["id"]]
        return {"message_id": self._next_id(chat["id"]), "date": int(time.time()), "chat": dict(chat),
                "from": dict(user)}

    def _push_message(self, message: dict[str, Any]) -> dict[str, Any]:
        self._messages[(message["chat"]["id"], message["message_id"])] = message
        self._push_update({"message": message})
        return message

    def _push_update(self, payload: dict[str, Any]) -> None:
        update = {"update_id": self._next_update_id, **copy.deepcopy(payload)}
        self._next_update_id += 1
        if self.webhook_url:
            if not self._wanted(update):
                return  # Telegram does not send what the bot did not ask for
            task = asyncio.get_running_loop().create_task(self._post_webhook(update))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._updates.append(update)
        self._notify_soon()

    async def _post_webhook(self, update: dict[str, Any]) -> None:
        assert self._client is not None
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.webhook_secret} if self.webhook_secret else {}
        for attempt in range(50):  # the bot's webhook server may still be starting
            self.webhook_sending.append(update["update_id"])
            await self._notify()
            try:
                async with self._client.post(self.webhook_url, json=update, headers=headers) as response:
                    self.webhook_posts.append((response.status, update))
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1 * (attempt + 1))
        await self._notify()

    def _next_id(self, chat_id: int) -> int:
        value = self._next_message_id.get(chat_id, self.first_message_id)
        self._next_message_id[chat_id] = value + 1
        return value

    def _store_file(self, content: bytes, *, folder: str, file_name: str | None, mime_type: str | None) -> tuple[str, StoredFile]:
        self._counter += 1
        file_id = f"FILE{self._counter:06d}x{len(content)}"
        suffix = ("." + file_name.rsplit(".", 1)[-1]) if file_name and "." in file_name else ""
        stored = StoredFile(content=content, file_path=f"{folder}/file_{self._counter}{suffix}", file_name=file_name,
                            mime_type=mime_type, unique_id=f"U{self._counter}")
        self.files[file_id] = stored
        return file_id, stored

    def _notify_soon(self) -> None:
        try:
            asyncio.get_running_loop().create_task(self._notify())
        except RuntimeError:
            pass

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # Internals: HTTP ---------------------------------------------------------------------
    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        path = request.match_info["path"]
        for stored in self.files.values():
            if stored.file_path == path:
                return web.Response(body=stored.content, content_type=stored.mime_type or "application/octet-stream")
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return error_response(ApiError(401, "Unauthorized"))
        params, uploads = await read_params(request)
        call = Call(method=method, params={**params, **{k: f"<file {v[0]}>" for k, v in uploads.items()}}, ok=False)
        try:
            failure = self._take_failure(method)
            if failure is not None:
                raise failure
            handler: Callable[..., Awaitable[Any]] | None = getattr(self, f"_m_{method.lower()}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            result = await handler(params, uploads)
        except ApiError as error:
            call.error_code, call.description = error.error_code, error.description
            self.calls.append(call)
            await self._notify()
            return error_response(error)
        call.ok, call.result = True, result
        self.calls.append(call)
        await self._notify()
        holds = self._holds.get(method.lower())
        if holds:
            await holds.pop(0).wait()
        return web.json_response({"ok": True, "result": result})

    def _take_failure(self, method: str) -> ApiError | None:
        queue = self._failures.get(method.lower())
        if not queue:
            return None
        failure = queue[0]
        failure.times -= 1
        if failure.times <= 0:
            queue.pop(0)
        return ApiError(failure.error_code, failure.description, failure.retry_after)

