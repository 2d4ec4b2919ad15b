"""The bot's own errors, in one module (the domain errors come from loop.errors): bad settings at
start-up, a full draft queue, a service refused; the handlers turn them into sentences."""

from __future__ import annotations


class BotConfigError(Exception):
    """The bot cannot start with this configuration (no token, no owners)."""


class QueueFull(Exception):
    """Too many drafts of this owner are waiting; the job was not taken."""


class ServiceError(Exception):
    """Something the owner asked for cannot be done; the message is the sentence to show."""


class TrainingAlreadyRunning(ServiceError):
    """A cycle holds the lock (in this process or another one)."""
