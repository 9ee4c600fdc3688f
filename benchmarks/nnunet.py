"""nnU-Net models in medray vs nnU-Net's own predictor (issue 26), on the tiny CT model of the
tests (2 folds, anisotropic, trained with nnU-Net's tools: tests/nnunet_tiny.py).

    python benchmarks/nnunet.py --cases 24 --json nnunet.json     # per case + the pipeline
    python benchmarks/nnunet.py --memory --json memory.json       # 512x512x300 CT, 4 labels

* per case (one process, 1 thread, interleaved rounds, the minimum): nnUNetPredictor's
  ``predict_logits_from_preprocessed_data`` + its export vs medray's recipe with the torch
  backend's fold sessions (same folds, tile step 0.5, Gaussian, mirroring on), 1, 4 (the
  default) and 8 windows per call; then ONNX Runtime / OpenVINO fp32 and OpenVINO INT8 candidates;
* the pipeline: ``--cases`` volumes through medray's one pipeline (preprocessing in read tasks
  overlapped with the actors) against the machine limit as benchmarks/limit.py defines it:
  cores / (CPU seconds to read + preprocess a case + CPU seconds of its inference at 1 thread);
* ``--memory``: peak RSS of the way back to the original geometry for a 512x512x300 CT with 4
  labels (nnU-Net's own function vs medray's channel by channel), and of the sliding window's
  accumulators, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_raw(models: dict, work: Path, n: int) -> Path:
    """The tiny CT dataset with ``n`` generated test volumes (its training cases kept: INT8 calibration)."""
    import shutil

    import nnunet_tiny

    root = work / "Dataset901_TinyCT"
    if (root / ".done").is_file() and (root / ".done").read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(models["A_raw"], root)
    for d in ("imagesTs", "labelsTs"):
        shutil.rmtree(root / d)
        (root / d).mkdir()
    rng = np.random.default_rng(1234)
    for i in range(n):
        img, seg, sp = nnunet_tiny._case_ct(rng)
        nnunet_tiny._save(img, sp, i % 2 == 1, root / "imagesTs" / f"bench_{i:03d}_0000.nii.gz", np.int16)
        nnunet_tiny._save(seg, sp, i % 2 == 1, root / "labelsTs" / f"bench_{i:03d}.nii.gz", np.uint8)
    (root / ".done").write_text(str(n))
    return root


def timed(fn, rounds: int) -> dict:
    best_w, best_c = float("inf"), float("inf")
    for _ in range(rounds):
        w, c = time.perf_counter(), cpu_s()
        fn()
        best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, cpu_s() - c)
    return {"wall_s": best_w, "cpu_s": best_c}


def per_case(models: dict, raw: Path, work: Path, n_cases: int, rounds: int) -> dict:
    """nnUNetPredictor vs medray's recipe on the torch fold sessions and the candidates."""
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.config import backend_config
    from medray.data.calibration import CalibrationSource
    from medray.data.config import DataConfig
    from medray.data.load import load_table
    from medray.models.config import ModelConfig, ModelRequest
    from medray.models.recipes import recipe_of
    from medray.models.resolve import resolve_model
    from medray.specs import RunSpec
    from medray.tasks.segmentation.task import calibrate

    torch.set_num_threads(1)
    table = load_table(DataConfig(name="nnunet", root=str(raw)), str(raw))
    spec = resolve_model(ModelRequest(ModelConfig(name="nnunet", source="nnunet", path=models["A"])), table)
    recipe = recipe_of(spec)
    settings = recipe.settings(spec, {})
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(models["A"], use_folds=(0, 1), checkpoint_name="checkpoint_final.pth")
    calib = table.split("train")
    context = {"calibration": CalibrationSource(calib, lambda s: calibrate(s, spec, settings, 300, 0))}
    cache = ArtifactCache(work / "cache")
    sessions = {}
    for name, backend, precision in (("torch-fp32", "torch", "fp32"), ("onnxruntime-fp32", "onnxruntime", "fp32"),
                                     ("openvino-fp32", "openvino", "fp32"), ("openvino-int8", "openvino", "int8")):
        rs = RunSpec(name, "candidate", backend_config(backend), precision, "cpu", 8, 1, spec, threads=1, warmup_batches=1)
        rs.artifact = get_backend(backend).prepare_model(rs, cache, context)
        sessions[name] = get_backend(backend)(rs).__enter__()
    cases = table.split("test").head(n_cases)
    rows = []
    for case in cases.to_dict("records"):
        got = recipe.read(spec, settings, case)
        data, props = got["image"], __import__("pickle").loads(got["geometry"])

        def nnunet(data=data, props=props):
            lg = pred.predict_logits_from_preprocessed_data(torch.from_numpy(data))
            return convert_predicted_logits_to_segmentation_with_correct_shape(
                lg, pred.plans_manager, pred.configuration_manager, pred.label_manager, props, False, 1)

        def medray(name, w, got=got):
            members = [sessions[name].member(i) for i in range(len(spec.members))]
            calls = [m.infer for m in members]
            return lambda: recipe.segment(spec, settings, calls, got["image"], got["geometry"], w)[0]

        runs = {"nnunet": nnunet, "torch-fp32 w1": medray("torch-fp32", 1),
                "torch-fp32 w4": medray("torch-fp32", 4), "torch-fp32 w8": medray("torch-fp32", 8),
                "onnxruntime-fp32 w8": medray("onnxruntime-fp32", 8), "openvino-fp32 w8": medray("openvino-fp32", 8),
                "openvino-int8 w8": medray("openvino-int8", 8)}
        ref = nnunet()
        row = {"case": case["sample_id"], "shape": got["orig_shape"], "preprocessed": list(data.shape[1:])}
        for k, fn in runs.items():
            row[k] = timed(fn, rounds)
            row[k]["agreement_vs_nnunet"] = float((fn() == ref).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    for s in sessions.values():
        s.close()
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    total = {k: sum(r[k]["cpu_s"] for r in rows) for k in keys}
    return {"cases": rows, "cpu_s_total": total, "speedup_vs_nnunet_cpu": {k: total["nnunet"] / v for k, v in total.items()}}


def pipeline(models: dict, raw: Path, work: Path, backend: str, precision: str, windows: int, streams: int = 1) -> dict:
    """The pipeline's cases/s vs the machine limit (cores / CPU s of read + inference per case)."""
    import ray
    import torch

    from medray.config import EvalConfig, RayConfig, backend_config
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import prepare
    from medray.tasks.segmentation.actor import segment
    from medray.tasks.segmentation.config import SlidingWindowConfig

    cores = len(os.sched_getaffinity(0))
    cfg = EvalConfig(backend=backend_config(backend), precision=precision, task="segmentation",
                     data=DataConfig(name="nnunet", root=str(raw)), baseline=None,
                     model=ModelConfig(name="nnunet", source="nnunet", path=models["A"]),
                     sliding_window=SlidingWindowConfig(sw_batch_size=windows), ray=RayConfig(num_cpus=cores), streams=streams,
                     cache_dir=str(work / "cache"), output_dir=str(work / "out"), warmup_batches=1)
    p = prepare(cfg)
    spec = p.specs[0]
    # what one case costs each stage at one thread, in this process
    from medray.backends import get_backend
    from medray.models.recipes import recipe_of

    torch.set_num_threads(1)
    recipe, settings = recipe_of(spec.model), p.task.settings
    rows = p.samples.head(4).to_dict("records")
    c0 = cpu_s()
    read = [recipe.read(spec.model, settings, r) for r in rows]
    read_s = (cpu_s() - c0) / len(rows)
    from dataclasses import replace

    with get_backend(backend)(replace(spec, threads=1)) as b:
        c0 = cpu_s()
        for g in read:
            segment(settings, b, replace(spec, threads=1), g["image"], g["geometry"])
        infer_s = (cpu_s() - c0) / len(read)
    limit = cores / (read_s + infer_s)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        runs = [execute(cfg, p.task, p.samples, [spec])[0] for _ in range(2)]
    finally:
        ray.shutdown()
    best = max(runs, key=lambda r: r.throughput_sps)
    return {"backend": f"{backend}-{precision}", "windows_per_call": windows, "streams": streams, "cases": len(p.samples), "cores": cores,
            "read_cpu_s_per_case": read_s, "inference_cpu_s_per_case": infer_s, "machine_limit_cps": limit,
            "throughput_cps": [r.throughput_sps for r in runs], "inference_cps": best.inference_sps,
            "over_limit": best.throughput_sps / limit, "pool": best.pool.describe()}


PROBE = r'''
import json, resource, sys, time, numpy as np, torch
sys.path.insert(0, "{tests}")
torch.set_num_threads(1)
from medray.models.nnunet.folder import managers
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
folder, what = "{folder}", "{what}"
pm, cm, lm, _ = managers(folder, "3d_fullres")
shape, spacing = (300, 512, 512), (2.0, 0.7, 0.7)
new = tuple(int(i) for i in compute_new_shape(shape, spacing, cm.spacing))
props = {{"spacing": list(spacing), "shape_before_cropping": shape, "shape_after_cropping_and_before_resampling": shape,
          "bbox_used_for_cropping": [[0, s] for s in shape]}}
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {{"input_shape": shape, "preprocessed_shape": new, "heads": lm.num_segmentation_heads, "what": what}}
t = time.perf_counter()
if what == "window":
    from medray.models.nnunet.inference import Window, predict_logits
    data = np.random.default_rng(0).standard_normal((1, *new), dtype=np.float32)
    K = lm.num_segmentation_heads
    call = lambda x: np.zeros((x.shape[0], K, *x.shape[2:]), np.float32) + x[:, :1]
    out["start_mib"] = rss()
    lg = predict_logits(data, [call, call], Window(tuple(cm.patch_size), K, (), 0.5, True, 256))
else:
    logits = np.random.default_rng(0).standard_normal((lm.num_segmentation_heads, *new), dtype=np.float32).astype(np.float16)
    out["start_mib"] = rss()
    if what == "nnunet":
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape as f
        seg = f(logits, pm, cm, lm, props, False, 1)
    else:
        from medray.models.nnunet.inference import to_segmentation
        seg = to_segmentation(folder, "3d_fullres", logits, props)
out["s"], out["peak_mib"] = time.perf_counter() - t, rss()
print(json.dumps(out))
'''


def memory(models: dict) -> dict:
    """Peak RSS of each step in a fresh process (ru_maxrss is a high-water mark)."""
    out = {}
    for what in ("medray", "nnunet", "window"):
        code = PROBE.format(tests=REPO / "tests", folder=models["A"], what=what)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        out[what] = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(out[what]), flush=True)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=24, help="test volumes generated for the pipeline run")
    ap.add_argument("--per-case", type=int, default=3, help="cases timed one by one against nnUNetPredictor")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--streams", type=int, default=1, help="actors of the pipeline run (streams=)")
    ap.add_argument("--pipeline-only", action="store_true", help="skip the per-case comparison with nnUNetPredictor")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    import nnunet_tiny

    from medray.machine import machine

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-nnunet-"))
    models = nnunet_tiny.build(Path(os.environ.get("MEDRAY_CACHE", REPO / ".pytest_cache" / "medray")) / "nnunet-tiny")
    out: dict = {"machine": machine(False)}
    if args.memory:
        out["memory"] = memory(models)
    else:
        raw = bench_raw(models, work, args.cases)
        if not args.pipeline_only:
            out["per_case"] = per_case(models, raw, work, args.per_case, args.rounds)
        out["pipeline"] = pipeline(models, raw, work, args.backend, args.precision, args.windows, args.streams)
        print(json.dumps(out["pipeline"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
