"""task=segmentation: 3D volumes through MONAI's sliding window around any backend.

Read stage: one case per block; a CPU task reads and preprocesses it
(:func:`read_case_batch`, MONAI transforms, the label resampled with it).  Actor: MONAI's
``sliding_window_inference`` with a predictor callable that hands each batch of ROI
windows to ``backend.infer`` (numpy ``(N, C, D, H, W)`` float32); the argmax mask comes
back compressed (a few kB to a few MB, with its sha256) with Dice per class vs the labels,
the summed backend time (the case's latency) and the whole sliding-window time.  Volumes
never come back to the driver; masks do, so Dice of the candidate vs the baseline, resume
parts and remote outputs need no shared disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from medray.format import dice as fdice
from medray.format import num, pct, sec
from medray.tasks.base import Task

if TYPE_CHECKING:
    from medray.backends.base import Backend
    from medray.config import EvalConfig
    from medray.data.calibration import CalibrationSet, CalibrationSource
    from medray.data.table import SampleTable
    from medray.results import RunResult
    from medray.specs import ModelSpec, RunSpec

log = logging.getLogger("medray.segmentation")

_VECTORS = ("orig_shape", "orig_spacing", "spacing")


# --------------------------------------------------------------------------- read stage


def read_case_batch(batch: dict[str, np.ndarray], prep: dict, num_classes: int) -> dict:
    """CPU task: one block = one case → preprocessed image (+ label) in model space.

    A case that cannot be read becomes a placeholder row with its ``skipped_reason``
    (never a silent drop); the driver applies data.on_error.
    """
    from medray.data.msd import VolumeError, load_case

    out: dict[str, list] = {k: [] for k in ("sample_id", "image", "label", "has_label", *_VECTORS, "skipped_reason")}
    for sid, path, lab in zip(batch["sample_id"], batch["path"], batch["label_path"]):
        try:
            case, reason = load_case(str(path), str(lab) or None, prep, num_classes), ""
        except VolumeError as e:
            case, reason = None, str(e)
        out["sample_id"].append(sid)
        out["skipped_reason"].append(reason)
        if case is None:
            out["image"].append(np.zeros((1, 1, 1, 1), np.float32))
            out["label"].append(np.zeros((1, 1, 1), np.uint8))
            out["has_label"].append(False)
            for k in _VECTORS:
                out[k].append(np.zeros(3))
            continue
        out["image"].append(case["image"])
        has = case["label"] is not None
        out["label"].append(case["label"] if has else np.zeros((1, 1, 1), np.uint8))
        out["has_label"].append(has)
        for k in _VECTORS:
            out[k].append(np.asarray(case[k], dtype=np.float64))
    # One case per block: a (1, ...) view of the volume, not a stacked copy.
    return {k: (v[0][None] if len(v) == 1 else np.stack(v)) if k in ("image", "label", *_VECTORS)
            else np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------- masks


def pack_mask(mask: np.ndarray) -> bytes:
    """A uint8 label map as compressed ``.npz`` bytes (the file format of the outputs)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=mask)
    return buf.getvalue()


def unpack_mask(blob: bytes) -> np.ndarray:
    with np.load(io.BytesIO(blob)) as z:
        return z["mask"]


def load_mask(mask_dir, name: str) -> np.ndarray:
    """A mask file written to ``predictions/<run>_masks/``."""
    from medray import io as medray_io

    return unpack_mask(medray_io.read_bytes(medray_io.join(str(mask_dir), name)))


def mask_name(sample_id: str) -> str:
    return f"{str(sample_id).replace(os.sep, '__')}.npz"


def compare_masks(base: RunResult, cand: RunResult, num_classes: int) -> pd.DataFrame:
    """Per case: Dice of the candidate's mask vs the baseline's (per class) and voxel agreement."""
    from medray.metrics.agreement import pair_by_id
    from medray.metrics.segmentation import dice_per_class, voxel_agreement

    b, c = base.predictions, cand.predictions
    bi, ci = pair_by_id(b["sample_id"].to_numpy(), c["sample_id"].to_numpy())
    rows = []
    for i, j in zip(bi, ci):
        bm, cm = unpack_mask(b["mask"].iat[i]), unpack_mask(c["mask"].iat[j])
        rows.append({"sample_id": c["sample_id"].iat[j], "dice_vs_baseline": dice_per_class(cm, bm, num_classes, ignore_empty=False),
                     "voxel_agreement": voxel_agreement(cm, bm)})
    return pd.DataFrame(rows, columns=["sample_id", "dice_vs_baseline", "voxel_agreement"])


# --------------------------------------------------------------------------- calibration


def calibration_windows(samples: pd.DataFrame, prep: dict, roi: tuple[int, ...], max_windows: int, seed: int) -> CalibrationSet:
    """INT8 calibration inputs of a 3D model: ROI windows of the preprocessed calibration
    cases, tiled as the sliding window tiles them (no overlap), at most ``max_windows``
    drawn with ``seed``.  A case that cannot be read fails: a calibration set silently
    missing cases is not the one its cache key names."""
    from medray.data.calibration import CalibrationError, CalibrationSet
    from medray.data.msd import VolumeError, load_case

    if samples is None or len(samples) == 0:
        raise CalibrationError("precision=int8 needs calibration cases (calibration.split); none were given")
    windows, ids = [], []
    for sid, path in zip(samples["sample_id"], samples["path"]):
        try:
            image = load_case(str(path), None, prep)["image"]
        except VolumeError as e:
            raise CalibrationError(f"calibration case {sid} cannot be read: {e}") from e
        pad = [(0, 0)] + [(0, max(0, r - s)) for s, r in zip(image.shape[1:], roi)]
        image = np.pad(image, pad) if any(p[1] for p in pad) else image
        starts = [range(0, max(1, s - r + 1), r) for s, r in zip(image.shape[1:], roi)]
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    windows.append(image[:, z:z + roi[0], y:y + roi[1], x:x + roi[2]])
                    ids.append(f"{sid}@{z},{y},{x}")
    order = np.random.default_rng(seed).permutation(len(windows))[:max_windows]
    order = np.sort(order)
    log.info("calibration: %d ROI windows of %d cases", len(order), len(samples))
    return CalibrationSet(np.ascontiguousarray(np.stack([windows[i] for i in order]), dtype=np.float32),
                          [ids[i] for i in order])


# --------------------------------------------------------------------------- the task


@dataclass
class SegmentationTask(Task):
    """3D segmentation of volumes (MSD layout) by sliding windows; Dice per class."""

    # Resolved volume preprocessing (medray.data.msd.Preprocessing.to_dict()).
    prep: dict = field(default_factory=dict)
    # sliding_window config: overlap, mode, sigma_scale (roi = the model's spatial shape).
    sliding: dict = field(default_factory=dict)
    num_classes: int = 2
    modality: list[str] = field(default_factory=list)
    # HD95 and surface Dice (at this tolerance, mm) beside Dice; null = Dice only.
    surface_tolerance_mm: float | None = 2.0

    name: ClassVar[str] = "segmentation"
    unit: ClassVar[str] = "case"
    identity_columns: ClassVar[tuple[str, ...]] = ("dice", "mask_sha256")
    cache_by_default: ClassVar[bool] = False  # a preprocessed float volume is tens of MB
    # One case is a whole volume through the sliding window: timing one on the driver at one
    # thread would cost as much as the probe saves on a test set of tens of cases.
    cost_probe: ClassVar[bool] = False

    @classmethod
    def for_config(cls, cfg: EvalConfig, table: SampleTable) -> SegmentationTask:
        from medray.data.msd import modalities, read_dataset_json, resolve_preprocessing
        from medray.io import as_dict

        modality = modalities(read_dataset_json(table.root))
        prep = resolve_preprocessing(cfg.data.volume, modality)
        return cls(prep.to_dict(), as_dict(cfg.sliding_window), len(table.classes), list(modality),
                   cfg.report.surface_tolerance_mm)

    # -- driver, before Ray ---------------------------------------------------------
    def screen(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame) -> pd.DataFrame:
        from medray.data.msd import VolumeError, check_headers
        from medray.errors import BadSampleError
        from medray.tasks.clinical import subgroup_columns

        subgroup_columns(cfg, table)  # report.subgroups must name existing columns (before Ray)
        try:
            return check_headers(samples, cfg.data.on_error)
        except VolumeError as e:  # a bad input file: exit 3 with its path, like a bad image
            path, _, reason = str(e).partition(": ")
            raise BadSampleError(path, reason.rsplit("; set data.on_error", 1)[0]) from None

    def resolve_model(self, cfg: EvalConfig, table: SampleTable) -> ModelSpec:
        from medray.data.msd import Preprocessing
        from medray.models.unet import resolve_segmentation_model

        return resolve_segmentation_model(cfg, table, Preprocessing(**self.prep))

    def backend_batch(self, cfg: EvalConfig) -> int:
        return cfg.sliding_window.sw_batch_size  # windows per backend call

    def actor_batch(self, spec: RunSpec, block: int) -> int:
        return 1  # one case per actor call

    def split_batch(self, spec: RunSpec) -> int | None:
        return None  # batch_size is windows per backend call, inside the case's sliding window

    def block_size(self, n: int, spec: RunSpec, actors: int, configured: int | None, read_s: float | None = None) -> int:
        return 1

    def calibration(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame, model: ModelSpec) -> CalibrationSource:
        from medray.data.calibration import CalibrationSource

        loader = partial(calibration_windows, prep=self.prep, roi=tuple(model.spatial), max_windows=cfg.calibration.num_samples,
                         seed=cfg.calibration.seed)
        return CalibrationSource(samples, loader)

    def describe(self, table: SampleTable, samples: pd.DataFrame) -> str:
        n_lab = int((samples["label_path"] != "").sum())
        return (f"dataset {table.name}: {len(samples)} cases evaluated ({n_lab} with labels), {len(table.classes)} labels "
                f"{table.classes}; preprocessing {self.prep}")

    # -- read stage -----------------------------------------------------------------
    def read_blocks(self, todo: pd.DataFrame, spec: RunSpec, block: int) -> list[pd.DataFrame]:
        return [todo.iloc[[i]][["sample_id", "path", "label_path"]] for i in range(len(todo))]

    def reader(self, spec: RunSpec):
        return read_case_batch, {"prep": self.prep, "num_classes": self.num_classes}

    # -- actor ----------------------------------------------------------------------
    def open(self, spec: RunSpec) -> None:
        import torch

        # MONAI's window slicing and blending run in torch in this process.
        torch.set_num_threads(max(1, spec.threads))

    def segment(self, backend: Backend, spec: RunSpec, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """``image`` ``(C, D, H, W)`` → uint8 mask ``(D, H, W)`` and its timings.

        The window batches are sliced out of the one volume tensor by MONAI (a copy of
        each window batch, never of the volume); ``latency_ms`` sums the backend calls.
        """
        import torch
        from monai.inferers import sliding_window_inference

        calls: list[float] = []
        windows = [0]

        def run_windows(w: torch.Tensor) -> torch.Tensor:
            x = np.ascontiguousarray(w.numpy())  # torch.cat made it contiguous: no copy
            out = backend.infer(x)
            calls.append(backend.last_ms)
            windows[0] += len(x)
            return torch.from_numpy(out)

        with warnings.catch_warnings():
            # Ray hands read-only arrays; MONAI only reads the input (slices + pad copy).
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(image)[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(
                t,
                roi_size=list(spec.model.spatial),
                sw_batch_size=spec.batch_size,
                predictor=run_windows,
                overlap=self.sliding["overlap"],
                mode=self.sliding["mode"],
                sigma_scale=self.sliding["sigma_scale"],
            )
            mask = logits[0].argmax(0).to(torch.uint8).numpy()
        sw_ms = (time.perf_counter() - t0) * 1e3
        return mask, {"latency_ms": float(sum(calls)), "sw_ms": sw_ms, "n_calls": len(calls), "n_windows": windows[0]}

    def predict(self, backend: Backend, spec: RunSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.metrics.segmentation import dice_per_class, surface_distances

        rows = []
        blank = np.full(self.num_classes - 1, np.nan)
        for i in range(len(batch["sample_id"])):
            mask, timing = self.segment(backend, spec, np.asarray(batch["image"][i], dtype=np.float32))
            blob = pack_mask(mask)
            has = bool(batch["has_label"][i])
            hd, nsd = blank, blank
            if has and self.surface_tolerance_mm is not None:  # in the model's voxel space, its spacing
                hd, nsd = surface_distances(mask, np.asarray(batch["label"][i]), self.num_classes,
                                            np.asarray(batch["spacing"][i]), self.surface_tolerance_mm)
            rows.append({
                "dice": dice_per_class(mask, np.asarray(batch["label"][i]), self.num_classes) if has else blank,
                "hd95": hd,
                "surface_dice": nsd,
                **timing,
                "model_shape": np.asarray(mask.shape, dtype=np.float64),
                "mask": blob,
                "mask_sha256": hashlib.sha256(blob).hexdigest(),
                "mask_file": mask_name(batch["sample_id"][i]),
            })
        out = _columns(rows)
        # The case's latency is its backend time; every case is its own "batch".
        out["batch_ms"] = out["latency_ms"].astype(np.float64)
        out["batch_size"] = np.ones(len(rows), dtype=np.int32)
        return self._passthrough(batch, out)

    def placeholder(self, n: int, spec: RunSpec) -> dict[str, np.ndarray]:
        blank = np.full(self.num_classes - 1, np.nan)
        row = {"dice": blank, "hd95": blank, "surface_dice": blank, "latency_ms": 0.0, "sw_ms": 0.0, "n_calls": 0, "n_windows": 0,
               "model_shape": np.zeros(3), "mask": b"", "mask_sha256": "", "mask_file": ""}
        out = _columns([row] * n)
        out["batch_ms"] = np.zeros(n, dtype=np.float64)
        out["batch_size"] = np.zeros(n, dtype=np.int32)
        for k in ("has_label", *_VECTORS):
            out[k] = np.zeros(n, dtype=bool) if k == "has_label" else np.zeros((n, 3))
        return out

    @staticmethod
    def _passthrough(batch: dict, out: dict) -> dict:
        for k in ("has_label", *_VECTORS):
            out[k] = np.asarray(batch[k])
        return out

    # -- driver, after ----------------------------------------------------------------
    def foreground(self, table: SampleTable) -> list[str]:
        return list(table.classes[1:])

    def run_metrics(self, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        from medray.metrics.segmentation import dice_summary

        fg = self.foreground(table)
        df = result.predictions
        labelled = df[df["has_label"].astype(bool)] if len(df) else df
        if len(labelled):
            metrics: dict[str, Any] = dice_summary(np.stack(labelled["dice"].to_numpy()), fg)
            if self.surface_tolerance_mm is not None and "hd95" in labelled.columns:
                from medray.metrics.segmentation import surface_summary

                metrics.update(surface_summary(np.stack(labelled["hd95"].to_numpy()),
                                               np.stack(labelled["surface_dice"].to_numpy()), fg))
                metrics["surface_tolerance_mm"] = self.surface_tolerance_mm
        else:
            metrics = {"dice_mean": None, "dice_per_class": {c: None for c in fg}}
        metrics["n_labelled"] = int(len(labelled))
        n_win = int(df["n_windows"].sum()) if len(df) else 0
        return {
            "metrics": metrics,
            "sliding_window_ms": _latency(df["sw_ms"] if len(df) else []),
            "windows_per_case_mean": float(df["n_windows"].mean()) if len(df) else None,
            # merged into the run's latency_ms (backend time per ROI window)
            "latency_ms": {"per_window_mean": float(df["latency_ms"].sum() / n_win) if n_win else None},
        }

    def compare(self, base: RunResult, cand: RunResult, table: SampleTable, samples: pd.DataFrame,
                base_entry: dict, cand_entry: dict) -> dict[str, Any]:
        from medray.metrics.segmentation import dice_summary

        fg = self.foreground(table)
        cmp = compare_masks(base, cand, self.num_classes)
        if len(cmp):
            s = dice_summary(np.stack(cmp["dice_vs_baseline"].to_numpy()), fg)
        else:
            s = {"dice_mean": None, "dice_per_class": {}, "dice_case_min": None}
        # Per-case Dice vs the baseline travels with the candidate's rows (predictions file).
        cand.predictions = cand.predictions.drop(columns=["dice_vs_baseline", "voxel_agreement"], errors="ignore").merge(
            cmp, on="sample_id", how="left")
        bm, cm = base_entry["metrics"].get("dice_mean"), cand_entry["metrics"].get("dice_mean")
        return {
            "agreement": {
                "dice_mean": s["dice_mean"],
                "dice_per_class": s["dice_per_class"],
                "dice_case_min": s["dice_case_min"],
                "voxel_agreement_mean": float(cmp["voxel_agreement"].mean()) if len(cmp) else None,
                "voxel_agreement_min": float(cmp["voxel_agreement"].min()) if len(cmp) else None,
                "n": int(len(cmp)),
            },
            "metric_deltas": {"dice_mean": (cm - bm) if cm is not None and bm is not None else None},
        }

    def dataset_section(self, cfg: EvalConfig, table: SampleTable, samples: pd.DataFrame) -> dict[str, Any]:
        return {
            "task": "segmentation",
            "classes": self.foreground(table),
            "labels": list(table.classes),
            "modality": list(self.modality),
            "n_labelled": int((samples["label_path"] != "").sum()),
            "preprocessing": dict(self.prep),
        }

    def document_extras(self, cfg: EvalConfig, doc: dict, results: list[RunResult], table: SampleTable,
                        samples: pd.DataFrame, validation: RunResult | None = None) -> None:
        from medray.io import as_dict
        from medray.metrics.segmentation import case_mean, fmt

        doc["sliding_window"] = {**as_dict(cfg.sliding_window),
                                 "roi_size": list(results[0].spec.model.spatial) if results else None}
        cases = {sid: {"sample_id": sid} for sid in samples["sample_id"]}
        for r in results:
            for row in r.predictions.itertuples(index=False):
                c = cases[row.sample_id]
                c["shape"] = [int(v) for v in row.orig_shape]
                c["model_shape"] = [int(v) for v in row.model_shape]
                c[f"latency_ms:{r.spec.name}"] = float(row.latency_ms)
                c[f"dice:{r.spec.name}"] = fmt(case_mean(row.dice)) if row.has_label else None
                if r.spec.role == "candidate" and "dice_vs_baseline" in r.predictions.columns:
                    v = row.dice_vs_baseline
                    c[f"dice_vs_baseline:{r.spec.name}"] = fmt(case_mean(v)) if isinstance(v, np.ndarray) else None
        doc["cases"] = [c for c in cases.values() if "shape" in c]  # skipped cases are listed under "skipped"
        from medray.tasks.clinical import subgroup_columns

        columns = subgroup_columns(cfg, table)
        if columns:
            self._subgroups(doc, results, samples, columns, cfg.report.min_subgroup_size)

    @staticmethod
    def _subgroups(doc: dict, results: list[RunResult], samples: pd.DataFrame, columns: list[str], min_n: int) -> None:
        """Per metadata group: labelled cases, mean Dice vs labels; candidates add the change
        vs the baseline and ``worst_subgroup`` (same keys as classification's, Dice for AUC)."""
        from medray.metrics.segmentation import case_mean
        from medray.tasks.clinical import subgroup_changes

        meta = samples.set_index("sample_id")
        per_run = {}
        for r in results:
            df = r.predictions[r.predictions["has_label"].astype(bool)] if len(r.predictions) else r.predictions
            scores = pd.Series({s: case_mean(d) for s, d in zip(df["sample_id"], df["dice"])}, dtype=float)
            out = {}
            for col in columns:
                g = meta.loc[scores.index, col].astype(str) if len(scores) else pd.Series(dtype=str)
                rows = []
                for name in sorted(set(g)):
                    v = scores[g == name].dropna()
                    if len(v) >= min_n:
                        rows.append({"group": name, "n": int(len(v)), "dice_mean": float(v.mean())})
                out[col] = rows
            per_run[r.spec.name] = out
        base = next((r.spec.name for r in results if r.spec.role == "baseline"), None)
        for entry in doc["runs"]:
            entry["subgroups"] = per_run.get(entry["name"], {})
            if entry["role"] != "candidate" or base is None:
                continue
            subgroup_changes(entry, per_run[base], "dice_mean", "dice_baseline", "delta_dice")

    def render(self, doc: dict) -> list[str]:
        ds, sw = doc["dataset"], doc["sliding_window"]
        runs = doc["runs"]
        base = next((r for r in runs if r["role"] == "baseline"), None)
        cand = [r for r in runs if r["role"] == "candidate"]
        pp = ds.get("preprocessing") or {}
        norm = {"window": f"CT window [{pp.get('a_min')}, {pp.get('a_max')}] → [{pp.get('b_min')}, {pp.get('b_max')}]",
                "zscore": "z-score over non-zero voxels per channel", "none": "none"}.get(pp.get("intensity"), "?")
        lines = [
            f"# medray segmentation — {ds['name']}",
            "",
            f"{ds['n_samples']} cases of split `{ds['split']}` ({ds['n_labelled']} with labels), "
            f"classes {', '.join(ds['classes'])} (background excluded from Dice), modality {', '.join(ds.get('modality') or [])}.",
            f"Preprocessing: orientation {pp.get('orientation') or 'as stored'}, spacing "
            f"{pp.get('spacing') or 'as stored'}, intensity {norm}. Sliding window: ROI {'×'.join(map(str, sw['roi_size'] or []))}, "
            f"overlap {sw['overlap']}, {sw['sw_batch_size']} windows per backend call, {sw['mode']} blending.",
            "Latency per case = sum of the backend calls for the case's windows (warm-up excluded); the sliding-window "
            "time adds window slicing and blending. Dice in the model's voxel space (labels resampled with nearest neighbour); "
            "a class absent from a case's labels does not count for that case (MONAI's ignore_empty).",
            "",
            "| Dataset | Model | Latency per case | Sliding window per case | Speed-up | Dice vs labels | Dice vs baseline | Throughput (cases/s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            sp, ag = r.get("speedup"), r.get("agreement")
            speed = "–" if not sp or sp.get("factor") is None else f"{sp['factor']:.2f}× ({sp['latency_reduction_pct']:.1f}%)"
            model = f"{'Baseline' if r['role'] == 'baseline' else 'Candidate'} {r['name']} (sw{r['batch_size']}×{r['streams']})"
            lines.append(
                f"| {ds['name']} | {model} | {sec(r['latency_ms']['per_sample_mean'])} | "
                f"{sec(r['sliding_window_ms']['per_sample_mean'])} | {speed} | {fdice(r['metrics'].get('dice_mean'))} | "
                f"{fdice(ag['dice_mean']) if ag else '–'} | {r['throughput_sps']:.2f} |"
            )
        lines += ["", "## Dice per class", "", "| Class | " + " | ".join(f"{r['name']} vs labels" for r in runs)
                  + "".join(f" | {r['name']} vs baseline" for r in cand) + " |"]
        lines.append("|---" * (1 + len(runs) + len(cand)) + "|")
        for c in ds["classes"]:
            cells = [fdice(r["metrics"].get("dice_per_class", {}).get(c)) for r in runs]
            cells += [fdice((r.get("agreement") or {}).get("dice_per_class", {}).get(c)) for r in cand]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        if any("hd95_per_class" in r["metrics"] for r in runs):
            tol = next(r["metrics"]["surface_tolerance_mm"] for r in runs if "hd95_per_class" in r["metrics"])
            lines += ["", f"## Surface distances (MONAI; HD95 in mm, surface Dice at {tol:g} mm)", "",
                      "| Class | " + " | ".join(f"{r['name']} HD95 | {r['name']} surface Dice" for r in runs) + " |",
                      "|---" * (1 + 2 * len(runs)) + "|"]
            for c in ds["classes"]:
                cells = []
                for r in runs:
                    m = r["metrics"]
                    hd, missed = (m.get("hd95_per_class") or {}).get(c), (m.get("hd95_missed") or {}).get(c, 0)
                    cells.append(("–" if hd is None else f"{hd:.2f}") + (f" ({missed} missed)" if missed else ""))
                    cells.append(fdice((m.get("surface_dice_per_class") or {}).get(c)))
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
            lines.append("\nA class in a case's labels that the model did not predict has no HD95 (counted as missed) "
                         "and surface Dice 0; a class absent from the labels does not count.")
        for r in cand:
            a = r.get("agreement")
            if a:
                lines.append(
                    f"\n{r['name']} vs baseline: voxel agreement mean {pct(a['voxel_agreement_mean'])}%, min "
                    f"{pct(a['voxel_agreement_min'])}%; lowest per-case Dice {fdice(a['dice_case_min'])} over {a['n']} cases."
                )
        lines += self._per_case(doc, base, cand)
        lines.append("\nMasks (uint8 label maps in the model's voxel space, .npz): `predictions/<run>_masks/`.")
        if any(r.get("subgroups") for r in runs):
            lines += ["", "## Subgroups", "", "Mean Dice vs labels per group (labelled cases); Δ = candidate − baseline.", "",
                      "| Attribute | Group | n | " + " | ".join(r["name"] for r in runs) + " | ΔDice |",
                      "|---" * (len(runs) + 4) + "|"]
            for col, rows in runs[0]["subgroups"].items():
                for x in rows:
                    cells, delta = [], "–"
                    for r in runs:
                        mine = next((y for y in r["subgroups"].get(col, []) if y["group"] == x["group"]), None)
                        cells.append(fdice(mine and mine["dice_mean"]))
                        if mine and mine.get("delta_dice") is not None:
                            delta = f"{mine['delta_dice']:+.4f}"
                    lines.append(f"| {col} | {x['group']} | {x['n']} | " + " | ".join(cells) + f" | {delta} |")
        if doc.get("plots"):
            lines += ["", "## Worst cases", ""] + [f"![{k}]({v})" for k, v in doc["plots"].items()]
        return lines

    @staticmethod
    def _per_case(doc: dict, base: dict | None, cand: list[dict]) -> list[str]:
        cases = doc.get("cases", [])
        if base is not None and cand:
            c0 = cand[0]
            bn, cn = base["name"], c0["name"]
            lines = ["", f"## Per case ({bn} vs {cn})", "",
                     "| Subject | Shape | Baseline latency | Candidate latency | Speed-up | Dice vs baseline (mean) | "
                     "Dice vs labels (baseline) | Dice vs labels (candidate) |", "|---|---|---|---|---|---|---|---|"]
            for case in cases:
                bl, cl = case.get("latency_ms:" + bn), case.get("latency_ms:" + cn)
                sp = f"{bl / cl:.2f}×" if bl and cl else "–"
                lines.append(
                    f"| {case['sample_id']} | {list(case.get('shape') or [])} | {sec(bl)} | {sec(cl)} | {sp} | "
                    f"{fdice(case.get('dice_vs_baseline:' + cn))} | {fdice(case.get('dice:' + bn))} | "
                    f"{fdice(case.get('dice:' + cn))} |"
                )
            return lines
        if not doc["runs"]:
            return []
        n0 = doc["runs"][0]["name"]
        lines = ["", f"## Per case ({n0})", "", "| Subject | Shape | Latency | Dice vs labels |", "|---|---|---|---|"]
        for case in cases:
            lines.append(f"| {case['sample_id']} | {list(case.get('shape') or [])} | "
                         f"{sec(case.get('latency_ms:' + n0))} | {fdice(case.get('dice:' + n0))} |")
        return lines

    def write_plots(self, out: str, doc: dict, results: list[RunResult], table: SampleTable,
                    samples: pd.DataFrame, n_worst: int = 3) -> dict[str, str]:
        """plots/worst_cases.png: the cases with the lowest Dice vs the baseline (or vs the
        labels without a candidate), their slice of most disagreement, every run's mask."""
        from medray import io as medray_io
        from medray.data.msd import load_case
        from medray.metrics.segmentation import case_mean
        from medray.report.plots import worst_cases_png

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
        cases = []
        for sid in worst:
            case = load_case(str(rows.loc[sid, "path"]), str(rows.loc[sid, "label_path"]) or None, self.prep, self.num_classes)
            masks = {r.spec.name: unpack_mask(r.predictions.set_index("sample_id").loc[sid, "mask"]) for r in results}
            cases.append({"sample_id": sid, "image": case["image"][0], "label": case["label"], "masks": masks,
                          "text": f"{what} {score[sid]:.4f}"})
        medray_io.write_bytes(medray_io.join(out, "plots", "worst_cases.png"), worst_cases_png(cases))
        return {"worst_cases": "plots/worst_cases.png"}

    def runs_columns(self, r: dict) -> dict[str, str]:
        lat = r["latency_ms"]
        pw = lat.get("per_window_mean")
        return {
            "Latency p50 / p95 per case": f"{sec(lat['per_sample_p50'])} / {sec(lat['per_sample_p95'])}",
            "Per window": "–" if pw is None else f"{pw:.1f} ms",
            "Windows per case": num(r.get("windows_per_case_mean"), "{:.1f}"),
        }

    def write_predictions(self, out: str, result: RunResult, table: SampleTable, samples: pd.DataFrame) -> None:
        """predictions/<run>.parquet (one row per case) and predictions/<run>_masks/<case>.npz."""
        import pyarrow as pa

        from medray import io as medray_io

        classes = self.foreground(table)
        df = result.predictions
        name = result.spec.name
        n = len(df)
        dice = np.stack(df["dice"].to_numpy()) if n else np.zeros((0, len(classes)))
        cols: dict[str, Any] = {"sample_id": pa.array(df["sample_id"].astype(str) if n else [], pa.string())}
        for j, c in enumerate(classes):
            cols[f"dice_{c}"] = pa.array(dice[:, j].astype(np.float64), pa.float64())
        for key in ("hd95", "surface_dice"):
            if key in df.columns and n:
                v = np.stack(df[key].to_numpy()).astype(np.float64)
                for j, c in enumerate(classes):
                    cols[f"{key}_{c}"] = pa.array(v[:, j], pa.float64())
        with np.errstate(all="ignore"):
            cols["dice_mean"] = pa.array([float(np.nanmean(d)) if np.isfinite(d).any() else np.nan for d in dice], pa.float64())
        if "dice_vs_baseline" in df.columns:
            vb = np.stack([np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else np.full(len(classes), np.nan)
                           for v in df["dice_vs_baseline"]]) if n else np.zeros((0, len(classes)))
            for j, c in enumerate(classes):
                cols[f"dice_vs_baseline_{c}"] = pa.array(vb[:, j], pa.float64())
            cols["voxel_agreement"] = pa.array(df["voxel_agreement"].astype(float) if n else [], pa.float64())
        for k, col in (("orig_shape", "shape"), ("model_shape", "model_shape")):
            v = np.stack(df[k].to_numpy()).astype(np.int64) if n else np.zeros((0, 3), np.int64)
            cols[col] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
        for k in ("orig_spacing", "spacing"):
            v = np.stack(df[k].to_numpy()).astype(np.float64) if n else np.zeros((0, 3))
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3)
        for k, t in (("has_label", pa.bool_()), ("latency_ms", pa.float64()), ("sw_ms", pa.float64()), ("n_calls", pa.int64()),
                     ("n_windows", pa.int64()), ("mask_file", pa.string()), ("mask_sha256", pa.string()),
                     ("node_id", pa.string()), ("worker_pid", pa.int64())):
            cols[k] = pa.array(df[k].tolist() if n else [], t)
        medray_io.write_parquet(pa.table(cols), medray_io.join(out, "predictions", f"{name}.parquet"))
        mask_dir = medray_io.join(out, "predictions", f"{name}_masks")
        medray_io.makedirs(mask_dir)
        for fname, blob in zip(df["mask_file"], df["mask"]) if n else ():
            medray_io.write_bytes(medray_io.join(mask_dir, fname), blob)


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts → columns (vectors stacked, bytes as an object array)."""
    out = {}
    for k in rows[0] if rows else ():
        vals = [r[k] for r in rows]
        if isinstance(vals[0], np.ndarray):
            out[k] = np.stack(vals)
        elif isinstance(vals[0], (bytes, str)):  # object, not a fixed-width dtype a longer value would not fit
            out[k] = np.array(vals, dtype=object)
        else:
            out[k] = np.asarray(vals)
    return out


def _latency(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"per_sample_p50": None, "per_sample_p95": None, "per_sample_mean": None}
    return {"per_sample_p50": float(np.percentile(v, 50)), "per_sample_p95": float(np.percentile(v, 95)),
            "per_sample_mean": float(v.mean())}
