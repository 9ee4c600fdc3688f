"""The errors a user's input can cause, importable from anywhere without a cycle."""

from __future__ import annotations

from typing import Any, NoReturn


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which key and how to fix it."""


def fail(key: str, value: Any, fix: str) -> NoReturn:
    """Raise ConfigError ``"<key>=<value!r>: <fix>"``."""
    raise ConfigError(f"{key}={value!r}: {fix}")


def registry_row(registry: dict, name: str, key: str, listed: str = "use one of"):
    """``registry[name]``, or a ConfigError ``"<key>='name': <listed> <the names>"``: what
    every registry (backends, dataset layouts, model sources, tasks) answers for a name it
    does not hold."""
    try:
        return registry[name]
    except KeyError:
        fail(key, name, f"{listed} {', '.join(registry)}")


class DecodeError(ValueError):
    """An image file could not be decoded (truncated, empty, wrong format...).

    The message names the file (when decoding a path) and the kind of problem; for DICOM
    it never quotes a tag value.  ``reason`` is the message without the path.
    """

    def __init__(self, reason: str, path: str | None = None):
        self.reason, self.path = reason, path
        super().__init__(f"{path}: {reason}" if path else reason)


# What a bad input's message tells the user to do instead of stopping.
SKIP_HINT = "set data.on_error=skip to evaluate the other samples and list this one as skipped"


class BadSampleError(RuntimeError):
    """A sample cannot be read and ``data.on_error=fail``: names the file and the reason."""

    def __init__(self, path: str, reason: str, more: int = 0):
        self.path, self.reason, self.more = str(path), reason, more
        extra = f" (and {more} more bad samples)" if more else ""
        super().__init__(f"{path}: {reason}{extra}; {SKIP_HINT}")

    def __reduce__(self):  # crosses process boundaries (Ray) with its fields intact
        return (type(self), (self.path, self.reason, self.more))
