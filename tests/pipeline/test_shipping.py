"""Driver-built files reach actors on nodes that lack them: object store + sha256 check."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace

import numpy as np
import pytest

from medray.backends.artifacts import ArtifactCache
from medray.pipeline.shipping import (
    OPTION,
    Shipment,
    ShippingError,
    materialise,
    materialise_one,
    pack,
    ship,
    should_ship,
)


def _entry(tmp_path):
    """A cache entry with two files (a graph and its external data), like an ONNX export."""
    cache = ArtifactCache(tmp_path / "driver-cache")

    def build(path):
        path.write_bytes(b"graph" * 100)
        (path.parent / "model.onnx.data").write_bytes(b"weights" * 1000)

    return cache.get_or_build("onnx", {"x": 1}, "model.onnx", build)


def test_in_place_then_fetched_then_reused(tmp_path):
    art = _entry(tmp_path)
    sh = pack(art.path, put=lambda blobs: blobs)  # bytes given directly instead of ray.put
    assert set(sh.files) == {"model.onnx", "model.onnx.data"}  # the whole entry, not meta.json
    assert sh.files["model.onnx.data"] == hashlib.sha256(b"weights" * 1000).hexdigest()
    node = tmp_path / "node-cache"
    # the driver's node (or a shared mount): used in place, nothing copied
    assert materialise_one(sh, node) == art.path and not (node / "shipped").exists()
    # another node: fetched, written under the node cache, verified
    shutil.rmtree(tmp_path / "driver-cache")
    local = materialise_one(sh, node)
    assert local == str(node / "shipped" / sh.key[:16] / "model.onnx")
    assert open(local, "rb").read() == b"graph" * 100
    # a later actor on that node finds it there (no bytes needed any more)
    assert materialise_one(replace(sh, ref=None), node) == local


def test_a_model_folder_travels_whole_and_comes_back_a_folder(tmp_path):
    """model=hf: model.path is a folder (config.json + weights + processor config)."""
    from medray.io import path_sha256

    folder = tmp_path / "driver" / "vit"
    folder.mkdir(parents=True)
    for name, data in (("config.json", b"{}"), ("model.safetensors", b"w" * 500), ("preprocessor_config.json", b"{}")):
        (folder / name).write_bytes(data)
    (folder / ".cache").mkdir()  # hub bookkeeping: not a file of the model
    sh = pack(str(folder), put=lambda blobs: blobs)
    assert sh.folder and set(sh.files) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    node = tmp_path / "node-cache"
    assert materialise_one(sh, node) == str(folder)  # in place on the driver's node
    want = path_sha256(folder)
    shutil.rmtree(tmp_path / "driver")
    local = materialise_one(sh, node)
    assert local == str(node / "shipped" / sh.key[:16]) and path_sha256(local) == want


def test_corrupted_bytes_are_refused(tmp_path):
    art = _entry(tmp_path)
    sh = pack(art.path, put=lambda blobs: {**blobs, "model.onnx": b"tampered"})
    shutil.rmtree(tmp_path / "driver-cache")
    node = tmp_path / "node-cache"
    with pytest.raises(ShippingError, match="do not match their sha256"):
        materialise_one(sh, node)
    assert not any((node / "shipped").glob("[!.]*"))  # nothing half-written left to load
    with pytest.raises(ShippingError, match="not on this node and not shipped"):
        materialise_one(replace(sh, ref=None), node)


def test_what_is_shipped(tiny_spec, tmp_path):
    torch_spec = tiny_spec("torch")
    shipped: dict = {}
    put = []

    def fake_put(blobs):
        put.append(sorted(blobs))
        return blobs

    s1 = ship(torch_spec, shipped, fake_put)  # torch loads the checkpoint: shipped
    art = _entry(tmp_path)
    ort_spec = replace(tiny_spec("onnxruntime"), artifact=art.to_dict())
    s2 = ship(ort_spec, shipped, fake_put)  # ORT loads its artifact, not the checkpoint
    s3 = ship(replace(tiny_spec("torch"), role="baseline"), shipped, fake_put)  # same checkpoint: packed once
    s4 = ship(replace(ort_spec, artifact={**art.to_dict(), "ship": False}), shipped, fake_put)  # built on the node
    assert set(s1.options[OPTION]) == {"checkpoint"} and set(s2.options[OPTION]) == {"artifact"}
    assert s3.options[OPTION]["checkpoint"] is s1.options[OPTION]["checkpoint"]
    assert put == [["tiny.pt"], ["model.onnx", "model.onnx.data"]] and OPTION not in s4.options
    assert materialise(s2, tmp_path / "n").artifact["path"] == art.path  # and back, in place
    assert should_ship(None, None, 1) is False and should_ship(None, "auto", 1) is True
    assert should_ship(None, None, 2) is True and should_ship(False, "auto", 3) is False


@pytest.mark.slow
def test_actor_on_a_node_without_the_files_loads_them_from_the_object_store(ray_local, tiny_spec, tmp_path):
    """An ONNX Runtime actor whose node lacks the driver's cache gets the artifact through
    the object store and predicts exactly what an actor with the files does."""
    from medray.backends import get_backend
    from medray.pipeline.predictor import Predictor
    from medray.tasks.classification import ClassificationTask

    driver = tmp_path / "driver"
    spec = tiny_spec("onnxruntime")
    spec = replace(spec, artifact=get_backend("onnxruntime").prepare(spec, ArtifactCache(driver), {}))
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    batch = {"sample_id": np.array([f"s{i}" for i in range(4)]), "image": images}
    want = Predictor(spec, ClassificationTask())(dict(batch))["probs"]

    shipped = ship(spec)
    shutil.rmtree(driver)  # the "other node" has no driver cache
    node_cache = tmp_path / "node"
    actor = ray_local.remote(Predictor).options(
        num_cpus=0.5, runtime_env={"env_vars": {"MEDRAY_CACHE": str(node_cache)}}
    ).remote(shipped, ClassificationTask())
    got = ray_local.get(actor.__call__.remote(dict(batch)))
    np.testing.assert_array_equal(got["probs"], want)
    key = shipped.options[OPTION]["artifact"].key
    assert (node_cache / "shipped" / key[:16] / "model.onnx").is_file()
    assert isinstance(shipped.options[OPTION]["artifact"], Shipment)


def test_a_model_of_several_networks_ships_each_members_artifact(tiny_spec, tmp_path):
    """nnU-Net's folds: one artifact per member, each shipped and materialised on a node
    that lacks them; a model folder (not a file) is not packed."""
    from medray.backends.base import members_artifact

    a = _entry(tmp_path / "a")
    b = ArtifactCache(tmp_path / "b").get_or_build("onnx", {"x": 2}, "model.onnx", lambda p: p.write_bytes(b"fold 1"))
    spec = tiny_spec("onnxruntime")
    spec = replace(spec, model=replace(spec.model, path=str(tmp_path), members=[{"name": "fold_0"}, {"name": "fold_1"}]),
                   artifact=members_artifact([a.to_dict(), b.to_dict()]))
    assert spec.artifact["bytes"] == a.bytes + b.bytes and spec.member(1).artifact["path"] == b.path
    assert spec.member(0).name == "onnxruntime-fp32[fold_0]" and spec.member(0).model.members == []
    shipped = ship(spec, {}, lambda blobs: blobs)
    assert set(shipped.options[OPTION]) == {"artifact", "artifact:0", "artifact:1"}
    for d in (tmp_path / "a", tmp_path / "b"):
        shutil.rmtree(d)  # the node has none of the driver's files
    got = materialise(shipped, tmp_path / "node")
    paths = [m["path"] for m in got.artifact["members"]]
    assert len(set(paths)) == 2 and all(str(tmp_path / "node" / "shipped") in p for p in paths)
