"""The errors a user's input can cause, importable from anywhere without a cycle."""

from __future__ import annotations

from typing import Any, NoReturn


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and how to fix it."""


def fail(key: str, value: Any, fix: str) -> NoReturn:
    """Raise ConfigError ``"<key>=<value!r>: <fix>"``."""
    raise ConfigError(f"{key}={value!r}: {fix}")


class DecodeError(ValueError):
    """An image file could not be decoded (truncated, empty, wrong format...).

    The message names the file (when decoding a path) and the kind of problem; for DICOM
    it never quotes a tag value.  ``reason`` is the message without the path.
    """

    def __init__(self, reason: str, path: str | None = None):
        self.reason, self.path = reason, path
        super().__init__(f"{path}: {reason}" if path else reason)
