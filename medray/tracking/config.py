"""The tracking axis' options (the ``tracking=`` group)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medray.errors import fail as _fail

TRACKERS = ("none", "mlflow")


@dataclass
class TrackingConfig:
    """Experiment tracking (the ``tracking=`` group): every evaluation an MLflow run, a sweep
    a parent run with one child per trial (medray.tracking)."""

    backend: str = "none"
    # null = sqlite:///<cwd>/mlruns/mlflow.db (MLflow 3 refuses its legacy file store);
    # any MLflow tracking URI (http://server:5000, sqlite:///..., databricks).
    uri: str | None = None
    experiment: str = "medray"
    # Log report.md/html, metrics.json, config.yaml and the plots as run artifacts.
    artifacts: bool = True

    def __post_init__(self) -> None:
        if self.backend not in TRACKERS:
            _fail("tracking.backend", self.backend, f"use one of {', '.join(TRACKERS)} (tracking=mlflow)")
        if self.backend == "mlflow":
            try:
                import mlflow  # noqa: F401
            except ImportError:
                _fail("tracking", "mlflow", "mlflow is not installed: pip install -e '.[tracking]' (or pip install mlflow)")
        if not self.experiment:
            _fail("tracking.experiment", self.experiment, "name the MLflow experiment, e.g. tracking.experiment=medray")
        if self.uri is not None and (self.uri.startswith("file:") or _is_path(self.uri)):
            # MLflow 3 accepts the URI, then refuses its file store when the first run is
            # logged — after the whole evaluation.  Said here, before anything runs.
            where = self.uri.removeprefix("file://").removeprefix("file:") or "mlruns"
            _fail("tracking.uri", self.uri, "MLflow 3 has no file store; use a database file, e.g. "
                  f"tracking.uri=sqlite:///{Path(where).expanduser().resolve() / 'mlflow.db'}, or a tracking server (http://...)")

    def resolved_uri(self) -> str:
        if self.uri:
            return self.uri
        return f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"


def _is_path(uri: str) -> bool:
    """A plain folder (MLflow would take it for its file store), not a URI such as
    ``sqlite:///...``, ``http://...`` or ``databricks``."""
    return ":" not in uri and (uri.startswith(("/", ".", "~")) or "/" in uri or uri == "mlruns")
