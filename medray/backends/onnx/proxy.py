"""What the INT8 repair runs its candidates with, and the cheap score that orders its probes.

* :func:`session` / :func:`infer_fn`: an ONNX Runtime CPU session over a ModelProto or file,
  optionally with graph optimisations off — then a Q/DQ graph runs as the exact
  simulated quantisation (Q/DQ in float), the same numbers for every backend's graph;
* :func:`proxy_scores`: per layer group, the local quantisation error of its inputs
  (ORT ``qdq_loss_debug``'s SQNR, also per channel) and of its weight.  It only orders
  the search; the task's metric decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from medray.backends.onnx.surgery import COMPUTE, TRANSPARENT

log = logging.getLogger("medray.backends.onnx")

NO_SCORE = 1e9


def session(model, threads: int = 1, optimize: bool = True, optimized_path: str | None = None):
    """An ONNX Runtime CPU session (threads that sleep when idle: a shared driver)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def infer_fn(model, threads: int = 1, optimize: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> logits`` of ``model`` on ONNX Runtime's CPU provider."""
    s = session(model, threads, optimize)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _channel_sqnr(x: np.ndarray, xq: np.ndarray) -> tuple[float, float]:
    """(whole-tensor SQNR, worst-channel SQNR) in dB, ORT's ``qdq_loss_debug`` formula over
    axis 1; all-zero float channels (dead ReLUs) skipped.  A per-tensor scale that crushes
    every channel but one outlier still has a high whole-tensor SQNR: the worst channel tells."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    whole = float(sqnr(x, xq))
    if x.ndim < 2:
        return whole, whole
    xs = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    qs = np.moveaxis(xq, 1, 0).reshape(x.shape[1], -1)
    per = [float(sqnr(a, b)) for a, b in zip(xs, qs) if np.any(a)]
    return whole, min(per) if per else whole


def _activation_pairs(g) -> dict[str, list[str]]:
    """Per compute node, the tensors quantized on its way in (before each Q), through ops
    that do not change them (a Relu between two pairs)."""
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}

    def above(t: str) -> list[str]:
        out = []
        while True:
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                return out
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                return out
            out.append(q.input[0])
            p = producer.get(q.input[0])
            if p is None or p.op_type not in TRANSPARENT:
                return out
            t = p.input[0]

    return {n.name: [t for i in n.input[:2] for t in above(i)] for n in g.node if n.op_type in COMPUTE}


def _fp32_tensors(fp32, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The fp32 graph's values of ``names`` on ``x`` (graph outputs added for them)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(fp32.SerializeToString())
    have = {o.name for o in model.graph.output}
    for t in names:
        if t not in have:
            model.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    s = session(model, 1, optimize=False)
    outs = [o.name for o in s.get_outputs()]
    got: dict[str, list] = {k: [] for k in outs}
    inp = s.get_inputs()[0].name
    for i in range(0, len(x), 4):
        for k, v in zip(outs, s.run(None, {inp: x[i : i + 4]})):
            got[k].append(v)
    return {k: np.concatenate(v) for k, v in got.items() if k in names}


def _weight_sqnr(fp32_path: str, qdq_path: str) -> dict[str, float]:
    from onnxruntime.quantization import qdq_loss_debug as dbg

    logging.disable(logging.ERROR)  # it logs every DQ'd bias it cannot match by name (deduplicated zeros)
    try:
        return {k: float(v) for k, v in dbg.compute_weight_error(dbg.create_weight_matching(fp32_path, qdq_path)).items()}
    finally:
        logging.disable(logging.NOTSET)


def proxy_scores(qdq_path: str, fp32_path: str, x: np.ndarray) -> dict[str, dict]:
    """Per layer group, a score in dB (lower = more suspicious) that orders the probes: the
    worst-channel SQNR of each activation it reads — the *fp32* model's tensor fake-quantized
    with the Q/DQ graph's scale and zero point, so upstream errors do not pollute it — and
    its weight's SQNR (``qdq_loss_debug``).  ``x``: a few validation inputs."""
    import onnx
    from onnx import numpy_helper

    qdq, fp32 = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    g = qdq.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    qparams = {n.input[0]: (arrays[n.input[1]], arrays[n.input[2]]) for n in g.node
               if n.op_type == "QuantizeLinear" and n.input[0] not in arrays and len(n.input) > 2 and n.input[2] in arrays}
    per_group = _activation_pairs(g)
    acts = _fp32_tensors(fp32, sorted({t for ts in per_group.values() for t in ts if t in qparams}), x)
    w_err = _weight_sqnr(str(fp32_path), str(qdq_path))
    producer = {o: n for n in g.node for o in n.output}
    nodes = {n.name: n for n in g.node}
    scores: dict[str, dict] = {}
    for name, tensors in per_group.items():
        s: dict = {}
        for t in tensors:
            if t not in acts:
                continue
            scale, zp = qparams[t]
            info = np.iinfo(zp.dtype)
            q = np.clip(np.round(acts[t] / scale) + zp.astype(np.int32), info.min, info.max)
            whole, worst = _channel_sqnr(acts[t], ((q - zp.astype(np.int32)) * scale).astype(np.float32))
            if worst < s.get("act_sqnr_worst_channel", np.inf):
                s.update(act_tensor=t, act_sqnr=round(whole, 2), act_sqnr_worst_channel=round(worst, 2))
        for t in nodes[name].input[1:3]:
            dq = producer.get(t)
            w = dq.input[0].removesuffix("_quantized") if dq is not None and dq.op_type == "DequantizeLinear" else None
            if w in w_err:
                s["weight_sqnr"] = round(w_err[w], 2)
                break
        # NO_SCORE for a layer with nothing measured (JSON has no infinity).
        s["score"] = float(min(s.get("act_sqnr_worst_channel", NO_SCORE), s.get("weight_sqnr", NO_SCORE)))
        scores[name] = s
    return scores
