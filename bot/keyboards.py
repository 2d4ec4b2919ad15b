"""Inline keyboards and the callback-data contract of the bot, as small pure helpers.

A draft's buttons carry `fb:<draft_id>:<action>` (action a|e|r|n: accept, edit, reject,
another). The draft id is all the state a button needs: the verdict is looked up in the
database, so buttons keep working after a restart. Everything that builds or reads callback
data lives here, so the contract is parsed in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from telegram import CopyTextButton, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import InlineKeyboardButtonLimit

from loop.views import FeedbackKind

ACTIONS: dict[str, FeedbackKind] = {
    "a": FeedbackKind.accept,
    "e": FeedbackKind.edit,
    "r": FeedbackKind.reject,
    "n": FeedbackKind.regenerate,
}
# Anchored at both ends ("$" would also match before a trailing newline, "\Z" does not), and
# the id is bounded so the data can never pass Telegram's 64-byte limit.
FEEDBACK_PATTERN = re.compile(r"^fb:([1-9][0-9]{0,17}):([aern])\Z")
FORGET_PATTERN = re.compile(r"^forget:(yes|no)\Z")
MAX_CALLBACK_BYTES = InlineKeyboardButtonLimit.MAX_CALLBACK_DATA
MAX_COPY_TEXT = InlineKeyboardButtonLimit.MAX_COPY_TEXT


@dataclass(frozen=True)
class FeedbackPress:
    """A parsed draft button: which draft, which verdict."""

    draft_id: int
    action: str

    @property
    def kind(self) -> FeedbackKind:
        return ACTIONS[self.action]


def feedback_data(draft_id: int, action: str) -> str:
    """The callback data of one draft button."""
    return _button_data("fb", FEEDBACK_PATTERN, ACTIONS, draft_id, action)


def _button_data(prefix: str, pattern: re.Pattern[str], actions: Any, draft_id: int, action: str) -> str:
    if action not in actions:
        raise ValueError(f"unknown action {action!r}")
    data = f"{prefix}:{int(draft_id)}:{action}"
    if pattern.match(data) is None:
        raise ValueError(f"draft id {draft_id!r} cannot be put in a button")
    return data


def parse_feedback_data(data: str | None) -> FeedbackPress | None:
    """The press behind callback data, or None when it is not a well-formed draft button."""
    return _parse_press(FEEDBACK_PATTERN, data)


def _parse_press(pattern: re.Pattern[str], data: str | None) -> FeedbackPress | None:
    if not data or len(data.encode("utf-8")) > MAX_CALLBACK_BYTES:
        return None
    match = pattern.match(data)
    if match is None:
        return None
    return FeedbackPress(draft_id=int(match.group(1)), action=match.group(2))


def draft_id_of(markup: InlineKeyboardMarkup | None) -> int | None:
    """The draft a message's buttons belong to, if they are draft buttons."""
    for row in markup.inline_keyboard if markup is not None else ():
        for button in row:
            press = parse_feedback_data(button.callback_data if isinstance(button.callback_data, str) else None)
            if press is not None:
                return press.draft_id
    return None


def draft_keyboard(draft_id: int, draft_text: str) -> InlineKeyboardMarkup:
    """Accept / edit / reject / another, plus a copy button when the draft fits one (≤ 256 chars)."""
    rows = [
        [InlineKeyboardButton("✅ Accept", callback_data=feedback_data(draft_id, "a")),
         InlineKeyboardButton("✏️ Edit", callback_data=feedback_data(draft_id, "e"))],
        [InlineKeyboardButton("🗑 Reject", callback_data=feedback_data(draft_id, "r")),
         InlineKeyboardButton("🔄 Another", callback_data=feedback_data(draft_id, "n"))],
    ]
    if 1 <= len(draft_text) <= MAX_COPY_TEXT:
        rows.append([InlineKeyboardButton("📋 Copy", copy_text=CopyTextButton(draft_text))])
    return InlineKeyboardMarkup(rows)


def edit_keyboard(draft_text: str) -> InlineKeyboardMarkup | None:
    """After ✏️: a button that puts the draft into the owner's input field, ready to change.

    `switch_inline_query_current_chat` inserts "@botname <draft>" in the current chat; the
    bot drops its own name from the message it gets back. Inline queries are at most 256
    characters, so longer drafts only get the tap-to-copy text of the prompt.
    """
    if not 1 <= len(draft_text) <= MAX_COPY_TEXT:
        return None
    return InlineKeyboardMarkup([
        [InlineKeyboardButton("✍️ Put it in the input field", switch_inline_query_current_chat=draft_text)],
        [InlineKeyboardButton("📋 Copy", copy_text=CopyTextButton(draft_text))],
    ])


def forget_keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("Yes, delete everything", callback_data="forget:yes"),
        InlineKeyboardButton("No, keep it", callback_data="forget:no"),
    ]])


# Telegram Business drafts ----------------------------------------------------------------------
# `bz:<draft_id>:<action>`, action s|e|r|n|m: send (as the owner, in the real chat), edit, reject,
# another, mute this chat. A separate prefix: ✅ here posts in someone's chat, which no private-chat
# button may ever do.
BUSINESS_ACTIONS = ("s", "e", "r", "n", "m")
BUSINESS_PATTERN = re.compile(r"^bz:([1-9][0-9]{0,17}):([sernm])\Z")


def business_data(draft_id: int, action: str) -> str:
    return _button_data("bz", BUSINESS_PATTERN, BUSINESS_ACTIONS, draft_id, action)


def parse_business_data(data: str | None) -> FeedbackPress | None:
    """The press behind a business draft's button, or None (the action is one of BUSINESS_ACTIONS)."""
    return _parse_press(BUSINESS_PATTERN, data)


def business_keyboard(draft_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([
        [InlineKeyboardButton("✅ Send", callback_data=business_data(draft_id, "s")),
         InlineKeyboardButton("✏️ Edit", callback_data=business_data(draft_id, "e"))],
        [InlineKeyboardButton("🗑 Reject", callback_data=business_data(draft_id, "r")),
         InlineKeyboardButton("🔄 Another", callback_data=business_data(draft_id, "n"))],
        [InlineKeyboardButton("🔇 Mute this chat", callback_data=business_data(draft_id, "m"))],
    ])
