"""Tiny nnU-Net v2 models trained with nnU-Net's own tools, for the nnU-Net tests (cached).

Dataset A (Dataset901_TinyCT): 1 channel CT-like, anisotropic (0.75-0.85 mm in-plane, 2.5-3 mm
slices), labels organ / lesion / bone; odd cases stored LPS (affine diag(-, -, +), the voxels
flipped), even ones RAS; some cases have a zero border (crop to non-zero crops it); spacings
vary (resampling resamples).  Two folds.
Dataset B (Dataset902_TinyMR): 2 channels MR-like (z-score over a non-zero mask), region-based
labels (BraTS-like: whole = [1, 2], core = 2).  Fold ``all``.

``build(work) -> {'A': model folder, 'A_raw': raw dataset folder, 'A_folds': (0, 1), 'B': ...}``
plans, preprocesses and trains with nnunetv2's API (its planner and fingerprint extractor with
smaller knobs, its trainer for 6 × 20 iterations: ``nnunet_trainers/``) once per ``work``
folder (a stamp file), in about a minute on 2 cores.  It sets ``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results``, ``nnUNet_extTrainer`` (inference needs it to find
the tiny trainer), ``nnUNet_compile=f`` and ``nnUNet_def_n_proc=1`` in ``os.environ`` for the
whole process (Ray workers and subprocesses inherit them).
"""
import json
import multiprocessing
import os
import random
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
TRAINER = "nnUNetTrainerTiny"
TRAINER_DIR = HERE / "nnunet_trainers"
PLANS = "nnUNetPlans"
CONFIG = "3d_fullres"
VERSION = 3  # bump to invalidate cached models

# The plans' patch: this fraction of the median image (so that the windows slide, 2 per axis).
CAP = 0.7

DATASETS = {
    'A': dict(id=901, name='Dataset901_TinyCT', n_train=6, n_test=2, folds=(0, 1)),
    'B': dict(id=902, name='Dataset902_TinyMR', n_train=4, n_test=2, folds=('all',)),
}


# ----------------------------------------------------------------------------- synthetic data
def _grid(shape, spacing):
    """world-ish mm coordinates (x, y, z) of a RAS-ordered voxel grid, centred."""
    ax = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*ax, indexing='ij')


def _ellipsoid(g, c, r):
    return sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, r)) <= 1


def _save(arr_ras, spacing, lps: bool, fname, dtype):
    """store a RAS-ordered array either as is (RAS affine) or flipped in x/y with an LPS affine.
    Both files describe the same world geometry; only the on-disk voxel order differs."""
    sx, sy, sz = spacing
    nx, ny, _ = arr_ras.shape
    if lps:
        arr = arr_ras[::-1, ::-1, :]
        aff = np.array([[-sx, 0, 0, (nx - 1) * sx], [0, -sy, 0, (ny - 1) * sy], [0, 0, sz, 0], [0, 0, 0, 1.]])
    else:
        arr, aff = arr_ras, np.diag([sx, sy, sz, 1.])
    aff[:3, 3] += (-10.0, 20.0, -30.0)  # non-zero origin
    img = nib.Nifti1Image(np.ascontiguousarray(arr).astype(dtype), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, fname)


def _case_ct(rng):
    spacing = (float(rng.choice([0.75, 0.8, 0.85])),) * 2 + (float(rng.choice([2.5, 2.5, 3.0])),)
    shape = (int(rng.integers(44, 53)), int(rng.integers(40, 49)), int(rng.integers(14, 19)))
    g = _grid(shape, spacing)
    ext = [n * s / 2 for n, s in zip(shape, spacing)]
    img = np.full(shape, -1000.0)
    body = _ellipsoid(g, (0, 0, 0), (ext[0] * 0.85, ext[1] * 0.8, 1e3))
    img[body] = -60.0
    seg = np.zeros(shape, np.uint8)
    oc = [rng.uniform(-0.3, 0.3) * e for e in ext[:2]] + [rng.uniform(-0.2, 0.2) * ext[2]]
    organ = _ellipsoid(g, oc, [rng.uniform(0.35, 0.5) * e for e in ext[:2]] + [ext[2] * 0.6]) & body
    img[organ], seg[organ] = 90.0, 1
    lc = [c + rng.uniform(-3, 3) for c in oc]
    lesion = _ellipsoid(g, lc, [rng.uniform(6, 9)] * 2 + [rng.uniform(6, 10)]) & organ
    img[lesion], seg[lesion] = 200.0, 2
    bc = (rng.uniform(-4, 4), -ext[1] * 0.55, 0)
    bone = _ellipsoid(g, bc, (rng.uniform(4, 6), rng.uniform(4, 6), 1e3)) & body
    img[bone], seg[bone] = 500.0, 3
    img += rng.normal(0, 15, shape) * (img > -900)
    img = np.round(img)
    if rng.random() < 0.5:  # zero padding border ("outside FOV") -> crop_to_nonzero crops it
        b = int(rng.integers(3, 6))
        img[:b], img[-b:] = 0, 0
        seg[:b], seg[-b:] = 0, 0
    return img, seg, spacing


def _case_mr(rng):
    spacing = (1.0, 1.0, float(rng.choice([1.0, 1.2])))
    shape = (int(rng.integers(44, 53)), int(rng.integers(44, 53)), int(rng.integers(36, 45)))
    g = _grid(shape, spacing)
    ext = [n * s / 2 for n, s in zip(shape, spacing)]
    head = _ellipsoid(g, (0, 0, 0), [e * 0.6 for e in ext])
    t1, t2 = np.zeros(shape), np.zeros(shape)
    t1[head], t2[head] = 400.0, 300.0
    seg = np.zeros(shape, np.uint8)
    c = [rng.uniform(-0.2, 0.2) * e for e in ext]
    whole = _ellipsoid(g, c, [rng.uniform(5, 8) for _ in range(3)]) & head
    core = _ellipsoid(g, c, [rng.uniform(2.5, 4) for _ in range(3)]) & head
    t1[whole], t2[whole], seg[whole] = 380.0, 650.0, 1
    t1[core], t2[core], seg[core] = 600.0, 500.0, 2
    t1 = (t1 + rng.normal(0, 25, shape)) * head
    t2 = (t2 + rng.normal(0, 25, shape)) * head
    return (t1, t2), seg, spacing


def make_raw(raw_root: Path, key: str, seed: int = 0):
    d = DATASETS[key]
    root = raw_root / d['name']
    if root.exists():
        shutil.rmtree(root)
    for sub in ('imagesTr', 'labelsTr', 'imagesTs', 'labelsTs'):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed + d['id'])
    n = d['n_train'] + d['n_test']
    for i in range(n):
        split = 'Tr' if i < d['n_train'] else 'Ts'
        cid = f"{key.lower()}_{i:03d}"
        lps = i % 2 == 1
        if key == 'A':
            img, seg, sp = _case_ct(rng)
            _save(img, sp, lps, root / f'images{split}' / f'{cid}_0000.nii.gz', np.int16)
        else:
            (t1, t2), seg, sp = _case_mr(rng)
            _save(t1, sp, lps, root / f'images{split}' / f'{cid}_0000.nii.gz', np.float32)
            _save(t2, sp, lps, root / f'images{split}' / f'{cid}_0001.nii.gz', np.float32)
        _save(seg, sp, lps, root / f'labels{split}' / f'{cid}.nii.gz', np.uint8)
    if key == 'A':
        dj = dict(channel_names={'0': 'CT'}, labels={'background': 0, 'organ': 1, 'lesion': 2, 'bone': 3})
    else:
        dj = dict(channel_names={'0': 'T1', '1': 'T2'},
                  labels={'background': 0, 'whole': [1, 2], 'core': 2}, regions_class_order=[1, 2])
    dj.update(numTraining=d['n_train'], file_ending='.nii.gz', name=d['name'])
    (root / 'dataset.json').write_text(json.dumps(dj, indent=2))
    return root


# ----------------------------------------------------------------------------- nnU-Net steps
def _tiny_planner_class():
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    class TinyPlanner(ExperimentPlanner):
        """Default planner, but 8 base features (max 32) and a patch capped at ~half the median
        image so that the sliding window really slides (>= 2-3 windows per axis)."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.UNet_base_num_features = 8
            self.UNet_max_features_3d = 32
            self.UNet_max_features_2d = 32
            self.lowres_creation_threshold = 0  # no 3d_lowres / cascade

        def get_plans_for_configuration(self, spacing, median_shape, data_identifier,
                                        approximate_n_voxels_dataset, _cache):
            capped = np.maximum(np.round(np.asarray(median_shape, float) * CAP), 8)
            plan = super().get_plans_for_configuration(spacing, capped, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
            plan['median_image_size_in_voxels'] = median_shape  # keep the true median in the plans
            return plan

    return TinyPlanner


def _tiny_fingerprint_class():
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class TinyFingerprintExtractor(DatasetFingerprintExtractor):
        """nnU-Net draws 1e8 foreground intensities (with replacement) for the CT percentiles /
        z-score stats, ships them through the pool and takes percentiles: ~12-19 s CPU even for
        tiny datasets. 1e5 samples is plenty for a few thousand foreground voxels per case."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.num_foreground_voxels_for_intensitystats = 1e5

    return TinyFingerprintExtractor


def _seed(s):
    import torch
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def set_env(work: Path):
    os.environ['nnUNet_raw'] = str(work / 'nnUNet_raw')
    os.environ['nnUNet_preprocessed'] = str(work / 'nnUNet_preprocessed')
    os.environ['nnUNet_results'] = str(work / 'nnUNet_results')
    os.environ['nnUNet_extTrainer'] = str(TRAINER_DIR)
    os.environ.setdefault('nnUNet_compile', 'f')
    os.environ.setdefault('nnUNet_def_n_proc', '1')


def model_folder(work: Path, key: str) -> Path:
    return work / 'nnUNet_results' / DATASETS[key]['name'] / f'{TRAINER}__{PLANS}__{CONFIG}'


@contextmanager
def fork_pools():
    """nnU-Net hard-codes multiprocessing.get_context('spawn') for its worker pools; every spawned
    worker re-imports torch+nnunetv2 (3-4 s CPU, 15 s wall on a loaded 2-core box). For the
    numpy-only fingerprint/preprocessing workers 'fork' is safe and ~free."""
    real = multiprocessing.get_context
    multiprocessing.get_context = lambda method=None: real('fork')
    try:
        yield
    finally:
        multiprocessing.get_context = real


def plan_and_preprocess(key: str, nproc: int = 2, verify: bool = False, fork: bool = True):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    did = DATASETS[key]['id']
    with fork_pools() if fork else nullcontext():
        extract_fingerprint_dataset(did, _tiny_fingerprint_class(), num_processes=nproc,
                                    check_dataset_integrity=verify, clean=True, verbose=False,
                                    show_progress_bar=False)
        _, plans_id = plan_experiment_dataset(did, _tiny_planner_class())
        preprocess_dataset(did, plans_id, configurations=(CONFIG,), num_processes=(nproc,),
                           show_progress_bar=False)
    # deterministic 2-fold split instead of nnU-Net's default 5-fold (needs >= 5 cases/fold)
    pp = Path(os.environ['nnUNet_preprocessed']) / DATASETS[key]['name']
    ids = sorted(f"{key.lower()}_{i:03d}" for i in range(DATASETS[key]['n_train']))
    splits = [dict(train=ids[len(ids) // 2:], val=ids[:len(ids) // 2]),
              dict(train=ids[:len(ids) // 2], val=ids[len(ids) // 2:])]
    (pp / 'splits_final.json').write_text(json.dumps(splits, indent=1))


def train(key: str, fold, seed: int = 0):
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    # single-threaded augmentation (deterministic, no worker processes). Only here: the planner
    # calls torch.set_num_threads(get_allowed_n_proc_DA()) and crashes with nnUNet_n_proc_DA=0.
    old = os.environ.get('nnUNet_n_proc_DA')
    os.environ['nnUNet_n_proc_DA'] = '0'
    _seed(seed)
    trainer = get_trainer_from_args(str(DATASETS[key]['id']), CONFIG, fold, TRAINER, PLANS,
                                    continue_training=False, device=torch.device('cpu'))
    _seed(seed)
    try:
        trainer.run_training()  # writes fold_X/checkpoint_final.pth (+ plans/dataset/fingerprint json)
    finally:
        if old is None:
            os.environ.pop('nnUNet_n_proc_DA')
        else:
            os.environ['nnUNet_n_proc_DA'] = old
    # nnUNetv2_train would now run perform_actual_validation(); skipped: not needed for inference


def build(work, keys=("A", "B"), seed: int = 0, threads: int = 1) -> dict:
    """Raw data + trained models under ``work`` (cached by a stamp file per dataset)."""
    import fcntl

    import torch

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    set_env(work)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        with open(work / ".lock", "w") as lock:  # concurrent test sessions build once
            fcntl.flock(lock, fcntl.LOCK_EX)
            for key in keys:
                d = DATASETS[key]
                stamp = work / f".done_{key}"
                want = json.dumps(dict(v=VERSION, seed=seed, folds=[str(f) for f in d["folds"]]))
                if not (stamp.exists() and stamp.read_text() == want):
                    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
                        shutil.rmtree(work / sub / d["name"], ignore_errors=True)
                    make_raw(work / "nnUNet_raw", key, seed)
                    plan_and_preprocess(key, nproc=max(threads, 2))
                    for f in d["folds"]:
                        train(key, f, seed)
                    stamp.write_text(want)
                out[key] = str(model_folder(work, key))
                out[key + "_raw"] = str(work / "nnUNet_raw" / d["name"])
                out[key + "_folds"] = d["folds"]
    finally:
        torch.set_num_threads(old_threads)
    return out
