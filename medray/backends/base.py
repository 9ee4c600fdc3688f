"""The Backend template: the base class owns checks, warm-up and timing.

Subclasses implement ``_load`` / ``_infer`` / ``_close`` (and, when they need a built
artifact such as an ONNX file, the classmethod ``prepare`` that runs once on the driver).
Actors receive a :class:`RunSpec` — plain dataclasses and absolute paths only.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medray.io import cache_key
from medray.specs import ModelSpec, RunSpec  # noqa: F401  (re-exported for backends)

if TYPE_CHECKING:
    from medray.backends.artifacts import ArtifactCache

log = logging.getLogger("medray.backends")


class BackendError(RuntimeError):
    """A backend could not give exactly what the config asked for."""


# How the libraries say "out of memory": torch raises torch.OutOfMemoryError; ONNX Runtime,
# OpenVINO and TensorRT raise RuntimeErrors whose text is all there is to go by.
_OOM_TEXT = (
    "out of memory",
    "failed to allocate memory",
    "bad_alloc",
    "cuda_error_out_of_memory",
    "cudaerrormemoryallocation",
    "could not be allocated",
    "out of gpu resources",
)


def is_out_of_memory(e: BaseException) -> bool:
    """True for a memory allocation failure of any backend (host or device)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return any(t in text for t in _OOM_TEXT)


def members_artifact(arts: list[dict | None]) -> dict | None:
    """One artifact record for the per-member artifacts of a model of several networks:
    the members' records, their total size and build time, and the first member's other
    keys (calibration, reference: the same for every member)."""
    if all(a is None for a in arts):
        return None
    if any(a is None for a in arts):
        raise BackendError("some members of the model have an artifact and others not")
    out = {k: v for k, v in arts[0].items() if k not in ("members",)}
    out.update(members=arts, bytes=sum(a["bytes"] for a in arts), build_s=sum(a["build_s"] for a in arts),
               cache_hit=all(a["cache_hit"] for a in arts), key=cache_key([a.get("key") for a in arts]))
    ref = [a.get("reference") for a in arts]
    if all(ref):
        out["reference"] = {**ref[0], "bytes": sum(r["bytes"] for r in ref)}
    return out


class Backend(ABC):
    """Template method: ``load`` → ``infer`` (timed) → ``close``.

    Also a context manager: ``with get_backend(name)(spec) as b:`` loads and closes it.
    """

    name: ClassVar[str]

    def __init__(self, spec: RunSpec):
        from medray.data.preprocess import InputBuffers

        self.spec = spec
        # Arrays the session's inputs are normalised into, reused batch after batch.
        self.inputs = InputBuffers()
        self.last_ms: float = 0.0
        self.effective_precision: dict[str, Any] = {}
        # One loaded backend per member of a model of several networks (ModelSpec.members).
        self.members: list[Backend] = []
        self._loaded = False

    # -- node checks (the doctor) ---------------------------------------------------------
    @classmethod
    def capability(cls, precision: str, device: str, detail: dict) -> tuple[str, str, str] | None:
        """Whether this node's library / hardware runs ``precision`` on ``device``, once its
        libraries import and the device is there: None = yes, else ``(status, reason, fix)``
        (status ``missing`` or ``unsupported``).  What was read goes into ``detail``."""
        return None

    # -- driver side ------------------------------------------------------------------
    @classmethod
    def prepare(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict | None:
        """Build (or fetch from the cache) what the actors will load; None if nothing."""
        return None

    @classmethod
    def prepare_model(cls, spec: RunSpec, cache: ArtifactCache, context: dict) -> dict | None:
        """:meth:`prepare` of the spec's model: one artifact per member for a model of
        several networks (nnU-Net's folds), gathered under ``members``."""
        if not spec.model.members:
            return cls.prepare(spec, cache, context)
        arts = [cls.prepare(spec.member(i), cache, context) for i in range(len(spec.model.members))]
        return members_artifact(arts)

    # -- actor side -------------------------------------------------------------------
    @property
    def executes(self) -> str:
        """The precision the artifact runs: the spec's, or the one an INT8 repair fell back
        to when no INT8 layer set passed its gate (``artifact["executes"]``, reported)."""
        return (self.spec.artifact or {}).get("executes") or self.spec.precision

    def member(self, i: int) -> Backend:
        """The session of model member ``i`` (itself for a model of one network)."""
        return self.members[i] if self.members else self

    def load(self) -> Backend:
        """Load the session, record the precision really executed, run warm-up batches
        (a model of several networks: one loaded session per member)."""
        spec = self.spec
        if spec.model.members:
            for i in range(len(spec.model.members)):
                self.members.append(type(self)(spec.member(i)).load())
            self.effective_precision = {**self.members[0].effective_precision, "members": spec.model.member_names()}
            self._loaded = True
            return self
        t0 = time.perf_counter()
        self._check_checkpoint()
        if spec.options.get("fail_load"):  # test hook: a session that cannot start on the node
            raise RuntimeError(f"injected: {spec.options['fail_load']}")
        self._load()
        self.effective_precision = self._effective_precision()
        log.info("%s: loaded in %.2fs (threads=%d)", spec.name, time.perf_counter() - t0, spec.threads)
        if spec.warmup_batches:
            x = np.random.default_rng(0).standard_normal((spec.batch_size, *spec.model.input_shape), dtype=np.float32)
            for _ in range(spec.warmup_batches):
                self._guarded_infer(x)
        self._loaded = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns host float32 logits and sets ``last_ms``.

        The time covers the backend call including the copy of outputs back to host
        memory, which is where GPU backends synchronise.
        """
        if not self._loaded:
            raise BackendError(f"{self.spec.name}: infer() before load()")
        if self.members:
            raise BackendError(f"{self.spec.name}: a model of {len(self.members)} networks; infer on member(i)")
        if x.ndim != 1 + len(self.spec.model.input_shape) or tuple(x.shape[1:]) != self.spec.model.input_shape:
            raise BackendError(
                f"{self.spec.name}: input shape {tuple(x.shape)} does not match the model's "
                f"(N, {', '.join(map(str, self.spec.model.input_shape))})"
            )
        t0 = time.perf_counter()
        out = self._guarded_infer(x)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        out = np.asarray(out, dtype=np.float32)
        if out.shape[0] != x.shape[0]:
            raise BackendError(f"{self.spec.name}: {out.shape[0]} outputs for a batch of {x.shape[0]}")
        return out

    def _check_checkpoint(self) -> None:
        """A backend that reads the model itself (no built artifact) reads the very file the
        driver checked: baseline and candidate must run the same weights."""
        m = self.spec.model
        if self.spec.artifact is not None:
            return
        from medray.io import file_sha256, path_sha256

        for key, path, sha, digest in (("model.checkpoint", m.checkpoint, m.checkpoint_sha256, file_sha256),
                                       ("model.path", m.path, m.path_sha256, path_sha256)):
            if path and sha and digest(path) != sha:
                raise BackendError(
                    f"{self.spec.name}: {key}={path} changed since the run was prepared "
                    f"(sha256 {sha[:12]}… expected); do not overwrite a model file during a run"
                )

    def _guarded_infer(self, x: np.ndarray) -> np.ndarray:
        """``_infer`` with out-of-memory errors turned into a BackendError that says what to change."""
        try:
            oom_at = self.spec.options.get("oom_at_batch_size")  # test hook: a device too small
            if oom_at is not None and len(x) >= int(oom_at):
                if self.spec.options.get("attempts_file"):  # lets a test see which batch ran where
                    import hashlib

                    with open(self.spec.options["attempts_file"], "a") as fh:
                        fh.write(f"{os.getpid()} {hashlib.sha256(x.tobytes()).hexdigest()[:16]}\n")
                raise MemoryError(f"injected: cannot allocate the activations of a batch of {len(x)}")
            return self._infer(x)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            spec = self.spec
            first = (str(e).strip().splitlines() or [""])[0][:300]
            fix = (
                f"lower batch_size (e.g. batch_size={spec.batch_size // 2})"
                if spec.batch_size > 1
                else "the model does not fit even at batch_size=1: use a device with more memory"
            )
            raise BackendError(
                f"{spec.name}: out of memory on {spec.device} at batch_size={spec.batch_size} "
                f"(streams={spec.streams}, {type(e).__name__}: {first}); {fix}, or fewer streams per device"
            ) from e

    def close(self) -> None:
        """Release the session (idempotent)."""
        if self._loaded:
            self._loaded = False
            if self.members:
                for m in self.members:
                    m.close()
                self.members = []
            else:
                self._close()

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- to implement -----------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _close(self) -> None: ...

    def _effective_precision(self) -> dict[str, Any]:
        """What the backend really executes (overridden where the library can tell)."""
        return {"requested": self.spec.precision, "executed": self.spec.precision, "source": "config"}
