"""Write the output contract into ``output_dir`` (a local path or a URI that pyarrow
opens: s3://, gs://, file://; see :mod:`medray.io`): ``config.yaml``, ``metrics.json``,
``report.md`` and the task's ``predictions/``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from medray import io as medray_io

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.tasks.base import Task


def json_default(o):
    """``json.dumps`` fallback for numpy scalars/arrays (and anything else as str)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_outputs(out: str, config: dict, doc: dict, results: list[RunResult], table: SampleTable,
                  samples: pd.DataFrame, task: Task | None = None) -> None:
    """config.yaml, metrics.json, report.md, report.html, the task's plots/ and every run's
    predictions."""
    import yaml

    from medray.report.html import render_html
    from medray.report.markdown import render_report
    from medray.tasks import task_of_document

    task = task or task_of_document(doc)
    out = medray_io.normalize(str(out))
    medray_io.makedirs(out)
    medray_io.write_text(medray_io.join(out, "config.yaml"), yaml.safe_dump(config, sort_keys=False))
    if (config.get("report") or {}).get("plots", True):
        doc["plots"] = task.write_plots(out, doc, results, table, samples) or None
    medray_io.write_text(medray_io.join(out, "metrics.json"), json.dumps(doc, indent=2, default=json_default))
    md = render_report(doc, task)
    medray_io.write_text(medray_io.join(out, "report.md"), md)
    medray_io.write_text(medray_io.join(out, "report.html"), render_html(md, _reader(out), f"medray — {doc['dataset']['name']}"))
    for r in results:
        task.write_predictions(out, r, table, samples)


def _reader(out: str):
    """Bytes of a file under ``out`` by relative path (None when absent): report.html's images."""

    def read(rel: str) -> bytes | None:
        try:
            return medray_io.read_bytes(medray_io.join(out, *rel.split("/")))
        except Exception:
            return None

    return read
