"""Static Q/DQ INT8 graphs from the fp32 ONNX export, calibrated on the calibration split
with ONNX Runtime's own tools (``onnxruntime.quantization``): ONNX Runtime runs them,
TensorRT builds its strongly typed INT8 engines from them."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medray.backends.artifacts import ArtifactCache
from medray.data.calibration import CalibrationSet
from medray.models.export import INPUT_NAME

log = logging.getLogger("medray.backends.onnx")

QUANT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Samples per calibration inference, and batches per collect_data() call: ORT's
# calibrators keep every intermediate output of a call in memory (all activations of
# the model for every sample), so collecting in chunks bounds memory for 300 samples.
CALIB_BATCH = 8
CALIB_CHUNK_BATCHES = 4


class CalibrationReader:
    """ORT ``CalibrationDataReader`` over a :class:`CalibrationSet`, in fixed batches.

    ``__len__`` / ``set_range`` let ``quantize_static`` collect in chunks
    (``CalibStridedMinMax``, which despite its name works for every method).
    """

    def __init__(self, calib: CalibrationSet, batch_size: int = CALIB_BATCH, input_name: str = INPUT_NAME):
        self._batches = list(calib.batches(batch_size))
        self._name = input_name
        self._start, self._end = 0, len(self._batches)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self._batches))
        self._pos = self._start

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        batch = self._batches[self._pos]
        self._pos += 1
        return {self._name: batch}

    def rewind(self) -> None:
        self._pos = self._start


def as_reader(calib: CalibrationSet, input_name: str = INPUT_NAME):
    """A CalibrationReader that is also an ORT CalibrationDataReader (subclassing it
    here keeps the onnxruntime import lazy for the module)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationReader, CalibrationDataReader):
        pass

    return _Reader(calib, input_name=input_name)


def input_name(path) -> str:
    """The graph's image input (medray's exports call it "input"; a user's file its own)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def chunk_stride(n_batches: int, cap: int = CALIB_CHUNK_BATCHES) -> int:
    """The largest divisor of ``n_batches`` not above ``cap`` (ORT requires a divisor)."""
    return max(d for d in range(1, min(cap, n_batches) + 1) if n_batches % d == 0)


@dataclass(frozen=True)
class QdqSettings:
    """How a Q/DQ graph is quantized: activation type, range calibration, weight scales.

    ``symmetric``: TensorRT's form — zero points 0 for activations and weights, biases
    left float (TensorRT takes no int32 DequantizeLinear and fuses the bias itself).
    """

    activation: str = "uint8"
    method: str = "minmax"
    per_channel: bool = True
    symmetric: bool = False

    def to_dict(self) -> dict:
        return {"format": "QDQ", "activations": self.activation, "weights": "int8", "per_channel": self.per_channel,
                "method": self.method, **({"symmetric": True, "bias": "float"} if self.symmetric else {})}


def preprocess(src: str | Path, dst: str | Path) -> None:
    """ORT's quantization pre-processing (shape inference, BatchNorm folded into Conv...)
    as its quantization guide asks, so the Q/DQ pairs wrap the operators ORT will really
    fuse.  Node names are kept: they are what the INT8 repair names."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference is for transformers; ONNX's own is enough for CNNs.
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def preprocessed_artifact(cache: ArtifactCache, fp32: dict) -> dict:
    """The pre-processed fp32 graph (cached): what Q/DQ graphs are quantized from, and the
    float graph the repair's surgery takes kept layers' weights from."""
    import onnxruntime as ort

    parts = {"from": fp32["key"], "pre_process": "quant_pre_process", "skip_symbolic_shape": True,
             "onnxruntime": ort.__version__}
    return cache.get_or_build("onnx-pre", parts, "model.onnx", lambda path: preprocess(fp32["path"], path)).to_dict()


def quantize_qdq(pre: str | Path, dst: str | Path, calib: CalibrationSet | None, settings: QdqSettings,
                 exclude: list[str] | tuple[str, ...] = (), cache_path: str | Path | None = None) -> dict:
    """Static Q/DQ INT8 of a pre-processed graph with ONNX Runtime's ``quantize_static``.

    ``exclude`` → ``nodes_to_exclude``.  ``cache_path`` receives the calibration ranges, or
    gives them when it exists (ORT trusts it by tensor name: key it by graph and data).
    Returns the settings used.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if settings.method not in QUANT_METHODS:
        raise ValueError(f"quant_method={settings.method!r}: use one of {', '.join(QUANT_METHODS)}")
    extra: dict = {}
    reader = None
    if calib is not None:  # None: the ranges come from cache_path
        reader = as_reader(calib, input_name(pre))
        extra["CalibStridedMinMax"] = chunk_stride(len(reader))
    elif not (cache_path and Path(cache_path).is_file()):
        raise ValueError("quantize_qdq: no calibration samples and no calibration cache to take the ranges from")
    if settings.symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
    log.info("static INT8 (%s activations%s, %s ranges%s)%s", settings.activation, ", symmetric" if settings.symmetric else "",
             settings.method, f" over {len(calib)} samples in batches of <={CALIB_BATCH}" if calib is not None else
             " from the calibration cache", f", {len(exclude)} layer(s) excluded" if exclude else "")
    quantize_static(
        str(pre),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8 if settings.activation == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=settings.per_channel,
        nodes_to_exclude=list(exclude),
        calibrate_method=getattr(CalibrationMethod, QUANT_METHODS[settings.method]),
        extra_options=extra,
        calibration_cache_path=str(cache_path) if cache_path else None,
    )
    return settings.to_dict()


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calib: CalibrationSet,
    method: str = "minmax",
    per_channel: bool = True,
    activation: str = "uint8",
) -> dict:
    """Static QDQ INT8 (int8 weights, ``activation`` uint8 or int8) of the fp32 graph
    ``src`` (pre-processed first), calibrated on ``calib``.  Returns the settings used."""
    with tempfile.TemporaryDirectory(prefix="medray-ortq-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        preprocess(src, pre)
        return quantize_qdq(pre, dst, calib, QdqSettings(activation, method, per_channel))
