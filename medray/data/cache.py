"""Decode once: a cache of the read stage's outputs (decoded, resized pixels at the model's input).

An evaluation reads its test set twice (baseline, candidate) and a sweep once per trial;
on full-size radiographs decoding is most of the work.  The first run writes what its
read tasks produce into Parquet shards; later runs with the same reader and settings read
the pixels back instead of decoding.

* Key: one folder per reader + its settings (the decode size, the preprocessing, the
  library versions: :func:`cache_parts`) — another preprocessing is another folder, so a
  cached image is never fed to a model it was not made for.  Inside, each row is keyed by
  the file's identity (path, size, mtime): a changed file is a miss for that sample only.
* Shards: ``<cache_dir>/decoded/<key>/shard-<uuid>.parquet``, written whole under a temp
  name and renamed (concurrent writers never see or make half a shard; two runs decoding
  the same file at once both write it, either copy is valid).  A shard that cannot be read
  is deleted and its samples decoded again.
* Rows that could not be read are not cached (a fixed file is read again anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from medray.io import cache_key

log = logging.getLogger("medray.cache")

VERSION = 1
KEY, SHARD, ROW = "cache_key", "cache_shard", "cache_row"
COLUMNS = (KEY, SHARD, ROW)
# The decoders' modules and their distributions.
_VERSIONED = {"PIL": "pillow", "pydicom": "pydicom", "nibabel": "nibabel", "monai": "monai", "numpy": "numpy"}


def cache_parts(reader, kwargs: dict) -> dict:
    """What a cached row depends on besides its file: the reader, its settings, the decoders."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for mod, dist in _VERSIONED.items():
        # The installed distribution's version (= the module's __version__), without
        # importing it: importing MONAI took 3-5 s of every sweep trial's start.
        try:
            versions[mod] = version(dist)
        except PackageNotFoundError:  # not installed: the reader does not use it
            versions[mod] = None
    settings = {k: v for k, v in kwargs.items() if k != "on_error"}
    return {"version": VERSION, "reader": f"{reader.__module__}.{reader.__qualname__}", "settings": settings, **versions}


def file_identity(path: str) -> str:
    """``path|size|mtime_ns`` of a local file or a URI (pyarrow's file info); "" if missing."""
    try:
        if "://" in path and not path.startswith("file://"):
            from medray import io as medray_io

            fs, p = medray_io.filesystem(path)
            info = fs.get_file_info(p)
            mtime = info.mtime_ns if info.mtime_ns is not None else ""
            return f"{path}|{info.size}|{mtime}" if info.size is not None else ""
        st = os.stat(path.removeprefix("file://"))
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return ""


class DecodedCache:
    """The cache folder of one reader + settings (see the module docstring)."""

    def __init__(self, cache_dir: str, parts: dict):
        self.parts = parts
        self.dir = Path(cache_dir) / "decoded" / cache_key(parts)[:16]

    def index(self) -> dict[str, tuple[str, int]]:
        """file identity → (shard file, row) over every readable shard."""
        out: dict[str, tuple[str, int]] = {}
        if not self.dir.is_dir():
            return out
        import pyarrow.parquet as pq

        for shard in sorted(self.dir.glob("shard-*.parquet")):
            try:
                keys = pq.read_table(shard, columns=["file_key"]).column("file_key").to_pylist()
            except Exception as e:  # a damaged shard is rebuilt, never half-used
                log.warning("decoded cache: shard %s is unreadable (%s); its samples are decoded again", shard.name, e)
                shard.unlink(missing_ok=True)
                continue
            for i, k in enumerate(keys):
                out.setdefault(k, (str(shard), i))
        return out

    def lookup(self, samples: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        """``samples`` with the cache columns (shard "" = a miss) and the hit/miss counts."""
        idx = self.index()
        keys = [file_identity(str(p)) for p in samples["path"]]
        where = [idx.get(k, ("", -1)) if k else ("", -1) for k in keys]
        out = samples.copy()
        out[KEY] = keys
        out[SHARD] = [w[0] for w in where]
        out[ROW] = np.asarray([w[1] for w in where], dtype=np.int64)
        hits = int((out[SHARD] != "").sum())
        return out, {"dir": str(self.dir), "hits": hits, "misses": int(len(out) - hits)}

    def prepare(self) -> None:
        """Create the folder and record what its rows depend on (for a reader of the cache)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.is_file():
            tmp = meta.with_name(f".meta.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(self.parts, indent=1, sort_keys=True, default=str))
            os.replace(tmp, meta)


def cached(fn, cache_dir: str):
    """The read function ``fn`` with the cache around it (runs in the read tasks).

    The block's rows with a shard are read from it (a shard gone or damaged since the
    driver looked: decoded after all); the others are decoded by ``fn`` and the readable
    ones written as a new shard.  Output rows keep the block's order and ids.
    """

    @functools.wraps(fn)
    def read(batch, **kwargs):
        shard = np.asarray(batch[SHARD]).astype(str)
        keys = np.asarray(batch[KEY]).astype(str)
        rows = np.asarray(batch[ROW])
        plain = {k: v for k, v in batch.items() if k not in COLUMNS}
        pieces: list[tuple[np.ndarray, dict]] = []  # (positions in the block, their columns)
        hit = shard != ""
        for s in sorted(set(shard[hit])):
            pos = np.flatnonzero(shard == s)
            got = _read_rows(s, rows[pos])
            if got is None:
                hit[pos] = False
                continue
            pieces.append((pos, got))
        miss = np.flatnonzero(~hit)
        if len(miss):
            out = fn({k: np.asarray(v)[miss] for k, v in plain.items()}, **kwargs)
            ok = np.array([not r for r in out.get("skipped_reason", np.full(len(miss), ""))], dtype=bool)
            if ok.any() and all(keys[miss][ok]):
                _write_shard(Path(cache_dir), keys[miss][ok], {k: np.asarray(v)[ok] for k, v in out.items() if k != "sample_id"})
            pieces.append((miss, {k: np.asarray(v) for k, v in out.items() if k != "sample_id"}))
        return {"sample_id": np.asarray(plain["sample_id"]), **_assemble(len(keys), pieces)}

    return read


def _assemble(n: int, pieces: list[tuple[np.ndarray, dict]]) -> dict[str, np.ndarray]:
    """The block's columns from pieces that each fill some of its positions (cached rows,
    decoded rows), whole arrays at a time: a read block is hundreds of images, and a
    Python loop per row was a third of a warm run's read cost."""
    result: dict[str, np.ndarray] = {}
    for c in sorted({k for _, cols in pieces for k in cols}):
        have = [(pos, cols[c]) for pos, cols in pieces if c in cols]
        first = have[0][1]
        textual = c == "skipped_reason" or first.dtype.kind in "OU"
        if textual:
            col = np.full(n, "", dtype=object)
        else:
            # Rows of a piece without the column stay blank (zeros), as a skipped row's pixels.
            col = np.zeros((n, *first.shape[1:]), dtype=np.result_type(*[v.dtype for _, v in have]))
        for pos, v in have:
            col[pos] = v
        result[c] = col
    if "skipped_reason" not in result:
        result["skipped_reason"] = np.full(n, "", dtype=object)
    return result


def _read_rows(shard: str, rows: np.ndarray) -> dict | None:
    """Columns of ``rows`` of a shard; None when the shard is gone or unreadable."""
    from medray.io import read_columns

    try:
        out = read_columns(shard, rows, skip=("file_key",))
    except Exception:
        return None
    out["skipped_reason"] = np.full(len(rows), "", dtype=object)
    return out


def _write_shard(folder: Path, keys: np.ndarray, cols: dict) -> None:
    from medray.io import write_part

    folder.mkdir(parents=True, exist_ok=True)
    batch = {"file_key": np.asarray(keys, dtype=object), **{k: v for k, v in cols.items() if k != "skipped_reason"}}
    name = f"shard-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        write_part(tmp, batch)
        os.replace(tmp, folder / name)
    except OSError as e:  # a full or read-only cache must not fail the run: the rows are decoded
        log.warning("decoded cache: could not write %s (%s)", folder / name, e)
        tmp.unlink(missing_ok=True)
