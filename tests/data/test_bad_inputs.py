"""Bad samples: data.on_error=fail stops with path + reason + hint; skip lists and excludes them.

One synthetic test set (40 images) is damaged in every way the issue lists: truncated,
empty and undecodable image files, an undecodable DICOM, NaN pixels, a wrong channel
count, a label that is not in the class list and a manifest row whose file is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_ARCH, TINY_SIZE
from sklearn.metrics import accuracy_score, roc_auc_score

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.data.policy import apply_policy, check_accounting, check_same_skipped, runnable
from medray.data.preprocess import check_pixels
from medray.data.synthetic import ensure_synthetic
from medray.data.table import read_manifest_dir
from medray.errors import SKIP_HINT, BadSampleError, DecodeError
from medray.models.config import ModelConfig
from medray.pipeline.predictor import Predictor
from medray.tasks.classification import ClassificationTask
from medray.tasks.classification.read import decode_batch

N_TEST = 40
# sample id → (what is wrong, a fragment of the reason medray must give)
DAMAGE = {
    "test_00003": ("truncated png", "truncated"),
    "test_00005": ("empty file", "empty file"),
    "test_00007": ("not an image", "not a JPEG, PNG or DICOM image"),
    "test_00009": ("undecodable dicom", "pixel data cannot be decoded"),
    "test_00011": ("nan pixels", "NaN/inf pixels"),
    "test_00013": ("two channels", "wrong channel count: 2"),
    "test_00015": ("unknown label", "not in the class list"),
    "test_00017": ("missing file", "file not found"),
    "test_00019": ("decompression bomb", "too large to decode safely"),
}
DECODE_FAILURES = {k for k, (what, _) in DAMAGE.items() if what not in ("unknown label", "missing file")}


def damage(root) -> None:
    """Break the test rows of DAMAGE in place (files and manifest)."""
    man = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    row = {sid: i for i, sid in enumerate(man["sample_id"])}

    def path(sid):
        return root / man.at[row[sid], "path"]

    data = path("test_00003").read_bytes()
    path("test_00003").write_bytes(data[: len(data) // 2])
    path("test_00005").write_bytes(b"")
    path("test_00007").write_bytes(b"this is not an image\n" * 20)
    write_truncated_dicom(root / "test" / "bad.dcm")
    man.at[row["test_00009"], "path"] = "test/bad.dcm"
    np.save(root / "test" / "nan.npy", np.full((64, 64), np.nan, dtype=np.float32))
    man.at[row["test_00011"], "path"] = "test/nan.npy"
    np.save(root / "test" / "two.npy", np.zeros((64, 64, 2), dtype=np.uint8))
    man.at[row["test_00013"], "path"] = "test/two.npy"
    man.at[row["test_00015"], "labels"] = "COVID"
    man.at[row["test_00017"], "path"] = "test/gone.png"
    write_png_header(path("test_00019"), 30000, 30000)
    man.to_csv(root / "manifest.csv", index=False)


def write_png_header(path, width: int, height: int) -> None:
    """A PNG that declares width × height 1-bit pixels (a decompression bomb: 900 M pixels)
    in a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def write_truncated_dicom(path) -> None:
    """A well-formed 64×64 16-bit DICOM header whose pixel data stops after 100 bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\x01\x02" * 50
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "data"
    ensure_synthetic("binary", root, n_train=4, n_calibration=4, n_test=N_TEST, image_size=64, workers=1)
    damage(root)
    return root


@pytest.fixture(scope="module")
def test_rows(bad_root):
    t = read_manifest_dir(bad_root)
    return t, t.split("test").sort_values("sample_id").reset_index(drop=True)


# --------------------------------------------------------------------------- driver side


def test_unknown_label_is_marked_not_fatal_and_not_dropped(test_rows):
    table, rows = test_rows
    bad = rows[rows["problem"] != ""]
    assert list(bad["sample_id"]) == ["test_00015"]
    assert "'COVID' not in the class list ['NORMAL', 'PNEUMONIA']" in bad["problem"].iat[0]


def test_fail_policy_names_the_file_the_reason_and_the_hint(test_rows):
    _, rows = test_rows
    with pytest.raises(BadSampleError) as e:
        apply_policy(rows, "fail")
    msg = str(e.value)
    # the first bad row of the split, and how many more there are
    assert msg.startswith(str(rows.set_index("sample_id").at["test_00015", "path"]))
    assert "not in the class list" in msg and "(and 1 more bad samples)" in msg and SKIP_HINT in msg


def test_skip_policy_marks_driver_side_problems(test_rows):
    _, rows = test_rows
    marked = apply_policy(rows, "skip")
    run, skipped = runnable(marked)
    assert dict(zip(skipped["sample_id"], skipped["reason"])) == {
        "test_00015": rows.set_index("sample_id").at["test_00015", "problem"],
        "test_00017": "file not found",
    }
    assert len(run) + len(skipped) == N_TEST


# --------------------------------------------------------------------------- decode task


def _batch(rows, ids):
    sub = rows.set_index("sample_id").loc[list(ids)].reset_index()
    return {"sample_id": sub["sample_id"].to_numpy(), "path": sub["path"].to_numpy()}


@pytest.mark.parametrize("sid", sorted(DECODE_FAILURES))
def test_decode_fail_raises_with_path_reason_and_hint(test_rows, sid):
    _, rows = test_rows
    with pytest.raises(BadSampleError) as e:
        decode_batch(_batch(rows, ["test_00000", sid]), TINY_SIZE, on_error="fail")
    path = rows.set_index("sample_id").at[sid, "path"]
    assert e.value.path == path and str(e.value).startswith(f"{path}: ")
    assert DAMAGE[sid][1] in e.value.reason and e.value.reason
    assert str(e.value).endswith(SKIP_HINT)


def test_decode_skip_marks_each_bad_file_and_keeps_the_good_ones(test_rows):
    _, rows = test_rows
    ids = ["test_00000", *sorted(DECODE_FAILURES), "test_00001"]
    out = decode_batch(_batch(rows, ids), TINY_SIZE, on_error="skip")
    reasons = dict(zip(out["sample_id"], out["skipped_reason"]))
    for sid in DECODE_FAILURES:
        assert reasons[sid] and DAMAGE[sid][1] in reasons[sid], (sid, reasons[sid])
    assert reasons["test_00000"] == reasons["test_00001"] == ""
    good = decode_batch(_batch(rows, ["test_00000", "test_00001"]), TINY_SIZE)
    np.testing.assert_array_equal(out["image"][[0, -1]], good["image"])
    assert not out["image"][1:-1].any()  # no image for skipped rows


def test_check_pixels_rejects_nan_inf_and_channels():
    with pytest.raises(DecodeError, match="1 NaN/inf voxels of 8"):
        check_pixels(np.array([0, 1, 2, np.inf, 4, 5, 6, 7], dtype=np.float32), what="voxels")
    with pytest.raises(DecodeError, match="wrong channel count: 5"):
        check_pixels(np.zeros((4, 4, 5)), channels=(1, 3))
    check_pixels(np.zeros((4, 4, 3)), channels=(1, 3))


def test_predictor_passes_skipped_rows_through(test_rows, tiny_spec):
    _, rows = test_rows
    pred = Predictor(tiny_spec(batch_size=4), ClassificationTask())
    mixed = decode_batch(_batch(rows, ["test_00000", "test_00003", "test_00001", "test_00005"]), TINY_SIZE, on_error="skip")
    out = pred(dict(mixed))
    assert list(out["skipped_reason"] != "") == [False, True, False, True]
    assert np.isfinite(out["probs"][[0, 2]]).all() and np.isnan(out["probs"][[1, 3]]).all()
    assert list(out["batch_size"]) == [2, 0, 2, 0]
    # a batch with no readable sample keeps the same columns and shapes
    allbad = pred(dict(decode_batch(_batch(rows, ["test_00003", "test_00005"]), TINY_SIZE, on_error="skip")))
    assert set(allbad) == set(out) and allbad["probs"].shape == (2, 2) and np.isnan(allbad["probs"]).all()
    clean = pred(dict(decode_batch(_batch(rows, ["test_00000", "test_00001"]), TINY_SIZE, on_error="skip")))
    np.testing.assert_array_equal(clean["probs"], out["probs"][[0, 2]])


def test_on_error_is_validated():
    from medray.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.on_error='ignore': use fail .* or skip"):
        DataConfig(on_error="ignore")


def test_accounting_and_pairing_checks_raise():
    with pytest.raises(RuntimeError, match=r"38 evaluated \+ 1 skipped != 40 selected samples"):
        check_accounting(38, 1, 40, "torch-fp32")
    a = pd.DataFrame({"sample_id": ["x", "y"], "reason": ["r", "r"]})
    with pytest.raises(RuntimeError, match="skipped different samples"):
        check_same_skipped({"torch-fp32": a, "onnxruntime-fp32": a.iloc[:1]})


# --------------------------------------------------------------------------- end to end


def make_cfg(root, tmp, checkpoint, on_error):
    return EvalConfig(
        backend=OnnxRuntimeConfig(),
        data=DataConfig(name="synthetic", root=str(root), n_train=4, n_calibration=4, n_test=N_TEST,
                        image_size=64, on_error=on_error, read_block_size=8),
        model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
        ray=RayConfig(num_cpus=2),
        batch_size=4,
        output_dir=str(tmp / "out"),
        cache_dir=str(tmp / "cache"),
        warmup_batches=0,
    )


@pytest.mark.slow
def test_skip_end_to_end_excludes_the_same_samples_from_both_runs(ray_local, bad_root, tmp_path, tiny_checkpoint):
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import prepare
    from medray.report.document import build_metrics
    from medray.report.writers import write_outputs

    # fail: the driver-side problems stop the run before Ray does any work
    with pytest.raises(BadSampleError, match="not in the class list"):
        prepare(make_cfg(bad_root, tmp_path, tiny_checkpoint, "fail"))

    cfg = make_cfg(bad_root, tmp_path, tiny_checkpoint, "skip")
    table, samples, specs, task = prepare(cfg)
    assert len(samples) == N_TEST
    results = execute(cfg, task, samples, specs)
    doc = build_metrics(cfg, table, samples, results)
    write_outputs(tmp_path / "out", {}, doc, results, table, samples)

    expected = set(DAMAGE)
    assert {s["sample_id"] for s in doc["skipped"]} == expected
    for s in doc["skipped"]:
        assert DAMAGE[s["sample_id"]][1] in s["reason"], s
    for r, res in zip(doc["runs"], results):
        assert r["n_skipped"] == len(expected) and r["n_samples"] == N_TEST - len(expected)
        assert r["n_samples"] + r["n_skipped"] == doc["dataset"]["n_samples"] == N_TEST
        assert set(res.skipped["sample_id"]) == expected
        assert not set(res.predictions["sample_id"]) & expected
        # metrics are those of the readable samples, computed by scikit-learn
        good = samples[~samples["sample_id"].isin(expected)]
        df = res.predictions.set_index("sample_id").loc[good["sample_id"]]
        p = np.stack(df["probs"].to_numpy())
        y = table.targets(good)
        assert r["metrics"]["auc_macro"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-9)
        assert r["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-12)
    cand = doc["runs"][1]
    assert cand["agreement"]["n"] == N_TEST - len(expected)

    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["skipped"] == doc["skipped"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Skipped samples" in md and f"{len(expected)} of {N_TEST} selected samples" in md
    for sid in expected:
        assert f"| {sid} |" in md

    # fail inside the pipeline: a file that only the decode task finds broken
    fail_cfg = make_cfg(bad_root, tmp_path, tiny_checkpoint, "fail")
    only_decode = samples[samples["sample_id"].isin({"test_00000", "test_00001", "test_00002", "test_00003"})]
    with pytest.raises(BadSampleError) as e:
        execute(fail_cfg, task, only_decode, specs[:1])
    assert e.value.path.endswith("test_00003.png") and "truncated" in str(e.value) and SKIP_HINT in str(e.value)
