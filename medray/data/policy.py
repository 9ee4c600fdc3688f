"""The bad-sample policy (``data.on_error``): nothing lost, nothing counted twice.

A sample that cannot be read either stops the run with its path, the reason and the hint
to use ``skip`` (:class:`~medray.errors.BadSampleError`), or comes out of the pipeline as a
row with a non-empty ``skipped_reason`` and no prediction.  Rows the driver can judge
without decoding (file missing, label not in the class list) never enter the pipeline;
:func:`screen` finds them.  Every selected sample is evaluated or listed as skipped
(:func:`check_accounting`), and baseline and candidate skip the same ones.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from medray.errors import BadSampleError, DecodeError

log = logging.getLogger("medray.data")

# Per-sample errors a decoder raises for a bad file; anything else is a bug and propagates.
SAMPLE_ERRORS = (ValueError, OSError)


def describe(e: BaseException) -> str:
    """``"<ExceptionType>: message"`` for a per-sample reason (no traceback)."""
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, DecodeError):
        return getattr(e, "reason", None) or msg  # the message without the path
    return f"{type(e).__name__}: {msg}"


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


def _split_on(df: pd.DataFrame, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``df``'s rows with an empty ``column`` and ``(sample_id, reason)`` of the others."""
    if column not in df.columns:
        return df, pd.DataFrame({"sample_id": pd.Series([], dtype=str), "reason": pd.Series([], dtype=str)})
    reason = df[column].fillna("").astype(str)
    bad = reason != ""
    skipped = pd.DataFrame({"sample_id": df.loc[bad, "sample_id"].astype(str), "reason": reason[bad]})
    return df[~bad].reset_index(drop=True), skipped.reset_index(drop=True)


def runnable(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows for the pipeline, rows skipped on the driver: sample_id, reason)``."""
    return _split_on(samples, "problem")


def split_skipped(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pipeline rows → ``(predicted rows, skipped rows: sample_id, reason)``."""
    ok, skipped = _split_on(df, "skipped_reason")
    return ok.drop(columns=["skipped_reason"], errors="ignore"), skipped


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
