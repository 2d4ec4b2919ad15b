"""The one prompt renderer: the same text is built at drafting time and at training time.

If drafting and the dataset builders rendered prompts differently, the twin would learn one
thing and be asked another (docs/architecture.md, "One prompt renderer"), so both call `render_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

Role = Literal["owner", "other"]

DEFAULT_SYSTEM_PROMPT = (
    "You are {owner}'s twin. Reply to the last message exactly as {owner} would write it: "
    "same length, tone, spelling and punctuation habits."
)
# Added to the system prompt when the conversation names the person the owner writes to (a chat
# of a Telegram Business connection), so the twin can learn how the owner writes to each person.
CONTACT_LINE = "You are writing to {contact}."
# Added when the conversation carries the owner's own past replies (training.retrieval: replies to
# similar messages, the last ones to the same person), so the twin sees how its owner writes.
EXAMPLES_HEADER = "Earlier replies of {owner}:"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: written by the owner or by someone else."""

    role: Role
    text: str
    sender: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Turn":
        return cls(role=data["role"], text=data["text"], sender=data.get("sender"))

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "sender": self.sender}


@dataclass(frozen=True)
class Conversation:
    """What the twin answers: earlier turns (oldest first) and the incoming message; `contact` names
    the person written to when it is known, `examples` are the owner's own past replies chosen for
    this message, best first (training.retrieval). Neither set: the prompt is as it always was."""

    context: tuple[Turn, ...]
    incoming: str
    contact: str | None = None
    examples: tuple[str, ...] = ()

    @classmethod
    def of(cls, incoming: str, context: Iterable[Turn | dict[str, Any]] = (),
           contact: str | None = None, examples: Iterable[str] = ()) -> "Conversation":
        turns = tuple(t if isinstance(t, Turn) else Turn.from_dict(t) for t in context)
        return cls(context=turns, incoming=incoming, contact=contact or None, examples=tuple(examples))


def system_text(template: str, owner_name: str | None) -> str:
    """The system prompt with the owner's name filled in."""
    return template.replace("{owner}", owner_name or "the owner")


def examples_text(examples: Sequence[str], header: str) -> str:
    """The owner's past replies as a list under `header`; a reply of several lines stays one item."""
    items = ("- " + "\n  ".join(line.strip() for line in text.strip().splitlines() if line.strip())
             for text in examples)
    return "\n".join([header, *items])


def chat_messages(conversation: Conversation, *, system: str, max_context_turns: int,
                  max_examples: int | None = None, examples_header: str = EXAMPLES_HEADER) -> list[dict[str, str]]:
    """Chat-template messages: the owner speaks as the assistant, everyone else as the user.

    Consecutive turns of one side are joined with newlines, as a chat template needs
    alternating roles; only the newest `max_context_turns` context turns are kept, and the first
    `max_examples` of the owner's past replies (None: all) go into the system text.
    """
    kept: Sequence[Turn] = conversation.context[-max_context_turns:] if max_context_turns > 0 else ()
    turns = [*kept, Turn(role="other", text=conversation.incoming)]
    if conversation.contact:
        system = f"{system}\n{CONTACT_LINE.format(contact=conversation.contact)}"
    examples = [e for e in conversation.examples if e.strip()][:max_examples]
    if examples:
        system = f"{system}\n{examples_text(examples, examples_header)}"
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    for turn in turns:
        role = "assistant" if turn.role == "owner" else "user"
        if len(messages) > 1 and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + turn.text
        else:
            messages.append({"role": role, "content": turn.text})
    # A conversation that opens with the owner's own words has no user turn before them; the
    # template still needs one, so the owner's opening is dropped rather than mislabelled.
    if messages[1]["role"] == "assistant":
        del messages[1]
    return messages


def render_prompt(
    tokenizer: Any,
    conversation: Conversation,
    *,
    system: str,
    max_context_turns: int,
    max_prompt_tokens: int | None = None,
    examples_header: str = EXAMPLES_HEADER,
) -> str:
    """The prompt text up to and including the assistant header that the reply follows.

    Until the prompt fits `max_prompt_tokens`, the owner's past replies are dropped, least
    relevant first, then the oldest context turns: trl would otherwise cut or drop the example
    silently, and drafting would see a different prompt. The conversation itself outranks the
    examples of how its owner writes.
    """
    turns, examples = max_context_turns, len(conversation.examples)
    while True:
        messages = chat_messages(conversation, system=system, max_context_turns=turns, max_examples=examples,
                                 examples_header=examples_header)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if max_prompt_tokens is None or (turns <= 0 and examples <= 0):
            return text
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens:
            return text
        if examples > 0:
            examples -= 1
        else:
            turns = min(turns, len(conversation.context)) - 1
