"""What the bot says: fixed texts and small pure formatters, tested without Telegram.

Texts are plain unless a function says it returns HTML (then every inserted value is
escaped). Telegram counts message length in UTF-16 code units, so the splitting and
trimming helpers do too.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any, Iterable, Sequence

from telegram.constants import MessageLimit

from loop.views import FeedbackKind

MAX_MESSAGE = MessageLimit.MAX_TEXT_LENGTH  # 4096 UTF-16 code units after entity parsing

COMMANDS: list[tuple[str, str]] = [
    ("start", "What the twin is and how to teach it"),
    ("help", "How drafts, buttons and editing work"),
    ("import", "Import your writing from a file"),
    ("stats", "Accept rate and edit distance per version, with a chart"),
    ("style", "Your style profile"),
    ("insight", "What your twin learnt from you, with charts"),
    ("train", "Start a training cycle now"),
    ("status", "Active version, last cycle, next run"),
    ("rollback", "Go back to the previous version"),
    ("chats", "Your connected Business chats and their state"),
    ("pause", "Stop drafting for all connected chats"),
    ("resume", "Draft for connected chats again"),
    ("unmute", "Draft again for a muted chat"),
    ("forget", "Delete everything the twin knows about you"),
    ("cancel", "Cancel what you started"),
]

START_TEXT = (
    "Hi! I'm your twin: a small language model that learns to write the way you do.\n\n"
    "Two ways to use me:\n"
    "• In your real chats (best): connect me in Settings → Telegram Business → Chatbots (Chat Automation "
    "in newer apps). When someone writes to you, my draft arrives here; ✅ Send posts it in that chat as "
    "you, and nothing is sent without your tap. What you type there yourself teaches me too.\n"
    "• Without a connection: forward me a message you got (or type one) and I'll draft your reply here.\n\n"
    "How to teach me:\n"
    "• ✅ Accept if you'd send it as it is, ✏️ Edit to correct it, 🗑 Reject if it's no use, "
    "🔄 Another for a new draft.\n"
    "• /import a chat export or your texts, so I learn from what you already wrote.\n\n"
    "Every night I retrain on your verdicts and switch to the new version only if it writes "
    "more like you. /help tells you more."
)

HELP_TEXT = (
    "Connected through Telegram Business (Settings → Telegram Business → Chatbots), I draft replies "
    "to the people who write to you and show them here: ✅ Send posts the draft in that chat as you, "
    "✏️ Edit posts your version, 🔇 mutes the chat. Your own replies there teach me too. /chats, "
    "/pause, /resume, /unmute control it.\n\n"
    "Send or forward any text: I draft the reply you would write. A forwarded message counts as "
    "written by its sender; our recent exchange with them is the context.\n\n"
    "Under each draft:\n"
    "✅ Accept: the draft is what you'd send.\n"
    "✏️ Edit: reply to my question (or to the draft) with your version. On a phone you don't "
    "have to retype it: 📋 Copy copies the draft, and after ✏️ the ✍️ button puts it in your "
    "input field (after my @name, which I ignore); change it and send. Replying to a draft with "
    "your text works at any time.\n"
    "🗑 Reject: not usable. Then, if you like, reply to my question with what you would have "
    "written, or a reason starting with \"because\".\n"
    "🔄 Another: a new draft; the old one counts as a mild no.\n\n"
    "Only a reply is taken as your version: anything else you send or forward meanwhile gets its "
    "own draft, and my question stays open (reply to it later, or /cancel).\n\n"
    "Commands:\n" + "\n".join(f"/{name}: {about}" for name, about in COMMANDS)
)

INSIGHT_WORKING = "Looking into what your twin learnt (under a minute; drafts keep coming meanwhile)…"
REFUSAL = "Sorry, this twin only answers its owner."
PRIVATE_ONLY = "I work in private chats only."
ONLY_TEXT = "I can only draft replies to text. Send a file to /import it."
IMPORT_HOWTO = (
    "Send me the file as a document: a Telegram export (result.json), a WhatsApp chat export, "
    "or plain text. Up to {limit} MB."
)
EDIT_NOTHING = "Nothing to cancel."
CANCELLED = "Cancelled."
FORGET_CONFIRM = (
    "This deletes everything I know about you: imported writing, drafts, verdicts and trained "
    "versions. It cannot be undone. Delete everything?"
)
FORGET_DONE = "Done: everything is deleted. Send me a message whenever you want to start again."
FORGET_KEPT = "Nothing was deleted."
FORGET_EXPIRED = "That confirmation has expired; send /forget again."
UNKNOWN_BUTTON = "That button isn't one of mine (or it's too old). Nothing was changed."
UNKNOWN_DRAFT = "I don't know that draft. Nothing was changed."
WRITING_ANOTHER = "Writing another draft…"
ALREADY_WRITING = "I'm already writing another one."
TRAIN_RUNNING = "A training cycle is already running; I'll tell you when it's done."
TRAIN_QUEUED = "Training is queued: a worker will run it soon. I'll send the report when it's done."
TRAIN_ALREADY_QUEUED = "Your training is already in the queue; I'll send the report when it's done."
ERROR_SENTENCE = "Sorry, something went wrong on my side ({what}). It's logged; please try again."
DATABASE_BUSY = ("The database is busy (another twin command such as `twin forget` or an import holds it), "
                 "so this waits; I'll take it as soon as it is free. Nothing is lost.")
DRAFT_DATABASE_BUSY = ("The database stayed busy while I wrote the draft for this (another twin command "
                       "holds it). Your message is stored; I'll draft it at my next start, or send it again.")
# generation.backend = "openai": the drafting server is down or refused (loop.errors.DraftingUnavailable).
DRAFT_SERVER_RETRYING = ("The drafting server isn't answering right now. Your message is kept; I'll draft it "
                         "as soon as the server is back.")
DRAFT_SERVER_UNAVAILABLE = ("The drafting server isn't answering right now. Your message is kept; I'll draft "
                            "it at my next start, or send it again later.")
# After a restart: the draft for this message was being sent when the bot stopped; resending it
# could show it twice, so the owner is told instead.
DRAFT_MAYBE_SHOWN = ("I was showing you my draft for this message when I was restarted, so it may be above "
                     "(its buttons work) or may not have reached you. If it isn't there, send me the message again.")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Cut a long text into messages of at most `limit` UTF-16 units, at line breaks when possible."""
    if utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _fitting_prefix(rest, limit)
        # Prefer the last paragraph or line break, then a space, in the second half of the piece.
        for separator in ("\n\n", "\n", " "):
            at = cut.rfind(separator)
            if at > len(cut) // 2:
                cut = cut[:at]
                break
        parts.append(cut)
        rest = rest[len(cut):].lstrip("\n ") if cut else rest
    if rest:
        parts.append(rest)
    return parts


def _fitting_prefix(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-16 units, never splitting a surrogate pair."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text


def trim(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-16 units with an ellipsis when it was longer."""
    if utf16_len(text) <= limit:
        return text
    return _fitting_prefix(text, limit - 1) + "…"


def verdict_line(kind: FeedbackKind | str, *, text: str | None = None, reason: str | None = None) -> str:
    """The line that replaces a draft's buttons once the owner has decided."""
    kind = FeedbackKind(kind)
    if kind == FeedbackKind.accept:
        return "✅ Accepted"
    if kind == FeedbackKind.edit:
        return "✏️ Edited: your version is saved"
    if kind == FeedbackKind.regenerate:
        return "🔄 You asked for another draft"
    line = "🗑 Rejected"
    if text:
        line += ": your version is saved"
    elif reason:
        line += ": your reason is saved"
    return line


def draft_with_verdict(draft_text: str, kind: FeedbackKind | str, *, text: str | None = None,
                       reason: str | None = None) -> str:
    """A draft message after the verdict: the draft and the verdict line, within one message.

    A draft long enough to have been split shows its buttons on the last part, so that part is
    what gets the verdict.
    """
    line = verdict_line(kind, text=text, reason=reason)
    shown = split_message(draft_text)[-1]
    return trim(shown, MAX_MESSAGE - utf16_len(line) - 2) + "\n\n" + line


def saved_text(kind: FeedbackKind | str) -> str:
    """The short acknowledgement once a verdict is committed."""
    return {FeedbackKind.accept: "✅ Saved: accepted.", FeedbackKind.edit: "✏️ Saved your version.",
            FeedbackKind.reject: "🗑 Saved: rejected.", FeedbackKind.regenerate: WRITING_ANOTHER}[FeedbackKind(kind)]


def already_decided(kind: FeedbackKind | str) -> str:
    kind = FeedbackKind(kind)
    words = {FeedbackKind.accept: "accepted", FeedbackKind.edit: "edited", FeedbackKind.reject: "rejected",
             FeedbackKind.regenerate: "replaced by another draft"}
    return f"That draft is already {words[kind]}. Nothing was changed."


def edit_prompt_html(draft_text: str, prefill_button: bool = False) -> str:
    """Asks for the owner's version; the draft is shown as code, which Telegram copies on a tap."""
    how = "reply to this message, or use ✍️ below" if prefill_button else "reply to this message"
    return (f"✏️ Send me your version: {how} (or /cancel).\n"
            "Tap the draft to copy it:\n\n<code>" + html.escape(trim(draft_text, 3800)) + "</code>")


EDIT_PLACEHOLDER = "Your version of the draft"
REJECT_PROMPT = ("🗑 Rejected and saved. If you like, reply to this message with what you would have "
                 "written, or a reason starting with \"because\". /cancel to skip. A message that is "
                 "not a reply gets its own draft.")
REJECT_PLACEHOLDER = "What you would have written"


def split_reject_detail(text: str) -> tuple[str | None, str | None]:
    """(replacement text, reason) from the owner's message after a reject."""
    stripped = text.strip()
    match = re.match(r"^(?:reason\s*:|why\s*:)\s*(.*)$", stripped, flags=re.IGNORECASE | re.DOTALL)
    if match:
        return None, match.group(1).strip() or None
    if re.match(r"^because\b", stripped, flags=re.IGNORECASE):
        return None, stripped
    return stripped or None, None


def strip_bot_mention(text: str, username: str | None) -> tuple[str, bool]:
    """Drop a leading "@botname " that the ✍️ button puts before the draft; says whether it did."""
    if username:
        match = re.match(rf"^@{re.escape(username)}\b\s*", text, flags=re.IGNORECASE)
        if match:
            return text[match.end():], True
    return text, False


def busy_text(queue_size: int) -> str:
    return (f"I'm busy: {queue_size} drafts are already waiting. This message was not taken; "
            "please send it again in a minute.")


def _fmt_time(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    return "never" if value is None else str(value)


def busy_another(queue_size: int) -> str:
    return f"I'm busy: {queue_size} drafts are already waiting. Press 🔄 again in a minute."


def status_text(status: dict[str, Any], next_run: datetime | None) -> str:
    """`/status`: active version, counts, the last cycle and the next scheduled one."""
    feedback = status.get("feedback", {})
    lines = [
        f"Active version: v{status.get('active_adapter', 0)}" + (" (the base model)" if not status.get("active_adapter") else ""),
        f"Writing samples: {status.get('writing_samples', 0)}; drafts: {status.get('drafts', 0)}",
        "Verdicts: " + ", ".join(f"{kind} {count}" for kind, count in feedback.items()),
    ]
    cycle = status.get("last_cycle")
    if cycle:
        lines.append(f"Last cycle: #{cycle['id']} {cycle['status']} ({cycle.get('trigger')}), started "
                     f"{_fmt_time(cycle.get('started_at'))}" + (f": {cycle['reason']}" if cycle.get("reason") else ""))
    else:
        lines.append("Last cycle: none yet")
    lines.append(f"Next run: {_fmt_time(next_run)}" if next_run else "Next run: not scheduled")
    return "\n".join(lines)


def stats_text(rows: Sequence[dict[str, Any]]) -> str:
    """`/stats`: one line per adapter version: drafts, accept rate, edit distance."""
    if not rows:
        return "No drafts yet: send or forward me a message to start."
    lines = ["Per version: drafts, accept rate, mean edit distance"]
    for row in rows:
        rate, distance = row.get("accept_rate"), row.get("edit_distance")
        lines.append(
            f"v{row.get('version', row.get('adapter_version', 0))}: {row.get('drafts', 0)} drafts, "
            f"{'–' if rate is None else f'{rate:.0%}'} accepted, "
            f"edit distance {'–' if distance is None else f'{distance:.2f}'}")
    return "\n".join(lines)


def too_big(limit_mb: int) -> str:
    return f"That file is over {limit_mb} MB, more than I take. Nothing was imported."


def import_summary(report: Any, name: str) -> str:
    """What an import added, from `loop.importing.ImportReport` (added, duplicates, skipped, failed)."""
    if report.failed:
        return f"I could not import {name}: {report.failed[0].error}. Nothing of it was stored."
    text = (f"Imported {name}: {report.parsed} samples found, {report.added} added, "
            f"{report.duplicates} already there.")
    if report.skipped:
        text += "\nLeft out: " + ", ".join(f"{count} {why}" for why, count in sorted(report.skipped.items()))
    if report.added:
        text += "\nThey will be used in the next training cycle (/train to start one now)."
    return text


def bullet_list(items: Iterable[str]) -> str:
    return "\n".join(f"• {item}" for item in items)


# Telegram Business ---------------------------------------------------------------------------------

BUSINESS_CONNECTED = (
    "🔗 Connected to your Telegram Business account. When someone writes to you in a private chat, I'll "
    "send you my draft here, with ✅ Send (I post it in that chat as you), ✏️ Edit, 🗑 Reject, 🔄 Another "
    "and 🔇 Mute this chat. Nothing reaches anyone without your tap. What you type in your chats yourself "
    "teaches me too. /pause stops all drafting, /chats lists the chats."
)
BUSINESS_NO_REPLY_RIGHT = ("⚠️ The connection doesn't let me reply: turn on \"Reply to messages\" for me in "
                           "Settings → Telegram Business → Chatbots, or ✅ Send will fail.")
BUSINESS_DISCONNECTED = ("🔌 The Business connection is off, so I stopped drafting for your chats. What I learnt "
                         "from them stays until /forget.")
BUSINESS_NO_CONNECTION = ("No Telegram Business connection yet. Connect me in Settings → Telegram Business → "
                          "Chatbots (Chat Automation), or keep forwarding messages to me here.")
BUSINESS_OUTDATED = "That draft is outdated: a newer one follows. Nothing was sent."
BUSINESS_MAYBE_POSTED = ("I was posting one of your replies in a connected chat when I was restarted, so it may "
                         "or may not be there. I won't post it again: please check that chat.")
BUSINESS_MUTED_DRAFT = "That chat is muted; nothing was sent. /unmute to draft for it again."


def business_draft_text(contact: str, incoming: str, draft: str) -> str:
    """A business draft in the owner's chat: who wrote what, then the draft."""
    return f"💬 {contact}:\n{trim(incoming, 1500)}\n\n✍️ Draft:\n{trim(draft, MAX_MESSAGE - 1600)}"


def business_status_line(what: str, contact: str) -> str:
    lines = {"sent": f"✅ Sent to {contact} as you", "outdated": f"⌛ Outdated: {contact} wrote again",
             "muted": f"🔇 Chat with {contact} muted", "reject": "🗑 Rejected: nothing was sent",
             "regenerate": "🔄 You asked for another draft", "accept": f"✅ You sent it to {contact} yourself",
             "edit": f"✏️ You wrote {contact} your own reply: saved as your version",
             "sending": f"📤 Sending to {contact}…"}
    return lines[what]


def with_status(shown_text: str, line: str) -> str:
    """A draft message with a status line instead of its buttons."""
    return trim(shown_text, MAX_MESSAGE - utf16_len(line) - 2) + "\n\n" + line


def business_refused(contact: str, description: str) -> str:
    """Why Telegram did not post the owner's reply; the verdict is kept either way.

    python-telegram-bot hands the description on re-cased ("Business_peer_usage_missing"), so the
    error names are compared in upper case."""
    code = description.upper()
    if "BUSINESS_PEER_USAGE_MISSING" in code:
        why = (f"Telegram lets me answer {contact} only within 24 hours of their last message, and that "
               "window has closed")
    elif "BOT_ACCESS_FORBIDDEN" in code or "NOT ENOUGH RIGHTS" in code:
        why = ("the connection doesn't let me reply (turn on \"Reply to messages\" for me in Settings → "
               "Telegram Business → Chatbots)")
    elif "BUSINESS_CONNECTION_INVALID" in code:
        why = "the Business connection is gone (reconnect me in Settings → Telegram Business → Chatbots)"
    else:
        why = f"Telegram refused it ({description})"
    return f"⚠️ Not sent to {contact}: {why}. Your verdict is saved; please send it yourself."


def chats_text(connection: Any, chats: Sequence[Any]) -> str:
    """/chats: the connection and each connected chat with its state."""
    if connection is None:
        return BUSINESS_NO_CONNECTION
    head = ("🔗 Business connection: " + ("on" if connection.enabled else "off")
            + (", paused (/resume)" if connection.paused else "")
            + ("" if connection.can_reply else ", cannot reply (no \"Reply to messages\" right)"))
    if not chats:
        return head + "\nNo chats yet: I'll list them once someone writes to you."
    lines = [head]
    for state in chats:
        chat = state.chat
        status = "🔇 muted (/unmute " + str(chat.id) + ")" if chat.muted else "drafting"
        lines.append(f"{chat.id}. {chat.contact}: {status}" + (", a draft is waiting" if state.pending else ""))
    return "\n".join(lines)
