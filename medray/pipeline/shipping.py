"""Driver-built files (checkpoint, artifacts) delivered to the nodes whose actors load them.

The choice: **the object store, verified by sha256, with the shared file system as a
shortcut.**

* The driver reads each file once and ``ray.put``s its bytes (:func:`ship`).  A cluster
  made by ``cluster.yaml`` has no shared file system, but it always has an object store;
  artifacts are megabytes to a few hundred megabytes, which it moves fine.
* An actor (:func:`materialise`) first looks for the file at the driver's path: on the
  driver's node, or when ``cache_dir`` is on a shared mount (EFS, NFS, Lustre), it is
  there, and it is used in place if its sha256 matches.  Otherwise the actor fetches the
  bytes (Ray copies the object to that node once) and writes them into the node-local
  cache ``<MEDRAY_CACHE>/shipped/<hash>/`` under a file lock — the actors of one node
  write it once and the next run on that node finds it there — and checks every file's
  sha256 before loading anything.
* Device-specific artifacts (TensorRT engines) are not shipped: the backend builds them
  in its actors, on the GPU node, from a shipped ONNX graph.  A backend marks such an
  artifact with ``"ship": False``.

An artifact of :class:`~medray.backends.artifacts.ArtifactCache` is a directory entry
(ONNX + external data, OpenVINO ``.xml`` + ``.bin``...): every file of the entry is
shipped.  A checkpoint is one file, shipped for backends that load it (no artifact).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medray.io import file_sha256
from medray.specs import RunSpec

log = logging.getLogger("medray.shipping")

# RunSpec.options key holding {"checkpoint": Shipment, "artifact": Shipment}.
OPTION = "shipments"
_SKIP = {"meta.json"}  # cache bookkeeping, not needed to load


class ShippingError(RuntimeError):
    """A shipped file could not be materialised with the right content."""


@dataclass
class Shipment:
    """Files shipped through the object store; ``origin`` is the path the spec names."""

    origin: str
    files: dict[str, str]  # name relative to the origin's folder -> sha256
    nbytes: int
    ref: Any = field(repr=False, default=None)  # ObjectRef of {name: bytes}
    folder: bool = False  # origin is a model folder (its files shipped), not a file

    @property
    def key(self) -> str:
        blob = "\n".join(f"{n}:{h}" for n, h in sorted(self.files.items()))
        return hashlib.sha256(blob.encode()).hexdigest()


def _entry_files(path: Path) -> list[Path]:
    """The files that travel with ``path``: a model folder's files (``model=hf``), its whole
    cache entry, or just itself."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    d = path.parent
    if (d / "meta.json").is_file():  # an ArtifactCache entry: all its files (ONNX external data, IR .bin)
        return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in _SKIP)
    return [path]


def pack(path: str, put=None) -> Shipment:
    """Read ``path`` (and its entry's sibling files) and put the bytes in the object store."""
    import ray

    p = Path(path)
    files = _entry_files(p)
    blobs = {f.name: f.read_bytes() for f in files}
    hashes = {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()}
    nbytes = sum(len(b) for b in blobs.values())
    ref = (put or ray.put)(blobs)
    return Shipment(str(p), hashes, nbytes, ref, folder=p.is_dir())


def ship(spec: RunSpec, shipped: dict[str, Shipment] | None = None, put=None) -> RunSpec:
    """Driver side: ``spec`` with its checkpoint and artifact in the object store.

    ``shipped`` caches shipments by path across the specs of one job (the baseline and
    the candidate load the same checkpoint); ``put`` replaces ``ray.put`` (tests).
    """
    shipped = {} if shipped is None else shipped
    out: dict[str, Shipment] = {}
    wanted = {}
    # A backend with an artifact (ONNX, IR...) loads that, not the checkpoint (torch has
    # no artifact and loads the checkpoint): ship only what the actors open.
    if spec.model.checkpoint and not spec.artifact:
        wanted["checkpoint"] = spec.model.checkpoint
    if spec.model.path and not spec.artifact and _shipped_path(spec):
        wanted["model_path"] = spec.model.path
    if spec.artifact and spec.artifact.get("path") and spec.artifact.get("ship", True):
        wanted["artifact"] = spec.artifact["path"]
    for i, art in enumerate((spec.artifact or {}).get("members") or []):  # one artifact per network of the model
        if art.get("path") and art.get("ship", True):
            wanted[f"artifact:{i}"] = art["path"]
    for what, path in wanted.items():
        if path not in shipped:
            t0 = time.perf_counter()
            shipped[path] = pack(path, put)
            log.info("%s: %s %s (%.1f MB) in the object store for the actors (%.1fs)",
                     spec.name, what, path, shipped[path].nbytes / 1e6, time.perf_counter() - t0)
        out[what] = shipped[path]
    if not out:
        return spec
    return replace(spec, options={**spec.options, OPTION: out})


def _shipped_path(spec: RunSpec) -> bool:
    """A model file, or a classifier's folder torch loads (Hugging Face), is shipped; a 3-D
    model folder (nnU-Net, a MONAI bundle) is read in the read tasks too, so it is read where
    it is: a mount every node sees."""
    from medray.data.sources import IMAGE
    from medray.models.sources import source

    return Path(spec.model.path).is_file() or IMAGE in source(spec.model.source).kinds


def should_ship(setting: bool | None, address: str | None, alive_nodes: int) -> bool:
    """``ray.ship_artifacts``: true/false, or null = when the actors may run on another
    node than the driver (a cluster address was given, or the cluster has several nodes —
    an autoscaling cluster may add nodes after the job started)."""
    if setting is not None:
        return setting
    return address is not None or alive_nodes > 1


# --------------------------------------------------------------------------- actor side


def node_cache_dir() -> Path:
    """This node's medray cache (``MEDRAY_CACHE`` or ``~/.cache/medray``)."""
    from medray.config import default_cache_dir

    return Path(default_cache_dir())


def _verified(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / n).is_file() and file_sha256(folder / n) == h for n, h in files.items())


def materialise_one(sh: Shipment, cache_dir: Path | None = None) -> str:
    """The local path of ``sh.origin``'s content on this node (fetched if needed); a
    shipped folder comes back as a folder."""
    origin = Path(sh.origin)
    folder = sh.folder
    if _verified(origin if folder else origin.parent, sh.files):
        return str(origin)  # same node as the driver, or a shared mount
    root = (cache_dir or node_cache_dir()) / "shipped"
    root.mkdir(parents=True, exist_ok=True)
    target = root / sh.key[:16]
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other actors wait for one writer
        if _verified(target, sh.files):
            return str(target if folder else target / origin.name)
        t0 = time.perf_counter()
        if sh.ref is None:
            raise ShippingError(
                f"{sh.origin}: not on this node and not shipped; set ray.ship_artifacts=true, or put "
                "cache_dir and the checkpoint on a mount every node sees"
            )
        blobs = _fetch(sh.ref)
        tmp = root / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name, data in blobs.items():
                (tmp / name).write_bytes(data)
            if not _verified(tmp, sh.files):
                raise ShippingError(f"{sh.origin}: the shipped bytes do not match their sha256; not loading them")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s: materialised %.1f MB from the object store into %s (%.1fs)",
                 origin.name, sh.nbytes / 1e6, target, time.perf_counter() - t0)
        return str(target if folder else target / origin.name)


def _fetch(ref) -> dict[str, bytes]:
    """The shipped bytes: from the object store (an ObjectRef), or given directly (tests)."""
    if isinstance(ref, dict):
        return ref
    import ray

    return ray.get(ref)


def materialise(spec: RunSpec, cache_dir: Path | None = None) -> RunSpec:
    """Actor side: ``spec`` with its shipped paths replaced by local, verified ones."""
    shipments: dict[str, Shipment] = (spec.options or {}).get(OPTION) or {}
    if not shipments:
        return spec
    model, artifact = spec.model, spec.artifact
    if "checkpoint" in shipments:
        model = replace(model, checkpoint=materialise_one(shipments["checkpoint"], cache_dir))
    if "model_path" in shipments:
        model = replace(model, path=materialise_one(shipments["model_path"], cache_dir))
    if "artifact" in shipments:
        artifact = {**artifact, "path": materialise_one(shipments["artifact"], cache_dir)}
    if artifact and artifact.get("members"):
        artifact["members"] = [{**a, "path": materialise_one(shipments[f"artifact:{i}"], cache_dir)}
                               if f"artifact:{i}" in shipments else a for i, a in enumerate(artifact["members"])]
    options = {k: v for k, v in spec.options.items() if k != OPTION}
    return replace(spec, model=model, artifact=artifact, options=options)
