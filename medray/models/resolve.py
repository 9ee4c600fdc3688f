"""Config + dataset → the :class:`ModelSpec` actors load (training the demo if needed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from medray.data.sources import IMAGE
from medray.data.table import SampleTable
from medray.errors import ConfigError
from medray.io import file_sha256
from medray.models.config import ModelRequest
from medray.models.factory import CheckpointError, classifier_out_features, read_checkpoint
from medray.specs import ModelSpec

log = logging.getLogger("medray.models")


def demo_checkpoint_path(cfg: ModelRequest, table: SampleTable) -> Path:
    m = cfg.model
    from medray import io as medray_io

    # table.root may be a URI (a synthetic set uploaded to s3://...).
    gen = json.loads(medray_io.read_text(medray_io.join(table.root, "dataset.json"))).get("generator", {})
    tag = f"{table.name}-{m.arch}-{m.in_chans}x{m.input_size}-e{m.train.epochs}-s{m.train.seed}"
    # The generator version is part of the tag: a demo trained on other images is another model.
    tag += f"-n{gen.get('n_train', 'x')}-g{gen.get('seed', 'x')}-v{gen.get('version', 'x')}"
    return Path(cfg.cache_dir) / "models" / f"demo-{tag}.pt"


# The synthetic sets the demo models are trained on, with the values of
# conf/data/synthetic*.yaml: a real dataset's demo is then the very checkpoint that
# `data=synthetic` / `data=synthetic_multilabel` runs train and cache.
DEMO_DATA = {
    "binary": {"name": "synthetic", "n_train": 2000, "n_calibration": 300, "n_test": 1000, "image_size": 256},
    "multilabel": {"name": "synthetic_multilabel", "n_train": 2000, "n_calibration": 300, "n_test": 1000, "image_size": 256},
}


def demo_source(cfg: ModelRequest, table: SampleTable) -> SampleTable:
    """The dataset the demo model for ``table`` is trained on.

    Synthetic sets train their own; a real dataset gets the demo of its task and class
    count — the binary demo for a two-class folder, the 14-label demo for ChestX-ray14 —
    whose outputs are read as the dataset's classes by index.
    """
    from medray.data.chestxray14 import LABELS as CHESTXRAY14_CLASSES
    from medray.data.config import DataConfig
    from medray.data.load import load_table

    if table.name in ("synthetic", "synthetic_multilabel"):
        return table
    if table.task == "multiclass" and len(table.classes) == 2:
        kind = "binary"
    elif table.task == "multilabel" and list(table.classes) == list(CHESTXRAY14_CLASSES):
        kind = "multilabel"
    else:
        raise ConfigError(
            f"model=demo: the demo models are a two-class classifier and a 14-label ChestX-ray14 classifier; "
            f"dataset {table.name} is {table.task} with {len(table.classes)} classes {table.classes[:5]}. "
            "Pass your model: model.name=<name> model.arch=<timm arch> model.checkpoint=<state dict>"
        )
    data = DataConfig(**DEMO_DATA[kind])
    return load_table(data, str(Path(cfg.cache_dir) / "data" / data.name))


def log_index_mapping(source: SampleTable, table: SampleTable) -> None:
    """Say, once, how the demo's outputs are read as the dataset's classes."""
    pairs = ", ".join(
        f"{i}: {a}" + ("" if a == b else f" -> {b}") for i, (a, b) in enumerate(zip(source.classes, table.classes))
    )
    log.warning(
        "model=demo: %s has no demo of its own; using the demo trained on the %s set (a synthetic stand-in, "
        "not a clinical model). Its outputs are read as %s's classes by index [%s]",
        table.name, source.name, table.name, pairs,
    )


def resolve_model(cfg: ModelRequest, table: SampleTable) -> ModelSpec:
    """The one resolve path: the model of ``cfg`` checked against the dataset before Ray
    starts, by its source's (or architecture's, or the demo's) resolver in
    :mod:`medray.models.sources` (the demo is trained if it is not cached)."""
    from medray.models.sources import ARCHS, DEMOS, call, source

    m = cfg.model
    row = source(m.source)
    if table.kind not in row.kinds:
        raise ConfigError(f"model={m.name}: a {m.source} model is not supported for dataset {table.name} "
                          f"({table.task}); sources for it: {', '.join(sorted(_sources_of(table.kind)))}")
    if m.arch in ARCHS and row.load == "medray.models.factory:load_spec":
        target = ARCHS[m.arch].resolve
    elif m.name == "demo" and m.checkpoint is None:
        target = DEMOS[table.kind]
    else:
        target = row.resolve if table.kind == IMAGE or row.resolve_volume is None else row.resolve_volume
    spec = call(target, cfg, table)
    spec.expected = {**spec.expected, **{k: {"value": v, "from": "model.expected"} for k, v in m.expected.items()}}
    return spec


def take_label_names(table: SampleTable, k: int, names: list[str] | None, where: str) -> None:
    """The dataset's labels are the model's ``k`` output channels.  A dataset that leaves
    their names to the model (``data=datalist`` without ``data.classes``) takes ``names``
    (a bundle's metadata.json), else ``background, label_1, ...``."""
    if not table.classes:
        table.classes = list(names) if names else ["background", *(f"label_{i}" for i in range(1, k))]
        table.notes.append(f"label names from the model: {table.classes}")
        log.info("dataset %s: label names from the model (%s): %s", table.name, where, table.classes)
        return
    if len(table.classes) != k:
        raise ConfigError(f"{where}: the model has {k} output channels but dataset {table.name} has {len(table.classes)} "
                          f"labels {list(table.classes)}; evaluate it on data labelled as it was trained (data.classes "
                          "names a datalist's label values)")
    if names and list(names) != list(table.classes):
        log.warning("%s: the model names its outputs %s, dataset %s its labels %s (compared by label value)", where,
                    names, table.name, list(table.classes))


def _sources_of(kind: str) -> list[str]:
    from medray.models.sources import SOURCES

    return [n for n, r in SOURCES.items() if kind in r.kinds]


def check_class_count(m, table: SampleTable) -> int:
    """``model.num_classes`` (when set) is the dataset's class count (background included
    for segmentation); returns that count."""
    k = len(table.classes)
    if m.num_classes is not None and m.num_classes != k:
        raise ConfigError(f"model.num_classes={m.num_classes} but dataset {table.name} has {k} classes "
                          f"{list(table.classes)[:6]}; set model.num_classes={k} or null (from the dataset)")
    return k


@dataclass
class Stated:
    """What a model states about itself, read by its source's resolver from its own files
    (None = not stated: the config's keys apply)."""

    labels: list[str] | None = None  # output i's name ('' = an output with no name)
    where: str = "model"  # what the names come from, for messages ("model.path=<folder> (id2label)")
    activation: str | None = None  # softmax | sigmoid
    preprocess: dict | None = None  # the keys of preprocess=model
    in_chans: int | None = None
    arch: str | None = None
    path: str | None = None  # the file the actors load when it is not model.path (a converted one)
    path_sha256: str | None = None  # a folder's content hash
    op_threshs: list | None = None


def resolve_classifier(cfg: ModelRequest, table: SampleTable, stated: Stated | None = None) -> ModelSpec:
    """An image classifier checked against the dataset: its source loads, its
    preprocessing resolves, its outputs are the dataset's classes — by name when the model
    names them (:mod:`medray.models.labels`), else by count (or one score for a binary
    dataset) — and it takes the input the preprocessing makes."""
    from medray.models.sources import source

    if table.kind != IMAGE:
        raise ConfigError(f"model.arch={cfg.model.arch!r}: an image classifier; dataset {table.name} is {table.task}")

    m, stated = cfg.model, stated or Stated()
    n_classes = check_class_count(m, table)
    demo = m.name == "demo" and m.checkpoint is None
    if demo and cfg.preprocess.name != "medray":
        raise ConfigError(
            f"preprocess={cfg.preprocess.name}: the demo model was trained with preprocess=medray; feeding it other "
            "pixels would give a wrong AUC. Use preprocess=medray, or your own model (model=timm|python|...)"
        )
    in_chans = stated.in_chans or m.in_chans
    prep = _preprocess(cfg, in_chans, stated.preprocess)
    timm = source(m.source).checkpoint_required  # an architecture + its state dict
    path = stated.path or m.path
    spec = ModelSpec(arch=stated.arch or (m.arch if timm else m.source), num_classes=n_classes, in_chans=in_chans,
                     input_size=prep["size"][0], checkpoint=None, trust_checkpoint=m.trust_checkpoint, task=table.task,
                     source=m.source, path=path, path_sha256=stated.path_sha256 or (file_sha256(path) if path else None),
                     target=m.target, kwargs=dict(m.kwargs or {}), output=m.output, output_name=m.output_name,
                     preprocess=prep, positive_index=table.positive_index(), activation=stated.activation,
                     op_threshs=stated.op_threshs)
    names, where = m.classes or stated.labels, "model.classes" if m.classes else stated.where
    if timm:
        spec.checkpoint, spec.out_features, meta_classes = _timm_checkpoint(cfg, table, demo, prep, named=bool(names))
        if names is None and meta_classes:
            names, where = meta_classes, f"model.checkpoint={spec.checkpoint} (the classes it was trained on)"
    elif m.checkpoint:
        spec.checkpoint = m.checkpoint
    if spec.checkpoint:
        spec.checkpoint_sha256 = file_sha256(spec.checkpoint)
    if not timm:  # the weights do not say: run the model once on the input it will get
        spec.out_features = probe_outputs(spec)
    if names:
        from medray.models.labels import apply_labels

        apply_labels(spec, list(names), table, dict(m.class_map or {}), where)
    else:
        check_outputs(spec, table)
    return spec


def _preprocess(cfg: ModelRequest, in_chans: int, stated: dict | None) -> dict:
    """The resolved preprocessing; the model's own keys (``stated``) under ``preprocess=model``,
    and a warning naming the keys where another preset differs from them."""
    from medray.data.preprocess import resolve as resolve_preprocess
    from medray.models.sources import source

    m = cfg.model
    src = source(m.source)
    timm_arch = m.arch if not (src.file or src.folder) else None
    prep = resolve_preprocess(cfg.preprocess, in_chans, m.input_size, timm_arch=timm_arch, derived=stated)
    if stated:
        own = resolve_preprocess(type(cfg.preprocess)(name="model"), in_chans, m.input_size, derived=stated)
        differ = {k: (prep[k], own[k]) for k in own if k not in ("name", "reference") and prep.get(k) != own[k]}
        if differ:
            log.warning("preprocess=%s: differs from the model's own preprocessing (%s) in %s; the model's own is "
                        "preprocess=model", cfg.preprocess.name, own.get("reference"),
                        ", ".join(f"{k}: {a} instead of {b}" for k, (a, b) in differ.items()))
    return prep


def check_outputs(spec: ModelSpec, table: SampleTable) -> None:
    """The model's output count is the dataset's classes, or 1 score for a binary dataset."""
    k, n = spec.out_features or spec.num_classes, len(table.classes)
    binary_score = k == 1 and n == 2 and table.task == "multiclass"
    if k != n and not binary_score:
        where = f"model.path={spec.path}" if spec.path else (f"model.target={spec.target}" if spec.target else f"model.checkpoint={spec.checkpoint}")
        raise ConfigError(
            f"{where}: the model has {k} outputs but dataset {table.name} has {n} classes {list(table.classes)[:5]}; "
            "use a model trained on these classes (a binary model may give 1 score: the positive class's logit or "
            "probability), or the matching data=..."
        )


def probe_outputs(spec: ModelSpec) -> int:
    """Run the model on two blank inputs of the preprocessing's shape; its output count.

    A model that does not take that shape (an NHWC model fed NCHW, another size) is a
    config error naming both shapes."""
    import numpy as np

    from medray.models.sources import source

    shape = (2, *spec.input_shape)
    x = np.zeros(shape, dtype=np.float32)
    hint = (f"the preprocessing makes {shape} (batch, {'H, W, C' if spec.preprocess.get('layout') == 'nhwc' else 'C, H, W'}); "
            "set preprocess.layout / preprocess.size / model.in_chans to what the model takes")
    if not source(spec.source).torch_model:
        want = onnx_input_shape(spec.path)
        fixed = [(i, a, b) for i, (a, b) in enumerate(zip(want[1:], shape[1:]), 1) if isinstance(a, int) and a > 0 and a != b]
        if len(want) != len(shape) or fixed:
            raise ConfigError(f"model.path={spec.path}: the ONNX model takes input {tuple(want)}, but {hint}")
        import onnxruntime as ort

        spec.output_name = onnx_output_name(spec.path, spec.output_name)
        try:
            sess = ort.InferenceSession(spec.path, providers=["CPUExecutionProvider"])
            out = sess.run([spec.output_name], {sess.get_inputs()[0].name: x})[0]
        except Exception as e:
            raise ConfigError(f"model.path={spec.path}: ONNX Runtime cannot run it on {shape}: {str(e)[:300]}") from None
    else:
        import torch

        from medray.models.loaders import load_torch_model

        model = load_torch_model(spec)
        try:
            with torch.inference_mode():
                out = model(torch.from_numpy(x))
                if spec.source == "exported":  # a program exported with a fixed batch fails on another one
                    model(torch.from_numpy(np.zeros((3, *spec.input_shape), dtype=np.float32)))
        except Exception as e:
            what = f"model.path={spec.path}" if spec.path else f"model.target={spec.target}"
            raise ConfigError(f"{what}: the model fails on input {shape} ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                              f"{hint}; a torch.export program needs a dynamic batch dimension") from None
        out = out.detach().float().numpy() if hasattr(out, "detach") else np.asarray(out)
    if out.ndim != 2 or out.shape[0] != 2:
        raise ConfigError(f"model: output of shape {tuple(out.shape)} for a batch of 2; expected (batch, classes)")
    return int(out.shape[1])


def onnx_output_name(path: str, wanted: str | None) -> str:
    """The graph output that holds the class scores: ``model.output_name``, or the graph's
    only output; several outputs and no name is a config error listing them (running
    output 0 of a detector-plus-classifier graph would score the wrong tensor)."""
    import onnx

    outputs = [o.name for o in onnx.load(path, load_external_data=False).graph.output]
    if wanted is None and len(outputs) == 1:
        return outputs[0]
    if wanted is None:
        raise ConfigError(f"model.path={path}: the ONNX model has {len(outputs)} outputs {outputs}; say which one holds "
                          "the class scores with model.output_name=<name>")
    if wanted not in outputs:
        raise ConfigError(f"model.output_name={wanted!r}: not an output of {path}; its outputs are {outputs}")
    return wanted


def onnx_input_shape(path: str) -> list:
    """The first graph input's shape (ints, or names/None for dynamic dims); a ConfigError
    when the file is not ONNX."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise ConfigError(f"model.path={path}: not an ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                          "give an .onnx file exported from your framework (torch.onnx, tf2onnx, ...)") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(f"model.path={path}: the ONNX model has {len(inputs)} inputs; medray feeds one image tensor")
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _timm_checkpoint(cfg: ModelRequest, table: SampleTable, demo: bool, prep: dict,
                     named: bool = False) -> tuple[str, int | None, list[str] | None]:
    """The timm path: the checkpoint (the demo's, trained if absent) checked against the
    dataset; returns it, the classifier's output count and the classes it was trained on
    (matched to the dataset's by name; None for a demo read by index)."""
    m = cfg.model
    n_classes = len(table.classes)
    checkpoint = m.checkpoint
    by_index = False
    if demo:  # the demo model (name=demo, enforced by ModelConfig)
        source = demo_source(cfg, table)
        by_index = source is not table
        path = demo_checkpoint_path(cfg, source)
        if not path.is_file():
            from medray.models.demo import train_demo

            log.info("demo model not cached: training %s on %s (a few minutes on 2 CPUs)", m.arch, source.name)
            summary = train_demo(source, m.arch, m.input_size, m.in_chans, path, m.train)
            log.info("demo model trained: %s", {k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
        checkpoint = str(path)
    try:
        sd, meta = read_checkpoint(checkpoint, trust=m.trust_checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    out = classifier_out_features(m.arch, sd)
    classes = None if by_index else meta.get("classes")
    if (out is not None and out != n_classes and not (named or classes)
            and not (out == 1 and n_classes == 2 and table.task == "multiclass")):
        raise ConfigError(
            f"model.checkpoint={checkpoint}: its classifier has {out} outputs but dataset {table.name} "
            f"has {n_classes} classes; use a checkpoint trained on these classes, or the matching data=..."
        )
    if meta.get("task") and meta["task"] != table.task:
        raise ConfigError(
            f"model.checkpoint={checkpoint}: trained for a {meta['task']} task but dataset {table.name} is {table.task}; "
            "use a checkpoint trained for this task"
        )
    if by_index:
        log_index_mapping(source, table)
    if meta.get("input_size") and meta["input_size"] != prep["size"][0]:
        raise ConfigError(
            f"model.input_size={prep['size'][0]} but the checkpoint was trained at {meta['input_size']} px; "
            f"set model.input_size={meta['input_size']}"
        )
    return checkpoint, out, (list(classes) if classes else None)
