"""medray.metrics.clinical vs scikit-learn: calibration, thresholds, flips, subgroups;
and the patient-clustered bootstrap of medray.metrics.statistics."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from medray.metrics.clinical import (
    age_band,
    calibration,
    choose_threshold,
    flips,
    reliability,
    subgroup_table,
)
from medray.metrics.statistics import Comparison, _metric_fn, bootstrap_ci, compare_metric


def scores(seed, n=600):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.25 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    return y, s


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("decimals", [None, 2])
def test_reliability_matches_sklearn_calibration_curve(seed, strategy, decimals):
    """Bin for bin as scikit-learn's calibration_curve, ties on the edges included (scores
    rounded to 2 decimals put many samples exactly on a quantile edge: the audit found ECE
    0.01586 vs 0.01427 where edge samples went to the upper bin)."""
    y, s = scores(seed)
    if decimals:
        s = np.round(s, decimals)
    r = reliability(y, s, 10, strategy)
    frac, conf = calibration_curve(y, s, n_bins=10, strategy=strategy)
    np.testing.assert_array_equal(r["fraction_positive"], frac)
    np.testing.assert_allclose(r["mean_confidence"], conf, rtol=1e-12)
    # ECE from sklearn's curve with sklearn's own bin assignment (its source: the inner
    # edges, np.searchsorted's default side).
    edges = np.linspace(0, 1, 11) if strategy == "uniform" else np.percentile(s, np.linspace(0, 1, 11) * 100)
    counts = np.bincount(np.searchsorted(edges[1:-1], s), minlength=10)
    counts = counts[counts > 0]
    assert r["ece"] == pytest.approx(np.sum(counts / len(s) * np.abs(frac - conf)), rel=1e-12)
    assert sum(r["count"]) == len(s)


def test_perfectly_calibrated_scores_have_small_ece_and_overconfident_large():
    rng = np.random.default_rng(0)
    s = rng.random(20000)
    y = (rng.random(20000) < s).astype(int)
    assert reliability(y, s)["ece"] < 0.02
    assert reliability(y, np.clip(s * 2 - 0.5, 0, 1))["ece"] > 0.1


def test_calibration_brier_binary_multilabel_multiclass():
    y, s = scores(2)
    p = np.c_[1 - s, s]
    c = calibration(y, p, "multiclass", positive=1)
    assert c["brier"] == pytest.approx(brier_score_loss(y, s))
    assert c["ece"] == c["equal_width"]["ece"] and c["ece_equal_mass"] == c["equal_mass"]["ece"]
    c0 = calibration(1 - y, p[:, ::-1], "multiclass", positive=0)  # positive = index 0
    assert c0["brier"] == pytest.approx(c["brier"])
    ym = np.c_[y, 1 - y]
    pm = np.c_[s, np.clip(1 - s + 0.1, 0, 1)]
    cm = calibration(ym, pm, "multilabel")
    assert cm["brier_per_label"] == pytest.approx([brier_score_loss(ym[:, j], pm[:, j]) for j in range(2)])
    assert cm["brier"] == pytest.approx(np.mean(cm["brier_per_label"]))
    rng = np.random.default_rng(0)
    p3 = rng.dirichlet(np.ones(3), 200)
    y3 = rng.integers(0, 3, 200)
    c3 = calibration(y3, p3, "multiclass")
    assert c3["scope"] == "top-label confidence"
    assert c3["brier"] == pytest.approx(np.mean(np.sum((p3 - np.eye(3)[y3]) ** 2, axis=1)))


def brute_threshold(y, s, method, target=None):
    """Every candidate threshold tried: the reference for choose_threshold."""
    best = None
    for t in np.unique(s)[::-1]:  # high to low
        d = s >= t
        sens, spec = (d & (y == 1)).sum() / (y == 1).sum(), (~d & (y == 0)).sum() / (y == 0).sum()
        if method == "youden":
            if best is None or sens + spec - 1 > best[1] + 1e-15:
                best = (t, sens + spec - 1)
        elif method == "sensitivity" and sens >= target:
            return t
        elif method == "specificity" and spec >= target:
            best = (t, None)
    return best[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_brute_force(seed):
    y, s = scores(seed, 300)
    assert choose_threshold(y, s, "youden") == pytest.approx(brute_threshold(y, s, "youden"))
    for target in (0.8, 0.95):
        t = choose_threshold(y, s, "sensitivity", target)
        assert t == pytest.approx(brute_threshold(y, s, "sensitivity", target))
        assert ((s >= t) & (y == 1)).sum() / (y == 1).sum() >= target
        t = choose_threshold(y, s, "specificity", target)
        assert t == pytest.approx(brute_threshold(y, s, "specificity", target))
        assert ((s < t) & (y == 0)).sum() / (y == 0).sum() >= target
    assert choose_threshold(y, s, "fixed", value=0.3) == 0.3
    with pytest.raises(ValueError, match="positive and negative validation samples"):
        choose_threshold(np.zeros(5), s[:5], "youden")


def test_flips_per_label_and_direction():
    b = np.array([[0.6, 0.1], [0.4, 0.9], [0.7, 0.2], [0.2, 0.55]])
    c = np.array([[0.4, 0.1], [0.45, 0.9], [0.71, 0.3], [0.2, 0.45]])
    f = flips(["a", "b", "c", "d"], b, c, [0.5, 0.5], ["x", "y"])
    assert f["n"] == 2 and f["sample_ids"] == ["a", "d"]
    assert f["per_label"]["x"] == {"n": 1, "to_positive": 0, "to_negative": 1, "sample_ids": ["a"]}
    assert f["per_label"]["y"]["sample_ids"] == ["d"]
    # At 0.42 on x, b (0.40 → 0.45) flips too; a (0.60 → 0.40) still does.
    assert flips(["a", "b", "c", "d"], b, c, [0.42, 0.5], ["x", "y"])["per_label"]["x"]["sample_ids"] == ["a", "b"]


def test_age_bands_of_nih_ages():
    assert [age_band(a) for a in ("058Y", "17", 18, "80", "abc", "414")] == ["40-59", "0-17", "18-39", "80+", "unknown", "unknown"]
    # NIH lists ages 148-155: entry errors, not "80+" (the audit); over MAX_AGE is unknown.
    assert [age_band(a) for a in ("100", "120", "121", "148Y", "155", "-3")] == ["80+", "80+", "unknown", "unknown", "unknown",
                                                                                "unknown"]


def test_subgroup_auc_matches_sklearn_per_group():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (400, 3))
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.25, y.shape), 0, 1)
    sex = rng.choice(["F", "M"], 400)
    rows = subgroup_table(sex, y, p, "multilabel", min_n=1)
    for r in rows:
        m = sex == r["group"]
        assert r["n"] == m.sum()
        assert r["auc_macro"] == pytest.approx(roc_auc_score(y[m], p[m], average="macro"))
    small = subgroup_table(np.r_[["F"] * 395, ["M"] * 5], y, p, "multilabel", min_n=10)
    assert [(r["group"], r["n"], r.get("small", False)) for r in small] == [("F", 395, False), ("M", 5, True)]
    assert small[1]["auc_macro"] is None  # listed with its n, never dropped


# --------------------------------------------------------------------------- patient clusters


def repeated_patients(n_patients=80, per=5, seed=0):
    """Images of one patient share the label and nearly the score: they are one sample."""
    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_patients)
    s_pat = np.clip(0.35 + 0.3 * y_pat + rng.normal(0, 0.25, n_patients), 0, 1)
    y = np.repeat(y_pat, per)
    s = np.clip(np.repeat(s_pat, per) + rng.normal(0, 0.01, n_patients * per), 0, 1)
    pid = np.repeat([f"p{i:04d}" for i in range(n_patients)], per)
    return y, np.c_[1 - s, s], pid


def width(ci):
    return ci["ci"][1] - ci["ci"][0]


def test_patient_clustered_ci_is_wider_with_repeated_patients():
    y, p, pid = repeated_patients()
    fn = _metric_fn("auc_macro", "multiclass")
    image = bootstrap_ci(y, p, fn, 1000, seed=0)
    patient = bootstrap_ci(y, p, fn, 1000, seed=0, clusters=pid)
    assert image["estimate"] == patient["estimate"]
    assert width(patient) > 1.6 * width(image)  # ~sqrt(5) with 5 near-copies per patient
    cand = p + np.random.default_rng(1).normal(0, 0.02, p.shape)
    cm = compare_metric(y, p, np.clip(cand, 0, 1), "multiclass", "auc_macro", Comparison(0.01, n_boot=500, clusters=pid))
    assert cm["resampling"] == "patients (clusters)" and cm["n_clusters"] == 80
    assert cm["difference"]["method"] == "paired bootstrap"  # DeLong assumes independent images
    im = compare_metric(y, p, np.clip(cand, 0, 1), "multiclass", "auc_macro", Comparison(0.01, n_boot=500))
    assert im["difference"]["method"] == "DeLong" and im["resampling"] == "samples"
    assert width(cm["baseline"]) > width(im["baseline"])


def test_patient_clustered_ci_equals_image_level_with_one_image_per_patient():
    y, p, _ = repeated_patients(per=1, n_patients=300)
    pid = [f"p{i:04d}" for i in range(300)]  # one image each, ids in row order
    fn = _metric_fn("auc_macro", "multiclass")
    assert bootstrap_ci(y, p, fn, 500, seed=3, clusters=pid) == bootstrap_ci(y, p, fn, 500, seed=3)


def test_bootstrap_mean_skips_nan_cases():
    dice = np.array([0.9, 0.8, np.nan, 0.7])
    r = bootstrap_ci(np.zeros(4), dice, _metric_fn("mean", "segmentation"), 200)
    assert r["estimate"] == pytest.approx(0.8)
    assert not np.isnan(r["ci"]).any()
