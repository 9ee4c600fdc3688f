"""Labels by name: a model's outputs matched to the dataset's classes (case and separators
ignored, model.class_map, true synonyms), selected and reordered before any metric, the
classes it lacks not scored (never a zero), a mismatch a config error naming both lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medray.data.table import SampleTable
from medray.errors import ConfigError
from medray.metrics.scores import model_probabilities, op_norm, sigmoid
from medray.models.labels import apply_labels, match_labels, norm
from medray.specs import ModelSpec

NIH = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
       "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
XRV = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
       "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
       "Lung Opacity", "Enlarged Cardiomediastinum"]


def test_names_match_whatever_their_case_and_separators():
    assert norm("Pleural_Thickening") == norm("pleural thickening") == norm("Pleural-Thickening") == norm(" PLEURAL.thickening ")


def test_xrvs_18_outputs_are_reordered_into_chestxray14s_order():
    m = match_labels(XRV, NIH)
    assert m.scored == tuple(NIH) and not m.not_scored
    assert m.index == (0, 10, 7, 2, 12, 11, 8, 3, 1, 4, 5, 6, 9, 13)
    assert m.unused == ("Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")
    assert [XRV[i] for i in m.index] == NIH


def test_synonyms_class_map_and_classes_not_scored():
    m = match_labels(["No Finding", "Pleural Effusion", "Pleural Thickening", "cardiomegaly"], NIH)
    assert m.scored == ("Cardiomegaly", "Effusion", "Pleural_Thickening") and m.index == (3, 1, 2)
    assert len(m.not_scored) == 11 and "Pneumonia" in m.not_scored and m.unused == ("No Finding",)
    assert ("Pleural Effusion", "Effusion") in m.renamed
    mapped = match_labels(["Normal", "Pneumonia"], ["NO FINDING", "Pneumonia"], class_map={"Normal": "NO FINDING"})
    assert mapped.index == (0, 1) and mapped.renamed == (("Normal", "NO FINDING"),)
    exact = match_labels(["Pleural Effusion", "Effusion"], ["Effusion", "Pleural Effusion"])
    assert exact.index == (1, 0) and not exact.renamed  # an exact name wins over a synonym
    unnamed = match_labels(["", "Pneumonia", "", "Lung Opacity"], ["NORMAL", "PNEUMONIA"])  # xrv's '' slots
    assert unnamed.index == (1,) and unnamed.not_scored == ("NORMAL",) and unnamed.unused == ("Lung Opacity",)


def test_mismatches_are_errors_naming_both_lists():
    with pytest.raises(ConfigError, match=r"model outputs \['cat', 'dog'\]; dataset classes \['NORMAL', 'PNEUMONIA'\]"):
        match_labels(["cat", "dog"], ["NORMAL", "PNEUMONIA"])
    with pytest.raises(ConfigError, match="names two outputs 'Effusion' and 'effusion' alike"):
        match_labels(["Effusion", "effusion"], NIH)
    with pytest.raises(ConfigError, match=r"matches several model outputs \['Infiltrate', 'Infiltrates'\]"):
        match_labels(["Infiltrate", "Infiltrates"], ["Infiltration"])
    with pytest.raises(ConfigError, match="model.class_map: 'Cat' -> 'Mass' names no model output"):
        match_labels(["Mass"], ["Mass"], class_map={"Cat": "Mass"})


def _table(classes, task="multilabel", positive=None) -> SampleTable:
    rng = np.random.default_rng(0)
    if task == "multilabel":
        target = [tuple(int(v) for v in rng.integers(0, 2, len(classes))) for _ in range(6)]
    else:
        target = [int(v) for v in rng.integers(0, len(classes), 6)]
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "path": "x", "split": "test", "target": target})
    return SampleTable("t", task, list(classes), "/", df, positive_class=positive)


def _spec(outputs: int, task="multilabel", **kw) -> ModelSpec:
    return ModelSpec("m", outputs, 3, 224, None, task=task, out_features=outputs, **kw)


def test_apply_labels_selects_reorders_and_drops_unscored_classes_from_the_table():
    table = _table(["Mass", "Effusion", "Hernia"])
    spec = _spec(3)
    apply_labels(spec, ["Pleural Effusion", "No Finding", "mass"], table, {}, "model.classes")
    assert spec.output_index == [2, 0] and spec.num_classes == 2
    assert spec.labels["not_scored"] == ["Hernia"] and spec.labels["renamed"] == {"Pleural Effusion": "Effusion",
                                                                                  "mass": "Mass"}
    scored = table.without(spec.labels["not_scored"])
    assert scored.classes == ["Mass", "Effusion"] and scored.not_scored == ["Hernia"]
    np.testing.assert_array_equal(scored.targets(table.samples), table.targets(table.samples)[:, :2])
    logits = np.array([[0.1, -2.0, 3.0], [1.5, 0.2, -0.7]])
    np.testing.assert_allclose(model_probabilities(logits, spec), sigmoid(logits[:, [2, 0]]))


def test_single_label_datasets_need_every_class_or_the_positive_one():
    table = _table(["NORMAL", "PNEUMONIA"], "multiclass", "PNEUMONIA")
    one = _spec(4, "multiclass", activation="sigmoid", positive_index=1)
    apply_labels(one, ["Effusion", "Pneumonia", "Mass", ""], table, {}, "xrv")
    assert one.output_index == [1] and one.labels["one_score"] == "PNEUMONIA" and one.labels["not_scored"] == []
    logits = np.array([[0.3, -1.2, 2.0, 0.0]])
    p = model_probabilities(logits, one)
    np.testing.assert_allclose(p, [[1 - sigmoid(-1.2), sigmoid(-1.2)]])  # [1 - p, p] in class order
    with pytest.raises(ConfigError, match=r"every class needs a model output; none is named \['B'\]"):
        apply_labels(_spec(2, "multiclass"), ["A", "C"], _table(["A", "B", "C"], "multiclass"), {}, "model.classes")
    with pytest.raises(ConfigError, match=r"model.classes: 3 output names \['A', 'B', 'C'\] for a model with 2 outputs"):
        apply_labels(_spec(2, "multiclass"), ["A", "B", "C"], _table(["A", "B"], "multiclass"), {}, "model.classes")


def test_a_softmax_over_more_outputs_than_classes_is_renormalised_over_them():
    spec = _spec(3, "multiclass")
    apply_labels(spec, ["b", "x", "a"], _table(["a", "b"], "multiclass"), {}, "model.classes")
    logits = np.array([[1.0, 5.0, -1.0], [0.0, 0.0, 2.0]])
    e = np.exp(logits[:, [2, 0]])
    np.testing.assert_allclose(model_probabilities(logits, spec), e / e.sum(1, keepdims=True))


def test_op_norm_is_torchxrayvisions():
    torch = pytest.importorskip("torch")
    xrv = pytest.importorskip("torchxrayvision", reason='pip install -e ".[xrv]"')
    thr = torch.tensor(xrv.models.model_urls["densenet121-res224-nih"]["op_threshs"], dtype=torch.float32)  # NaNs too
    logits = torch.randn(64, 18, generator=torch.Generator().manual_seed(0)) * 4
    logits[0, 0] = torch.logit(thr[0])  # at the threshold: 0.5
    want = xrv.models.op_norm(torch.sigmoid(logits), thr).numpy()
    t = [None if np.isnan(v) else float(v) for v in thr.numpy()]
    got = op_norm(sigmoid(logits.double().numpy()), t)
    assert np.abs(got - want).max() <= 1e-6
    assert np.all(got[:, np.isnan(thr.numpy())] == 0.5) and abs(got[0, 0] - 0.5) < 1e-6
