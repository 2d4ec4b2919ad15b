"""Each room keeps its exception classes in one module, `<room>/errors.py` (docs/architecture.md):
a front end finds every error it may have to turn into a sentence in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

ROOMS = ("bot", "loop", "training", "storage")


def _modules(room: str) -> list[str]:
    package = importlib.import_module(room)
    names = [room]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{room}."):
        if info.name.endswith("__main__") or ".migrations" in info.name:  # alembic scripts run only under alembic
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("room", ROOMS)
def test_every_exception_of_a_room_lives_in_its_errors_module(room: str) -> None:
    misplaced = []
    for name in _modules(room):
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name
                    and name != f"{room}.errors"):
                misplaced.append(f"{name}.{value.__qualname__}")
    assert misplaced == [], f"define these in {room}/errors.py: {misplaced}"
    assert importlib.import_module(f"{room}.errors")  # the module exists


def test_the_errors_modules_hold_exceptions_only() -> None:
    for room in ROOMS:
        module = importlib.import_module(f"{room}.errors")
        own = [value for value in vars(module).values() if inspect.isclass(value) and value.__module__ == module.__name__]
        assert own and all(issubclass(value, BaseException) for value in own), room
