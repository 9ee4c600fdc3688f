"""classification_metrics vs independent numpy / scikit-learn references."""

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from medray.metrics.classification import classification_metrics

SEEDS = [0, 1, 2, 3]


# ---------------------------------------------------------------- references (numpy)
def ref_auc(y, s):
    """Mann-Whitney AUC by brute-force pair counting (ties count 1/2)."""
    y = np.asarray(y).astype(bool)
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (pos.size * neg.size)


def ref_counts(y, pred):
    """tp, fp, fn, tn for 0/1 vectors."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    return (
        int((y & pred).sum()),
        int((~y & pred).sum()),
        int((y & ~pred).sum()),
        int((~y & ~pred).sum()),
    )


def ref_prf(y, pred):
    tp, fp, fn, _ = ref_counts(y, pred)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return p, r, f


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_multiclass(seed, n, k, skill=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + skill * np.eye(k)[y]
    return y, softmax(logits)


def make_multilabel(seed, n, n_labels, skill=1.5):
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.05, 0.5, n_labels)
    y = (rng.random((n, n_labels)) < prevalence).astype(int)
    logits = rng.normal(size=(n, n_labels)) + skill * (2 * y - 1)
    return y, 1 / (1 + np.exp(-logits))


def names(k):
    return [f"c{i}" for i in range(k)]


def check_multiclass(m, y, p, k):
    # Binary decides "positive (index 1) when its probability >= 0.5", else argmax.
    pred = (p[:, 1] >= 0.5).astype(int) if k == 2 else p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    present = np.unique(y)
    recalls = [np.mean(pred[y == c] == c) for c in present]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    scored = np.union1d(present, np.unique(pred))  # in the labels or the decisions (sklearn's default labels)
    f1s = []
    for c in range(k):
        prec, rec, f1 = ref_prf(y == c, pred == c)
        row = m["per_class"][c]
        assert row["class"] == f"c{c}"
        assert row["support"] == int((y == c).sum())
        assert row["precision"] == pytest.approx(prec)
        assert row["recall"] == (pytest.approx(rec) if c in present else None)  # no sample: 0/0, not 0
        if c in scored:  # a predicted class the labels lack is a real error: F1 0, counted
            assert row["f1"] == pytest.approx(f1)
            f1s.append(f1)
        else:  # neither in the labels nor decided: F1 is 0/0
            assert row["f1"] is None
    assert m["f1_macro"] == pytest.approx(np.mean(f1s))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["f1_skipped"] == [f"c{c}" for c in range(k) if c not in scored]
    aucs = []
    for c in range(k):
        yc = y == c
        if yc.all() or not yc.any():
            assert m["auc_per_class"][f"c{c}"] is None
            assert f"c{c}" in m["auc_skipped"]
        else:
            a = ref_auc(yc, p[:, c])
            assert m["auc_per_class"][f"c{c}"] == pytest.approx(a)
            assert m["per_class"][c]["auc"] == pytest.approx(a)
            aucs.append(a)
    if k == 2:  # binary: one score, the positive class's AUC
        assert m["auc_macro"] == (pytest.approx(ref_auc(y == 1, p[:, 1])) if 0 < (y == 1).sum() < len(y) else None)
    else:
        assert m["auc_macro"] == (pytest.approx(np.mean(aucs)) if aucs else None)
    json.dumps(m, allow_nan=False)


# ---------------------------------------------------------------- multiclass
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 5])
def test_multiclass_random_matches_reference(seed, k):
    y, p = make_multiclass(seed, 300, k)
    m = classification_metrics(y, p, "multiclass", names(k))
    check_multiclass(m, y, p, k)
    assert m["auc_skipped"] == []
    # sklearn's own multiclass OvR path (a different code path) agrees too.
    sk = (
        roc_auc_score(y, p, multi_class="ovr", average="macro")
        if k > 2
        else roc_auc_score(y, p[:, 1])
    )
    assert m["auc_macro"] == pytest.approx(sk)
    # The metrics are non-trivial: a model with skill beats chance.
    assert 0.6 < m["auc_macro"] < 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_sensitivity_specificity(seed):
    y, p = make_multiclass(seed, 250, 2)
    m = classification_metrics(y, p, "multiclass", ["neg", "pos"])
    pred = p[:, 1] > p[:, 0]
    tp, fp, fn, tn = ref_counts(y, pred)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["threshold"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx(
        (m["sensitivity"] + m["specificity"]) / 2
    )
    # Binary AUC is the same for both columns when rows sum to one.
    assert m["auc_per_class"]["neg"] == pytest.approx(m["auc_per_class"]["pos"])
    assert m["auc_macro"] == pytest.approx(ref_auc(y, p[:, 1]))


def test_binary_hand_computed():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p1 = np.array([0.9, 0.6, 0.3, 0.2, 0.7, 0.1, 0.4, 0.8])
    m = classification_metrics(y, np.c_[1 - p1, p1], "multiclass", ["neg", "pos"])
    # predictions 1,1,0,0,1,0,0,1 -> tp=3 fn=1 tn=3 fp=1
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    # positives {.9,.6,.3,.8} vs negatives {.2,.7,.1,.4}: 13 of 16 pairs ordered right
    assert m["auc_macro"] == pytest.approx(13 / 16)
    assert m["per_class"][1] == {
        "class": "pos",
        "support": 4,
        "precision": 0.75,
        "recall": 0.75,
        "f1": 0.75,
        "auc": pytest.approx(13 / 16),
    }


def test_multiclass_class_absent_from_y_true():
    y, p = make_multiclass(7, 200, 5)
    keep = y != 3
    y, p = y[keep], p[keep]
    m = classification_metrics(y, p, "multiclass", names(5))
    assert m["auc_skipped"] == ["c3"]
    assert m["auc_per_class"]["c3"] is None
    others = [ref_auc(y == c, p[:, c]) for c in (0, 1, 2, 4)]
    assert m["auc_macro"] == pytest.approx(np.mean(others))
    # Class 3 has no sample; it is scored for F1 only if some image was decided as it.
    assert m["per_class"][3]["support"] == 0
    decided = 3 in p.argmax(1)
    assert m["f1_skipped"] == ([] if decided else ["c3"]) and (m["per_class"][3]["f1"] == 0.0) == decided
    check_multiclass(m, y, p, 5)


def test_multiclass_f1_counts_a_predicted_class_the_labels_lack():
    """The audit's case: sklearn's macro F1 counts a class decided but absent from the
    labels as an error (0.232), where skipping it flattered the run (0.608)."""
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 3, 1, 4, 2, 5])
    p = np.eye(6)[pred] * 0.9 + 0.1 / 6
    m = classification_metrics(y, p, "multiclass", names(6))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["f1_skipped"] == [] and m["per_class"][3]["f1"] == 0.0


def test_multiclass_all_one_class():
    y, p = make_multiclass(3, 50, 5)
    y = np.full_like(y, 2)
    m = classification_metrics(y, p, "multiclass", names(5))
    assert m["auc_macro"] is None
    assert m["auc_skipped"] == names(5)
    assert all(v is None for v in m["auc_per_class"].values())
    assert m["balanced_accuracy"] == pytest.approx(np.mean(p.argmax(1) == 2))
    check_multiclass(m, y, p, 5)


def test_binary_all_negative_has_no_sensitivity():
    y = np.zeros(6, dtype=int)
    p1 = np.array([0.1, 0.2, 0.7, 0.3, 0.4, 0.9])
    m = classification_metrics(y, np.c_[1 - p1, p1], "multiclass", ["neg", "pos"])
    assert m["sensitivity"] is None
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["auc_macro"] is None
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("k", [2, 5])
def test_multiclass_perfect(k):
    y = np.arange(40) % k
    p = np.full((40, k), 0.1 / (k - 1))
    p[np.arange(40), y] = 0.9
    m = classification_metrics(y, p, "multiclass", names(k))
    for key in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro"):
        assert m[key] == pytest.approx(1.0), key
    if k == 2:
        assert m["sensitivity"] == m["specificity"] == 1.0


def test_multiclass_sharding_order_invariant():
    # Metrics come from merged outputs: any row order must give identical numbers.
    y, p = make_multiclass(11, 120, 5)
    perm = np.random.default_rng(0).permutation(120)
    a = classification_metrics(y, p, "multiclass", names(5))
    b = classification_metrics(y[perm], p[perm], "multiclass", names(5))
    assert json.dumps(a) == json.dumps(b)


# ---------------------------------------------------------------- multilabel
def check_multilabel(m, y, p, thr=0.5):
    dec = p >= thr
    n_labels = y.shape[1]
    assert m["accuracy"] == pytest.approx(np.mean((dec == y.astype(bool)).all(axis=1)))
    bal, f1s, aucs = [], [], []
    for j in range(n_labels):
        tp, fp, fn, tn = ref_counts(y[:, j], dec[:, j])
        if tp + fn and tn + fp:
            bal.append((tp / (tp + fn) + tn / (tn + fp)) / 2)
            aucs.append(ref_auc(y[:, j], p[:, j]))
            assert m["auc_per_class"][f"c{j}"] == pytest.approx(aucs[-1])
        else:
            assert m["auc_per_class"][f"c{j}"] is None
            assert f"c{j}" in m["auc_skipped"]
        prec, rec, f1 = ref_prf(y[:, j], dec[:, j])
        row = m["per_class"][j]
        assert row["support"] == int(y[:, j].sum())
        assert row["precision"] == pytest.approx(prec)
        if tp + fn + fp:
            assert row["f1"] == pytest.approx(f1)
            f1s.append(f1)
        else:  # no positive, none predicted: F1 is 0/0
            assert row["f1"] is None and f"c{j}" in m["f1_skipped"]
    assert m["balanced_accuracy"] == (pytest.approx(np.mean(bal)) if bal else None)
    assert m["f1_macro"] == (pytest.approx(np.mean(f1s)) if f1s else None)
    if f1s:  # sklearn leaves 0/0 labels out of the mean with zero_division=nan
        assert m["f1_macro"] == pytest.approx(f1_score(y, dec, average="macro", zero_division=np.nan))
    assert m["auc_macro"] == (pytest.approx(np.mean(aucs)) if aucs else None)
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_14_random_matches_reference(seed):
    y, p = make_multilabel(seed, 400, 14)
    m = classification_metrics(y, p, "multilabel", names(14))
    check_multilabel(m, y, p)
    assert m["auc_skipped"] == []
    assert m["threshold"] == 0.5
    # sklearn's multilabel macro AUC (indicator-matrix path) agrees.
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert "sensitivity" not in m


def test_multilabel_threshold_changes_decisions():
    y, p = make_multilabel(5, 300, 14)
    m = classification_metrics(y, p, "multilabel", names(14), threshold=0.3)
    check_multilabel(m, y, p, thr=0.3)
    assert m["threshold"] == 0.3
    m5 = classification_metrics(y, p, "multilabel", names(14))
    assert m["f1_macro"] != m5["f1_macro"]
    assert m["auc_macro"] == m5["auc_macro"]


def test_multilabel_label_all_zero():
    y, p = make_multilabel(9, 200, 14)
    y[:, 4] = 0
    m = classification_metrics(y, p, "multilabel", names(14))
    assert m["auc_skipped"] == ["c4"]
    assert m["auc_per_class"]["c4"] is None
    check_multilabel(m, y, p)
    others = [ref_auc(y[:, j], p[:, j]) for j in range(14) if j != 4]
    assert m["auc_macro"] == pytest.approx(np.mean(others))


def test_multilabel_all_labels_single_outcome():
    y = np.zeros((10, 3), dtype=int)
    y[:, 1] = 1
    p = np.full((10, 3), 0.2)
    m = classification_metrics(y, p, "multilabel", names(3))
    assert m["auc_macro"] is None
    assert m["balanced_accuracy"] is None
    assert m["auc_skipped"] == names(3)
    assert m["accuracy"] == 0.0  # label 1 is always missed
    json.dumps(m, allow_nan=False)


def test_multilabel_perfect():
    y, _ = make_multilabel(2, 100, 14)
    y[0, :] = 1  # every label has at least one positive
    y[1, :] = 0
    p = np.where(y == 1, 0.8, 0.2)
    m = classification_metrics(y, p, "multilabel", names(14))
    for key in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro"):
        assert m[key] == pytest.approx(1.0), key


def test_multilabel_hand_computed():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    p = np.array([[0.9, 0.1], [0.6, 0.2], [0.7, 0.4], [0.2, 0.8]])
    m = classification_metrics(y, p, "multilabel", ["a", "b"])
    # decisions [[1,0],[1,0],[1,0],[0,1]] -> exact rows: 0 and 3
    assert m["accuracy"] == 0.5
    # a: sens 1, spec 1/2 -> .75 ; b: sens 1/2, spec 1 -> .75
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    # a: F1 = 2*2/(4+1) = .8 ; b: 2*1/(2+0+1) = 2/3
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["auc_per_class"] == {"a": 1.0, "b": 1.0}


# ---------------------------------------------------------------- validation
def test_rejects_shape_mismatch():
    y, p = make_multiclass(0, 20, 3)
    with pytest.raises(ValueError, match=r"\(19,\).*\(20, 3\)|\(20, 3\).*\(19,\)"):
        classification_metrics(y[:19], p, "multiclass", names(3))
    with pytest.raises(ValueError, match=r"classes has 4 names.*3 columns"):
        classification_metrics(y, p, "multiclass", names(4))
    ym, pm = make_multilabel(0, 20, 4)
    with pytest.raises(ValueError, match=r"\(20, 3\).*\(20, 4\)"):
        classification_metrics(ym[:, :3], pm, "multilabel", names(4))


def test_rejects_nan_probs():
    y, p = make_multiclass(0, 20, 3)
    p[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*first rows: \[4\]"):
        classification_metrics(y, p, "multiclass", names(3))


def test_rejects_label_out_of_range():
    y, p = make_multiclass(0, 20, 3)
    y[2] = 3
    with pytest.raises(ValueError, match=r"outside \[0, 2\].*\(20, 3\).*\[3\]"):
        classification_metrics(y, p, "multiclass", names(3))
    y[2] = -1
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(y, p, "multiclass", names(3))


def test_rejects_other_bad_inputs():
    y, p = make_multiclass(0, 20, 3)
    with pytest.raises(ValueError, match="task must be"):
        classification_metrics(y, p, "segmentation", names(3))
    with pytest.raises(ValueError, match="not logits"):
        classification_metrics(y, p * 5 - 2, "multiclass", names(3))
    with pytest.raises(ValueError, match="threshold=0.3 is not supported for 3 classes"):
        classification_metrics(y, p, "multiclass", names(3), threshold=0.3)
    with pytest.raises(ValueError, match="unique"):
        classification_metrics(y, p, "multiclass", ["a", "a", "b"])
    ym, pm = make_multilabel(0, 20, 4)
    ym[0, 0] = 2
    with pytest.raises(ValueError, match="0/1"):
        classification_metrics(ym, pm, "multilabel", names(4))
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(
            np.zeros(0, int), np.zeros((0, 3)), "multiclass", names(3)
        )


# ---------------------------------------------------------------- audit defects
def test_f1_macro_over_present_classes_rsna_bone_age_shape():
    """Seed 000's shape: 256 classes, 65 in the test set. F1 macro averages the 65 present
    classes (sklearn's default when predictions stay in them), not 256 with 191 zeros."""
    rng = np.random.default_rng(0)
    present = np.sort(rng.choice(256, 65, replace=False))
    y = rng.choice(present, 2000)
    guess = np.where(rng.random(2000) < 0.6, y, rng.choice(present, 2000))
    p = np.full((2000, 256), 0.1 / 255)
    p[np.arange(2000), guess] = 0.9
    m = classification_metrics(y, p, "multiclass", names(256))
    assert m["f1_macro"] == pytest.approx(f1_score(y, guess, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, guess, labels=present, average="macro"))
    assert m["f1_macro"] > 2 * f1_score(y, guess, labels=range(256), average="macro", zero_division=0)
    assert len(m["f1_skipped"]) == 191
    assert sum(r["f1"] is not None for r in m["per_class"]) == 65


def test_binary_tie_is_positive_like_multilabel():
    y = np.array([1, 0, 1, 0])
    p1 = np.array([0.5, 0.5, 0.9, 0.1])
    m = classification_metrics(y, np.c_[1 - p1, p1], "multiclass", ["neg", "pos"])
    # Rows 0 and 1 are 0.5/0.5: both decided positive (p >= 0.5), as multilabel decides.
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    ml = classification_metrics(np.c_[y], np.c_[p1], "multilabel", ["pos"])
    assert ml["per_class"][0]["recall"] == m["sensitivity"]


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_operating_point_of_the_positive_class_index_0(seed):
    """abnormal/normal folders: the positive class is index 0; sensitivity, PPV, NPV and F1
    are its own (sklearn with pos_label=0)."""
    y, p = make_multiclass(seed, 300, 2)
    m = classification_metrics(y, p, "multiclass", ["abnormal", "normal"], positive=0)
    pred = np.where(p[:, 0] >= 0.5, 0, 1)
    tp, fn, fp, tn = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert m["positive_class"] == "abnormal"
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1_positive"] == pytest.approx(f1_score(y, pred, pos_label=0))
    default = classification_metrics(y, p, "multiclass", ["abnormal", "normal"])
    assert default["sensitivity"] == pytest.approx(m["specificity"])  # index 1 is "normal"


def test_multilabel_f1_skips_labels_never_positive_nor_predicted():
    y, p = make_multilabel(3, 200, 5)
    y[:, 2] = 0
    p[:, 2] = 0.1  # no positive, none predicted: 0/0
    m = classification_metrics(y, p, "multilabel", names(5))
    assert m["f1_skipped"] == ["c2"]
    assert m["f1_macro"] == pytest.approx(f1_score(y, p >= 0.5, average="macro", zero_division=np.nan))
    assert m["f1_macro"] > f1_score(y, p >= 0.5, average="macro", zero_division=0)
