"""Backend × precision speed table (issue 3): the bare backend loops, one run, one machine.

For a timm model with random weights (speed does not depend on them; DenseNet121 at 224 px
by default), each configuration — torch fp32 (the baseline), ONNX Runtime fp32 / int8,
OpenVINO fp32 / bf16 / int8 by default — is built through medray's own ``prepare`` (the
same artifacts, cache and calibration path as ``jobs/evaluate.py``), loaded, warmed up,
and timed over the same pre-normalised batches.  Repeats are interleaved across the
configurations so that machine drift hits them alike, each measurement in a fresh process.  Reported per configuration:
images/s (median over repeats), per-batch latency p50/p95, per-image latency, the ratio to
torch fp32, the precision the backend really executed, artifact size and build time.

    python benchmarks/backends.py --json docs/backends.json --markdown docs/backends.md
    python benchmarks/backends.py --model resnet10t --input-size 64 --num-images 64 --repeats 1   # smoke test

INT8 calibration uses ``--calib-samples`` radiograph-like JPEGs written by the script
(the split the evaluate job uses does not exist for random weights).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medray.machine import machine

DEFAULT_CONFIGS = "torch-fp32,onnxruntime-fp32,onnxruntime-int8,openvino-fp32,openvino-bf16,openvino-int8"


def _sibling(name: str):
    """Import benchmarks/<name>.py (the JPEG writer of pipeline.py is shared)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_spec(backend: str, precision: str, args, ckpt: Path, sha: str, threads: int):
    from medray.config import backend_config
    from medray.specs import ModelSpec, RunSpec

    cfg = backend_config(backend)
    if backend == "openvino" and args.ov_hint:
        cfg.performance_hint = args.ov_hint
    cfg.check_pair("cpu", precision)
    model = ModelSpec(args.model, args.num_classes, 3, args.input_size, str(ckpt), sha)
    return RunSpec(
        name=f"{backend}-{precision}",
        role="baseline" if (backend, precision) == ("torch", "fp32") else "candidate",
        backend=cfg,
        precision=precision,
        device="cpu",
        batch_size=args.batch_size,
        streams=1,
        model=model,
        threads=threads,
        warmup_batches=args.warmup,
    )


def child(spec_path: str, num_images: int) -> None:
    """One configuration, one repeat, in a fresh process: load, warm up, time; JSON on stdout.

    A process per measurement keeps one library's idle thread pool (OpenMP, TBB and ORT
    threads spin for a while after each call) from stealing cores from the next one.
    """
    import pickle

    from medray.backends import get_backend

    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    size = spec.model.input_size
    x = np.random.default_rng(0).standard_normal((num_images, 3, size, size), dtype=np.float32)
    b = get_backend(spec.backend.name)(spec).load()
    sps, lat = time_loop(b, x, spec.batch_size)
    eff = b.effective_precision
    b.close()
    print("RESULT " + json.dumps({"sps": sps, "lat": lat, "executed": eff.get("executed"),
                                  "compute_ops": eff.get("compute_ops")}), flush=True)


def run_child(spec_path: Path, num_images: int) -> dict:
    import subprocess

    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_path), "--num-images", str(num_images)],
        capture_output=True, text=True,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"measurement process failed (rc {proc.returncode}): {' | '.join(tail)}")
    return json.loads(line[len("RESULT "):])


def time_loop(backend, x: np.ndarray, bs: int) -> tuple[float, list[float]]:
    """images/s over all of ``x`` and the per-batch compute times (ms) the backend measured."""
    lat = []
    t0 = time.perf_counter()
    for i in range(0, len(x), bs):
        backend.infer(x[i : i + bs])
        lat.append(backend.last_ms)
    return len(x) / (time.perf_counter() - t0), lat


def markdown(out: dict) -> str:
    """The table rows for docs/benchmarks.md (with a header saying what and where)."""
    m = out["machine"]
    lines = [
        f"{out['model']} at {out['input_size']} px, random weights, batch {out['batch_size']}, "
        f"{out['num_images']} images × {out['repeats']} interleaved repeats (a fresh process each), "
        f"{out['threads']} threads — {m.get('cpu')}, {m.get('cores')} cores; "
        + ", ".join(f"{k} {m[k]}" for k in ("torch", "onnxruntime", "openvino") if k in m),
        "",
        "| Backend | Precision | Executed | Images/s | × torch fp32 | Latency/batch p50 (ms) | p95 (ms) | Per image (ms) | Artifact (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | failed: {r['error'][:80]} | – | – | – | – | – | – |")
            continue
        art = "–" if r["artifact_bytes"] is None else f"{r['artifact_bytes'] / 1e6:.1f}"
        ratio = "–" if r["ratio_to_torch_fp32"] is None else f"{r['ratio_to_torch_fp32']:.2f}×"
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['executed']} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['per_image_ms']:.2f} | {art} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="densenet121", help="timm architecture (random weights)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=14)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated <backend>-<precision>")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-images", type=int, default=256, help="images timed per repeat and configuration")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--ov-hint", choices=["latency", "throughput"], default=None, help="OpenVINO performance hint")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--workdir", default=None, help="images, checkpoint and artifact cache (default: a temp dir)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.num_images)
        return {"child": True}

    import torch

    from medray.backends import get_backend
    from medray.backends.artifacts import ArtifactCache
    from medray.io import file_sha256
    from medray.models.factory import build_model, save_checkpoint

    shared = _sibling("pipeline")
    threads = args.threads or len(os.sched_getaffinity(0))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-bench-backends-"))
    mach = machine()
    print(f"machine: {mach}", flush=True)
    calib = shared.write_images(work / "calibration", args.calib_samples, max(args.input_size, 256), seed=1)
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes, 3).eval()
    ckpt = save_checkpoint(model, work / "model.pt", {"arch": args.model})
    del model
    sha = file_sha256(ckpt)
    cache = ArtifactCache(work / "cache")
    import pickle

    pairs = [tuple(c.split("-", 1)) for c in args.configs.split(",") if c]
    specs, results = {}, {}
    for backend_name, precision in pairs:  # artifacts built here, once, as the job does
        name = f"{backend_name}-{precision}"
        try:
            spec = make_spec(backend_name, precision, args, ckpt, sha, threads)
            spec.artifact = get_backend(backend_name).prepare(spec, cache, {"calibration": calib})
            specs[name] = work / f"{name}.spec.pkl"
            specs[name].write_bytes(pickle.dumps(spec))
            a = spec.artifact or {}
            results[name] = {"backend": backend_name, "precision": precision, "artifact_bytes": a.get("bytes"),
                             "artifact_build_s": a.get("build_s"), "sps": [], "lat": []}
        except Exception as e:  # one backend missing must not lose the others' numbers
            results[name] = {"backend": backend_name, "precision": precision, "error": f"{type(e).__name__}: {e}"}
            print(f"{name}: FAILED {results[name]['error']}", flush=True)

    for r in range(args.repeats):
        for name, path in specs.items():
            if "error" in results[name]:
                continue
            try:
                got = run_child(path, args.num_images)
            except RuntimeError as e:
                results[name] = {"backend": results[name]["backend"], "precision": results[name]["precision"], "error": str(e)}
                continue
            results[name]["sps"].append(got["sps"])
            results[name]["lat"].extend(got["lat"])
            results[name]["executed"] = got["executed"]
            results[name]["compute_ops"] = got["compute_ops"]
        print(f"repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {v['sps'][-1]:.1f}/s" for n, v in results.items() if v.get("sps")), flush=True)

    base = results.get("torch-fp32", {})
    base_sps = statistics.median(base["sps"]) if base.get("sps") else None
    rows = []
    for r in results.values():
        if "error" in r:
            rows.append(r)
            continue
        sps = statistics.median(r["sps"])
        lat = np.asarray(r["lat"])
        rows.append(
            {
                **{k: v for k, v in r.items() if k not in ("sps", "lat")},
                "images_per_s": sps,
                "images_per_s_runs": r["sps"],
                "latency_ms_p50": float(np.percentile(lat, 50)),
                "latency_ms_p95": float(np.percentile(lat, 95)),
                "per_image_ms": float(np.percentile(lat, 50)) / args.batch_size,
                "ratio_to_torch_fp32": sps / base_sps if base_sps else None,
            }
        )
    out = {
        "model": args.model,
        "input_size": args.input_size,
        "num_classes": args.num_classes,
        "batch_size": args.batch_size,
        "num_images": args.num_images,
        "repeats": args.repeats,
        "threads": threads,
        "ov_hint": args.ov_hint,
        "calib_samples": args.calib_samples,
        "results": rows,
        "machine": mach,
    }
    table = markdown(out)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
