"""The wire format of the fake Bot API: requests in, Telegram-style answers and errors out.

python-telegram-bot sends form (or multipart) bodies whose values are JSON-encoded, strings as
they are; Telegram answers `{"ok": true, "result": ...}` or `{"ok": false, "error_code": ...,
"description": ...}` with the same HTTP status. Text limits count UTF-16 units after HTML parsing.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message")
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
MAX_TEXT = 4096
STRING_PARAMS = {"text", "caption", "parse_mode", "callback_query_id", "action", "file_id", "url", "secret_token",
                 "language_code", "inline_message_id", "business_connection_id", "emoji", "title", "description"}
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
             "blockquote", "tg-emoji"}
JSONISH = re.compile(r"^(-?\d+(\.\d+)?|true|false|null|\{.*\}|\[.*\])$", re.DOTALL)


class ApiError(Exception):
    """A Bot API error answer: HTTP status = error_code, the description, maybe retry_after."""

    def __init__(self, error_code: int, description: str, retry_after: int | None = None):
        super().__init__(description)
        self.error_code, self.description, self.retry_after = error_code, description, retry_after


@dataclass
class Call:
    """One request the bot made: its method, decoded parameters, and what it was answered."""

    method: str
    params: dict[str, Any]
    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str | None = None
    at: float = field(default_factory=time.perf_counter)  # when the request arrived (benchmarks time by it)


@dataclass
class StoredFile:
    content: bytes
    file_path: str
    file_name: str | None = None
    mime_type: str | None = None
    unique_id: str = ""


@dataclass
class Failure:
    """A failure queued by `fail_next` for the next `times` calls of a method."""

    error_code: int
    description: str
    retry_after: int | None
    times: int


def error_response(error: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": error.error_code, "description": error.description}
    if error.retry_after is not None:
        body["parameters"] = {"retry_after": error.retry_after}
    return web.json_response(body, status=error.error_code)


async def read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes, str]]]:
    """Bot API parameters from the query string, a JSON body, a form or a multipart body.

    python-telegram-bot sends forms whose values are JSON-encoded (strings as they are), as
    Telegram accepts them; uploaded files come back as (file name, bytes, content type).
    """
    params: dict[str, Any] = {}
    uploads: dict[str, tuple[str, bytes, str]] = {}
    raw: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        params.update(await request.json())
    elif request.method == "POST" and request.can_read_body:
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                uploads[key] = (value.filename, value.file.read(), value.content_type)
            else:
                raw[key] = value if isinstance(value, str) else bytes(value).decode()
    for key, value in raw.items():
        if key not in STRING_PARAMS and isinstance(value, str) and JSONISH.match(value):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        params[key] = value
    # A multipart part that names an attached file ("attach://name") refers to an upload.
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://") and value[9:] in uploads:
            uploads[key] = uploads.pop(value[9:])
            del params[key]
    return params, uploads


class HtmlText(HTMLParser):
    """The visible text of a Bot API HTML message; refuses tags Telegram does not support."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unmatched end tag "{tag}"')
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(text: Any, parse_mode: Any, *, limit: int = MAX_TEXT) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if parse_mode and str(parse_mode).upper() == "HTML":
        parser = HtmlText()
        parser.feed(text)
        parser.close()
        if parser.open:
            raise ApiError(400, f'Bad Request: can\'t parse entities: Unclosed start tag "{parser.open[-1]}"')
        text = "".join(parser.parts)
    if utf16_len(text) > limit:
        raise ApiError(400, "Bad Request: message is too long")
    return text


def check_markup(markup: Any) -> None:
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    if "force_reply" in markup:
        if markup["force_reply"] is not True or len(markup.get("input_field_placeholder", "")) > 64:
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        return
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if not button.get("text"):
                raise ApiError(400, "Bad Request: text buttons are unallowed in the inline keyboard")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode("utf-8")) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
            copy_text = button.get("copy_text")
            if copy_text is not None and not 1 <= len(copy_text.get("text", "")) <= 256:
                raise ApiError(400, "Bad Request: BUTTON_COPY_TEXT_INVALID")
            inline = button.get("switch_inline_query_current_chat")
            if inline is not None and len(inline) > 256:
                raise ApiError(400, "Bad Request: BUTTON_TEXT_INVALID")


def without_reply(message: dict[str, Any]) -> dict[str, Any]:
    """A message as it appears inside `reply_to_message` (Telegram does not nest replies)."""
    return {k: copy.deepcopy(v) for k, v in message.items() if k != "reply_to_message"}


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2

