"""Content-addressed cache of built artifacts (ONNX files, IR, INT8 models, engines).

An entry lives in ``<cache>/artifacts/<kind>-<key16>/`` with the artifact file and a
``meta.json`` recording the key's inputs, every file's sha256, the size and build time.
An entry is used only if the recorded hash matches the file on disk; otherwise it is
rebuilt.  Builds hold an exclusive file lock so concurrent jobs build once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medray.io import cache_key, file_sha256

log = logging.getLogger("medray.artifacts")


@dataclass
class Artifact:
    """A built file and what it cost."""

    path: str
    bytes: int
    build_s: float
    cache_hit: bool
    key: str
    kind: str

    def to_dict(self) -> dict:
        return asdict(self)


class ArtifactCache:
    """``get_or_build(kind, parts, filename, build)`` returns a verified :class:`Artifact`."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "artifacts"
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self, name: str):
        """An exclusive lock named ``name`` under the cache (also for files that grow
        across builds, such as the INT8 repair's memo of evaluations)."""
        with open(self.root / f".{name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def entry_dir(self, kind: str, parts: dict[str, Any]) -> Path:
        return self.root / f"{kind}-{cache_key(parts)[:16]}"

    def get_or_build(
        self,
        kind: str,
        parts: dict[str, Any],
        filename: str,
        build: Callable[[Path], None],
    ) -> Artifact:
        """Return the cached artifact for ``parts`` or call ``build(path)`` to make it."""
        key = cache_key(parts)
        d = self.root / f"{kind}-{key[:16]}"
        path = d / filename
        with self.lock(d.name):
            hit = self._verified(d, path, key)
            if hit is not None:
                log.info("%s: cache hit %s", kind, path)
                return Artifact(str(path), hit["bytes"], 0.0, True, key, kind)
            if d.exists():
                log.warning("%s: cache entry %s is incomplete or corrupted; rebuilding", kind, d)
                shutil.rmtree(d)
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            log.info("%s: building %s", kind, filename)
            t0 = time.perf_counter()
            build(tmp / filename)
            build_s = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
            meta = {
                "key": key,
                "kind": kind,
                "parts": parts,
                "file": filename,
                "sha256": file_sha256(tmp / filename),
                # Every file of the entry (an OpenVINO IR's weights live in model.bin
                # beside model.xml): a corrupted companion file is a miss, not garbage.
                "files": {
                    str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
                },
                "bytes": size,
                "build_s": build_s,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            tmp.rename(d)
            log.info("%s: built in %.1fs, %.1f MB", kind, build_s, size / 1e6)
            return Artifact(str(path), size, build_s, False, key, kind)

    @staticmethod
    def _verified(d: Path, path: Path, key: str) -> dict | None:
        meta_path = d / "meta.json"
        if not (meta_path.is_file() and path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            return None
        if meta.get("key") != key or meta.get("sha256") != file_sha256(path):
            return None
        for rel, digest in (meta.get("files") or {}).items():
            f = d / rel
            if not f.is_file() or file_sha256(f) != digest:
                return None
        return meta


def int8_parts(spec, source_key: str, calibration: dict, quantize: str, **own) -> dict[str, Any]:
    """What every INT8 artifact's key holds: the graph it is built from, the calibration set,
    the input shape and the preprocessing the calibration tensors were made with (another
    normalisation is another INT8 model), plus the quantizer's own settings and versions."""
    m = spec.model
    return {"from": source_key, "quantize": quantize, "calibration": calibration, "input": list(m.input_shape),
            "preprocess": m.preprocess, **own}
