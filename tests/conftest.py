"""Shared fixtures: tiny models made by the tests, one Ray per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import REPO, TINY_ARCH, TINY_SIZE, UNET_NET, UNET_ROI

# Keep the tests' caches (datasets, artifacts, demo models) out of the user's cache.  Under
# pytest-xdist each worker gets its own: the demo/dataset builders write without a lock.
TESTS_CACHE = REPO / ".pytest_cache" / "medray"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
os.environ.setdefault("MEDRAY_CACHE", str(TESTS_CACHE / "workers" / _WORKER if _WORKER else TESTS_CACHE))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")



@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight 2-class resnet10t at 32 px, saved as a medray checkpoint."""
    import torch

    from medray.models.factory import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(TINY_ARCH, 2, 3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(model, path, {"arch": TINY_ARCH, "num_classes": 2, "in_chans": 3, "input_size": TINY_SIZE})
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_checkpoint):
    """Factory of RunSpecs over the tiny model."""
    from medray.config import backend_config
    from medray.io import file_sha256
    from medray.specs import ModelSpec, RunSpec

    model = ModelSpec(TINY_ARCH, 2, 3, TINY_SIZE, str(tiny_checkpoint), file_sha256(tiny_checkpoint))

    def make(backend="torch", precision="fp32", batch_size=4, streams=1, threads=1, task="multiclass", **kw):
        m = ModelSpec(**{**model.__dict__, "task": task})
        return RunSpec(
            name=f"{backend}-{precision}",
            role="candidate",
            backend=backend_config(backend),
            precision=precision,
            device="cpu",
            batch_size=batch_size,
            streams=streams,
            model=m,
            threads=threads,
            warmup_batches=1,
            **kw,
        )

    return make


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray (2 CPUs) per test module, as the CI machine has."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory) -> Path:
    """A random-weight 3-label MONAI UNet (1 channel in), as a medray checkpoint."""
    import torch

    from medray.models.factory import build_unet, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet.pt"
    save_checkpoint(build_unet(3, 1, **UNET_NET), path, {"arch": "monai_unet", "net": UNET_NET, "roi_size": UNET_ROI,
                                                          "in_chans": 1, "classes": ["background", "organ", "lesion"]})
    return path


NNUNET_INSTALL = 'the nnU-Net tests need the nnunet extra: pip install -e ".[nnunet]"'


@pytest.fixture(scope="session")
def tiny_nnunet() -> dict:
    """Two tiny nnU-Net v2 models trained with nnU-Net's own tools (tests/nnunet_tiny.py),
    cached in the tests' medray cache: {'A': model folder, 'A_raw': raw dataset, ...}."""
    pytest.importorskip("nnunetv2", reason=NNUNET_INSTALL)
    import nnunet_tiny

    # Shared by the workers: the build holds a file lock, and training twice costs a minute.
    return nnunet_tiny.build(TESTS_CACHE / "nnunet-tiny")
