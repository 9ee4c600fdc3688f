"""DeLong vs its definition and a paired bootstrap; bootstrap CIs; the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medray.metrics.classification import classification_metrics
from medray.metrics.statistics import (
    Comparison,
    auc_macro,
    balanced_accuracy,
    bootstrap_ci,
    compare_metric,
    delong_auc,
    delong_test,
    fast_delong,
    non_inferiority,
    paired_bootstrap,
)


def delong_by_definition(y, scores):
    """DeLong et al. (1988) written out: psi over every positive/negative pair."""
    y = np.asarray(y).astype(bool)
    pos = [s[y] for s in scores]
    neg = [s[~y] for s in scores]
    m, n = len(pos[0]), len(neg[0])
    v10, v01, aucs = [], [], []
    for p, q in zip(pos, neg):
        psi = (p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))  # per positive
        v01.append(psi.mean(axis=0))  # per negative
    s10 = np.atleast_2d(np.cov(np.array(v10)))
    s01 = np.atleast_2d(np.cov(np.array(v01)))
    return np.array(aucs), s10 / m + s01 / n


@pytest.fixture
def correlated():
    """Two correlated scores on 300 samples, rounded so that ties occur."""
    rng = np.random.default_rng(7)
    y = rng.random(300) < 0.35
    latent = y * 1.2 + rng.normal(size=300)
    a = np.round(latent + 0.6 * rng.normal(size=300), 1)
    b = np.round(latent + 0.9 * rng.normal(size=300), 1)
    return y, a, b


def test_fast_delong_equals_the_definition_with_ties(correlated):
    y, a, b = correlated
    order = np.concatenate([np.flatnonzero(y), np.flatnonzero(~y)])
    aucs, cov = fast_delong(np.stack([a, b])[:, order], int(y.sum()))
    ref_aucs, ref_cov = delong_by_definition(y, [a, b])
    assert len(np.unique(a)) < len(a)  # there are ties
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert aucs[1] == pytest.approx(roc_auc_score(y, b), abs=1e-12)


def test_delong_hand_computed_example():
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.4, 0.1 → psi rows [1,1,1], [1,1,1], [0,.5,1]
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.4, 0.1])
    r = delong_auc(y, s)
    assert r["auc"] == pytest.approx(7.5 / 9)
    v10 = np.array([1, 1, 0.5])  # per positive
    v01 = np.array([2 / 3, 2.5 / 3, 1])  # per negative
    var = v10.var(ddof=1) / 3 + v01.var(ddof=1) / 3
    assert r["se"] == pytest.approx(math.sqrt(var), rel=1e-12)


def test_delong_difference_matches_paired_bootstrap(correlated):
    y, a, b = correlated
    t = delong_test(y, a, b)
    # auc_macro of a two-column score is the binary AUC (checked against sklearn below).
    auc = lambda yy, s: auc_macro(yy, np.stack([-s, s], axis=1), "multiclass")  # noqa: E731
    boot = paired_bootstrap(y.astype(int), a, b, auc, n_boot=1500, seed=1)
    assert t["difference"] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a), abs=1e-12)
    assert boot["difference"] == pytest.approx(t["difference"], abs=1e-12)
    # The two estimates of the standard error of the difference agree within sampling noise.
    assert boot["se"] == pytest.approx(t["se"], rel=0.15)
    assert t["ci"][0] < t["difference"] < t["ci"][1]
    z = t["difference"] / t["se"]
    assert t["p_value"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))), rel=1e-9)


def test_delong_identical_scores_is_no_difference(correlated):
    y, a, _ = correlated
    t = delong_test(y, a, a.copy())
    assert t["difference"] == 0 and t["se"] == 0 and t["p_value"] == 1.0


def test_delong_needs_both_outcomes():
    with pytest.raises(ValueError, match="positives and negatives"):
        delong_auc(np.ones(5), np.arange(5.0))


@pytest.mark.parametrize("task,k", [("multiclass", 2), ("multiclass", 4), ("multilabel", 3)])
def test_metrics_match_classification_module(task, k):
    rng = np.random.default_rng(k)
    n = 120
    if task == "multiclass":
        y = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        y = (rng.random((n, k)) < 0.3).astype(int)
        p = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 1.5 * y)))
    ref = classification_metrics(y, p, task, [f"c{i}" for i in range(k)])
    assert auc_macro(y, p, task) == pytest.approx(ref["auc_macro"], abs=1e-12)
    assert balanced_accuracy(y, p, task) == pytest.approx(ref["balanced_accuracy"], abs=1e-12)
    if task == "multiclass":
        assert balanced_accuracy(y, p, task) == pytest.approx(balanced_accuracy_score(y, p.argmax(1)), abs=1e-12)


def test_bootstrap_ci_covers_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(size=50)
    large = rng.normal(size=2000)
    mean = lambda y, v: float(np.mean(v))  # noqa: E731
    cs = bootstrap_ci(np.zeros(50), small, mean, n_boot=1000)
    cl = bootstrap_ci(np.zeros(2000), large, mean, n_boot=1000)
    assert cs["ci"][0] < cs["estimate"] < cs["ci"][1]
    # ~ normal theory: half-width ≈ 1.96 σ / √n
    assert (cl["ci"][1] - cl["ci"][0]) / 2 == pytest.approx(1.96 / math.sqrt(2000), rel=0.15)
    assert cl["ci"][1] - cl["ci"][0] < cs["ci"][1] - cs["ci"][0]


def test_compare_metric_binary_uses_delong_and_gives_a_verdict(correlated):
    y, a, b = correlated
    pa = 1 / (1 + np.exp(-a))
    pb = 1 / (1 + np.exp(-b))
    base = np.stack([1 - pa, pa], axis=1)
    same = compare_metric(y.astype(int), base, base.copy(), "multiclass", "auc_macro", Comparison(margin=0.005, n_boot=300))
    assert same["difference"]["method"] == "DeLong"
    assert same["difference"]["difference"] == 0 and same["non_inferior"] is True
    worse = compare_metric(y.astype(int), base, np.stack([1 - pb, pb], 1), "multiclass", "auc_macro", Comparison(margin=0.005, n_boot=300))
    assert worse["difference"]["difference"] < 0 and worse["non_inferior"] is False
    assert worse["baseline"]["estimate"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    bacc = compare_metric(y.astype(int), base, base, "multiclass", "balanced_accuracy", Comparison(margin=None, n_boot=300))
    assert bacc["difference"]["method"] == "paired bootstrap" and bacc["non_inferior"] is None


def test_non_inferiority_boundary():
    assert non_inferiority(-0.004, 0.005)["non_inferior"] is True
    assert non_inferiority(-0.006, 0.005)["non_inferior"] is False
    assert non_inferiority(math.nan, 0.005)["non_inferior"] is None
