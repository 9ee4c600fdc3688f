"""What fails on the driver before Ray starts: a backend this machine cannot run at the
precision asked for, and a batch whose inputs could not fit in memory (the break-it round
found both failing only inside the actors, after the baseline had run)."""

from __future__ import annotations

import pytest
from helpers import TINY_ARCH, TINY_SIZE

from medray.backends.openvino.config import OpenVINOConfig
from medray.backends.torch.config import TorchConfig
from medray.config import EvalConfig
from medray.data.config import DataConfig
from medray.errors import ConfigError
from medray.models.config import ModelConfig


def cfg(tmp_path, checkpoint, **kw) -> EvalConfig:
    base = dict(backend=TorchConfig(), baseline=None,
                data=DataConfig(root=str(tmp_path / "data"), n_train=4, n_calibration=4, n_test=8, image_size=48),
                model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(checkpoint), input_size=TINY_SIZE),
                output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), warmup_batches=0)
    return EvalConfig(**{**base, **kw})


def test_a_precision_this_cpu_lacks_is_a_config_error_before_ray(tmp_path, tiny_checkpoint, monkeypatch):
    import ray

    from medray.backends.openvino.backend import OpenVINOBackend
    from medray.pipeline.prepare import prepare

    monkeypatch.setattr(OpenVINOBackend, "capability", classmethod(
        lambda cls, precision, device, detail: ("unsupported", "OpenVINO's CPU plugin lists no FP16 on this CPU",
                                                "use precision=fp32 or int8 here")))
    with pytest.raises(ConfigError, match=r"precision=openvino-fp16: this machine cannot run backend=openvino "
                                          r"precision=fp16 on device=cpu \(unsupported\): OpenVINO's CPU plugin lists no "
                                          r"FP16 on this CPU; use precision=fp32 or int8 here"):
        prepare(cfg(tmp_path, tiny_checkpoint, backend=OpenVINOConfig(), precision="fp16", baseline="torch-fp32"))
    assert not ray.is_initialized()


def test_a_batch_that_cannot_fit_is_a_config_error_before_ray(tmp_path, tiny_checkpoint):
    from medray.pipeline.prepare import prepare

    with pytest.raises(ConfigError, match=r"batch_size=1000000000: one backend call's inputs would take \d+\.\d GiB, "
                                          r"more than half of this machine's"):
        prepare(cfg(tmp_path, tiny_checkpoint, batch_size=10**9))
