"""plots/worst_cases.png: the cases a reviewer must look at first, with every run's mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medray.figures import figure, png
from medray.tasks.segmentation.masks import unpack_mask

if TYPE_CHECKING:
    from medray.results import RunResult


def write_plots(out: str, results: list[RunResult], samples: pd.DataFrame, settings: dict,
                n_worst: int = 3) -> dict[str, str]:
    """plots/worst_cases.png: the cases with the lowest Dice vs the baseline (or vs the
    labels without a candidate), their slice of most disagreement, every run's mask (in the
    masks' geometry, read by the model's recipe)."""
    from medray import io as medray_io
    from medray.metrics.segmentation import case_mean
    from medray.models.recipes import recipe_of

    if not results or not len(results[-1].predictions):
        return {}
    last = results[-1].predictions.set_index("sample_id")
    if "dice_vs_baseline" in last.columns:
        score = {s: case_mean(v) for s, v in last["dice_vs_baseline"].items() if isinstance(v, np.ndarray)}
        what = "Dice vs baseline"
    else:
        score = {s: case_mean(v) for s, v, h in zip(last.index, last["dice"], last["has_label"]) if h}
        what = "Dice vs labels"
    score = {s: v for s, v in score.items() if v == v}
    worst = sorted(score, key=score.get)[:n_worst]
    if not worst:
        return {}
    rows = samples.set_index("sample_id")
    model = results[0].spec.model
    recipe = recipe_of(model)
    cases = []
    for sid in worst:
        row = {"sample_id": sid, **{k: str(rows.loc[sid, k]) for k in ("path", "channels", "label_path") if k in rows.columns}}
        image, label, axes = recipe.view(model, settings, row)
        masks = {r.spec.name: unpack_mask(r.predictions.set_index("sample_id").loc[sid, "mask"]).transpose(axes)
                 for r in results}
        cases.append({"sample_id": sid, "image": image.transpose(axes), "label": None if label is None else label.transpose(axes),
                      "masks": masks, "text": f"{what} {score[sid]:.4f}"})
    medray_io.write_bytes(medray_io.join(out, "plots", "worst_cases.png"), worst_cases_png(cases))
    return {"worst_cases": "plots/worst_cases.png"}


def worst_cases_png(cases: list[dict]) -> bytes:
    """Segmentation: for each case, the axial slice where the runs disagree most — the
    image with the labels' (white), the baseline's (blue) and the candidate's (orange)
    mask outlines.  ``cases``: ``{"sample_id", "image" (X, Y, Z), "label" or None,
    "masks": {run: (X, Y, Z)}, "text"}``."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    n = len(cases)
    plt, fig, axes = figure(1, n, (3.6, 3.9))
    for ax, case in zip(axes[0], cases):
        masks = list(case["masks"].items())
        vol = np.asarray(case["image"], dtype=np.float32)
        if len(masks) > 1:
            diff = (masks[0][1] != masks[1][1]).sum(axis=(0, 1))
        else:
            diff = (masks[0][1] != (case["label"] if case["label"] is not None else 0)).sum(axis=(0, 1))
        z = int(np.argmax(diff)) if diff.any() else vol.shape[2] // 2
        ax.imshow(vol[:, :, z].T, cmap="gray", origin="lower")
        outlines = ([("labels", case["label"], "white")] if case["label"] is not None else []) + [
            (name, m, colours[i % len(colours)]) for i, (name, m) in enumerate(masks)]
        for name, m, col in outlines:
            sl = (np.asarray(m)[:, :, z] > 0).T.astype(float)
            if sl.any() and not sl.all():
                ax.contour(sl, levels=[0.5], colors=[col], linewidths=1.0)
            ax.plot([], [], color=col, label=name)
        ax.set_title(f"{case['sample_id'][:28]} (z={z})\n{case['text']}", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
        ax.axis("off")
    return png(plt, fig)
