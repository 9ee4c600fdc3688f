"""Datasets medray generates itself (synthetic radiographs, CT phantoms): written once.

A generated set is identified by its generator arguments, recorded in
``root/dataset.json`` under ``"generator"``.  It is written to a temporary folder beside
``root`` and renamed into place, so a killed process never leaves half a dataset, and two
processes (or nodes on a shared file system) generating the same set both end up with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path


def write_once(root: Path, gen: dict, write: Callable[[Path], None], what: str) -> Path:
    """Return ``root``, first calling ``write(tmp)`` and renaming ``tmp`` to it unless
    ``root`` already holds this very set.  ``what`` names the set in errors."""
    if matches(root, gen, what):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root)
    tmp = root.parent / f".{root.name}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # an empty directory (e.g. made by the user) is fine to replace
        try:
            tmp.rename(root)
        except OSError:
            # Another process may have finished the same set first: that is fine.
            if not matches(root, gen, what):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def matches(root: Path, gen: dict, what: str) -> bool:
    """True if ``root`` is this very set; False if absent or empty; ValueError if different."""
    meta_path = root / "dataset.json"
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    if not meta_path.is_file():
        raise ValueError(
            f"data.root={root} exists and is not a {what} (no dataset.json). "
            "Pick another data.root or delete that directory."
        )
    try:
        have = json.loads(meta_path.read_text()).get("generator")
    except (OSError, json.JSONDecodeError, AttributeError):
        have = None
    if have == gen:
        return True
    raise ValueError(
        f"data.root={root} exists but is not the {what} asked for ({', '.join(generator_diff(have, gen))}). "
        "Pick another data.root or delete that directory to regenerate it."
    )


def generator_diff(have, want: dict) -> list[str]:
    """``"key: <recorded> there, <asked> asked"`` for every argument that differs."""
    if not isinstance(have, dict):
        return ["no generator arguments recorded"]
    return [f"{k}: {have.get(k)!r} there, {v!r} asked" for k, v in want.items() if have.get(k) != v]


def host_tag() -> str:
    """A short tag of this host, in temp-folder names (pids mean nothing across nodes)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def remove_stale_tmp(root: Path) -> None:
    """Delete temp folders left by killed generators — best effort.

    Only this host's, and only when their process is gone: on a shared file system
    another node may be generating right now (its pid means nothing here).
    """
    for p in root.parent.glob(f".{root.name}.tmp-{host_tag()}-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue
