"""The published number first: does the baseline reproduce the metrics the model was
published with (``model.expected``, a MONAI bundle's ``eval_metrics``)?

A published value is *reproduced* when it lies inside the bootstrap confidence interval of
the baseline's metric on the evaluated samples (cases for Dice; patients when known): a
value outside it says the setup (data, preprocessing, labels, split) differs from the
publication's — a problem to solve before any speed-up is worth reading.  Without a
published value nothing is added."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.tasks.base import Task

log = logging.getLogger("medray.report")

N_BOOT = 2000
CONFIDENCE = 0.95


def expected_section(results: list[RunResult], runs: list[dict], table: SampleTable, samples: pd.DataFrame,
                     task: Task) -> dict[str, Any] | None:
    """``metrics.json``'s ``expected``: per published metric, the baseline's value, its CI and
    the verdict; None when the model declares none."""
    if not results or not results[0].spec.model.expected:
        return None
    i = next((j for j, r in enumerate(results) if r.spec.role == "baseline"), 0)
    result, entry = results[i], runs[i]
    out: dict[str, Any] = {"run": entry["name"], "confidence": CONFIDENCE, "n_boot": N_BOOT, "metrics": {}}
    for key, pub in result.spec.model.expected.items():
        ci = task.metric_ci(result, table, samples, entry, key, N_BOOT, CONFIDENCE)
        lo, hi, value = (None if v is None or math.isnan(v) else float(v) for v in (*ci["ci"], ci["estimate"]))
        ok = None if None in (lo, hi, value) else bool(lo <= pub["value"] <= hi)
        out["metrics"][key] = {"published": pub["value"], "from": pub["from"], "baseline": value, "ci": [lo, hi],
                               "difference": None if value is None else value - pub["value"], "reproduced": ok,
                               "n": ci.get("n"), "resampling": ci.get("resampling", "samples")}
    verdicts = [m["reproduced"] for m in out["metrics"].values()]
    out["reproduced"] = None if None in verdicts else all(verdicts)
    for w in expected_warnings(out):
        log.warning("%s", w)
    return out


def expected_warnings(section: dict | None) -> list[str]:
    """The published metrics the baseline does not reproduce (or cannot be checked on)."""
    out = []
    for key, m in ((section or {}).get("metrics") or {}).items():
        if m["reproduced"] is False:
            out.append(f"{section['run']} does not reproduce the published {key} {m['published']:.4f} ({m['from']}): "
                       f"{m['baseline']:.4f}, {100 * section['confidence']:g} % CI [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}] "
                       "— check the data, labels, split and preprocessing before reading any speed-up")
        elif m["reproduced"] is None:
            out.append(f"{section['run']}: the published {key} {m['published']:.4f} cannot be checked (the baseline's "
                       "metric is undefined on the evaluated samples)")
    return out


def render_expected(section: dict | None) -> list[str]:
    """report.md's first section (nothing without a published metric)."""
    if not section:
        return []
    word = {True: "reproduced", False: "**not reproduced**", None: "not checkable"}
    lines = ["", "## Published metrics", "",
             f"Does the baseline ({section['run']}) reproduce the numbers the model was published with? Reproduced = the "
             f"published value lies in the {100 * section['confidence']:g} % bootstrap CI of the baseline's metric on the "
             f"evaluated samples ({section['n_boot']} resamples).", "",
             "| Metric | Published | Baseline | CI | Difference | Verdict | From |", "|---|---|---|---|---|---|---|"]
    for key, m in section["metrics"].items():
        ci = "–" if None in m["ci"] else f"[{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]"
        base = "–" if m["baseline"] is None else f"{m['baseline']:.4f}"
        diff = "–" if m["difference"] is None else f"{m['difference']:+.4f}"
        lines.append(f"| {key} | {m['published']:.4f} | {base} | {ci} | {diff} | {word[m['reproduced']]} | {m['from']} |")
    return lines
