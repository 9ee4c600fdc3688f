"""medray.io: local paths, file:// URIs and remote URIs (pyarrow's in-memory ``mock://``
file system stands in for s3:// / gs://) behave the same; outputs and manifest datasets
round-trip through them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from medray import io as mio
from medray.config import ConfigError
from medray.data.config import DataConfig


def mock_root() -> str:
    # One mock file system per process (cached by medray.io): a fresh folder per test.
    return f"mock:///t-{uuid.uuid4().hex[:8]}"


def test_schemes_and_normalisation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mio.scheme("s3://b/k") == "s3" and mio.scheme("/x") == "" and mio.scheme("C:/x") == ""
    assert mio.is_local("/x") and mio.is_local("file:///x") and mio.is_remote("gs://b/x")
    assert mio.normalize("file:///tmp/a/") == "/tmp/a"
    assert mio.normalize("rel/dir") == str(tmp_path / "rel" / "dir")
    assert mio.normalize("~/x") == str(Path("~/x").expanduser())
    assert mio.normalize("s3://bucket/runs/") == "s3://bucket/runs"
    assert mio.join("s3://bucket/runs/", "r1", "metrics.json") == "s3://bucket/runs/r1/metrics.json"
    assert mio.join("file:///tmp/o", "predictions", "a.parquet") == "/tmp/o/predictions/a.parquet"
    with pytest.raises(ValueError, match="name no host"):
        mio.local_path("file://host/x")


def test_filesystem_paths_keep_the_bucket():
    from pyarrow import fs

    filesys, path = mio.filesystem("file:///tmp/x")
    assert isinstance(filesys, fs.LocalFileSystem) and path == "/tmp/x"
    # the same spelling pyarrow's own from_uri gives, without a network look-up per file
    assert mio.filesystem("mock:///a/b/c.png")[1] == fs.FileSystem.from_uri("mock:///a/b/c.png")[1] == "a/b/c.png"
    assert mio.filesystem("mock:///a/b")[0] is mio.filesystem("mock:///other")[0]


@pytest.mark.parametrize("spelling", ["path", "file_uri", "mock"])
def test_read_write_round_trip(tmp_path, spelling):
    base = {"path": str(tmp_path / "o"), "file_uri": f"file://{tmp_path}/o", "mock": mock_root()}[spelling]
    target = mio.join(base, "sub", "a.txt")
    assert not mio.exists(target)
    mio.write_text(target, "héllo")  # parents are created
    assert mio.exists(target) and mio.is_file(target) and not mio.is_file(mio.join(base, "sub"))
    assert mio.read_text(target) == "héllo" and mio.read_bytes(target) == "héllo".encode()
    mio.write_bytes(target, b"second")  # overwrite
    assert mio.read_bytes(target) == b"second"
    if spelling != "mock":  # local writes go through a temporary name, none left behind
        assert sorted(p.name for p in (tmp_path / "o" / "sub").iterdir()) == ["a.txt"]


def test_hydra_run_dir_is_local():
    assert mio.hydra_run_dir("/tmp/o") == "/tmp/o"
    assert mio.hydra_run_dir("file:///tmp/o") == "/tmp/o"
    assert mio.hydra_run_dir("s3://bucket/runs/r1/") == "outputs/hydra/s3_bucket_runs_r1"


def _fake_results(tiny_model_spec):
    """Two runs (baseline + candidate) over 6 samples, as execute() returns them."""
    from medray.config import backend_config
    from medray.data.table import SampleTable
    from medray.results import PoolPlan, RunResult
    from medray.specs import RunSpec

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(6)]
    samples = pd.DataFrame({"sample_id": ids, "path": [f"/x/{i}.png" for i in ids], "split": "test",
                            "target": [0, 1, 0, 1, 1, 0]})
    table = SampleTable("toy", "multiclass", ["NORMAL", "PNEUMONIA"], "/x", samples)
    results = []
    for role, backend in (("baseline", "torch"), ("candidate", "onnxruntime")):
        p1 = rng.random(6)
        df = pd.DataFrame({
            "sample_id": ids, "probs": list(np.stack([1 - p1, p1], 1).astype(np.float32)),
            "batch_uid": ["a:0"] * 3 + ["a:1"] * 3, "batch_ms": [3.0] * 3 + [4.0] * 3, "batch_size": [3] * 6,
            "node_id": ["n1"] * 6, "worker_pid": [7] * 6,
        })
        spec = RunSpec(f"{backend}-fp32", role, backend_config(backend), "fp32", "cpu", 3, 1, tiny_model_spec)
        results.append(RunResult(spec, df, 1.0, 6.0, PoolPlan(1, 1.0, 0.0, 1), {"executed": "fp32"}))
    return table, samples, results


def test_write_outputs_identical_for_path_file_uri_and_remote(tmp_path):
    from medray.report.document import build_metrics
    from medray.report.writers import write_outputs
    from medray.specs import ModelSpec

    table, samples, results = _fake_results(ModelSpec("resnet10t", 2, 3, 32, None))
    from medray.report.config import ReportConfig
    from medray.tasks.classification.config import ThresholdConfig

    cfg = SimpleNamespace(data=SimpleNamespace(split="test"), report=ReportConfig(), threshold=ThresholdConfig())
    doc = build_metrics(cfg, table, samples, results)
    config = {"backend": {"name": "onnxruntime"}, "output_dir": "x"}
    outs = [str(tmp_path / "plain"), f"file://{tmp_path}/uri", mock_root()]
    for out in outs:
        write_outputs(out, config, doc, results, table, samples)
    files = ["config.yaml", "metrics.json", "report.md"]
    want = {f: mio.read_text(mio.join(outs[0], f)) for f in files}
    assert json.loads(want["metrics.json"])["runs"][1]["name"] == "onnxruntime-fp32"
    assert (tmp_path / "uri" / "metrics.json").is_file()  # file:// wrote to the local folder
    for out in outs[1:]:
        for f in files:
            assert mio.read_text(mio.join(out, f)) == want[f], (out, f)
    for run in ("torch-fp32", "onnxruntime-fp32"):
        ref = pq.read_table(str(tmp_path / "plain" / "predictions" / f"{run}.parquet"))
        assert ref.num_rows == 6 and ref.column("sample_id").to_pylist() == list(samples["sample_id"])
        for out in outs[1:]:
            assert mio.read_parquet(mio.join(out, "predictions", f"{run}.parquet")).equals(ref)


def _upload(local: Path, remote: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            mio.write_bytes(mio.join(remote, *p.relative_to(local).parts), p.read_bytes())


def test_uploaded_synthetic_set_reads_and_decodes_through_the_uri(tmp_path):
    from medray.data.load import load_table
    from medray.data.preprocess import decode_gray
    from medray.data.synthetic import ensure_synthetic

    args = dict(n_train=2, n_calibration=2, n_test=4, image_size=40)
    local = ensure_synthetic("binary", tmp_path / "ds", **args)
    remote = mock_root()
    _upload(local, remote)
    cfg = DataConfig(name="synthetic", root=remote, **args)
    table = load_table(cfg, remote)
    ref = load_table(DataConfig(name="synthetic", root=str(local), **args), str(local))
    assert table.root == remote and len(table.samples) == len(ref.samples) == 8
    assert all(p.startswith(remote + "/") for p in table.samples["path"])
    pd.testing.assert_frame_equal(table.samples.drop(columns="path"), ref.samples.drop(columns="path"))
    # the decode task reads URIs through pyarrow.fs: same pixels as the local file
    for uri, path in zip(table.samples["path"][:3], ref.samples["path"][:3]):
        assert np.array_equal(decode_gray(uri, 32), decode_gray(path, 32))

    with pytest.raises(ConfigError, match=r"n_test: 4 there, 5 asked"):
        load_table(DataConfig(name="synthetic", root=remote, **{**args, "n_test": 5}), remote)
    empty = mock_root()
    with pytest.raises(ConfigError, match="no dataset.json there; synthetic sets are generated on a local disk"):
        load_table(DataConfig(name="synthetic", root=empty, **args), empty)


def test_data_root_uris_in_config(tmp_path):
    assert DataConfig(name="synthetic", root=f"file://{tmp_path}/d").root == f"{tmp_path}/d"
    assert DataConfig(name="synthetic", root="s3://bucket/d").root == "s3://bucket/d"
    with pytest.raises(ConfigError, match=r"data.root='s3://bucket/kermany': data=imagefolder reads a folder on a local disk"):
        DataConfig(name="imagefolder", root="s3://bucket/kermany")
