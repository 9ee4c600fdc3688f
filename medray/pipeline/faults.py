"""Bad samples, worker faults and their accounting: nothing lost, nothing counted twice.

* Bad samples (``data.on_error``): a sample that cannot be read either stops the run with
  its path, the reason and the hint to use ``skip`` (:class:`BadSampleError`), or comes out
  of the pipeline as a row with a non-empty ``skipped_reason`` and no prediction.  Rows the
  driver can judge without decoding (file missing, label not in the class list) never
  enter the pipeline; :func:`screen` finds them.
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

log = logging.getLogger("medray.faults")

SKIP_HINT = "set data.on_error=skip to evaluate the other samples and list this one as skipped"
# Per-sample errors a decoder raises for a bad file; anything else is a bug and propagates.
SAMPLE_ERRORS = (ValueError, OSError)


class BadSampleError(RuntimeError):
    """A sample cannot be read and ``data.on_error=fail``: names the file and the reason."""

    def __init__(self, path: str, reason: str, more: int = 0):
        self.path, self.reason, self.more = str(path), reason, more
        extra = f" (and {more} more bad samples)" if more else ""
        super().__init__(f"{path}: {reason}{extra}; {SKIP_HINT}")

    def __reduce__(self):  # crosses process boundaries (Ray) with its fields intact
        return (type(self), (self.path, self.reason, self.more))


class WorkerFault(RuntimeError):
    """A run failed in the Ray pipeline; the message carries the root cause."""


def describe(e: BaseException) -> str:
    """``"<ExceptionType>: message"`` for a per-sample reason (no traceback)."""
    from medray.errors import DecodeError

    msg = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, DecodeError):
        return getattr(e, "reason", None) or msg  # the message without the path
    return f"{type(e).__name__}: {msg}"


# --------------------------------------------------------------------------- bad samples


def screen(samples: pd.DataFrame) -> pd.DataFrame:
    """Rows the driver can reject without decoding: ``sample_id, path, reason``.

    A source marks a row it could not parse (e.g. a label that is not in the class list)
    with a non-empty ``problem`` column instead of raising; a local file that does not
    exist is found here (URIs are left to the decode tasks).
    """
    reasons = []
    problems = samples["problem"] if "problem" in samples.columns else None
    for i, path in enumerate(samples["path"]):
        reason = ""
        if problems is not None and isinstance(problems.iat[i], str) and problems.iat[i]:
            reason = problems.iat[i]
        elif "://" not in str(path) and not os.path.exists(path):
            reason = "file not found"
        reasons.append(reason)
    mask = np.array([bool(r) for r in reasons], dtype=bool)
    out = samples.loc[mask, ["sample_id", "path"]].copy()
    out["reason"] = [r for r in reasons if r]
    return out.reset_index(drop=True)


def apply_policy(samples: pd.DataFrame, on_error: str) -> pd.DataFrame:
    """``samples`` with a ``problem`` column ("" = fine) from :func:`screen`.

    With ``on_error="fail"`` the first bad row raises BadSampleError (before any work).
    """
    bad = screen(samples)
    samples = samples.copy()
    samples["problem"] = ""
    if bad.empty:
        return samples
    if on_error != "skip":
        first = bad.iloc[0]
        raise BadSampleError(first["path"], first["reason"], more=len(bad) - 1)
    log.warning(
        "data.on_error=skip: %d samples skipped before decoding (e.g. %s: %s)",
        len(bad), bad["path"].iat[0], bad["reason"].iat[0],
    )
    reason = dict(zip(bad["sample_id"], bad["reason"]))
    samples["problem"] = [reason.get(s, "") for s in samples["sample_id"]]
    return samples


def runnable(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows for the pipeline, rows skipped on the driver: sample_id, reason)``."""
    if "problem" not in samples.columns:
        return samples, pd.DataFrame({"sample_id": pd.Series([], dtype=str), "reason": pd.Series([], dtype=str)})
    problem = samples["problem"].fillna("").astype(str)
    bad = problem != ""
    skipped = pd.DataFrame({"sample_id": samples.loc[bad, "sample_id"].astype(str), "reason": problem[bad]})
    return samples[~bad].reset_index(drop=True), skipped.reset_index(drop=True)


def split_skipped(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pipeline rows → ``(predicted rows, skipped rows: sample_id, reason)``."""
    if "skipped_reason" not in df.columns:
        return df, pd.DataFrame({"sample_id": pd.Series([], dtype=str), "reason": pd.Series([], dtype=str)})
    reason = df["skipped_reason"].fillna("").astype(str)
    bad = reason != ""
    skipped = pd.DataFrame({"sample_id": df.loc[bad, "sample_id"].astype(str), "reason": reason[bad]})
    return df[~bad].drop(columns=["skipped_reason"]).reset_index(drop=True), skipped.reset_index(drop=True)


def check_same_skipped(skipped: dict[str, pd.DataFrame]) -> None:
    """Baseline and candidate must skip the same samples, or their comparison is unpaired."""
    sets = {name: set(df["sample_id"]) for name, df in skipped.items()}
    names = list(sets)
    for other in names[1:]:
        if sets[other] != sets[names[0]]:
            diff = sorted(sets[other] ^ sets[names[0]])
            raise RuntimeError(
                f"runs {names[0]} and {other} skipped different samples ({len(diff)} differ, e.g. {diff[:5]}); "
                "their metrics would not be paired — the decode of these files is not deterministic"
            )


def check_accounting(n_samples: int, n_skipped: int, dataset_size: int, name: str) -> None:
    """``n_samples + n_skipped == dataset size``: a sample is either evaluated or listed."""
    if n_samples + n_skipped != dataset_size:
        raise RuntimeError(
            f"{name}: {n_samples} evaluated + {n_skipped} skipped != {dataset_size} selected samples; "
            "samples were lost or counted twice"
        )


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
