"""The pictures a reviewer asks for, beside report.md (matplotlib, Agg: no display).

task=classification: ROC curves of every run overlaid (one panel per label for multilabel),
the reliability diagram, the confusion matrix (binary / multiclass), ΔAUC per subgroup and
a contact sheet of the samples whose decision flipped (thumbnail, id, both runs'
probabilities).  Each function returns the PNG's bytes; :func:`write_plots` writes them
and returns ``{name: file}`` for metrics.json and report.md.
"""

from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from medray.figures import figure, png

if TYPE_CHECKING:
    import pandas as pd

    from medray.data.table import SampleTable

log = logging.getLogger("medray.report")
MAX_ROC_PANELS = 16
MAX_FLIPS = 24


def roc_png(columns: list[str], runs: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """ROC of each run per column: ``runs`` = (name, 0/1 truth (N, C), scores (N, C))."""
    from sklearn.metrics import roc_auc_score, roc_curve

    cols = columns[:MAX_ROC_PANELS]
    n = len(cols)
    w = min(4, n)
    plt, fig, axes = figure(math.ceil(n / w), w, (3.6, 3.4))
    for j, name in enumerate(cols):
        ax = axes[j // w][j % w]
        for run, y, s in runs:
            if y[:, j].min() == y[:, j].max():
                continue
            fpr, tpr, _ = roc_curve(y[:, j], s[:, j])
            ax.plot(fpr, tpr, lw=1.2, label=f"{run} ({roc_auc_score(y[:, j], s[:, j]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("1 − specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right")
        else:  # one outcome only in the test set: no ROC
            ax.text(0.5, 0.5, "one outcome only", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    for k in range(n, axes.size):
        axes[k // w][k % w].axis("off")
    return png(plt, fig)


def reliability_png(runs: list[tuple[str, dict]]) -> bytes:
    """Reliability diagram (equal-width bins) of each run's ``calibration`` entry."""
    plt, fig, axes = figure()
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect")
    for name, cal in runs:
        r = cal["equal_width"]
        ax.plot(r["mean_confidence"], r["fraction_positive"], marker="o", ms=3, lw=1.2,
                label=f"{name} (ECE {cal['ece']:.3f})")
    ax.set_xlabel(f"mean predicted probability ({runs[0][1]['scope']})", fontsize=8)
    ax.set_ylabel("observed fraction positive", fontsize=8)
    ax.set_title("Reliability", fontsize=10)
    ax.legend(fontsize=7)
    return png(plt, fig)


def confusion_png(classes: list[str], runs: list[tuple[str, np.ndarray, np.ndarray]], decision: str = "argmax") -> bytes:
    """Confusion matrix per run: ``runs`` = (name, true class, decided class); ``decision``
    says how the class was decided (the report's threshold, or argmax)."""
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    plt, fig, axes = figure(1, len(runs), (max(3.5, 0.35 * k + 2), max(3.2, 0.35 * k + 1.8)))
    for ax, (name, y, pred) in zip(axes[0], runs):
        cm = confusion_matrix(y, pred, labels=list(range(k)))
        ax.imshow(cm, cmap="Blues")
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(k), classes if k <= 12 else [""] * k, rotation=45, fontsize=7)
        ax.set_yticks(range(k), classes if k <= 12 else [""] * k, fontsize=7)
        ax.set_xlabel(f"decided ({decision})", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=9)
    return png(plt, fig)


def subgroups_png(entry: dict) -> bytes:
    """ΔAUC (candidate − baseline, pp) per subgroup of a candidate's ``subgroups``."""
    labels, deltas = [], []
    for col, groups in entry["subgroups"].items():
        for g in groups:
            if g.get("delta_auc") is not None:
                labels.append(f"{col}={g['group']} (n={g['n']})")
                deltas.append(100 * g["delta_auc"])
    plt, fig, axes = figure(1, 1, (6.0, max(2.0, 0.3 * len(labels) + 1)))
    ax = axes[0][0]
    ax.barh(range(len(labels)), deltas, color=["#c0392b" if d < 0 else "#2980b9" for d in deltas])
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(f"ΔAUC (pp), {entry['name']} − baseline", fontsize=8)
    ax.invert_yaxis()
    return png(plt, fig)


def flips_png(items: list[dict]) -> bytes:
    """Contact sheet: thumbnail, id and both runs' probabilities of each flipped sample.

    ``items``: ``{"sample_id", "path", "text"}``; an unreadable file shows as a grey tile.
    """
    from PIL import Image

    n = min(len(items), MAX_FLIPS)
    w = min(6, n)
    plt, fig, axes = figure(math.ceil(n / w), w, (2.2, 2.5))
    for k, it in enumerate(items[:n]):
        ax = axes[k // w][k % w]
        try:
            from medray import io as medray_io

            img = Image.open(io.BytesIO(medray_io.read_bytes(it["path"])))
            img.draft("L", (256, 256))
            ax.imshow(np.asarray(img.convert("L").resize((160, 160))), cmap="gray")
        except Exception:  # a DICOM or unreadable thumbnail: the numbers still matter
            ax.imshow(np.full((160, 160), 128, np.uint8), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{it['sample_id'][:24]}\n{it['text']}", fontsize=6)
        ax.axis("off")
    for k in range(n, axes.size):
        axes[k // w][k % w].axis("off")
    return png(plt, fig)


def write_plots(out: str, doc: dict, rows: list[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]],
                table: SampleTable, samples: pd.DataFrame) -> dict[str, str]:
    """Every classification plot of ``doc`` written under ``out``; ``{name: file}``.

    ``rows``: per run, its name and scored rows (predictions, targets, probabilities)."""
    from medray import io as medray_io
    from medray.metrics.classification import binary_decisions
    from medray.metrics.clinical import score_columns

    files: dict[str, bytes] = {}
    rows = [r for r in rows if len(r[1])]
    if not rows:
        return {}
    classes, pos = list(table.classes), table.positive_index()
    if table.task == "multilabel" or len(classes) == 2:
        cols = [(name, score_columns(y, p, table.task, classes, pos)) for name, _, y, p in rows]
        names = [c[0] for c in cols[0][1]]
        files["roc.png"] = roc_png(names, [(n, np.stack([c[1] for c in cc], 1), np.stack([c[2] for c in cc], 1))
                                           for n, cc in cols])
    else:
        onehot = [(n, np.eye(len(classes), dtype=int)[y], p) for n, _, y, p in rows]
        files["roc.png"] = roc_png(classes, onehot)
    cal = [(e["name"], e["calibration"]) for e in doc["runs"] if e.get("calibration")]
    if cal:
        files["reliability.png"] = reliability_png(cal)
    if table.task == "multiclass":
        thr = (doc.get("threshold") or {}).get("values", {})
        t = next(iter(thr.values()), 0.5)
        how = f"{classes[pos]} if p ≥ {t:.4g}" if len(classes) == 2 else "argmax"
        files["confusion.png"] = confusion_png(classes, [(n, y, binary_decisions(p, t, pos)) for n, _, y, p in rows], how)
    for e in doc["runs"]:
        if e.get("role") == "candidate" and any(g.get("delta_auc") is not None for gs in (e.get("subgroups") or {}).values()
                                                for g in gs):
            files[f"subgroups_{e['name']}.png"] = subgroups_png(e)
        if e.get("role") == "candidate" and (e.get("flips") or {}).get("n"):
            files[f"flips_{e['name']}.png"] = flips_png(_flip_items(e, doc, rows, samples))
    for name, data in files.items():
        medray_io.write_bytes(medray_io.join(out, "plots", name), data)
    return {name.rsplit(".", 1)[0]: f"plots/{name}" for name in files}


def _flip_items(entry: dict, doc: dict, rows: list, samples: pd.DataFrame) -> list[dict]:
    """The flipped samples of ``entry`` with both runs' scores of their flipped labels."""
    base = next(r for r in rows if r[0] == next(e["name"] for e in doc["runs"] if e["role"] == "baseline"))
    cand = next(r for r in rows if r[0] == entry["name"])
    paths = dict(zip(samples["sample_id"].astype(str), samples["path"].astype(str)))
    classes = doc["dataset"]["classes"]
    pos = classes.index(doc["dataset"].get("positive_class")) if doc["dataset"].get("positive_class") in classes else None
    bi = {s: i for i, s in enumerate(base[1]["sample_id"].astype(str))}
    ci = {s: i for i, s in enumerate(cand[1]["sample_id"].astype(str))}
    values = (doc.get("threshold") or {}).get("values", {})
    items = []
    for sid in entry["flips"]["sample_ids"][:MAX_FLIPS]:
        labels = [n for n, f in entry["flips"]["per_label"].items() if sid in f["sample_ids"]][:2]
        parts = []
        for label in labels:
            j = classes.index(label) if pos is None else pos
            # Enough digits to see which side of the threshold each run fell on.
            parts.append(f"{label[:12]} {base[3][bi[sid], j]:.4f}→{cand[3][ci[sid], j]:.4f} (t {values.get(label, 0.5):.4g})")
        items.append({"sample_id": sid, "path": paths.get(sid, ""), "text": "\n".join(parts)})
    return items
