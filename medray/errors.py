"""The errors a user's input can cause, importable from anywhere without a cycle."""

from __future__ import annotations

from typing import Any, NoReturn


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and how to fix it."""


def fail(key: str, value: Any, fix: str) -> NoReturn:
    """Raise ConfigError ``"<key>=<value!r>: <fix>"``."""
    raise ConfigError(f"{key}={value!r}: {fix}")
