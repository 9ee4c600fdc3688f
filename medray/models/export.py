"""Export a torch model to ONNX with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("medray.models")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model, path: str | Path, input_shape: tuple[int, ...], opset: int = 17) -> Path:
    """Write ``model`` as ONNX with inputs ``(batch, *input_shape)``, batch dynamic.

    Uses the TorchScript exporter (``dynamo=False``): it produces one self-contained
    file with constant folding, which every runtime here (ORT, OpenVINO, TensorRT) reads.
    """
    import onnx
    import torch

    path = Path(path)
    program = getattr(model, "_medray_program", None)
    if program is not None:  # a torch.export program: its own graph, dynamic batch and all
        return _export_program(program, path, input_shape, opset)
    model = model.eval()
    dummy = torch.zeros((2, *input_shape), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def _export_program(program, path: Path, input_shape: tuple[int, ...], opset: int) -> Path:
    """A ``torch.export`` program through the dynamo exporter (opset >= 18, which it needs)."""
    import onnx
    import torch

    dummy = torch.zeros((2, *input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(program, (dummy,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=max(opset, 18), verbose=False)
    onnx.checker.check_model(str(path))
    return path
