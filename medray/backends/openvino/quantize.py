"""OpenVINO artifacts, built on the driver and cached: the fp32 IR converted from the ONNX
export (weights kept in fp32), NNCF's INT8 IR (post-training quantization, optionally with
accuracy control or with layers kept in float), and what a compiled model executes."""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path

import numpy as np

from medray.backends.artifacts import ArtifactCache, int8_parts
from medray.backends.base import BackendError
from medray.specs import RunSpec

log = logging.getLogger("medray.backends.openvino")

# medray precision → OpenVINO inference precision hint.  int8: the layers NNCF leaves in
# float run in f32 (what its accuracy control measured), never a silent bf16.
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# runtimePrecision values → medray names.
_PREC = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8", "i32": "int32", "i64": "int64"}
# Runtime layer types that do the arithmetic.
_COMPUTE = {"Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"}
QUANT_SIDECAR = "quantization.json"


# --------------------------------------------------------------------------- artifacts


def ir_artifact(spec: RunSpec, cache: ArtifactCache, onnx_art: dict) -> dict:
    """fp32 OpenVINO IR (``model.xml`` + ``model.bin``) converted from the cached ONNX."""
    import openvino as ov

    parts = {"from": onnx_art["key"], "convert": "onnx->ir", "compress_to_fp16": False, "openvino": ov.__version__,
             "device": spec.device}

    def build(path: Path) -> None:
        model = ov.Core().read_model(onnx_art["path"])
        ov.save_model(model, str(path), compress_to_fp16=False)

    return cache.get_or_build("ov-ir", parts, "model.xml", build).to_dict()


def int8_artifact(spec: RunSpec, cache: ArtifactCache, ir: dict, context: dict) -> dict:
    """NNCF-quantized IR; with ``quantization.max_drop`` NNCF's accuracy control keeps the
    layers that cost most AUC in fp32 until the calibration-split macro-AUC drop is
    within it."""
    import nncf
    import openvino as ov

    from medray.data.calibration import calibration_source

    calib = calibration_source(context, spec.name)
    quant = context.get("quantization")
    # With quantization.repair the limit is the repair's (medray.backends.onnx.repair), and
    # this is the full INT8 model it is compared with.
    max_drop = None if getattr(quant, "repair", False) else getattr(quant, "max_drop", None)
    cfg = spec.backend
    parts = int8_parts(spec, ir["key"], calib.ids(), "nncf-ptq", preset=cfg.nncf_preset,
                       fast_bias_correction=cfg.fast_bias_correction, max_drop=max_drop,
                       accuracy_metric="auc_macro" if max_drop is not None else None, device=spec.device,
                       openvino=ov.__version__, nncf=nncf.__version__)

    def build(path: Path) -> None:
        info = quantize_nncf(spec, ir["path"], path, calib, context.get("table"), max_drop)
        (path.parent / QUANT_SIDECAR).write_text(json.dumps(info, indent=2, default=str))

    art = cache.get_or_build("ov-int8", parts, "model.xml", build).to_dict()
    sidecar = Path(art["path"]).parent / QUANT_SIDECAR
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return {
        **art,
        "reference": {"path": ir["path"], "bytes": ir["bytes"], "precision": "fp32"},
        "calibration": parts["calibration"],
        "quantization": info,
    }


def quantize_nncf(spec: RunSpec, ir_path: str, out_path: Path, source, table, max_drop: float | None,
                  ignored: list[str] | None = None) -> dict:
    """Run NNCF on the fp32 IR and save the int8 IR; returns what was done (for the report).
    ``ignored``: OpenVINO op names NNCF leaves in float (``IgnoredScope``, validated: a name
    that matches no op is an error), the INT8 repair's kept layers."""
    import nncf
    import openvino as ov

    from medray.metrics.scores import model_probabilities, true_outcome_probability

    cfg = spec.backend
    m = spec.model
    calib = source.load()
    # One sample per item: NNCF's statistics (and fast bias correction) assume batch 1.
    items = [calib.inputs[i : i + 1] for i in range(len(calib))]
    preset = getattr(nncf.QuantizationPreset, cfg.nncf_preset.upper())
    model = ov.Core().read_model(ir_path)
    info: dict = {"tool": "nncf", "nncf": nncf.__version__, "preset": cfg.nncf_preset, "samples": len(items)}
    if max_drop is None:
        log.info("NNCF post-training quantization on %d calibration samples%s", len(items),
                 f", {len(ignored)} layer(s) kept in float" if ignored else "")
        qmodel = nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=sorted(ignored)) if ignored else None,
        )
        if ignored:
            info["ignored_scope"] = sorted(ignored)
    else:
        from medray.metrics.classification import classification_metrics

        if table is None:
            raise BackendError(f"{spec.name}: quantization.max_drop needs the dataset's labels (context['table'])")
        calib_df = source.samples
        by_id = calib_df.set_index(calib_df["sample_id"].astype(str))
        labels = table.targets(by_id.loc[calib.sample_ids].reset_index(drop=True))
        metrics: list[float] = []

        def validate(compiled, data) -> tuple[float, list[float]]:
            data = list(data)
            logits = np.concatenate([compiled(x)[0] for x, _ in data])
            y = np.asarray([t for _, t in data])
            probs = model_probabilities(logits, m)  # matched to the classes by name, as the actors do
            # NNCF's "metric mode": the metric of the items, and a value per item it ranks
            # the layer groups' damage by.  A macro-AUC of one item (what NNCF computes when
            # given no per-item values) is undefined (NaN): the probability of the true
            # outcome is the per-item value instead.
            per_item = true_outcome_probability(y, probs, table.task).tolist()
            if len(data) == 1:
                return per_item[0], per_item
            auc = classification_metrics(y, probs, table.task, table.classes)["auc_macro"]
            if auc is None and len(data) < len(pairs):  # a ranking subset with one outcome: its mean, same direction
                return float(np.mean(per_item)), per_item
            if auc is None:
                raise BackendError(
                    f"{spec.name}: quantization.max_drop: the calibration samples have a single outcome per "
                    "class, macro-AUC is undefined; use more calibration.num_samples"
                )
            metrics.append(float(auc))
            return float(auc), per_item

        pairs = list(zip(items, labels))
        dataset = nncf.Dataset(pairs, lambda item: item[0])
        log.info("NNCF accuracy-controlled quantization: max macro-AUC drop %.4f on %d samples", max_drop, len(pairs))
        qmodel = nncf.quantize_with_accuracy_control(
            model,
            dataset,
            dataset,
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(items),
            fast_bias_correction=cfg.fast_bias_correction,
        )
        core = ov.Core()
        final = validate(core.compile_model(qmodel, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), pairs)[0]
        info.update(
            {
                "max_drop": max_drop,
                "metric": "auc_macro",
                "validation": "calibration split",
                "fp32_metric": metrics[0],
                "int8_metric": final,
                "drop": metrics[0] - final,
                "validations_run": len(metrics),
            }
        )
    ov.save_model(qmodel, str(out_path), compress_to_fp16=False)
    compiled = ov.Core().compile_model(qmodel, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    summary = runtime_precision(compiled)
    info["kept_in_float"] = summary["float_compute_layers"]
    info["compute_ops"] = summary["compute_ops"]
    log.info(
        "NNCF: %d compute layers int8, %d kept in float%s",
        summary["compute_ops"].get("int8", 0),
        len(info["kept_in_float"]),
        f" ({', '.join(info['kept_in_float'][:5])}{'...' if len(info['kept_in_float']) > 5 else ''})"
        if info["kept_in_float"]
        else "",
    )
    return info


# --------------------------------------------------------------------------- runtime


def runtime_precision(compiled) -> dict:
    """What a compiled model executes, from its runtime model's per-layer rt_info."""
    per_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    compute: collections.Counter = collections.Counter()
    float_layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str)
        prec = _PREC.get(rt["runtimePrecision"].astype(str), rt["runtimePrecision"].astype(str))
        if kind == "Const":
            continue
        per_type[kind][prec] += 1
        if kind in _COMPUTE:
            compute[prec] += 1
            if prec in ("fp32", "bf16", "fp16"):
                float_layers.append(op.get_friendly_name())
    return {
        "executed": compute.most_common(1)[0][0] if compute else "unknown",
        "compute_ops": dict(compute),
        "per_op_type": {k: dict(v) for k, v in sorted(per_type.items())},
        "float_compute_layers": float_layers,
    }


