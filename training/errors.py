"""Training's domain errors, in one module: settings, artifacts, models, data, serving.

Nothing here imports model code (training.config, a leaf, raises `ConfigError`); loop catches
these and turns them into a cycle's reason or a sentence for the owner.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names key, value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        super().__init__(f"config: {key} = {value!r} is not allowed; expected {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class ArtifactError(Exception):
    """An adapter folder cannot be written where asked."""


class CorruptAdapter(ArtifactError):
    """An adapter folder is incomplete or its files do not match the recorded checksum."""


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer cannot be found or loaded; the message says what to do."""


class ServingError(RuntimeError):
    """The model could not be converted for, or run by, a drafting backend."""


class GgufWriteError(ValueError):
    """The model cannot be written as a llama.cpp GGUF file (not a Llama-family model)."""


class NotEnoughData(ValueError):
    """Too few texts on one side to train (or score) the classifier; the message says which."""


class LambdaGUnavailable(RuntimeError):
    """The `lambdag` package is not installed; the message says how to install it."""


class IncompatibleReference(ValueError):
    """The reference adapter's tensors do not match the candidate's (another rank or target modules)."""


class NothingToTrain(Exception):
    """No enabled stage has rows: there is nothing to learn from yet."""


class LaunchFailed(RuntimeError):
    """`accelerate launch` ended without a training result; the message says how."""


class OverBudget(Exception):
    """The measurement passed its deadline; what was measured so far is dropped."""


class ServerError(RuntimeError):
    """The drafting server could not be used for this request."""


class ServerUnavailable(ServerError):
    """The server is down, timed out, refused the request, or does not serve the adapter yet:
    the same request may work later."""
