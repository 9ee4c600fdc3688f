"""Paths and URIs, one API: local paths, ``file://``, ``s3://``, ``gs://``, ``hdfs://``...

Everything goes through :mod:`pyarrow.fs` (``FileSystem.from_uri``), so ``data.root`` and
``output_dir`` may name shared storage that every node of a Ray cluster reaches: an
object store bucket, or a path on a shared mount.  A plain path is a local path
(``~`` expanded, made absolute); ``file:///x`` is the same as ``/x``.

Credentials are pyarrow's: the usual AWS/GCP environment variables, config files or the
instance's role — medray never handles them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from functools import lru_cache
from urllib.parse import urlsplit

# A single letter before ":" is a Windows drive, not a scheme.
_MIN_SCHEME = 2


def scheme(uri: str) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for ``file:///x``, ``""`` for a plain path."""
    if "://" not in uri:
        return ""
    s = uri.split("://", 1)[0].lower()
    return s if len(s) >= _MIN_SCHEME and s.replace("+", "").replace("-", "").replace(".", "").isalnum() else ""


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs (the node's own file system)."""
    return scheme(uri) in ("", "file", "local")


def is_remote(uri: str) -> bool:
    """True for URIs pyarrow opens through a network file system (s3, gs, hdfs...)."""
    return not is_local(uri)


def local_path(uri: str) -> str:
    """Absolute local path of a plain path or ``file://`` URI (ValueError for remote URIs)."""
    if is_remote(uri):
        raise ValueError(f"{uri!r} is not a local path")
    if scheme(uri):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{uri!r}: file:// URIs name no host (use file:///absolute/path)")
        uri = parts.path
    return os.path.abspath(os.path.expanduser(uri))


def normalize(uri: str) -> str:
    """Canonical form: local → absolute path; remote → the URI without a trailing slash."""
    if is_local(uri):
        return local_path(uri)
    return uri.rstrip("/")


def join(base: str, *parts: str) -> str:
    """Join path components (``/`` for URIs, the OS separator for local paths)."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(local_path(base), *parts)


@lru_cache(maxsize=16)
def _remote_fs(prefix: str):
    """One FileSystem per scheme://authority, and how its paths are spelled.

    ``FileSystem.from_uri`` is called once per bucket/host (S3 resolves the bucket's
    region through the network there), not once per file.  S3/GCS paths keep the
    bucket (``bucket/key``); others drop the authority, with or without a leading slash.
    """
    from pyarrow import fs

    probe = "__medray_probe__"
    filesys, path = fs.FileSystem.from_uri(f"{prefix}/{probe}")
    netloc = urlsplit(prefix).netloc
    keeps_netloc = bool(netloc) and path.startswith(netloc)
    leading_slash = path.startswith("/")
    return filesys, keeps_netloc, leading_slash


def filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` for ``uri``."""
    from pyarrow import fs

    if is_local(uri):
        return fs.LocalFileSystem(), local_path(uri)
    parts = urlsplit(uri)
    filesys, keeps_netloc, leading_slash = _remote_fs(f"{parts.scheme}://{parts.netloc}")
    path = parts.path.lstrip("/")
    if keeps_netloc:
        path = f"{parts.netloc}/{path}" if path else parts.netloc
    elif leading_slash:
        path = "/" + path
    return filesys, path.rstrip("/")


def exists(uri: str) -> bool:
    from pyarrow import fs

    filesys, path = filesystem(uri)
    return filesys.get_file_info(path).type != fs.FileType.NotFound


def is_file(uri: str) -> bool:
    from pyarrow import fs

    filesys, path = filesystem(uri)
    return filesys.get_file_info(path).type == fs.FileType.File


def makedirs(uri: str) -> None:
    """Create a directory and its parents (a no-op on object stores without directories)."""
    filesys, path = filesystem(uri)
    filesys.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    filesys, path = filesystem(uri)
    with filesys.open_input_stream(path) as f:
        return f.readall()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file.  Local files are written to a temporary name and renamed, so a
    reader never sees half a file; object stores publish an object only when it is
    complete anyway."""
    filesys, path = filesystem(uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if parent:
        filesys.create_dir(parent, recursive=True)
    if is_remote(uri):
        with filesys.open_output_stream(path) as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with filesys.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def write_parquet(table, uri: str) -> None:
    """Write a pyarrow Table as one Parquet file at ``uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(uri, sink.getvalue().to_pybytes())


def read_parquet(uri: str):
    """Read one Parquet file (a pyarrow Table)."""
    import pyarrow.parquet as pq

    filesys, path = filesystem(uri)
    return pq.read_table(path, filesystem=filesys)


def hydra_run_dir(output_dir: str) -> str:
    """Hydra's own run directory for ``output_dir``: the same place when it is local; a
    local ``outputs/hydra/...`` folder when the outputs go to a remote URI (Hydra can
    only write local files, and would otherwise create a folder literally named
    ``s3:``)."""
    if is_local(output_dir):
        return local_path(output_dir)
    parts = urlsplit(output_dir)
    tail = f"{parts.netloc}{parts.path}".strip("/").replace("/", "_") or "run"
    return os.path.join("outputs", "hydra", f"{parts.scheme}_{tail}")


def register_resolvers() -> None:
    """OmegaConf resolvers used by conf/ (``${medray_hydra_dir:${output_dir}}``)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("medray_hydra_dir", hydra_run_dir, replace=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file (cache keys, integrity checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
