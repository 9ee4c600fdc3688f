"""The MONAI UNets' recipe takes masks back to the input file's grid: a label map on the
network's grid (reoriented to RAS, resampled) goes back through the two affines."""

from __future__ import annotations

import numpy as np

from medray.data.config import VolumeConfig
from medray.data.msd import load_case, resolve_preprocessing
from medray.models.monai_window import to_original


def write(path, arr, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, affine), str(path))


def test_the_network_grid_goes_back_to_an_lps_file_exactly_and_to_a_resampled_one_closely(tmp_path):
    rng = np.random.default_rng(0)
    label = np.zeros((20, 18, 9), np.uint8)
    label[4:15, 3:12, 2:7] = 1
    label[7:15, 4:11, 3:6] = 2
    image = (label * 100 + rng.normal(0, 5, label.shape)).astype(np.float32)
    lps = np.diag([-0.8, -0.9, 2.5, 1.0])
    lps[:3, 3] = (10.0, 20.0, -5.0)
    write(tmp_path / "i.nii.gz", image, lps)
    write(tmp_path / "l.nii.gz", label, lps)
    # reoriented only: the way back is the exact inverse
    c = load_case(str(tmp_path / "i.nii.gz"), str(tmp_path / "l.nii.gz"), resolve_preprocessing(VolumeConfig(), ["CT"]), 3)
    assert c["label"].shape == label.shape and not np.array_equal(c["label"], label)  # flipped to RAS
    back = to_original(c["label"], c["model_affine"], c["affine"], label.shape)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_array_equal(c["label_original"], label)
    # resampled to 1.6 x 1.8 x 2.5 mm: nearest neighbour back on the file's grid
    coarse = resolve_preprocessing(VolumeConfig(spacing=[1.6, 1.8, 2.5]), ["CT"])
    c = load_case(str(tmp_path / "i.nii.gz"), str(tmp_path / "l.nii.gz"), coarse, 3)
    assert c["label"].shape[0] < label.shape[0]
    back = to_original(c["label"], c["model_affine"], c["affine"], label.shape)
    assert back.shape == label.shape and (back == label).mean() > 0.9
    for k in (1, 2):
        assert 2 * ((back == k) & (label == k)).sum() / ((back == k).sum() + (label == k).sum()) > 0.7
