"""Graph surgery on Q/DQ ONNX graphs: the quantizable layer groups, and keeping some of
them in float (the INT8 repair, :mod:`.repair`).

A *layer group* is one compute node (Conv, ConvTranspose, Gemm, MatMul) with the Q/DQ
pairs on its inputs.  Keeping it in float (:func:`strip_qdq`) means every input it reads
through a DequantizeLinear is replaced by the float tensor: an activation by the tensor
before its QuantizeLinear, a weight or bias by the fp32 graph's initializer.  The Q/DQ on
its output stays (the next INT8 layer reads it).  The same surgery makes the repair
search's candidate graphs, ONNX Runtime's repaired model and TensorRT's Q/DQ graph.

Names are ONNX node names (``/layer1/layer1.0/conv1/Conv``): what ``nodes_to_exclude``
takes, what OpenVINO's ops are called after it reads the file, what TensorRT's layers are
named after.  For a PyTorch export (TorchScript exporter) the scope gives the module
(:func:`torch_module_path`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ = ("QuantizeLinear", "DequantizeLinear")
# Ops between two Q/DQ pairs that do not change which tensor is quantized (ORT keeps a pair
# on each side of them with symmetric activations or QDQKeepRemovableActivations).
TRANSPARENT = ("Relu", "Clip", "LeakyRelu", "MaxPool", "Flatten", "Reshape", "Identity", "Transpose", "Squeeze",
               "Unsqueeze")


@dataclass(frozen=True)
class Group:
    """A quantizable layer: its ONNX node name, op type and, for a PyTorch export, the module."""

    name: str
    op_type: str
    module: str | None = None

    def to_dict(self) -> dict:
        return {"onnx": self.name, "op": self.op_type, "module": self.module}


def torch_module_path(node_name: str) -> str | None:
    """``/layer2/layer2.0/down/down.0/Conv`` → ``layer2.0.down.0``: the TorchScript exporter
    writes one ``/`` level per module, an indexed child (``nn.Sequential``) as its parent's
    own name + ``.<index>``."""
    parts = [p for p in node_name.split("/") if p][:-1]
    path, prev = "", ""
    for p in parts:
        if prev and p.startswith(prev + "."):
            path += p[len(prev):]
        else:
            path = f"{path}.{p}" if path else p
        prev = p
    return path or None


def layer_groups(model, modules: Iterable[str] | None = None) -> list[Group]:
    """The quantizable nodes of ``model`` (a ModelProto or path) in graph order.

    ``modules`` (the names of ``nn.Module.named_modules()``) turns a module path that the
    model does not have into None instead of a guess.  An unnamed compute node is an
    error: the kept set is a list of names.
    """
    model = _load(model)
    known = set(modules) if modules is not None else None
    out = []
    for n in model.graph.node:
        if n.op_type in COMPUTE:
            if not n.name:
                raise ValueError(f"an unnamed {n.op_type} node: the INT8 repair names the layers it keeps; "
                                 "re-export the model with node names (torch.onnx.export names them)")
            mod = torch_module_path(n.name)
            out.append(Group(n.name, n.op_type, mod if known is None or mod in known else None))
    return out


def _load(model, copy: bool = False):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return onnx.ModelProto.FromString(model.SerializeToString()) if copy else model
    return onnx.load(str(model))


class _Stripper:
    """State of one :func:`strip_qdq` pass (the graph's producers, names and initializers)."""

    def __init__(self, qdq, fp32):
        self.g = qdq.graph
        self.fnodes = {n.name: n for n in fp32.graph.node}
        self.fprod = {o: n for n in fp32.graph.node for o in n.output}
        self.finits = {t.name: t for t in fp32.graph.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.inits = {t.name for t in self.g.initializer}
        self.names = self.inits | set(self.producer) | {i.name for i in self.g.input}
        self.changes: list[dict] = []

    def add_init(self, name: str) -> str:
        """The fp32 graph's initializer ``name`` in this graph (renamed when the name is now
        another tensor, e.g. a DQ output)."""
        import onnx

        src = name if name not in self.names or name in self.inits else f"{name}_fp32"
        if src not in self.inits:
            t = onnx.TensorProto()
            t.CopyFrom(self.finits[name])
            t.name = src
            self.g.initializer.append(t)
            self.inits.add(src)
            self.names.add(src)
        return src

    def pair_above(self, t: str):
        """The activation QuantizeLinear whose DQ produces ``t`` (None for weights)."""
        dq = self.producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producer.get(dq.input[0])
        return q if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in self.finits else None

    def float_source(self, node, i: int, q) -> str:
        """The float tensor a kept node's input ``i`` must read instead of the DQ output.

        ORT folds a Relu/Clip into the Q before it with asymmetric activations: the Q then
        reads the *pre*-activation tensor, so the activation is replayed in float here."""
        want = self.fnodes[node.name].input[i]
        src = q.input[0]
        p, fp = self.producer.get(src), self.fprod.get(want)
        if p is None or fp is None or p.name == fp.name:
            if src != want:
                raise ValueError(f"{node.name} input {i}: the Q/DQ bypass gives {src!r}, the fp32 graph feeds {want!r}")
            return src
        pre = self.fprod.get(fp.input[0])
        if fp.op_type not in ("Relu", "Clip") or pre is None or pre.name != p.name:
            raise ValueError(f"{node.name} input {i}: the Q/DQ bypass gives {src!r} from {p.name!r}, the fp32 graph "
                             f"feeds {want!r} from {fp.name!r}")
        replayed = f"{want}_float"
        if replayed not in self.producer:
            self._replay(fp, src, replayed, node)
        return replayed

    def _replay(self, fp, src: str, out: str, before) -> None:
        import onnx

        act = onnx.NodeProto()
        act.CopyFrom(fp)
        act.name, act.input[0], act.output[0] = f"{fp.name}_float", src, out
        for j in range(1, len(act.input)):  # Clip's min / max
            if act.input[j]:
                act.input[j] = self.add_init(act.input[j])
        self.g.node.insert(list(self.g.node).index(before), act)
        self.producer[out] = act
        self.changes.append({"node": before.name, "replayed": fp.name, "on": src})

    def keep_float(self, node) -> None:
        for i, t in enumerate(node.input):
            dq = self.producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = self.pair_above(t)
            if q is None:  # weight / bias: the fp32 initializer
                node.input[i] = self.add_init(self.fnodes[node.name].input[i])
                self.changes.append({"node": node.name, "input": i, "was": t, "now": node.input[i]})
                continue
            src = self.float_source(node, i, q)
            node.input[i] = src
            self.changes.append({"node": node.name, "input": i, "was": t, "now": src})
            self._bypass_upstream(src)

    def _bypass_upstream(self, src: str) -> None:
        """A pair on each side of a Relu/MaxPool/... (symmetric activations): the upstream
        pair crushes the same values, so it goes too when it feeds nothing else."""
        cur = self.producer.get(src)
        while cur is not None and cur.op_type in TRANSPARENT:
            up = self.pair_above(cur.input[0])
            if up is None or sum(cur.input[0] in m.input for m in self.g.node) != 1:
                return
            self.changes.append({"node": cur.name, "input": 0, "was": cur.input[0], "now": up.input[0]})
            cur.input[0] = up.input[0]
            cur = self.producer.get(up.input[0])


def strip_qdq(qdq, fp32, kept: Iterable[str]):
    """``(model, changes)``: the Q/DQ graph ``qdq`` with the ``kept`` nodes computing in float.

    ``qdq`` / ``fp32`` are ModelProtos or paths with the same node names (``qdq`` quantized
    from ``fp32``, ORT's pre-processed graph).  A Q/DQ pair shared with other consumers
    stays for them; dead Q/DQ and initializers are removed.  ``changes`` lists every
    rewired input (the report's proof of what was done).
    """
    qdq = _load(qdq, copy=True)
    fp32 = _load(fp32)
    kept = set(kept)
    missing = kept - {n.name for n in qdq.graph.node}
    if missing:
        raise KeyError(f"kept layers not in the graph: {sorted(missing)}")
    s = _Stripper(qdq, fp32)
    for n in list(qdq.graph.node):
        if n.name in kept:
            s.keep_float(n)
    prune(qdq.graph)
    return qdq, s.changes


def prune(g) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (repeatedly), then unused initializers."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in QDQ and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def qdq_inputs(model, kept: Iterable[str]) -> dict:
    """Graph inspection of a repaired Q/DQ graph: which DequantizeLinear outputs each layer
    reads, the kept layers' weight types and the zero points.  ``ok``: no kept layer reads a
    DQ'd input and its weight is a FLOAT initializer, every other layer reads a DQ'd
    activation and weight (the explicit-quantization form TensorRT builds INT8 layers of)."""
    import onnx

    model = _load(model)
    kept = set(kept)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    per_kept, others_quantized = {}, []
    for n in model.graph.node:
        if n.op_type not in COMPUTE:
            continue
        dq = [i for i in n.input[:2] if i in producer and producer[i].op_type == "DequantizeLinear"]
        if n.name in kept:
            w = inits.get(n.input[1])
            per_kept[n.name] = {"dq_inputs": dq,
                                "weight_dtype": onnx.TensorProto.DataType.Name(w.data_type) if w is not None else "?"}
        else:
            others_quantized.append(len(dq) == 2)
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type in QDQ and len(n.input) > 2 and n.input[2] in inits]
    nonzero = sum(int(np.any(onnx.numpy_helper.to_array(t))) for t in zps)
    ok = all(not r["dq_inputs"] and r["weight_dtype"] == "FLOAT" for r in per_kept.values()) and all(others_quantized)
    return {"kept": per_kept, "others_quantized": sum(others_quantized), "others": len(others_quantized),
            "nonzero_zero_points": int(nonzero), "ok": bool(ok and set(per_kept) == kept)}
