"""Dice per case / per class against MONAI's DiceMetric on one-hot masks and a numpy Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from medray.metrics.segmentation import case_mean, dice_per_class, dice_summary, voxel_agreement


def numpy_dice(pred: np.ndarray, ref: np.ndarray, c: int, ignore_empty: bool = True) -> float:
    p, r = pred == c, ref == c
    if r.sum() == 0:
        return math.nan if ignore_empty else float(p.sum() == 0)
    return 2.0 * (p & r).sum() / (p.sum() + r.sum())


def monai_onehot(pred: np.ndarray, ref: np.ndarray, k: int, ignore_empty: bool = True) -> np.ndarray:
    """MONAI's documented use: one-hot (B, K, ...) tensors, background excluded."""
    m = DiceMetric(include_background=False, reduction="none", ignore_empty=ignore_empty)
    p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], k)
    r = one_hot(torch.from_numpy(ref.astype(np.int64))[None, None], k)
    return m(p, r)[0].numpy()


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Class 1: prediction 4 voxels, reference 6, overlap 3 → Dice 6/10. Class 2: reference
    2 voxels, prediction 2 of which 1 overlaps → 2/4. Class 3: absent from both."""
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros((4, 4, 4), np.uint8)
    ref[0, 0, :4] = 1
    ref[0, 1, :2] = 1
    pred[0, 0, 1:4] = 1
    pred[1, 0, 0] = 1
    ref[3, 3, 2:4] = 2
    pred[3, 3, 3] = 2
    pred[2, 2, 2] = 2
    return pred, ref


def test_hand_made_masks_have_the_hand_computed_dice():
    pred, ref = hand_made()
    d = dice_per_class(pred, ref, 4)
    assert d[:2] == pytest.approx([0.6, 0.5]) and math.isnan(d[2])
    # vs the baseline's masks: agreeing that class 3 is absent is perfect agreement
    assert dice_per_class(pred, ref, 4, ignore_empty=False) == pytest.approx([0.6, 0.5, 1.0])
    assert case_mean(d) == pytest.approx(0.55)


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_equals_monai_onehot_and_numpy_on_random_masks(ignore_empty):
    rng = np.random.default_rng(0)
    for trial in range(6):
        k = 3 + trial % 2
        ref = rng.integers(0, k, size=(9, 7, 5)).astype(np.uint8)
        pred = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, k, size=ref.shape)).astype(np.uint8)
        if trial % 3 == 0:  # a class missing from the reference (and, once, from both)
            ref[ref == k - 1] = 0
            if trial == 0:
                pred[pred == k - 1] = 0
        ours = dice_per_class(pred, ref, k, ignore_empty=ignore_empty)
        ref_np = [numpy_dice(pred, ref, c, ignore_empty) for c in range(1, k)]
        np.testing.assert_allclose(ours, ref_np, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ours, monai_onehot(pred, ref, k, ignore_empty), rtol=1e-6, equal_nan=True)


def test_summary_is_monais_mean_over_cases_and_classes():
    rng = np.random.default_rng(1)
    preds, refs, per_case = [], [], []
    for i in range(5):
        ref = rng.integers(0, 3, size=(6, 6, 6)).astype(np.uint8)
        if i == 2:
            ref[ref == 2] = 0  # class 2 absent in one case: NaN, left out of its mean
        pred = np.where(rng.random(ref.shape) < 0.8, ref, 0).astype(np.uint8)
        preds.append(pred)
        refs.append(ref)
        per_case.append(dice_per_class(pred, ref, 3))
    s = dice_summary(np.stack(per_case), ["organ", "lesion"])
    batch = DiceMetric(include_background=False, reduction="mean")
    p = one_hot(torch.from_numpy(np.stack(preds).astype(np.int64))[:, None], 3)
    r = one_hot(torch.from_numpy(np.stack(refs).astype(np.int64))[:, None], 3)
    batch(y_pred=p, y=r)
    assert s["dice_mean"] == pytest.approx(float(batch.aggregate()), rel=1e-6)
    by_class = DiceMetric(include_background=False, reduction="mean_batch")
    by_class(y_pred=p, y=r)
    per_class = by_class.aggregate().numpy()
    assert [s["dice_per_class"]["organ"], s["dice_per_class"]["lesion"]] == pytest.approx(per_class.tolist(), rel=1e-6)
    assert s["n_cases_per_class"] == {"organ": 5, "lesion": 4}
    means = [np.nanmean(d) for d in per_case]
    assert s["dice_case_min"] == pytest.approx(min(means))


def test_all_nan_and_shape_errors():
    s = dice_summary(np.full((2, 1), np.nan), ["organ"])
    assert s["dice_mean"] is None and s["dice_per_class"] == {"organ": None}
    with pytest.raises(ValueError, match="mask shapes differ"):
        dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), 2)
    a = np.zeros((2, 2, 2), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert voxel_agreement(a, b) == pytest.approx(7 / 8)


def _cubes(shift: int, size: int = 20):
    a = np.zeros((size, size, size), np.uint8)
    b = a.copy()
    a[5:12, 5:12, 5:12] = 1
    b[5 + shift:12 + shift, 5:12, 5:12] = 1
    return a, b


def test_hd95_and_surface_dice_of_shifted_cubes_by_hand():
    from medray.metrics.segmentation import surface_distances, surface_summary

    target, pred = _cubes(2)
    hd, nsd = surface_distances(pred, target, 2, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert hd[0] == pytest.approx(2.0)  # the faces normal to the shift are 2 voxels apart
    # Spacing scales the distances: 2 mm along the shifted axis doubles HD95.
    hd2, _ = surface_distances(pred, target, 2, (2.0, 1.0, 1.0), tolerance_mm=1.0)
    assert hd2[0] == pytest.approx(4.0)
    same, nsd_same = surface_distances(target, target, 2, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert same[0] == 0.0 and nsd_same[0] == 1.0
    assert 0.0 < nsd[0] < 1.0
    # Within a 2-voxel tolerance every surface point of either cube is close enough.
    assert surface_distances(pred, target, 2, (1.0, 1.0, 1.0), tolerance_mm=2.0)[1][0] == pytest.approx(1.0)
    missed_hd, missed_nsd = surface_distances(np.zeros_like(target), target, 2, (1, 1, 1), 1.0)
    assert np.isinf(missed_hd[0]) and missed_nsd[0] == 0.0
    absent_hd, absent_nsd = surface_distances(target * 0, target * 0, 2, (1, 1, 1), 1.0)
    assert np.isnan(absent_hd[0]) and np.isnan(absent_nsd[0])
    s = surface_summary(np.array([[2.0], [np.inf], [np.nan]]), np.array([[0.5], [0.0], [np.nan]]), ["spleen"])
    assert s["hd95_per_class"] == {"spleen": 2.0} and s["hd95_missed"] == {"spleen": 1}
    assert s["surface_dice_per_class"] == {"spleen": 0.25} and s["surface_dice_mean"] == 0.25


def test_surface_dice_mean_averages_like_dice_mean_and_names_its_definition():
    """The audit: surface_dice_mean averaged by class first while dice_mean averages by
    case first; and the report did not say the surface Dice is MONAI's voxel-count one."""
    from medray.metrics.segmentation import dice_summary, surface_summary

    nsd = np.array([[1.0, np.nan], [0.5, 0.0], [0.9, 0.7]])
    s = surface_summary(np.zeros_like(nsd), nsd, ["a", "b"])
    case_means = [1.0, 0.25, 0.8]
    assert s["surface_dice_mean"] == pytest.approx(np.mean(case_means))
    assert s["surface_dice_mean"] == pytest.approx(dice_summary(nsd, ["a", "b"])["dice_mean"])
    assert s["surface_dice_per_class"] == {"a": pytest.approx(0.8), "b": pytest.approx(0.35)}
    assert "voxel counts, not area-weighted" in s["surface_dice_definition"]


def test_overlap_counts_are_nnunets_on_labels_regions_and_an_ignore_label():
    """TP/FP/FN/TN, Dice and IoU equal nnunetv2's compute_tp_fp_fn_tn on its region masks
    (labels, regions, the ignore label), and the label summary its means."""
    nn = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions", reason='pip install -e ".[nnunet]"')
    from medray.metrics.segmentation import dice_iou, label_summary, overlap_counts

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (12, 10, 8)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.integers(0, 3, ref.shape)).astype(np.uint8)
    regions = [(1,), (2,), (1, 2), (3,)]
    for ignore in (None, 3):
        got = overlap_counts(pred, ref, regions[:3] if ignore else regions, ignore)
        for j, r in enumerate(regions[:3] if ignore else regions):
            mask_ignore = None if ignore is None else ref == ignore
            tp, fp, fn, tn = nn.compute_tp_fp_fn_tn(nn.region_or_label_to_mask(ref, r if len(r) > 1 else r[0]),
                                                    nn.region_or_label_to_mask(pred, r if len(r) > 1 else r[0]), mask_ignore)
            assert got[j].tolist() == [tp, fp, fn, tn]
    counts = np.stack([overlap_counts(pred, ref, regions), overlap_counts(pred * 0, ref * 0, regions)])
    dice, iou = dice_iou(counts)
    assert np.isnan(dice[1]).all() and np.isnan(iou[1]).all()  # in neither mask: NaN, as nnU-Net
    assert dice[0, 0] == pytest.approx(2 * counts[0, 0, 0] / (2 * counts[0, 0, 0] + counts[0, 0, 1] + counts[0, 0, 2]))
    s = label_summary(counts, ["a", "b", "ab", "c"])
    assert s["mean"]["a"]["Dice"] == pytest.approx(dice[0, 0]) and s["mean"]["a"]["n_ref"] == counts[:, 0, 0].mean() + counts[:, 0, 2].mean()
    assert s["foreground_mean"]["Dice"] == pytest.approx(np.mean(dice[0]))
