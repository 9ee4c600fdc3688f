"""Checkpoints and cached artifacts are data, not code, and are verified before use."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.artifacts import ArtifactCache
from medray.backends.base import BackendError
from medray.models.factory import CheckpointError, build_model, load_model, read_checkpoint

REFUSED = "contains pickled Python objects, not just tensors, and is refused (loading it could run arbitrary code)"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY_ARCH, 2, 3).eval()


def outputs(m) -> np.ndarray:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32))
    with torch.inference_mode():
        return m(x).numpy()


def test_pickled_full_model_is_refused_without_trust(model, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(model, path)  # the whole nn.Module: unpickling it runs code
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"model.checkpoint={path}: ") and REFUSED in msg
    assert "set model.trust_checkpoint=true if you trust its origin" in msg
    with pytest.raises(CheckpointError, match="is refused"):
        load_model(TINY_ARCH, 2, 3, str(path))


def test_pickled_full_model_loads_with_trust(model, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(model, path)
    sd, meta = read_checkpoint(path, trust=True)
    assert meta == {} and set(sd) == set(model.state_dict())
    np.testing.assert_array_equal(outputs(load_model(TINY_ARCH, 2, 3, str(path), trust=True)), outputs(model))


def test_checkpoint_with_arbitrary_objects_is_refused(model, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": model.state_dict(), "meta": {"opt": torch.optim.SGD(model.parameters(), lr=0.1)}}, path)
    with pytest.raises(CheckpointError, match="is refused"):
        read_checkpoint(path)


def test_safetensors_loads_without_pickle(model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    sd, meta = read_checkpoint(path)
    assert meta == {} and set(sd) == set(model.state_dict())
    np.testing.assert_array_equal(outputs(load_model(TINY_ARCH, 2, 3, str(path))), outputs(model))


def test_resolve_turns_a_refused_checkpoint_into_a_config_error(model, tmp_path):
    import pandas as pd

    from medray.backends.torch.config import TorchConfig
    from medray.config import ConfigError, EvalConfig
    from medray.data.table import SampleTable
    from medray.models.config import ModelConfig
    from medray.models.resolve import resolve_model

    path = tmp_path / "full.pt"
    torch.save(model, path)
    table = SampleTable("t", "multiclass", ["A", "B"], str(tmp_path), pd.DataFrame(columns=["sample_id", "path", "split", "target"]))

    def cfg(trust):
        m = ModelConfig(name="mine", arch=TINY_ARCH, checkpoint=str(path), input_size=TINY_SIZE, trust_checkpoint=trust)
        return EvalConfig(backend=TorchConfig(), model=m, cache_dir=str(tmp_path / "c"), output_dir=str(tmp_path / "o"))

    with pytest.raises(ConfigError, match="is refused"):
        resolve_model(cfg(False), table)
    spec = resolve_model(cfg(True), table)
    assert spec.trust_checkpoint and spec.num_classes == 2


def test_actor_refuses_a_checkpoint_changed_after_prepare(tiny_spec, tmp_path, model):
    import shutil

    from medray.backends.torch.backend import TorchBackend
    from medray.models.factory import save_checkpoint

    spec = tiny_spec()
    copy = tmp_path / "ckpt.pt"
    shutil.copy(spec.model.checkpoint, copy)
    spec.model.checkpoint = str(copy)
    TorchBackend(spec).load().close()  # same bytes: fine
    torch.manual_seed(1)
    save_checkpoint(build_model(TINY_ARCH, 2, 3), copy, {})
    with pytest.raises(BackendError, match=r"changed since the run was prepared"):
        TorchBackend(spec).load()


# --------------------------------------------------------------------------- artifact cache


def build_counter(calls):
    def build(path):
        calls.append(path)
        path.write_bytes(b"artifact-bytes" * 100)

    return build


@pytest.mark.parametrize(
    "damage",
    ["truncate_file", "corrupt_file", "truncate_meta", "meta_wrong_hash", "delete_meta"],
)
def test_damaged_cache_entry_is_rebuilt_not_loaded(tmp_path, caplog, damage):
    cache = ArtifactCache(tmp_path)
    parts = {"model": "x", "opset": 17}
    calls: list = []
    first = cache.get_or_build("onnx", parts, "model.onnx", build_counter(calls))
    assert not first.cache_hit and len(calls) == 1
    assert cache.get_or_build("onnx", parts, "model.onnx", build_counter(calls)).cache_hit and len(calls) == 1

    d = cache.entry_dir("onnx", parts)
    f, meta = d / "model.onnx", d / "meta.json"
    if damage == "truncate_file":
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "corrupt_file":
        b = bytearray(f.read_bytes())
        b[10] ^= 0xFF  # same size, one byte flipped
        f.write_bytes(bytes(b))
    elif damage == "truncate_meta":
        meta.write_text(meta.read_text()[:40])
    elif damage == "meta_wrong_hash":
        m = json.loads(meta.read_text())
        m["sha256"] = "0" * 64
        meta.write_text(json.dumps(m))
    else:
        meta.unlink()

    with caplog.at_level(logging.WARNING, logger="medray.artifacts"):
        again = cache.get_or_build("onnx", parts, "model.onnx", build_counter(calls))
    assert not again.cache_hit and len(calls) == 2, "a damaged entry must be rebuilt"
    assert f"onnx: cache entry {d} is incomplete or corrupted; rebuilding" in caplog.text
    assert f.read_bytes() == b"artifact-bytes" * 100
    assert json.loads(meta.read_text())["sha256"] != "0" * 64
