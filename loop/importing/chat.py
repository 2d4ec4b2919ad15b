"""Turning a chat (a list of messages, oldest first) into reply samples; shared by Telegram and WhatsApp.

The other side's message(s) followed by the owner's consecutive messages make one reply sample:
the prompt is the other side's trailing messages by one sender, the reply is the owner's block,
and up to `MAX_CONTEXT_TURNS` earlier messages are its context. A silence longer than `max_gap`
starts a new conversation: nothing is paired or used as context across it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from loop.importing.base import MAX_CONTEXT_TURNS, Skip, make_sample
from storage.models import SampleKind, WritingSampleCreate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatMessage:
    text: str
    sender: str
    is_owner: bool
    at: datetime | None


def split_sessions(messages: Sequence[ChatMessage], max_gap: timedelta) -> list[list[ChatMessage]]:
    """Runs of messages with no silence longer than `max_gap` between neighbours."""
    sessions: list[list[ChatMessage]] = []
    for message in messages:
        previous = sessions[-1][-1] if sessions else None
        if previous is None or (previous.at is not None and message.at is not None
                                and message.at - previous.at > max_gap):
            sessions.append([message])
        else:
            sessions[-1].append(message)
    return sessions


def _turn(message: ChatMessage) -> dict[str, str | None]:
    return {"role": "owner" if message.is_owner else "other", "text": message.text, "sender": message.sender}


def chat_samples(messages: Sequence[ChatMessage], *, max_gap: timedelta, source: str,
                 skipped: Counter[str]) -> list[WritingSampleCreate]:
    """Reply samples of a chat; unpaired messages are counted in `skipped`."""
    samples: list[WritingSampleCreate] = []
    for session in split_sessions(messages, max_gap):
        in_prompt = [False] * len(session)
        start = 0
        while start < len(session):
            if not session[start].is_owner:
                start += 1
                continue
            end = start
            while end < len(session) and session[end].is_owner:
                end += 1
            if start == 0:
                skipped[Skip.no_prompt] += end - start
            else:
                # In a group the block before the owner's may mix people: the prompt is what the
                # last of them said; the earlier voices stay in the context.
                first = start - 1
                sender = session[first].sender
                while first > 0 and not session[first - 1].is_owner and session[first - 1].sender == sender:
                    first -= 1
                for index in range(first, start):
                    in_prompt[index] = True
                samples.append(make_sample(
                    kind=SampleKind.reply,
                    text="\n".join(m.text for m in session[start:end]),
                    prompt="\n".join(m.text for m in session[first:start]),
                    context=[_turn(m) for m in session[max(0, first - MAX_CONTEXT_TURNS):first]],
                    sender=sender,
                    written_at=session[start].at,
                    source=source,
                ))
            start = end
        unanswered = sum(1 for m, used in zip(session, in_prompt) if not m.is_owner and not used)
        if unanswered:
            skipped[Skip.unanswered] += unanswered
    return samples
