"""The fp32 ONNX graph every ONNX-based backend starts from (ONNX Runtime, OpenVINO, TensorRT).

For a PyTorch model (timm, python, torchscript, exported) it is the export with a dynamic
batch axis; for ``model=onnx`` it is the user's own file (with its external data), copied
into the artifact cache under its content hash.  Lower precisions (fp16, INT8 Q/DQ, the IR,
engines) are built from this graph.
"""

from __future__ import annotations

from pathlib import Path

from medray.backends.artifacts import ArtifactCache
from medray.specs import RunSpec


def onnx_artifact(spec: RunSpec, cache: ArtifactCache, opset: int = 17) -> dict:
    """The fp32 ONNX graph of the spec's model (cached by content + settings)."""
    import onnx

    m = spec.model
    if m.source == "onnx":
        return _user_onnx(m.path, m.path_sha256, cache, m.output_name)
    import torch

    parts = {
        "checkpoint_sha256": m.checkpoint_sha256,
        "arch": m.arch,
        "num_classes": m.num_classes,
        "input_shape": list(m.input_shape),
        "opset": opset,
        "exporter": "torchscript",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    if m.net:  # MONAI architectures: the constructor arguments are part of the model
        parts["net"] = m.net
    if m.source != "timm":
        parts.update(source=m.source, path_sha256=m.path_sha256, target=m.target, kwargs=m.kwargs,
                     out_features=m.out_features)
    elif m.out_features not in (None, m.num_classes):
        parts["out_features"] = m.out_features

    def build(path):
        from medray.models.export import export_onnx
        from medray.models.loaders import load_torch_model

        export_onnx(load_torch_model(m), path, m.input_shape, opset=opset)

    return cache.get_or_build("onnx", parts, "model.onnx", build).to_dict()


def _user_onnx(path: str, sha256: str | None, cache: ArtifactCache, output_name: str | None = None) -> dict:
    """The user's ONNX file in the cache: one self-contained file (its external data
    tensors loaded and written in), or model.onnx + model.onnx.data past protobuf's 2 GB;
    with ``output_name`` only that output is kept (every backend then runs the one the
    metrics score)."""
    import onnx

    from medray.io import file_sha256

    src = onnx.load(path, load_external_data=False)
    extra = sorted({e.value for t in src.graph.initializer for e in t.external_data if e.key == "location"})
    folder = Path(path).parent
    parts = {"user_onnx_sha256": sha256 or file_sha256(path),
             "external_data": {name: file_sha256(folder / name) for name in extra}, "onnx": onnx.__version__}
    if output_name and len(src.graph.output) > 1:
        parts["output"] = output_name

    def build(out: Path) -> None:
        model = onnx.load(path)  # with its external data
        if "output" in parts:  # the nodes only the dropped outputs used are dead code the runtimes remove
            keep = [o for o in model.graph.output if o.name == output_name]
            del model.graph.output[:]
            model.graph.output.extend(keep)
        big = model.ByteSize() > 1_800_000_000
        onnx.save_model(model, str(out), save_as_external_data=big, location="model.onnx.data" if big else None)
        onnx.checker.check_model(str(out))

    return cache.get_or_build("onnx-user", parts, "model.onnx", build).to_dict()
