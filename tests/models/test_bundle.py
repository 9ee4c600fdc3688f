"""model=bundle: a MONAI bundle's masks through medray equal its own runner's.

The parity test writes two small bundles (tests/bundle_tiny.py: a SegResNet spleen-style one,
and a UNet ``norm: batch`` with Orientationd + Spacingd + Invertd on anisotropic RAS / LPS /
oblique / permuted volumes), runs ``python -m monai.bundle run --config_file
configs/inference.json`` on them, runs medray (torch baseline, ONNX Runtime candidate, Ray,
data=datalist) and compares the mask files case by case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_tiny import SEGRESNET, UNET, run_monai_runner, write_bundle

from medray.backends.onnxruntime.config import OnnxRuntimeConfig
from medray.config import EvalConfig, RayConfig
from medray.data.config import DataConfig
from medray.data.load import load_table
from medray.errors import ConfigError
from medray.models.config import ModelConfig, ModelRequest
from medray.tasks.segmentation.config import SlidingWindowConfig

BUNDLES = {"segresnet": SEGRESNET, "unet": UNET}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {k: write_bundle(spec, out) for k, spec in BUNDLES.items()}


def data_config(root: Path, **kw) -> DataConfig:
    return DataConfig(name="datalist", root=str(root / "data"), datalist="datalist.json", split="validation", **kw)


def model_config(root: Path, **kw) -> ModelConfig:
    return ModelConfig(**{"name": "bundle", "source": "bundle", "path": str(root), "trust_checkpoint": True, **kw})


def bundle_cfg(root: Path, out: Path, **kw) -> EvalConfig:
    base = dict(backend=OnnxRuntimeConfig(), task="segmentation", data=data_config(root), model=model_config(root),
                sliding_window=SlidingWindowConfig(sw_batch_size=2), ray=RayConfig(num_cpus=2), output_dir=str(out / "out"),
                cache_dir=str(out / "cache"), warmup_batches=0)
    return EvalConfig(**{**base, **kw})


def resolved(root: Path, **kw):
    from medray.models.bundle.resolve import resolve_bundle

    table = load_table(data_config(root), str(root / "data"))
    return resolve_bundle(ModelRequest(model_config(root, **kw)), table), table


def segment_case(spec, table, settings: dict, i: int = 0):
    """One validation case through the recipe in this process, the network as the backend call."""
    import torch

    from medray.models.loaders import load_torch_model
    from medray.models.recipes import recipe_of

    recipe, net = recipe_of(spec), load_torch_model(spec)
    row = table.split("validation").iloc[i]
    case = {"sample_id": row["sample_id"], "path": row["path"], "channels": row["channels"], "label_path": row["label_path"]}
    got = recipe.read(spec, settings, case)
    with torch.inference_mode():
        mask, info = recipe.segment(spec, settings, [lambda x: net(torch.from_numpy(x)).numpy()], got["image"],
                                    got["geometry"], 2)
    return mask, got, info


def compare(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, list[float]]:
    """Voxel agreement and per-class Dice (1 where neither mask has the class)."""
    dice = []
    for c in range(1, k):
        x, y = a == c, b == c
        s = int(x.sum() + y.sum())
        dice.append(1.0 if s == 0 else float(2 * (x & y).sum() / s))
    return float((a == b).mean()), dice


@pytest.mark.slow
@pytest.mark.parametrize("which", ["segresnet", "unet"])
def test_bundle_masks_equal_the_monai_bundle_runner(ray_local, bundles, tmp_path, which):
    from medray.backends.torch.config import TorchConfig
    from medray.pipeline.evaluate import run

    root, spec = bundles[which], BUNDLES[which]
    runner = {p.name.split("_trans")[0].split("_seg")[0]: p for p in run_monai_runner(root, tmp_path / "runner")}
    # The UNet bundle (the harder geometry) also with ONNX Runtime as the network; the SegResNet
    # one with the torch baseline alone (one Ray run: the suite stays small).
    runs = ("torch-fp32", "onnxruntime-fp32") if which == "unet" else ("torch-fp32",)
    kw = {} if which == "unet" else {"backend": TorchConfig(), "baseline": None}
    doc = run(bundle_cfg(root, tmp_path, **kw))
    base, cand = doc["runs"][0], doc["runs"][-1]
    assert tuple(r["name"] for r in doc["runs"]) == runs
    # the label names are the bundle's (metadata.json channel_def): data.classes was null
    assert doc["dataset"]["labels"] == spec["classes"] and doc["dataset"]["recipe"] == "bundle"
    assert base["n_samples"] == len(spec["cases"]) == len(runner)
    pred = Path(doc["output_dir"]) / "predictions"
    for case, ref_file in runner.items():
        src, ref = nib.load(str(root / "data" / "imagesTs" / f"{case}.nii.gz")), nib.load(str(ref_file))
        ref_mask = np.asarray(ref.dataobj).round().astype(np.uint8)
        assert ref_mask.shape == src.shape and np.allclose(ref.affine, src.affine, atol=1e-4)  # the runner inverts too
        for run_name in runs:
            mine = nib.load(str(pred / f"{run_name}_masks" / f"{case}.nii.gz"))
            # medray's mask file: the input's shape and affine (original geometry)
            assert mine.shape == src.shape and np.allclose(mine.affine, src.affine, atol=1e-4), (run_name, case)
            agree, dice = compare(np.asarray(mine.dataobj).astype(np.uint8), ref_mask, spec["k"])
            assert agree >= 0.999 and min(dice) >= 0.995, (run_name, case, agree, dice)
            if run_name == "torch-fp32":  # same network, same numbers: not a voxel apart
                assert agree == 1.0, (case, agree)
    # Dice vs the labels in the original geometry, and the published number checked first
    assert base["metrics"]["dice_mean"] is not None and (len(runs) == 1 or cand["agreement"]["dice_mean"] >= 0.99)
    exp = doc["expected"]["metrics"]["dice_mean"]
    assert exp["published"] == 0.9 and exp["from"] == "metadata.json eval_metrics.mean_dice"
    assert exp["baseline"] == pytest.approx(base["metrics"]["dice_mean"])
    lo, hi = exp["ci"]
    assert exp["reproduced"] == (lo <= 0.9 <= hi) and doc["expected"]["run"] == "torch-fp32"
    md = (Path(doc["output_dir"]) / "report.md").read_text().splitlines()
    assert md[0].startswith("# medray segmentation") and md[2] == "## Published metrics"
    assert any("MONAI bundle" in line and "Invertd" in line for line in md)


def test_torchscript_weights_and_the_model_space(bundles):
    """model.weights=ts runs models/model.ts (the zoo's TorchScript export) to the same masks;
    sliding_window.space=model leaves the bundle's Invertd out and gives the network's grid."""
    from medray.models.recipes import recipe_of

    spec_pt, table = resolved(bundles["unet"])
    spec_ts, _ = resolved(bundles["unet"], weights="ts")
    assert spec_ts.checkpoint.endswith("model.ts") and spec_pt.checkpoint.endswith("model.pt")
    assert spec_pt.net["loader"]["key"] == "model" and spec_pt.spatial == (32, 32, 32)
    settings = recipe_of(spec_pt).settings(spec_pt, {})
    assert (settings["overlap"], settings["mode"], settings["padding_mode"]) == (0.25, "gaussian", "replicate")
    for i in (1, 3):  # an LPS volume and the permuted one
        a, got, _ = segment_case(spec_pt, table, settings, i)
        b, _, _ = segment_case(spec_ts, table, settings, i)
        np.testing.assert_array_equal(a, b)
        assert list(a.shape) == list(got["orig_shape"]) and got["label"].shape == a.shape
    model = {**settings, "space": "model", "overlap": 0.5}  # sliding_window.* overrides the bundle's own
    m, got, info = segment_case(spec_pt, table, recipe_of(spec_pt).settings(spec_pt, {"space": "model", "overlap": 0.5}), 1)
    assert model["overlap"] == 0.5 and list(m.shape) == info["model_shape"] == list(got["image"].shape[1:])
    assert got["label"].shape == m.shape and got["mask_spacing"] == pytest.approx([1.2, 1.2, 1.5])


def edited(bundles, tmp_path, which: str, change) -> Path:
    root = Path(shutil.copytree(bundles[which], tmp_path / which))
    change(root)
    return root


def edit_json(root: Path, name: str, fn) -> None:
    p = root / "configs" / name
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_what_a_bundle_declares_and_medray_cannot_honour_is_a_config_error(bundles, tmp_path):
    seg = bundles["segresnet"]
    with pytest.raises(ConfigError, match="model.trust_checkpoint=False: reading a model=bundle runs its code"):
        ModelConfig(name="bundle", source="bundle", path=str(seg))
    with pytest.raises(ConfigError, match="model.weights='onnx': use one of pt, ts"):
        model_config(seg, weights="onnx")
    with pytest.raises(ConfigError, match="model.checkpoint='x.pt': model=bundle loads the weights its CheckpointLoader"):
        model_config(seg, checkpoint="x.pt")
    cases = {
        # a weights file that is not the published one: large_files.yml's md5 (never downloaded)
        "md5": (lambda r: (r / "models" / "model.pt").write_bytes((r / "models" / "model.pt").read_bytes() + b"0"),
                "models/model.pt has md5 .* but large_files.yml expects"),
        "no_ts": (lambda r: (r / "models" / "model.ts").unlink(), "no weights file .*model.ts"),
        "simple": (lambda r: edit_json(r, "inference.json", lambda d: d.update(inferer={"_target_": "SimpleInferer"})),
                   "inferer SimpleInferer is not supported"),
        "ensemble": (lambda r: edit_json(r, "inference.json", lambda d: d["evaluator"].update(_target_="EnsembleEvaluator")),
                     r"evaluator#_target_='EnsembleEvaluator'"),
        "batch": (lambda r: edit_json(r, "inference.json",
                                      lambda d: d["evaluator"].update(prepare_batch="$monai.engines.default_prepare_batch")),
                  "evaluator#prepare_batch=.*not supported"),
        "channels": (lambda r: edit_json(r, "metadata.json", lambda d: d["network_data_format"]["outputs"]["pred"].update(
            num_channels=3)), "names 2 output channels .* but num_channels is 3"),
    }
    for name, (change, message) in cases.items():
        root = edited(bundles, tmp_path / name, "segresnet", change)
        with pytest.raises(ConfigError, match=message):
            resolved(root, weights="ts" if name == "no_ts" else None)
    # the dataset's labels must be the network's outputs
    table = load_table(data_config(seg, classes=["background", "organ", "lesion"]), str(seg / "data"))
    from medray.models.bundle.resolve import resolve_bundle

    with pytest.raises(ConfigError, match="the model has 2 output channels but dataset datalist has 3 labels"):
        resolve_bundle(ModelRequest(model_config(seg)), table)
