"""``model=hf``: a transformers ViT folder (``save_pretrained``) and a timm-format DenseNet
folder (timm's ``save_for_hf``), non-trivial weights, on a ChestX-ray14 layout of real
radiographs: medray's baseline probabilities equal the library's own pipeline
(transformers ``pipeline("image-classification")`` with the folder's PIL-backend processor;
timm ``create_model(pretrained_cfg_overlay=...)`` + ``create_transform``) within 1e-5,
outputs are scored by name (a permuted model gives identical per-class AUCs), and the
INT8 candidates of ONNX Runtime and OpenVINO run from them, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO
from hub_fixtures import (
    TIMM_ARGS,
    TIMM_CFG,
    TIMM_LABELS,
    baseline_probs,
    make_nih,
    permuted,
    timm_densenet,
    write_timm,
    write_vit,
)

from medray.data.config import DataConfig
from medray.data.load import load_table
from medray.data.preprocess import PreprocessConfig
from medray.errors import ConfigError
from medray.models.config import ModelConfig, ModelRequest
from medray.models.resolve import resolve_model

TOL = 1e-5


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The NIH layout of radiograph crops, a timm-format folder and the same model with its
    outputs (and label_names) permuted."""
    root = tmp_path_factory.mktemp("hub")
    base = timm_densenet()
    order = [2, 0, 3, 1]
    nih = make_nih(root / "nih")
    return SimpleNamespace(root=root, nih=nih, table=load_table(DataConfig(name="chestxray14", root=str(nih)), str(nih)),
                           timm=write_timm(root / "timm", base),
                           timm_perm=write_timm(root / "timm_perm", permuted(base, order), [TIMM_LABELS[i] for i in order]))


@pytest.fixture(scope="module")
def vit(hub):
    pytest.importorskip("transformers", reason='pip install -e ".[hf]"')
    return write_vit(hub.root / "vit")


def resolve(path, table, **kw):
    model = ModelConfig(name="hf", source="hf", path=str(path), **kw)
    return resolve_model(ModelRequest(model, PreprocessConfig(name="model"), str(Path(path).parent / "cache")), table)


def timm_reference(folder: Path, paths) -> tuple[np.ndarray, list[str]]:
    """timm's own: create_model with the checkpoint's pretrained_cfg as overlay (and the
    top-level num_classes), create_transform(resolve_data_config(pretrained_cfg)); sigmoid."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = json.loads((folder / "config.json").read_text())
    n = cfg["num_classes"]
    model = timm.create_model(cfg["architecture"], pretrained=True, num_classes=n, **cfg["model_args"],
                              pretrained_cfg_overlay=dict(cfg["pretrained_cfg"], file=str(folder / "model.safetensors"),
                                                          num_classes=n)).eval()
    tf = create_transform(**resolve_data_config(pretrained_cfg=model.pretrained_cfg))
    with torch.no_grad():
        logits = torch.cat([model(tf(Image.open(p).convert("RGB"))[None]) for p in paths])
    return torch.sigmoid(logits).double().numpy(), cfg["label_names"]


def test_a_timm_format_folder_gives_timms_own_probabilities(hub):
    spec = resolve(hub.timm, hub.table)
    assert spec.preprocess["size"] == [160, 160] and spec.preprocess["crop_pct"] == 0.95  # the checkpoint's, not 224/0.875
    assert spec.labels["renamed"] == {"Pleural Effusion": "Effusion"} and len(spec.labels["not_scored"]) == 10
    samples = hub.table.split("test")
    got = baseline_probs(spec, samples)
    ref, names = timm_reference(hub.timm, samples["path"])
    scored = hub.table.without(spec.labels["not_scored"]).classes
    by_name = {"Effusion": "Pleural Effusion"}
    want = ref[:, [names.index(by_name.get(c, c)) for c in scored]]
    assert got.shape == want.shape == (16, 4)
    assert np.abs(got - want).max() <= TOL
    assert 0.05 < got.std()  # not saturated: a real comparison


def test_permuted_outputs_are_scored_by_name_with_identical_per_class_aucs(hub):
    from medray.metrics.classification import classification_metrics

    samples = hub.table.split("test")
    aucs = []
    for folder in (hub.timm, hub.timm_perm):
        spec = resolve(folder, hub.table)
        table = hub.table.without(spec.labels["not_scored"])
        m = classification_metrics(table.targets(samples), baseline_probs(spec, samples), table.task, table.classes)
        aucs.append(m["auc_per_class"])
    assert aucs[0] == aucs[1] and len([a for a in aucs[0].values() if a is not None]) == 4
    read_by_index = resolve(hub.timm_perm, hub.table, classes=TIMM_LABELS)  # model.classes overrides the folder's names
    assert read_by_index.output_index != resolve(hub.timm_perm, hub.table).output_index


def test_a_mismatch_is_a_config_error_naming_both_lists(hub, tmp_path):
    table = hub.table
    with pytest.raises(ConfigError, match=r"model.classes: no dataset class is among the model's outputs.*"
                                          r"model outputs \['cat', 'dog', 'cow', 'eel'\]; dataset classes \['Atelectasis'"):
        resolve(hub.timm, table, classes=["cat", "dog", "cow", "eel"])
    with pytest.raises(ConfigError, match=r"model.class_map: 'Pleural' -> 'Effusion' names no model output"):
        resolve(hub.timm, table, class_map={"Pleural": "Effusion"})
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "densenet121", "num_classes": 4}))
    with pytest.raises(ConfigError, match="timm's hub format needs pretrained_cfg"):
        resolve(tmp_path, table)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ViTModel"]}))
    with pytest.raises(ConfigError, match="ViTModel is not an image classifier"):
        resolve(tmp_path, table)
    with pytest.raises(ConfigError, match="model.path=.*: not a directory; give the path of the model folder"):
        ModelConfig(name="hf", source="hf", path=str(tmp_path / "nope"))


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_weights_are_never_unpickled_without_trust(hub, tmp_path):
    """safetensors is preferred over a pytorch_model.bin beside it (timm's own local-dir
    loader would take the .bin and unpickle it); a .bin alone is read as tensors only."""
    import shutil

    import torch
    from timm.models import save_for_hf

    from medray.models.hub import load_hf

    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    ref_spec = resolve(hub.timm, hub.table)
    with torch.no_grad():
        want = load_hf(ref_spec)(x)
    both = tmp_path / "both"
    shutil.copytree(hub.timm, both)
    torch.save({"w": Payload()}, both / "pytorch_model.bin")
    with torch.no_grad():
        assert torch.equal(load_hf(resolve(both, hub.table))(x), want)
    bin_only = tmp_path / "bin"
    save_for_hf(load_hf(ref_spec), str(bin_only), model_config={"label_names": TIMM_LABELS}, model_args=TIMM_ARGS)
    assert not (bin_only / "model.safetensors").exists()
    with torch.no_grad():
        assert torch.equal(load_hf(resolve(bin_only, hub.table))(x), want)
    torch.save({"w": Payload()}, bin_only / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pytorch_model.bin: the file contains pickled Python objects.*model.trust_checkpoint=true"):
        resolve(bin_only, hub.table)


def test_the_registry_default_would_be_other_pixels(hub):
    """Why the checkpoint's own pretrained_cfg matters: timm's default for the architecture
    is 224 px, crop 0.875, bicubic, ImageNet statistics."""
    import timm
    from timm.data import resolve_data_config

    default = resolve_data_config(model=timm.create_model("densenet121", pretrained=False, **TIMM_ARGS))
    assert default["input_size"] != TIMM_CFG["input_size"] and default["mean"] != TIMM_CFG["mean"]
    assert resolve(hub.timm, hub.table).preprocess["mean"] == list(TIMM_CFG["mean"])


def vit_reference(folder: Path, paths) -> tuple[np.ndarray, list[str]]:
    """transformers' own: pipeline("image-classification") with the folder's model and its
    processor's PIL backend (medray's contract), every label's score."""
    from transformers import pipeline

    from medray.data.preprocess.derive import pil_processor

    proc = pil_processor(json.loads((folder / "preprocessor_config.json").read_text()))
    pipe = pipeline("image-classification", model=str(folder), image_processor=proc, device="cpu")
    labels = list(pipe.model.config.id2label.values())
    scores = [{r["label"]: r["score"] for r in pipe(str(p), top_k=None)} for p in paths]
    return np.array([[s[lab] for lab in labels] for s in scores]), labels


def test_a_transformers_folder_gives_the_pipelines_probabilities(hub, vit):
    spec = resolve(vit, hub.table)
    assert spec.activation == "sigmoid" and spec.preprocess["reference"] == "transformers ViTImageProcessorPil (PIL backend)"
    samples = hub.table.split("test")
    got = baseline_probs(spec, samples)
    ref, labels = vit_reference(vit, samples["path"])
    scored = hub.table.without(spec.labels["not_scored"]).classes
    want = ref[:, [labels.index(c) for c in scored]]
    assert sorted(scored) == ["Atelectasis", "Cardiomegaly", "Effusion", "Pleural_Thickening"]
    assert np.abs(got - want).max() <= TOL and 0.05 < got.std()


@pytest.mark.openvino
def test_every_cpu_backend_runs_the_transformers_folder(hub, vit, tmp_path):
    """The wrapped model exports to ONNX: ONNX Runtime and OpenVINO fp32 give the baseline's
    probabilities, and their INT8 candidates (calibrated on train_val) build and run in int8
    (how close they come is the report's business: this tiny random ViT quantizes badly)."""
    from functools import partial

    from medray.backends import config_class, get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.data.calibration import CalibrationSource, load_calibration
    from medray.data.preprocess import to_model_input
    from medray.metrics.scores import model_probabilities
    from medray.specs import RunSpec
    from medray.tasks.classification.read import decode_batch, model_prep

    spec = resolve(vit, hub.table)
    test, cal = hub.table.split("test"), hub.table.split("train_val")
    context = {"calibration": CalibrationSource(cal, partial(load_calibration, prep=model_prep(spec), in_chans=3)),
               "table": hub.table}
    pixels = decode_batch({"sample_id": test["sample_id"].to_numpy(), "path": test["path"].to_numpy()}, model_prep(spec))
    x = to_model_input(pixels["image"], 3, model_prep(spec))
    probs, executed = {}, {}
    for name, precision in (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
                            ("openvino", "int8")):
        run = RunSpec(f"{name}-{precision}", "candidate", config_class(name)(), precision, "cpu", len(x), 1, spec,
                      warmup_batches=0)
        run.artifact = get_backend(name).prepare(run, ArtifactCache(tmp_path / "cache"), context)
        with get_backend(name)(run) as b:
            probs[run.name] = model_probabilities(b.infer(x), spec)
            executed[run.name] = (b.effective_precision or {}).get("executed")
    base = probs.pop("torch-fp32")
    for k, p in probs.items():
        assert p.shape == base.shape and np.isfinite(p).all() and 0 <= p.min() and p.max() <= 1, k
        if k.endswith("fp32"):
            assert np.abs(p - base).max() < 1e-4, (k, float(np.abs(p - base).max()))
        else:
            assert executed[k] == "int8", (k, executed[k])


def _evaluate(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.pipeline.evaluate import run

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    return run(to_config(cfg))


@pytest.mark.slow
def test_evaluate_a_transformers_folder_with_onnxruntime_int8(ray_local, hub, vit, tmp_path):
    """`jobs/evaluate.py model=hf model.path=<vit> data=chestxray14 backend=onnxruntime precision=int8`:
    the baseline's probabilities are the pipeline's, the not-scored labels are reported."""
    import pyarrow.parquet as pq

    doc = _evaluate(["model=hf", f"model.path={vit}", "data=chestxray14", f"data.root={hub.nih}",
                     "backend=onnxruntime", "precision=int8", "calibration.num_samples=8", "threshold.method=youden",
                     "batch_size=4", "warmup_batches=1", f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/cache"])
    ds, (base, cand) = doc["dataset"], doc["runs"]
    assert ds["classes"] == ["Atelectasis", "Cardiomegaly", "Effusion", "Pleural_Thickening"]
    assert len(ds["not_scored"]) == 10 and doc["model"]["labels"]["unused"] == ["No Finding"]
    assert cand["precision"] == "int8" and cand["agreement"]["n"] == 16 and set(cand["metrics"]["auc_per_class"]) == set(ds["classes"])
    assert set(base["threshold"]) == set(ds["classes"])  # chosen on train_val, by name
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Not scored** (the model has no output for them): Infiltration" in report
    assert "transformers ViTImageProcessorPil (PIL backend)" in report
    pred = pq.read_table(tmp_path / "out" / "predictions" / "torch-fp32.parquet").to_pandas().set_index("sample_id")
    samples = hub.table.split("test")
    ref, labels = vit_reference(vit, samples["path"])
    got = np.stack(pred.loc[samples["sample_id"], "probs"].to_numpy())
    assert np.abs(got - ref[:, [labels.index(c) for c in ds["classes"]]]).max() <= TOL


@pytest.mark.slow
@pytest.mark.openvino
def test_sweep_a_timm_folder_on_the_cpu_grid(ray_local, hub, tmp_path):
    """`jobs/sweep.py model=hf model.path=<timm folder> sweep=cpu`: every CPU backend x precision,
    OpenVINO and ONNX Runtime INT8 included, ten-crop, scored by name; the recommended
    configuration reproduced by the evaluate job."""
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config
    from medray.tune.config import SweepJobConfig
    from medray.tune.runner import run

    register_configs()
    overrides = ["model=hf", f"model.path={hub.timm}", "data=chestxray14", f"data.root={hub.nih}", "sweep=cpu",
                 "sweep.batch_sizes=[4]", "sweep.limit=null", "sweep.bootstrap_samples=200", "tta=tencrop",
                 "calibration.num_samples=8", "warmup_batches=0", "constraints.min_agreement=0.5",
                 f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="sweep", overrides=overrides), SweepJobConfig)
    doc = run(cfg)
    ok = {t["label"] for t in doc["trials"] if t["status"] == "ok"}
    assert {"onnxruntime-int8-b4-s1", "openvino-int8-b4-s1", "openvino-fp32-b4-s1", "torch-fp32-b4-s1"} <= ok, doc["trials"]
    for t in doc["trials"]:
        if t["status"] == "ok" and t["precision"] == "fp32":
            assert t["agreement"]["max_abs_prob_diff"] < 1e-4
    rec = doc["recommended"]
    assert rec is not None and rec["reproduce"]["verified"], rec["reproduce"]
    assert f"model.path={hub.timm}" in rec["reproduce"]["command"]
