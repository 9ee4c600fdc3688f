"""agreement and pair_by_id on hand-computed examples."""

import numpy as np
import pytest

from medray.metrics.agreement import agreement, pair_by_id


def test_multiclass_hand_computed():
    base = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]]
    )
    cand = np.array(
        [[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.4, 0.3, 0.3], [0.5, 0.4, 0.1]]
    )
    a = agreement(base, cand, "multiclass")
    # argmax: base 0,1,2,0  cand 0,1,0,0 -> 3/4 agree
    assert a["top1"] == pytest.approx(0.75)
    assert a["max_abs_prob_diff"] == pytest.approx(0.1)
    # |diff| sums per row: .2, .2, .2, 0 over 12 entries
    assert a["mean_abs_prob_diff"] == pytest.approx(0.6 / 12)
    assert a["n"] == 4


def test_multilabel_hand_computed():
    base = np.array([[0.9, 0.4, 0.55], [0.1, 0.6, 0.2]])
    cand = np.array([[0.8, 0.5, 0.45], [0.1, 0.6, 0.2]])
    a = agreement(base, cand, "multilabel")
    # decisions @0.5: base 1,0,1 / 0,1,0 ; cand 1,1,0 / 0,1,0 -> 4 of 6 agree
    assert a["top1"] == pytest.approx(4 / 6)
    assert a["max_abs_prob_diff"] == pytest.approx(0.1)
    assert a["mean_abs_prob_diff"] == pytest.approx(0.3 / 6)
    assert a["n"] == 2
    # At threshold 0.42 only label 1 of row 0 flips (.4 -> 0, .5 -> 1): 5 of 6 agree.
    assert agreement(base, cand, "multilabel", threshold=0.42)["top1"] == pytest.approx(
        5 / 6
    )


def test_identical_runs_agree_fully():
    p = np.random.default_rng(0).dirichlet(np.ones(5), size=50)
    a = agreement(p, p.copy(), "multiclass")
    assert a == {
        "top1": 1.0,
        "max_abs_prob_diff": 0.0,
        "mean_abs_prob_diff": 0.0,
        "n": 50,
        "n_nonfinite": 0,
    }


def test_agreement_rejects_bad_inputs():
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(3, 3\)"):
        agreement(p, p[:3], "multiclass")
    with pytest.raises(ValueError, match="task"):
        agreement(p, p, "segmentation")


def test_a_nan_row_disagrees_and_is_never_left_out():
    p = np.full((4, 3), 1 / 3)
    q = p.copy()
    q[1, 1] = np.nan
    a = agreement(p, q, "multiclass")
    assert a["n"] == 4 and a["n_nonfinite"] == 1 and a["top1"] == 0.75
    assert a["max_abs_prob_diff"] == 1.0 and a["mean_abs_prob_diff"] == pytest.approx(3 / 12)
    m = agreement(np.zeros((2, 2)), np.array([[0.0, np.inf], [0.0, 0.0]]), "multilabel")
    assert m["top1"] == 0.5 and m["n_nonfinite"] == 1


def test_pair_by_id_shuffled():
    rng = np.random.default_rng(1)
    base_ids = np.array([f"img{i:03d}" for i in range(30)])
    cand_ids = base_ids[rng.permutation(30)]
    bi, ci = pair_by_id(base_ids, cand_ids)
    assert len(bi) == len(ci) == 30
    assert (base_ids[bi] == cand_ids[ci]).all()
    assert sorted(bi.tolist()) == list(range(30))
    assert sorted(ci.tolist()) == list(range(30))


def test_pair_then_agreement_matches_aligned():
    rng = np.random.default_rng(2)
    ids = np.arange(40)
    base = rng.dirichlet(np.ones(4), size=40)
    cand = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    perm = rng.permutation(40)
    bi, ci = pair_by_id(ids, ids[perm])
    paired = agreement(base[bi], cand[perm][ci], "multiclass")
    assert paired == agreement(base, cand, "multiclass")
    # Without pairing the shuffled rows would disagree: the test can tell.
    assert agreement(base, cand[perm], "multiclass")["top1"] < paired["top1"]


def test_pair_by_id_missing_ids_listed():
    with pytest.raises(ValueError) as e:
        pair_by_id(["a", "b", "c", "d"], ["d", "c", "x", "a"])
    msg = str(e.value)
    assert "1 id(s) only in baseline" in msg and "['b']" in msg
    assert "1 id(s) only in candidate" in msg and "['x']" in msg


def test_pair_by_id_lists_at_most_ten():
    with pytest.raises(ValueError) as e:
        pair_by_id(list(range(25)), list(range(5)))
    msg = str(e.value)
    assert "20 id(s) only in baseline" in msg
    assert str(list(range(5, 15))) in msg
    assert "15," not in msg and "only in candidate" not in msg


def test_pair_by_id_duplicates():
    with pytest.raises(ValueError, match=r"duplicate sample_id in candidate.*\['b'\]"):
        pair_by_id(["a", "b", "c"], ["a", "b", "b", "c"])
    with pytest.raises(
        ValueError, match=r"duplicate sample_id in baseline: 2 id\(s\).*\[1, 2\]"
    ):
        pair_by_id([1, 2, 1, 2, 3], [1, 2, 3])
