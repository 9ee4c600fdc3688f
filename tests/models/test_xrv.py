"""``model=xrv``: torchxrayvision's own DenseNet class with random, calibrated weights, as a
state dict and as a pickled whole module, on a ChestX-ray14 layout of real radiographs:
medray's probabilities equal ``xrv_model(x)`` for xrv's own preprocessing (``normalize``,
``XRayCenterCrop``, ``XRayResizer(224)``) within 1e-5, with op_norm (the model built by
xrv from the file, ``op_threshs`` set) and without it (``apply_sigmoid``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REPO
from hub_fixtures import baseline_probs, make_nih, write_xrv_densenet, xrv_pixels
from PIL import Image

from medray.data.config import DataConfig
from medray.data.load import load_table
from medray.data.preprocess import PreprocessConfig
from medray.errors import ConfigError
from medray.models.config import ModelConfig, ModelRequest
from medray.models.resolve import resolve_model

xrv = pytest.importorskip("torchxrayvision", reason='pip install -e ".[xrv]"')
WEIGHTS = "densenet121-res224-all"
TOL = 1e-5


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("xrv")
    state, module = write_xrv_densenet(root / "weights", WEIGHTS)
    nih = make_nih(root / "nih")
    return SimpleNamespace(root=root, state=state, module=module, nih=nih,
                           table=load_table(DataConfig(name="chestxray14", root=str(nih)), str(nih)))


def resolve(fx, path, **kw):
    model = ModelConfig(name="xrv", source="xrv", arch=WEIGHTS, path=str(path), in_chans=1, **kw)
    return resolve_model(ModelRequest(model, PreprocessConfig(name="model"), str(fx.root / "cache")), fx.table)


def xrv_reference(module_file: Path, paths) -> dict[bool, np.ndarray]:
    """xrv's own model, built by xrv's constructor from the (pickled module) file as a
    download would give it, on xrv's own preprocessing: the probabilities of its 18 outputs
    with op_norm (True) and with apply_sigmoid instead (False)."""
    d = module_file.parent / "xrv_cache"
    d.mkdir(exist_ok=True)
    local = d / Path(xrv.models.model_urls[WEIGHTS]["weights_url"]).name
    if not local.exists():
        local.symlink_to(module_file)
    model = xrv.models.DenseNet(weights=WEIGHTS, cache_dir=str(d)).eval()
    x = torch.from_numpy(np.stack([xrv_pixels(np.asarray(Image.open(p).convert("L"))) for p in paths]))
    out = {}
    with torch.no_grad():
        out[True] = model(x).double().numpy()
        model.op_threshs, model.apply_sigmoid = None, True
        out[False] = model(x).double().numpy()
    return out


@pytest.fixture(scope="module")
def reference(fx):
    """xrv's probabilities of the test images, and medray's read stage of them (decoded once)."""
    from medray.tasks.classification.read import decode_batch

    samples = fx.table.split("test")
    spec = resolve(fx, fx.state)
    batch = decode_batch({"sample_id": samples["sample_id"].to_numpy(), "path": samples["path"].to_numpy()},
                         spec.preprocess)
    return samples, batch, xrv_reference(fx.module, samples["path"])


@pytest.mark.parametrize("file", ["state", "module"])
@pytest.mark.parametrize("op_norm", [True, False])
def test_probabilities_equal_xrvs_own_model_on_its_own_preprocessing(fx, reference, file, op_norm):
    spec = resolve(fx, getattr(fx, file), operating_points="xrv" if op_norm else None)
    assert spec.preprocess["resize"] == "xrv" and spec.input_shape == (1, 224, 224)
    assert (spec.op_threshs is not None) == op_norm and not spec.labels["not_scored"]
    samples, batch, ref = reference
    assert batch["image"].dtype == np.float32  # xrv resizes float pixels: never rounded to 8 bits
    got = baseline_probs(spec, samples, batch)
    labels = xrv.models.model_urls[WEIGHTS]["labels"]
    want = ref[op_norm][:, [labels.index(c) for c in fx.table.classes]]  # xrv's 18 outputs in ChestX-ray14's order
    assert got.shape == want.shape == (16, 14)
    assert np.abs(got - want).max() <= TOL
    assert 0.05 < got.std()  # not saturated: op_norm's operating points are in the range


def test_a_pickled_module_is_read_without_running_code_and_converted_once(fx, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="medray.models"):
        spec = resolve(fx, fx.module)
    assert spec.path != str(fx.module) and Path(spec.path).parent == fx.root / "cache" / "models"
    assert "its weights converted to the state dict" in caplog.text or "converted before" in caplog.text
    torch.load(spec.path, weights_only=True)  # the actors' file: tensors only


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_foreign_pickles_and_wrong_files_are_refused(fx, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ConfigError, match=r"pickles classes other than xrv's and torch.nn's.*model.trust_checkpoint=true"):
        resolve(fx, evil)
    with pytest.raises(ConfigError, match="model.arch='all': not torchxrayvision weights; use one of densenet121-res224-all"):
        resolve_model(ModelRequest(ModelConfig(name="xrv", source="xrv", arch="all", path=str(fx.state)),
                                   PreprocessConfig(name="model"), str(tmp_path)), fx.table)
    wrong = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    with pytest.raises(ConfigError, match=f"model.path={wrong}: the weights do not fit {WEIGHTS}"):
        resolve(fx, wrong)
    with pytest.raises(ConfigError, match="model.operating_points='xrv': model=timm has no operating points of its own"):
        ModelConfig(name="t", arch="resnet10t", checkpoint=str(fx.state), operating_points="xrv")


@pytest.mark.slow
@pytest.mark.openvino
def test_evaluate_xrv_with_operating_points_int8_tencrop_and_subgroups(ray_local, fx, tmp_path):
    """`jobs/evaluate.py model=xrv ... model.operating_points=xrv backend=openvino precision=int8 tta=tencrop`:
    18 outputs read as ChestX-ray14's 14 labels, threshold 0.5 = xrv's operating points, the
    INT8 candidate compared sample by sample, subgroups from the manifest."""
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.pipeline.evaluate import run

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "model=xrv", f"model.arch={WEIGHTS}", f"model.path={fx.module}", "model.operating_points=xrv",
            "data=chestxray14", f"data.root={fx.nih}", "backend=openvino", "precision=int8", "tta=tencrop",
            "calibration.num_samples=8", "report.min_subgroup_size=2", "batch_size=4", "warmup_batches=1",
            f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache"])
    doc = run(to_config(cfg))
    base, cand = doc["runs"]
    assert doc["dataset"]["classes"] == list(fx.table.classes) and doc["dataset"]["not_scored"] == []
    assert doc["model"]["labels"]["unused"] == ["Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert doc["model"]["operating_points"].startswith("torchxrayvision op_norm")
    assert base["tta"] == cand["tta"] == "tencrop" and cand["agreement"]["n"] == 16
    assert set(base["subgroups"]) >= {"Patient Gender"} and set(base["threshold"]) == set(fx.table.classes)
    assert "operating points: torchxrayvision op_norm" in (tmp_path / "out" / "report.md").read_text()
