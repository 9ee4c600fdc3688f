"""Calibration samples: disjoint from the evaluated ones, preprocessed like them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medray.config import ConfigError
from medray.data.calibration import CalibrationError, calibration_ids, load_calibration
from medray.data.load import calibration_samples, select_samples
from medray.data.preprocess import decode_gray, to_model_input
from medray.data.table import SampleTable


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> SampleTable:
    from medray.data.synthetic import ensure_synthetic
    from medray.data.table import read_manifest_dir

    root = tmp_path_factory.mktemp("syn") / "synthetic"
    ensure_synthetic("binary", root, n_train=4, n_calibration=12, n_test=10, image_size=48, seed=0)
    return read_manifest_dir(root)


def test_calibration_is_disjoint_from_evaluated(table):
    evaluated = select_samples(table, "test", None, 0)
    cal = calibration_samples(table, "calibration", 5, 0, evaluated)
    assert len(cal) == 5 and set(cal["split"]) == {"calibration"}
    assert not set(cal["sample_id"]) & set(evaluated["sample_id"])
    # Same seed → same samples; another seed → another draw.
    assert list(calibration_samples(table, "calibration", 5, 0, evaluated)["sample_id"]) == list(cal["sample_id"])
    assert list(calibration_samples(table, "calibration", 5, 1, evaluated)["sample_id"]) != list(cal["sample_id"])


def test_calibrating_on_the_evaluated_split_is_refused(table):
    evaluated = select_samples(table, "test", None, 0)
    with pytest.raises(ConfigError, match=r"calibration.split='test' shares 10 samples with the evaluated split"):
        calibration_samples(table, "test", 5, 0, evaluated)


def test_more_than_the_split_gives_the_whole_split(table):
    evaluated = select_samples(table, "test", None, 0)
    assert len(calibration_samples(table, "calibration", 300, 0, evaluated)) == 12


def test_load_calibration_matches_the_evaluation_preprocessing(table):
    cal = table.split("calibration").iloc[[3, 0, 7]]  # unsorted on purpose
    got = load_calibration(cal, 32, 3)
    ordered = cal.sort_values("sample_id")
    assert got.sample_ids == list(ordered["sample_id"])
    want = to_model_input(np.stack([decode_gray(p, 32) for p in ordered["path"]]), 3)
    assert got.inputs.dtype == np.float32 and got.inputs.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(got.inputs, want)
    batches = list(got.batches(2))
    assert [len(b) for b in batches] == [2, 1] and all(b.flags.c_contiguous for b in batches)


def test_load_calibration_refuses_missing_or_bad_samples(table, tmp_path):
    with pytest.raises(CalibrationError, match="precision=int8 needs calibration samples"):
        load_calibration(None, 32, 3)
    with pytest.raises(CalibrationError, match="needs calibration samples"):
        load_calibration(table.split("calibration").iloc[:0], 32, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    df = pd.DataFrame({"sample_id": ["x1"], "path": [str(bad)]})
    with pytest.raises(CalibrationError, match=r"calibration sample x1 \(.*bad.png\) cannot be decoded"):
        load_calibration(df, 32, 1)


def test_calibration_ids_are_order_free_and_content_sensitive(table):
    cal = table.split("calibration")
    a = calibration_ids(cal)
    assert a == calibration_ids(cal.iloc[::-1]) and a["n"] == 12
    assert calibration_ids(cal.iloc[:-1])["ids_sha256"] != a["ids_sha256"]
