"""The INT8 repair on the constructed case (tests/repair_case.py): full per-tensor INT8 fails
an AUC drop limit of 0.01 on the validation samples; the repair finds the layer, names it
(ONNX node and torch module), keeps < 20 % of the layers in float, passes on validation —
and the kept layers really run in float: ONNX Runtime's optimised graph and OpenVINO's
runtime precision say so, TensorRT's Q/DQ graph has none on them.

Tolerances: the labels are the fp32 model's own decisions (AUC 1.0), so the limit is the
INT8 loss itself; a repaired model must be within 0.01 of fp32 on validation and test.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import repair_case as rc
from helpers import REPO

from medray.backends import get_backend
from medray.backends.config import QuantizationConfig
from medray.backends.onnx.repair import RepairError, RepairValidation
from medray.backends.onnx.search import Gate
from medray.config import ConfigError, EvalConfig, backend_config
from medray.data.calibration import CalibrationSet, CalibrationSource
from medray.specs import ModelSpec, RunSpec

KEPT = "/stem/stem.3/Conv"
MAX_DROP = 0.01


def case_spec(backend: str, outliers=("stem",)) -> RunSpec:
    model = ModelSpec("case", 2, 3, rc.SIZE, None, source="python", target=f"{REPO}/tests/repair_case.py:build",
                      kwargs={"outliers": list(outliers)})
    return RunSpec(f"{backend}-int8", "candidate", backend_config(backend), "int8", "cuda" if backend == "trt" else "cpu",
                   16, 1, model)


def context(outliers=("stem",), **quant) -> dict:
    x = rc.images(64, 2)
    ids = [f"c{i:03d}" for i in range(len(x))]
    calib = CalibrationSource(pd.DataFrame({"sample_id": ids, "split": "calibration"}), lambda df: CalibrationSet(x, ids))
    val = rc.validation(outliers)
    samples = pd.DataFrame({"sample_id": [f"v{i:03d}" for i in range(len(val.y))], "split": "val"})
    q = QuantizationConfig(**{"max_drop": MAX_DROP, "repair": True, "repair_threads": 1, "repair_bench": False, **quant})
    return {"calibration": calib, "quantization": q,
            "repair": RepairValidation(samples, lambda df: val, [Gate("auc_macro", max_drop=MAX_DROP)])}


@pytest.fixture(scope="module")
def test_split():
    """Teacher-labelled images the search never saw (the evaluated split's stand-in)."""
    return rc.validation(n=400, seed=11)


def _dq_fed(model, node_name: str) -> list[str]:
    producer = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [i for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]


def test_onnxruntime_repair_keeps_the_outlier_layer_in_float(cache, test_split, caplog):
    import onnx

    from medray.backends.onnx.proxy import infer_fn, session

    art = get_backend("onnxruntime").prepare(case_spec("onnxruntime"), cache, context())
    rep = art["repair"]
    assert rep["reference"]["auc_macro"] == pytest.approx(1.0)
    assert rep["full_int8"]["metrics"]["auc_macro"] < 1.0 - 0.2  # full INT8 fails the gate by far
    assert rep["kept"] == [{"onnx": KEPT, "op": "Conv", "module": "stem.3"}]  # named, with its torch module
    assert rep["kept_fraction"] < 0.2 and rep["layers"] == 14 and rep["executes"] == art["executes"] == "int8"
    step = rep["fallback"][0]
    assert step["precision"] == "int8-mixed" and step["passes"] and step["metrics"]["auc_macro"] >= 1.0 - MAX_DROP
    assert [s["step"] for s in rep["search"]["steps"]] == ["full_int8", "probe:leave_one_out"]  # the proxy's first guess
    # Graph inspection of the file: the kept conv reads no DQ output, its weight is float.
    model = onnx.load(art["path"])
    assert _dq_fed(model, KEPT) == []
    node = next(n for n in model.graph.node if n.name == KEPT)
    w = next(t for t in model.graph.initializer if t.name == node.input[1])
    assert onnx.TensorProto.DataType.Name(w.data_type) == "FLOAT"
    # ... and the graph ORT really runs: no int8 kernel for it, int8 kernels for most others.
    opt = cache.root / "ort-opt-check.onnx"
    session(art["path"], 1, True, str(opt))
    kernels = {re.sub(r"_token_\d+$", "", n.name) for n in onnx.load(str(opt)).graph.node if n.op_type == "QLinearConv"}
    assert KEPT not in kernels and len(kernels) >= 10
    assert rep["check"]["ok"] and rep["check"]["collateral_float"] == ["/stem/stem.0/Conv"]  # its producer, see README
    # Judged on images the search never saw, the repaired model holds the limit too.
    got = test_split.score(infer_fn(art["path"]))["auc_macro"]
    assert got >= 1.0 - MAX_DROP
    # A second identical run builds nothing.
    with caplog.at_level("INFO", logger="medray.artifacts"):
        again = get_backend("onnxruntime").prepare(case_spec("onnxruntime"), cache, context())
    assert again["path"] == art["path"] and "building" not in caplog.text
    assert again["repair"]["kept"] == rep["kept"]


def test_nodes_to_exclude_alone_repairs_nothing(cache):
    """Why the Q/DQ feeding the kept layer goes too: ORT's own exclusion leaves the tensor it
    reads quantized (its producer quantizes it), so the AUC stays that of full INT8."""
    from medray.backends.onnx.proxy import infer_fn
    from medray.backends.onnx.qdq import QdqSettings, quantize_qdq

    art = get_backend("onnxruntime").prepare(case_spec("onnxruntime"), cache, context())
    found = json.loads(Path(art["repair"]["search_artifact"]).read_text())
    out = cache.root / "exclude-only.onnx"
    quantize_qdq(found["pre"], out, context()["calibration"].load(), QdqSettings(), exclude=[KEPT])
    val = rc.validation()
    assert val.score(infer_fn(str(out)))["auc_macro"] < 0.8
    assert art["repair"]["fallback"][0]["metrics"]["auc_macro"] >= 1.0 - MAX_DROP


def test_two_outlier_layers_need_the_search(cache):
    art = get_backend("onnxruntime").prepare(case_spec("onnxruntime", ("stem", "stem2")), cache,
                                             context(("stem", "stem2")))
    rep = art["repair"]
    assert {k["onnx"] for k in rep["kept"]} == {KEPT, "/stem/stem.6/Conv"}
    assert {k["module"] for k in rep["kept"]} == {"stem.3", "stem.6"}
    assert rep["kept_fraction"] < 0.2 and rep["fallback"][0]["passes"]
    assert "prefix" in {s["step"] for s in rep["search"]["steps"]}  # no single layer was enough


def test_no_int8_set_falls_back_step_by_step(cache):
    from medray.report.document import warnings_of

    ctx = context(repair_max_kept=0.0)
    spec = case_spec("onnxruntime")
    art = get_backend("onnxruntime").prepare(spec, cache, ctx)
    steps = art["repair"]["fallback"]
    assert [s["precision"] for s in steps] == ["int8-mixed", "fp16", "bf16", "fp32"]
    assert steps[0]["metrics"] is None and not steps[0]["passes"]
    assert "no fp16 convolutions" in steps[1]["skipped"] and "has no bf16" in steps[2]["skipped"]
    assert steps[3]["passes"] and art["executes"] == "fp32"
    with get_backend("onnxruntime")(replace(spec, artifact=art, warmup_batches=0)) as b:
        executed = b.effective_precision["executed"]
    assert executed == "fp32"
    runs = [{"name": spec.name, "precision": "int8", "backend": "onnxruntime", "effective_precision": {"executed": executed},
             "latency_ms": {"per_sample_mean": 1.0}}]
    assert "onnxruntime-int8: asked for int8 but the backend executes fp32" in warnings_of(runs)
    with pytest.raises(RepairError, match=r"no precision passes the gate .*int8-mixed: no candidate.*fp32: "
                                          r"quantization.repair_fallback=false"):
        get_backend("onnxruntime").prepare(spec, cache, context(repair_max_kept=0.0, repair_fallback=False))


@pytest.mark.openvino
def test_openvino_repair_ignores_the_layer_by_its_openvino_name(cache, test_split):
    ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from medray.backends.openvino.repair import compile_model

    art = get_backend("openvino").prepare(case_spec("openvino"), cache, context())
    rep = art["repair"]
    assert rep["full_int8"]["metrics"]["auc_macro"] < 1.0 - 0.2
    assert [k["onnx"] for k in rep["kept"]] == [KEPT] and rep["kept_fraction"] < 0.2
    assert rep["fallback"][0]["passes"] and rep["fallback"][0]["metrics"]["auc_macro"] >= 1.0 - MAX_DROP
    assert art["quantization"]["ignored_scope"] == [f"{KEPT}/WithoutBiases"]  # not the bias Add's name
    # OpenVINO's runtime precision per compute layer: the kept conv f32, the others int8.
    compiled = compile_model(art["path"], "int8", 1)
    prec = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            prec[rt["originalLayersNames"].astype(str).split(",")[0]] = rt["runtimePrecision"].astype(str)
    assert prec[f"{KEPT}/WithoutBiases"] == "f32"
    assert sum(p in ("u8", "i8") for p in prec.values()) == len(prec) - 1
    req = compiled.create_infer_request()
    got = test_split.score(lambda x: req.infer({0: x})[0].copy())["auc_macro"]
    assert got >= 1.0 - MAX_DROP
    assert ov.__version__  # the extra is what ran


@pytest.mark.openvino
@pytest.mark.slow
def test_nncf_accuracy_control_is_compared_on_the_same_samples(cache):
    pytest.importorskip("nncf", reason="the openvino extra is not installed")
    art = get_backend("openvino").prepare(case_spec("openvino"), cache, context(compare_accuracy_control=True))
    ac = art["repair"]["accuracy_control"]
    assert ac["max_drop"] == MAX_DROP and ac["metric"] == "auc_macro"
    # With per-sample values NNCF ranks the groups by the metric, not by per-sample AUCs (NaN).
    assert ac["metrics"]["auc_macro"] >= 1.0 - MAX_DROP and len(ac["kept_in_float"]) < 14


def test_tensorrt_graph_has_no_qdq_on_the_kept_layer(cache):
    """The same procedure gives TensorRT's layer set; its strongly typed network reads the
    precision from this graph (checked here without TensorRT)."""
    import onnx
    from onnx import numpy_helper

    from medray.backends.tensorrt.build import prepare_graph

    art = prepare_graph(case_spec("trt"), cache, context())
    rep = art["repair"]
    assert [k["onnx"] for k in rep["kept"]] == [KEPT] and art["graph_precision"] == "int8"
    assert "simulation" in rep["validation"]["simulated"]
    model = onnx.load(art["path"])
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert _dq_fed(model, KEPT) == []
    assert all(len(_dq_fed(model, n.name)) == 2 for n in convs if n.name != KEPT)  # activation and weight
    inits = {t.name: t for t in model.graph.initializer}
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zps and all(not z.any() for z in zps)  # symmetric: TensorRT's only Q/DQ form
    assert rep["check"]["ok"] and rep["fallback"][0]["passes"]


def test_tensorrt_engine_runs_the_kept_layer_in_float(cache):
    try:
        import tensorrt  # noqa: F401
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU on this machine: the TensorRT engine of the repaired graph is built on GPU workers")
    except ImportError:
        pytest.skip("tensorrt is not installed (pip install 'medray[trt]'): the repaired graph is checked above")
    spec = case_spec("trt")
    spec = replace(spec, artifact=get_backend("trt").prepare(spec, cache, context()), warmup_batches=0)
    with get_backend("trt")(spec) as b:
        info = b._engine.create_engine_inspector().get_engine_information(__import__("tensorrt").LayerInformationFormat.JSON)
    layers = [la for la in json.loads(info)["Layers"] if KEPT in str(la.get("Name", ""))]
    assert layers and all("Int8" not in json.dumps(la.get("Inputs", [])) for la in layers)


@pytest.mark.parametrize("kw, match", [
    ({"precision": "fp32", "quantization": QuantizationConfig(max_drop=0.01, repair=True)},
     r"quantization.repair=True: the repair keeps layers of an INT8 model .* add precision=int8"),
    ({"quantization": QuantizationConfig(repair=True)}, r"quantization.repair=True: the repair needs a limit"),
    ({"quantization": QuantizationConfig(repair=True, limits={"dice_mean": 0.01})},
     r"quantization.limits.dice_mean=0.01: task=classification is judged on auc_macro, balanced_accuracy"),
    ({"quantization": QuantizationConfig(min_ratio=0.999)}, r"quantization.min_ratio=0.999: a limit of the INT8 repair"),
    ({"quantization": QuantizationConfig(max_drop=0.01, repair=True, compare_accuracy_control=True)},
     r"quantization.compare_accuracy_control=True: backend=onnxruntime has no accuracy control .* backend=openvino"),
    ({"backend": "onnxruntime", "quantization": QuantizationConfig(max_drop=0.01)},
     r"accuracy-controlled quantization exists for backend=openvino precision=int8 \(or add quantization.repair=true "
     r"on backend=onnxruntime\|openvino\|trt\)"),
])
def test_repair_config_errors_name_the_key_before_ray(kw, match):
    kw = {"backend": "onnxruntime", "precision": "int8", **kw}
    kw["backend"] = backend_config(kw["backend"])
    with pytest.raises(ConfigError, match=match):
        EvalConfig(**kw)


def test_repair_config_accepted_and_ranges_checked():
    EvalConfig(backend=backend_config("openvino"), precision="int8",
               quantization=QuantizationConfig(max_drop=0.01, repair=True, max_subgroup_drop=0.02))
    for bad, key in (({"repair_max_kept": 1.5}, "repair_max_kept"), ({"repair_probe": "random"}, "repair_probe"),
                     ({"repair_budget_s": 0}, "repair_budget_s"), ({"limits": {"auc_macro": 2}}, "limits.auc_macro")):
        with pytest.raises(ConfigError, match=f"quantization.{key}"):
            QuantizationConfig(**bad)


@pytest.mark.slow
def test_evaluate_job_reports_the_repair_and_checks_it_on_the_test_split(ray_local, tmp_path):
    """The job end to end: repair chosen on the train split's validation samples, the run on
    test; report.md and metrics.json name the kept layer, every step, and the test check."""
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.config import RayConfig
    from medray.data.config import CalibrationConfig, DataConfig
    from medray.models.config import ModelConfig
    from medray.pipeline.evaluate import run

    sizes = rc.imagefolder(tmp_path / "data")
    cfg = EvalConfig(backend=OnnxRuntimeConfig(), precision="int8",
                     data=DataConfig(name="imagefolder", root=str(tmp_path / "data"), split="test"),
                     model=ModelConfig(name="python", source="python", target=f"{REPO}/tests/repair_case.py:build",
                                       input_size=rc.SIZE),
                     calibration=CalibrationConfig(num_samples=64),
                     quantization=QuantizationConfig(max_drop=MAX_DROP, repair=True, repair_threads=1),
                     ray=RayConfig(num_cpus=2), batch_size=16, output_dir=str(tmp_path / "out"),
                     cache_dir=str(tmp_path / "cache"), warmup_batches=1, baseline="torch-fp32")
    doc = run(cfg)
    cand = next(r for r in doc["runs"] if r["role"] == "candidate")
    rep = cand["artifact"]["repair"]
    assert [k["onnx"] for k in rep["kept"]] == [KEPT]
    v = rep["validation"]
    assert v["splits"] == ["train"] and v["n"] == sizes["train"] - 64 and v["overlap_with_calibration"] == 0
    assert cand["effective_precision"]["executed"] == "int8" and cand["effective_precision"]["compute_ops"]["fp32"] == 2
    check = cand["repair_check"]
    assert check["holds"] and check["gates"][0]["test_drop"] <= MAX_DROP
    assert cand["metrics"]["auc_macro"] >= 1.0 - MAX_DROP
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## INT8 repair" in report and f"`{KEPT}` (torch module `stem.3`)" in report
    assert "| probe:leave_one_out | /stem/stem.3/Conv |" in report and "→ holds" in report
