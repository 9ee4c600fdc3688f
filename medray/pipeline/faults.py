"""Worker faults and their accounting: nothing lost, nothing counted twice.

* Bad samples: the policy (``data.on_error``) is :mod:`medray.data.policy`; here the
  driver stops at the first bad row a read task marked (:func:`raise_first_bad`).
* Worker faults: Predictor actors are restarted and their batch retried a bounded number
  of times (``ray.max_retries``); a batch that comes back twice is kept once only if both
  copies are identical (:func:`dedupe_retried`).  :func:`explain_failure` turns what Ray
  raises into one message with the cause.
* Fault injection for tests: :func:`inject_faults` reads ``RunSpec.options``.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pandas as pd

from medray.errors import BadSampleError

log = logging.getLogger("medray.faults")


class WorkerFault(RuntimeError):
    """A run failed in the Ray pipeline; the message carries the root cause."""


# --------------------------------------------------------------------------- worker faults


def _same_prediction(rows: pd.DataFrame, columns: tuple[str, ...]) -> bool:
    first = rows.iloc[0]
    for _, r in rows.iloc[1:].iterrows():
        for col in (*columns, "skipped_reason"):
            if col not in rows.columns:
                continue
            a, b = first[col], r[col]
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                a, b = np.asarray(a), np.asarray(b)
                if a.shape != b.shape or a.tobytes() != b.tobytes():
                    return False
            elif a != b:
                return False
    return True


def dedupe_retried(name: str, df: pd.DataFrame, columns: tuple[str, ...] = ("probs",)) -> tuple[pd.DataFrame, int]:
    """Drop second copies of samples a retried batch delivered again.

    Only predictions whose ``columns`` (the task's identity columns) are byte-identical are
    merged; two different predictions for one sample are an error (which one would be
    right?).  Returns the rows and how many were dropped.
    """
    if df.empty:
        return df, 0
    dup = df["sample_id"].duplicated(keep=False)
    if not dup.any():
        return df, 0
    differing = [sid for sid, rows in df[dup].groupby("sample_id", sort=True) if not _same_prediction(rows, columns)]
    if differing:
        raise RuntimeError(
            f"{name}: {len(differing)} samples came back more than once with different predictions "
            f"(e.g. {differing[:5]}); refusing to pick one"
        )
    keep = ~df["sample_id"].duplicated(keep="first")
    n = int((~keep).sum())
    log.warning("%s: %d samples delivered twice by a retried batch (identical outputs); kept once", name, n)
    return df[keep].reset_index(drop=True), n


def cause_chain(e: BaseException) -> list[BaseException]:
    """``e`` and its causes, outermost first (Ray wraps the user's error in several layers)."""
    chain: list[BaseException] = []
    while isinstance(e, BaseException) and all(e is not c for c in chain):
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__
    return chain


# "module.ClassName: message" lines of a worker traceback that Ray forwards as text.
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Fault|error)): (.+)$", re.M)


def explain_failure(run: str, e: BaseException, max_retries: int) -> BaseException:
    """One exception saying why the pipeline of ``run`` failed.

    Ray Data re-raises a worker's exception as a wrapper whose text holds the worker's
    traceback (the original exception object does not survive); a BackendError (e.g.
    out of memory) is rebuilt from that text so its message reaches the user as is.
    A worker that kept dying is described with the retry budget.
    """
    from medray.backends.base import BackendError

    chain = cause_chain(e)
    ours = next((c for c in chain if isinstance(c, (BadSampleError, BackendError))), None)
    if ours is not None:
        return ours
    try:
        import ray.exceptions as rex

        died = any(isinstance(c, (rex.ActorDiedError, rex.RayActorError, rex.WorkerCrashedError)) for c in chain)
    except Exception:  # pragma: no cover - ray is always there when a pipeline ran
        died = False
    lines = [(cls, msg) for cls, msg in _ERROR_LINE.findall(str(chain[0])) if not cls.startswith("ray.")]
    started = next((c for c in chain if "error raised in its creation task" in str(c)), None)
    if started is not None:  # the actor's constructor raised (the session could not start): that error, as is
        cause = [(cls, msg) for cls, msg in _ERROR_LINE.findall(str(started)) if not cls.startswith("ray.")]
        if cause:
            cls, msg = cause[-1]
            if cls.rsplit(".", 1)[-1] == "BackendError":
                return BackendError(msg)
            return WorkerFault(f"{run}: the Predictor could not start its {run} session: {cls.rsplit('.', 1)[-1]}: {msg}")
    if died:
        last = str(chain[-1]).strip().splitlines()
        return WorkerFault(
            f"{run}: a Predictor worker died and kept dying after {max_retries} restarts/retries "
            f"(ray.max_retries={max_retries}); last error: {type(chain[-1]).__name__}: {last[0] if last else ''}. "
            "Check the worker logs for the crash (out of memory, a segfault in the backend) or raise ray.max_retries"
        )
    if lines:
        cls, msg = lines[-1]
        if cls.endswith(".BackendError") or cls == "BackendError":
            return BackendError(msg)
        return WorkerFault(f"{run}: the pipeline failed in a worker: {cls.rsplit('.', 1)[-1]}: {msg}")
    text = (str(chain[-1]).strip().splitlines() or [""])[0]
    return WorkerFault(f"{run}: the pipeline failed: {type(chain[-1]).__name__}: {text}")


def release(e: BaseException) -> BaseException:
    """``e`` without its traceback and chain, after a garbage collection.

    A failed Ray Data execution stays alive (with its actors and their resources) while
    anything references its frames; the message already carries the cause.
    """
    import gc

    e.__traceback__, e.__context__, e.__cause__ = None, None, None
    gc.collect()
    return e


def raise_first_bad(batch: dict[str, np.ndarray], paths: dict[str, str]) -> None:
    """``data.on_error=fail`` on the driver: the first skipped row of ``batch`` stops the run.

    The decode tasks mark bad rows instead of raising, so the error keeps its fields
    (Ray forwards a worker's exception as text only).
    """
    reasons = batch.get("skipped_reason")
    if reasons is None:
        return
    for sid, r in zip(batch["sample_id"], reasons):
        if r:
            path = paths.get(str(sid), str(sid))
            # A reason that names its file already (a volume reader's) is not prefixed twice.
            raise BadSampleError(path, str(r).removeprefix(f"{path}: "))


# --------------------------------------------------------------------------- injection


def inject_faults(options: dict, n_batches: int) -> None:
    """Test hooks read from ``RunSpec.options`` (never set by configs):

    ``fail_after_batches`` = N: after this actor ran N batches, kill its process
    (``os._exit``) — once per ``fail_once_marker`` file if given, else every time.
    ``raise_after_batches`` = N: raise a RuntimeError instead (an application error,
    which must fail the run with its message, not be retried).
    """
    n = options.get("fail_after_batches")
    if n is not None and n_batches >= int(n):
        marker = options.get("fail_once_marker")
        first = True
        if marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
            except FileExistsError:
                first = False
        if first:
            log.warning("fault injection: killing worker pid %d after %d batches", os.getpid(), n_batches)
            os._exit(17)
    n = options.get("raise_after_batches")
    if n is not None and n_batches >= int(n):
        counter = options.get("attempts_file")
        if counter:
            with open(counter, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        raise RuntimeError(f"injected backend fault after {n_batches} batches")
