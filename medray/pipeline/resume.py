"""Resumable runs: medray's own per-batch outputs, not Ray Data checkpoints.

As results stream to the driver, each received batch is written atomically (temp file
+ rename) to ``<output_dir>/predictions/<run>.parts/<n>.parquet``.  A run killed after
part of the data leaves those parts; ``resume=true`` with the same ``output_dir`` reads
them, evaluates only the samples not in them, and merges.  Metrics are always computed
from the merged rows, so a resumed run and an uninterrupted one give the same numbers.

Why not Ray Data's checkpointing: medray needs the per-sample rows on the driver anyway
(exact metrics), the parts are plain Parquet a user can inspect, and it works with any
Ray cluster (no shared checkpoint storage needed when the driver's disk holds them).

``output_dir/resume.json`` records a hash of the resolved config without the keys that
do not change results (``resume``, ``output_dir``, ``log_level``, ``ray``), the evaluated
sample ids and each run's model/artifact hash; resuming with anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medray.config import ConfigError
from medray.io import as_dict, read_part, write_part

if TYPE_CHECKING:
    from medray.config import EvalConfig
    from medray.specs import RunSpec

log = logging.getLogger("medray.resume")

STATE_FILE = "resume.json"
# Keys that say where/how verbosely to run or how the predictions are summarised, not
# what is predicted.
NOT_HASHED = ("resume", "output_dir", "log_level", "ray", "report", "threshold", "tracking")
# Test hooks: the driver exits (as if killed) / is interrupted (as by Ctrl-C) right after
# writing this many parts.
EXIT_AFTER_PARTS_ENV = "MEDRAY_TEST_EXIT_AFTER_PARTS"
INTERRUPT_AFTER_PARTS_ENV = "MEDRAY_TEST_INTERRUPT_AFTER_PARTS"
_parts_written = 0  # per driver process, for the test hook


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fingerprint(cfg: EvalConfig, samples: pd.DataFrame, specs: list[RunSpec]) -> dict:
    """What a resumed run must share with the interrupted one."""
    conf = {k: v for k, v in as_dict(cfg).items() if k not in NOT_HASHED}
    runs = {
        s.name: {"checkpoint_sha256": s.model.checkpoint_sha256, "artifact": (s.artifact or {}).get("key")}
        for s in specs
    }
    ids = hashlib.sha256("\n".join(map(str, samples["sample_id"])).encode()).hexdigest()
    doc = {"config": conf, "samples_sha256": ids, "runs": runs}
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return {"sha256": hashlib.sha256(blob).hexdigest(), **doc}


LOCK_FILE = ".medray.lock"
# What a finished or interrupted run leaves in its output_dir (evaluate.log is not: the
# starting job writes it before medray runs).
RUN_FILES = (STATE_FILE, "metrics.json", "report.md", "predictions")


class ResumeState:
    """The parts of every run of one ``output_dir`` (see the module docstring), and the
    claim of that folder: one run at a time (a lock held for the run), never a new run over
    another one's outputs."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self._lock = None
        self._outputs: str | None = None

    @classmethod
    def claim(cls, out: str | Path, cfg: EvalConfig, outputs: str | None = None) -> ResumeState:
        """Claim ``out`` (the parts' folder; ``outputs``: where the reports go, when it is a
        URI elsewhere) before anything is built: a lock held for the run, and a fresh run
        refuses a folder that holds another run's outputs (they would be mixed or
        destroyed) — a new output_dir, or ``resume=true`` of the same config."""
        self = cls(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._claim(cfg.output_dir)
        self._outputs = outputs
        found = self._previous_run(outputs)
        if found and not cfg.resume:
            self.release()
            raise ConfigError(
                f"output_dir={cfg.output_dir}: already holds a run ({', '.join(found)}); use a new output_dir, "
                "or resume=true to continue that run with the same config"
            )
        return self

    @classmethod
    def open(cls, out: str | Path, cfg: EvalConfig, samples: pd.DataFrame, specs: list[RunSpec],
             outputs: str | None = None) -> ResumeState:
        """:meth:`claim` then :meth:`check` (no Ray needed)."""
        return cls.claim(out, cfg, outputs).check(cfg, samples, specs)

    def check(self, cfg: EvalConfig, samples: pd.DataFrame, specs: list[RunSpec]) -> ResumeState:
        """``resume=true``: the folder holds a run of this very config and samples (else a
        ConfigError, nothing overwritten); records this run's fingerprint."""
        fp = fingerprint(cfg, samples, specs)
        state = self.out / STATE_FILE
        if cfg.resume and state.is_file():
            try:
                old = json.loads(state.read_text())
            except ValueError:
                raise ConfigError(
                    f"resume=true: {state} is unreadable; remove output_dir={self.out} or run without resume"
                ) from None
            if old.get("sha256") != fp["sha256"]:
                raise ConfigError(
                    f"resume=true: output_dir={self.out} holds a run of a different configuration "
                    f"({_differences(old, fp)}); resume with the same config, or use another output_dir"
                )
            done = {s.name: len(self.done_ids(s.name)) for s in specs}
            log.info("resuming in %s: samples already done per run %s", self.out, done)
        elif cfg.resume:
            found = self._previous_run(self._outputs)
            if found:
                raise ConfigError(f"resume=true: output_dir={cfg.output_dir} holds outputs ({', '.join(found)}) but no "
                                  f"{STATE_FILE} to resume from; use a new output_dir")
            log.warning("resume=true but %s has no %s: nothing to resume, starting from scratch", self.out, STATE_FILE)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(fp, indent=2, sort_keys=True, default=str))
        tmp.replace(state)
        return self

    def _claim(self, name: str) -> None:
        """Hold an exclusive lock on the folder for this process's lifetime (released when it
        exits, however it exits): a second job into the same output_dir stops here."""
        import fcntl

        fh = open(self.out / LOCK_FILE, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise ConfigError(f"output_dir={name}: another medray run is writing there (pid {holder}); wait for it "
                              "to end, or use another output_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def _previous_run(self, outputs: str | None) -> list[str]:
        """The files of another run in the parts' folder or, for a URI, the outputs' one."""
        from medray import io as medray_io

        found = [f for f in RUN_FILES if (self.out / f).exists()]
        if outputs and not medray_io.is_local(outputs):
            found += [f for f in RUN_FILES if f not in found and medray_io.exists(medray_io.join(outputs, f))]
        return found

    def release(self) -> None:
        """Give up the claim (the process's exit does it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- parts ------------------------------------------------------------------------
    def parts_dir(self, run: str) -> Path:
        return self.out / "predictions" / f"{run}.parts"

    def load(self, run: str) -> pd.DataFrame:
        """Rows already written for ``run`` (all parts, in order); unreadable parts are
        deleted with a warning, so their samples are evaluated again."""
        d = self.parts_dir(run)
        frames = []
        for p in sorted(d.glob("*.parquet")) if d.is_dir() else []:
            try:
                frames.append(read_part(p))
            except Exception as e:  # a damaged file is re-done, never half-used
                log.warning("%s: part %s is unreadable (%s); its samples will be evaluated again", run, p.name, e)
                p.unlink()
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def done_ids(self, run: str) -> set[str]:
        df = self.load(run)
        return set(df["sample_id"].astype(str)) if len(df) else set()

    def writer(self, run: str) -> PartsWriter:
        d = self.parts_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        last = max((int(p.stem) for p in d.glob("*.parquet") if p.stem.isdigit()), default=-1)
        return PartsWriter(d, last + 1)


class PartsWriter:
    """``on_batch`` callback of :func:`medray.pipeline.execute.collect`: one file per batch."""

    def __init__(self, directory: Path, start: int = 0):
        self.dir = directory
        self.next = start
        self.rows = 0
        exit_after = os.environ.get(EXIT_AFTER_PARTS_ENV)
        self.exit_after = int(exit_after) if exit_after else None
        interrupt_after = os.environ.get(INTERRUPT_AFTER_PARTS_ENV)
        self.interrupt_after = int(interrupt_after) if interrupt_after else None

    def __call__(self, batch: dict[str, np.ndarray]) -> None:
        global _parts_written
        path = self.dir / f"{self.next:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        write_part(tmp, batch)
        tmp.replace(path)  # atomic: a killed driver leaves whole parts or none
        self.next += 1
        self.rows += len(batch["sample_id"])
        _parts_written += 1
        if self.exit_after is not None and _parts_written >= self.exit_after:
            log.warning("%s=%d: the driver exits now, as if killed", EXIT_AFTER_PARTS_ENV, self.exit_after)
            logging.shutdown()
            os._exit(75)
        if self.interrupt_after is not None and _parts_written >= self.interrupt_after:
            raise KeyboardInterrupt


def _differences(old: dict, new: dict) -> str:
    a, b = _flatten(old.get("config", {})), _flatten(new.get("config", {}))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    parts = [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys[:5]]
    if old.get("samples_sha256") != new.get("samples_sha256"):
        parts.append("the evaluated samples differ")
    if old.get("runs") != new.get("runs") and not keys:
        parts.append("the model or a built artifact differs")
    return "; ".join(parts) or "unknown difference"
