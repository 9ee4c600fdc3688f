"""Any 3-D segmentation network as a model source ships it — ``model=python`` (a callable
returning an ``nn.Module``: SegResNet, SwinUNETR, your own), ``model=torchscript``,
``model=exported``, ``model=onnx`` — run by MONAI's sliding window (the ``monai`` recipe) with
``data.volume``'s preprocessing.

What the network takes and gives is read from the config or the file and checked on the
driver by running it once on a blank window: the ROI (``sliding_window.roi_size``, or an ONNX
file's fixed spatial input), the channels (the dataset's; an ONNX file's fixed channel axis
must agree) and the classes (its output channels = the dataset's labels, background
included; ``model.num_classes`` when set)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.models.config import ModelRequest
    from medray.specs import ModelSpec

log = logging.getLogger("medray.models")


def file_roi(spec: ModelSpec, roi: list[int] | None) -> tuple[int, list[int] | None]:
    """An ONNX file's input ``(N, C, D, H, W)``: its channel count and ROI where fixed; a
    configured ROI must be the fixed one."""
    from medray.models.resolve import onnx_input_shape

    dims = onnx_input_shape(spec.path)
    if len(dims) != 5:
        raise ConfigError(f"model.path={spec.path}: the ONNX model takes input {tuple(dims)}; a 3-D segmentation network "
                          "takes (batch, channels, D, H, W)")
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims[2:]]
    if roi is not None and any(f is not None and f != r for f, r in zip(fixed, roi)):
        raise ConfigError(f"sliding_window.roi_size={roi}: the ONNX file takes windows of {dims[2:]}; use those or null")
    if roi is None and all(f is not None for f in fixed):
        roi = fixed
    c = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else spec.in_chans
    return int(c), roi


def runner(spec: ModelSpec):
    """``x (N, C, *roi) -> output shape``: the network as the driver runs it once."""
    from medray.models.sources import source

    if not source(spec.source).torch_model:
        import onnxruntime as ort

        sess = ort.InferenceSession(spec.path, providers=["CPUExecutionProvider"])
        return lambda x: tuple(sess.run(None, {sess.get_inputs()[0].name: x})[0].shape)
    import torch

    from medray.models.loaders import load_torch_model

    model = load_torch_model(spec)

    def run(x: np.ndarray) -> tuple[int, ...]:
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
        return tuple((out[0] if isinstance(out, (list, tuple)) else out).shape)

    return run


def probe(spec: ModelSpec, where: str) -> tuple[int, ...]:
    """Run the network on blank windows (batches of 1 and 2: the sliding window's last call
    is smaller); the output shape of the batch of 2."""
    shape = (1, *spec.input_shape)
    try:
        run = runner(spec)
        outs = [run(np.zeros((n, *spec.input_shape), dtype=np.float32)) for n in (1, 2)]
    except ConfigError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise ConfigError(f"{where}: the network fails on windows of {shape} ({type(e).__name__}: {first}); set "
                          "sliding_window.roi_size to a window it takes (a multiple of its down-sampling factor); a "
                          "torch.export program needs a dynamic batch dimension") from None
    if any(len(o) != 5 or o[2:] != tuple(spec.spatial) for o in outs) or outs[1][0] != 2:
        raise ConfigError(f"{where}: windows of {shape} give outputs of {outs[0]}; a segmentation network gives "
                          f"(batch, classes, {', '.join(map(str, spec.spatial))})")
    return outs[1]


def resolve_volume_model(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """The network of ``model.source`` as a 3-D segmentation model (see the module docstring)."""
    from medray.data.config import VolumeConfig
    from medray.data.msd import resolve_preprocessing
    from medray.io import file_sha256
    from medray.models.resolve import check_class_count, take_label_names
    from medray.models.sources import source
    from medray.specs import ModelSpec

    m = cfg.model
    where = f"model.path={m.path}" if m.path else f"model.target={m.target}"
    prep = resolve_preprocessing(cfg.volume or VolumeConfig(), list(table.channels) or ["unknown"])
    channels = max(1, len(table.channels))
    spec = ModelSpec(arch=m.source, num_classes=0, in_chans=channels, input_size=0, checkpoint=m.checkpoint,
                     checkpoint_sha256=file_sha256(m.checkpoint) if m.checkpoint else None,
                     trust_checkpoint=m.trust_checkpoint, task="segmentation", source=m.source, path=m.path,
                     path_sha256=file_sha256(m.path) if m.path else None, target=m.target, kwargs=dict(m.kwargs or {}),
                     output=m.output, preprocess=prep.to_dict(), recipe="monai")
    roi = list(cfg.roi_size) if cfg.roi_size else None
    if not source(m.source).torch_model:  # a model file: its input says what it takes
        c, roi = file_roi(spec, roi)
        if table.channels and c != channels:
            raise ConfigError(f"{where}: the ONNX file takes {c} channel(s), dataset {table.name} has {channels} "
                              f"{list(table.channels)}")
        spec.in_chans = c
    if roi is None:
        raise ConfigError(f"sliding_window.roi_size=None: {where} does not say which windows it takes; set "
                          "sliding_window.roi_size=[D, H, W] (the ROI it was trained on, e.g. [96, 96, 96])")
    spec.spatial, spec.input_size = tuple(int(v) for v in roi), int(roi[0])
    k = probe(spec, where)[1]
    take_label_names(table, k, None, where)
    spec.num_classes = check_class_count(m, table)
    log.info("%s: a 3-D segmentation network, windows %s of %d channel(s) → %d labels; MONAI's sliding window, "
             "preprocessing %s", where, list(spec.spatial), spec.in_chans, k, spec.preprocess)
    return spec
