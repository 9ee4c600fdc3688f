"""model=nnunet without Ray: the folder's checks (clear errors before anything runs), and the
sliding window / export against nnunetv2's own predictor on a tiny model trained with
nnU-Net's tools (tests/nnunet_tiny.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medray.errors import ConfigError
from medray.models.config import ModelConfig, ModelRequest


def nnunet_model(path, **kw) -> ModelConfig:
    return ModelConfig(name="nnunet", source="nnunet", path=str(path), checkpoint="checkpoint_final.pth", **kw)


def table_of(raw: str):
    from medray.data.config import DataConfig
    from medray.data.load import load_table

    return load_table(DataConfig(name="nnunet", root=raw), raw)


def resolve(model: ModelConfig, raw: str):
    from medray.models.resolve import resolve_model

    return resolve_model(ModelRequest(model), table_of(raw))


def test_a_missing_nnunetv2_is_a_config_error_naming_the_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    with pytest.raises(ConfigError, match=r'model=nnunet needs nnunetv2, which is not installed: pip install -e "\.\[nnunet\]"'):
        nnunet_model(tmp_path)


def test_bad_model_folders_are_config_errors(tiny_nnunet, tmp_path):
    a, raw = Path(tiny_nnunet["A"]), tiny_nnunet["A_raw"]
    with pytest.raises(ConfigError, match="model.path=.*: not an nnU-Net v2 model folder \\(no plans.json, dataset.json\\)"):
        resolve(nnunet_model(a.parent), raw)
    with pytest.raises(ConfigError, match=r"model.folds=\['3'\]: .*fold_3/checkpoint_final.pth not found \(folds with "
                                          r"checkpoint_final.pth: \['0', '1'\]\)"):
        resolve(nnunet_model(a, folds=[3]), raw)
    with pytest.raises(ConfigError, match="no fold_\\*/checkpoint_nope.pth"):
        resolve(ModelConfig(name="nnunet", source="nnunet", path=str(a), checkpoint="checkpoint_nope.pth"), raw)
    with pytest.raises(ConfigError, match="model.path=.*: not a directory"):
        nnunet_model(tmp_path / "nope")
    # a checkpoint of another configuration copied into the folder
    import torch

    other = tmp_path / a.name.replace("3d_fullres", "3d_lowres")
    shutil.copytree(a, other)
    with pytest.raises(ConfigError, match="named for configuration '3d_lowres' but its checkpoints are of '3d_fullres'"):
        resolve(nnunet_model(other), raw)
    ck = torch.load(a / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ck["init_args"]["configuration"] = "2d"
    torch.save(ck, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ConfigError, match=r"the folds were trained differently \(configurations \['2d', '3d_fullres'\]"):
        resolve(nnunet_model(other), raw)
    # the model's labels are not the data's
    with pytest.raises(ConfigError, match="the model's labels .* differ from dataset Dataset902_TinyMR's"):
        resolve(nnunet_model(a), tiny_nnunet["B_raw"])


def test_the_spec_has_one_member_per_fold(tiny_nnunet):
    spec = resolve(nnunet_model(tiny_nnunet["A"]), tiny_nnunet["A_raw"])
    assert spec.recipe == "nnunet" and spec.source == "nnunet" and spec.member_names() == ["fold_0", "fold_1"]
    assert spec.num_classes == 4 and spec.in_chans == 1 and spec.input_shape == (1, *spec.spatial)
    m1 = spec.member(1)
    assert m1.checkpoint.endswith("fold_1/checkpoint_final.pth") and m1.members == [] and m1.checkpoint_sha256
    b = resolve(nnunet_model(tiny_nnunet["B"]), tiny_nnunet["B_raw"])
    assert b.member_names() == ["fold_all"] and b.num_classes == 2 and b.preprocess["regions"] is True


def test_logits_and_mask_are_nnunet_predictors_bit_for_bit(tiny_nnunet):
    """The torch fold networks in medray's sliding window give nnUNetPredictor's float16
    logits exactly (one window per call), and the per-channel export its segmentation."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medray.models.loaders import load_torch_model
    from medray.models.nnunet.inference import Window, predict_logits, preprocess, slicers, to_segmentation

    torch.set_num_threads(1)
    spec = resolve(nnunet_model(tiny_nnunet["A"]), tiny_nnunet["A_raw"])
    case = table_of(tiny_nnunet["A_raw"]).split("test").iloc[1]  # an LPS-stored case
    data, props = preprocess(spec.path, "3d_fullres", case["channels"].split("\n"))
    nets = [load_torch_model(spec.member(i)) for i in range(2)]

    def call(net):
        def f(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()
        return f

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(spec.path, use_folds=(0, 1), checkpoint_name="checkpoint_final.pth")
    assert slicers(data.shape[1:], spec.spatial, 0.5) == pred._internal_get_sliding_window_slicers(data.shape[1:])
    ref = pred.predict_logits_from_preprocessed_data(torch.from_numpy(data)).numpy()
    got = predict_logits(data, [call(n) for n in nets], Window(tuple(spec.spatial), 4, (0, 1, 2), 0.5, True, 1))
    assert got.dtype == np.float16 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    seg = to_segmentation(spec.path, "3d_fullres", got, props)
    ref_seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.from_numpy(ref), pred.plans_manager, pred.configuration_manager, pred.label_manager, props, False, 1)
    np.testing.assert_array_equal(seg, ref_seg)


def test_resampling_one_channel_and_slice_at_a_time_is_nnunets(tiny_nnunet):
    """medray's bounded-memory way back (one channel, one slice at a time) gives the values of
    the plans' resampling function on the whole volume: anisotropic (separate z, up and down)
    and isotropic (nnU-Net's own function per channel)."""
    from medray.models.nnunet.folder import managers
    from medray.models.nnunet.inference import resample_channel

    cm = managers(str(Path(tiny_nnunet["A"]).resolve()), "3d_fullres")[1]
    x = np.random.default_rng(0).standard_normal((3, 13, 30, 28)).astype(np.float16)
    for current, target, new in (([2.75, 0.8, 0.8], [3.0, 0.85, 0.75], (12, 28, 30)),
                                 ([2.75, 0.8, 0.8], [2.0, 0.8, 0.8], (18, 30, 28)),
                                 ([1.0, 1.0, 1.0], [1.2, 0.9, 1.0], (11, 33, 28))):
        ref = cm.resampling_fn_probabilities(x, new, current, target)
        out = np.zeros((3, *new), np.float16)
        for c in range(3):
            resample_channel(cm, x[c], new, current, target, out[c])
        np.testing.assert_array_equal(out, ref)
