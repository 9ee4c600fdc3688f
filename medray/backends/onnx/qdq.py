"""Static Q/DQ INT8 graphs from the fp32 ONNX export, calibrated on the calibration split
with ONNX Runtime's own tools (``onnxruntime.quantization``): ONNX Runtime runs them,
TensorRT builds its strongly typed INT8 engines from them."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

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


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    calib: CalibrationSet,
    method: str = "minmax",
    per_channel: bool = True,
    activation: str = "uint8",
) -> dict:
    """Static QDQ INT8 (int8 weights, ``activation`` uint8 or int8) calibrated on ``calib``.

    The fp32 model is first pre-processed (shape inference + ORT's graph optimisations:
    BatchNorm folded into Conv, ...) as ORT's quantization guide asks, so the Q/DQ
    pairs wrap the operators ORT will really fuse.  Returns the settings used.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in QUANT_METHODS:
        raise ValueError(f"quant_method={method!r}: use one of {', '.join(QUANT_METHODS)}")
    reader = as_reader(calib, input_name(src))
    stride = chunk_stride(len(reader))
    with tempfile.TemporaryDirectory(prefix="medray-ortq-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        # Symbolic shape inference is for transformers; ONNX's own is enough for CNNs.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        log.info(
            "ORT static INT8: %s calibration over %d samples (%d batches of <=%d, %d per pass)",
            method, len(calib), len(reader), CALIB_BATCH, stride,
        )
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=getattr(CalibrationMethod, QUANT_METHODS[method]),
            extra_options={"CalibStridedMinMax": stride},
        )
    return {"format": "QDQ", "activations": activation, "weights": "int8", "per_channel": per_channel, "method": method}
