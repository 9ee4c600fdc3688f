"""The INT8 repair (issue 30): what it keeps, how long its search takes, and the repaired
model's speed against full INT8 and fp32, per model × backend.

Each model is prepared through medray's own ``medray.pipeline.prepare.prepare`` with
``precision=int8 quantization.repair=true`` (the job's path: dataset, calibration and
validation splits, the task's metric, the artifact cache), on ONNX Runtime and OpenVINO.
Speed: fp32, full INT8 and the repaired model as bare loops on the driver, batch
``--batch`` (1), 1 thread, interleaved round-robin, median (and p25–p75) of ``--runs``
calls each — the repair's own speed check with more calls.

Models:

* ``case`` — the constructed outlier-channel case of the tests (``tests/repair_case.py``),
  labels = its fp32 decisions;
* ``demo`` — medray's demo classifier (resnet10t, 96 px, trained on the synthetic set), on
  the synthetic set's calibration split (validation) — full INT8 may already pass;
* ``demo-outlier`` — the same weights with one outlier channel before ``conv1.3``
  (compensated: fp32 outputs unchanged), the failure the repair is for;
* ``densenet121`` — timm DenseNet121, random weights (seed 0), 224 px, labels = its fp32
  decisions on smooth-noise images (``--densenet-images``).

    python benchmarks/repair.py --json repair.json --markdown repair.md
    python benchmarks/repair.py --models case --backends onnxruntime      # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = Path("~/.cache/medray/models/demo-synthetic-resnet10t-3x96-e6-s0-n2000-g0-v2.pt").expanduser()


def _case():
    spec = importlib.util.spec_from_file_location("repair_case", REPO / "tests" / "repair_case.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def demo_with_outlier(checkpoint: str, scale: float = 1e3, channel: int = 3):
    """``model=python`` target: the demo resnet10t with one outlier channel (``conv1.1`` BN
    → ReLU → ``conv1.3``, compensated there: the fp32 outputs do not change)."""
    import torch

    from medray.models.factory import build_model, read_checkpoint

    sd, meta = read_checkpoint(checkpoint)
    model = build_model(meta["arch"], meta["num_classes"], meta["in_chans"])
    model.load_state_dict(sd)
    bn, conv = model.conv1[1], model.conv1[3]
    with torch.no_grad():
        bn.weight[channel] *= scale
        bn.bias[channel] *= scale
        conv.weight[:, channel] /= scale
    return model.eval()


def densenet(seed: int = 0):
    """``model=python`` target: timm DenseNet121, 2 outputs, random weights (seed)."""
    import torch

    from medray.models.factory import build_model

    torch.manual_seed(seed)
    return build_model("densenet121", 2, 3).eval()


def model_config(name: str, work: Path, args):
    """(ModelConfig, DataConfig, calibration samples, validation samples) of a benchmark model."""
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig

    here = str(Path(__file__).resolve())
    if name in ("demo", "demo-outlier"):
        data = DataConfig(name="synthetic", root=str(Path("~/.cache/medray/data/synthetic").expanduser()))
        if name == "demo":
            return ModelConfig(name="timm", checkpoint=str(DEMO), input_size=96), data, 100, 200
        return (ModelConfig(name="python", source="python", target=f"{here}:demo_with_outlier",
                            kwargs={"checkpoint": str(DEMO)}, input_size=96), data, 100, 200)
    rc = _case()
    root = work / f"data-{name}"
    if name == "case":
        if not root.is_dir():
            rc.imagefolder(root)
        target, kwargs, size, calib, val = f"{REPO}/tests/repair_case.py:build", {"outliers": ["stem"]}, rc.SIZE, 64, 200
    else:
        if not root.is_dir():
            rc.imagefolder(root, n=args.densenet_images, model=densenet(), size=224)
        target, kwargs, size = f"{here}:densenet", {}, 224
        calib, val = 16, None
    model = ModelConfig(name="python", source="python", target=target, kwargs=kwargs, input_size=size)
    return model, DataConfig(name="imagefolder", root=str(root), split="test"), calib, val


def timing(backend: str, spec, rep: dict, args) -> dict:
    """fp32 / full INT8 / repaired, bare loops, batch ``--batch``, 1 thread, interleaved
    round-robin over ``--runs`` calls (the library's ``bench``, with more calls than the
    repair's own check), as the repaired artifact's speed table."""
    from functools import partial

    import numpy as np

    from medray.backends.onnx.proxy import infer_fn
    from medray.backends.onnx.repair import bench, speed_table

    art = spec.artifact
    # No INT8 set passed: the artifact is the fallback chain's step (fp32 itself, or fp16/bf16).
    fp32 = art["reference"]["path"] if "reference" in art else art["path"]
    paths = {"fp32": fp32, "int8_full": rep["full_int8"]["path"], "repaired": art["path"]}
    x = np.random.default_rng(0).standard_normal((args.batch, *spec.model.input_shape), dtype=np.float32)
    fns = {}
    for k, path in paths.items():
        if backend == "openvino":
            from medray.backends.openvino.repair import compile_model

            precision = "fp32" if k == "fp32" else "int8" if k == "int8_full" else rep["executes"]
            req = compile_model(path, precision, 1, latency=True).create_infer_request()
            fns[k] = partial(req.infer, {0: x})
        else:
            fns[k] = partial(infer_fn(path, 1, optimize=True), x)
    what = f"{backend}, bare loop on the driver, 1 thread, {args.runs} interleaved calls"
    return speed_table(bench(fns, warmup=5, runs=args.runs, max_s=args.max_bench_s), args.batch, 1, what)


def run_one(name: str, backend: str, work: Path, args) -> dict:
    from medray.backends.config import QuantizationConfig
    from medray.config import EvalConfig, backend_config
    from medray.data.config import CalibrationConfig
    from medray.pipeline.prepare import prepare

    model, data, n_calib, n_val = model_config(name, work, args)
    q = QuantizationConfig(max_drop=args.max_drop, repair=True, repair_threads=args.threads, repair_samples=n_val,
                           repair_budget_s=args.budget, repair_bench=False)
    cfg = EvalConfig(backend=backend_config(backend), precision="int8", data=data, model=model,
                     calibration=CalibrationConfig(num_samples=n_calib), quantization=q, baseline=None,
                     cache_dir=str(work / "cache"), output_dir=str(work / "out"))
    t = time.perf_counter()
    spec = prepare(cfg).specs[0]
    wall = time.perf_counter() - t
    rep = spec.artifact["repair"]
    sp = timing(backend, spec, rep, args)
    lat = {k: v["median_ms"] for k, v in (sp.get("latency_ms") or {}).items()}
    return {
        "model": name, "backend": backend, "max_drop": args.max_drop, "layers": rep["layers"],
        "kept": rep["kept"], "kept_fraction": rep["kept_fraction"], "executes": rep["executes"],
        "reference": rep["reference"], "full_int8": rep["full_int8"]["metrics"],
        "repaired": next((s["metrics"] for s in rep["fallback"] if s["passes"]), None),
        "validation_n": rep["validation"]["n"], "search_s": rep["search"]["wall_s"],
        "evaluations": rep["search"]["evaluations"], "reused": rep["search"]["reused"], "stopped": rep["search"]["stopped"],
        "check_ok": (rep.get("check") or {}).get("ok"), "collateral_float": (rep.get("check") or {}).get("collateral_float"),
        "latency_ms": lat, "speed": sp, "repaired_vs_int8_full": sp.get("repaired_vs_int8_full"),
        "repaired_vs_fp32": sp.get("repaired_vs_fp32"), "prepare_s": round(wall, 1),
        "steps": rep["search"]["steps"], "fallback": rep["fallback"],
    }


def markdown(rows: list[dict], mach: dict) -> str:
    out = [f"Machine: {mach['cpu']}, {mach['cores']} cores, flags {', '.join(mach['cpu_flags']) or '–'}; "
           f"load average (1 min) at the end {mach['load_avg_1m']:.1f}.", "",
           "| Model | Backend | Kept in float | Metric fp32 → full INT8 → repaired (validation) | fp32 / INT8 / repaired "
           "(ms, median [p25–p75]) | Repaired vs full INT8 | vs fp32 | Search (s, evaluations) | Prepare (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = next(iter(r["reference"]))
        kept = "none" if r["kept"] == [] else "–" if r["kept"] is None else (
            f"{len(r['kept'])}/{r['layers']} ({100 * r['kept_fraction']:.0f} %): "
            + ", ".join(f"`{k['module'] or k['onnx']}`" for k in r["kept"][:4]) + (" …" if len(r["kept"]) > 4 else ""))
        m = f"{key} {r['reference'][key]:.4f} → {r['full_int8'][key]:.4f} → " + (
            f"{r['repaired'][key]:.4f}" if r["repaired"] else "–") + (f" ({r['executes']})" if r["executes"] != "int8" else "")
        lat = r["speed"]["latency_ms"]
        ms = " / ".join(f"{lat[k]['median_ms']:.2f} [{lat[k]['p25_ms']:.2f}–{lat[k]['p75_ms']:.2f}]"
                        for k in ("fp32", "int8_full", "repaired"))
        out.append(f"| {r['model']} | {r['backend']} | {kept} | {m} | {ms} | {r['repaired_vs_int8_full']}× | "
                   f"{r['repaired_vs_fp32']}× | {r['search_s']:.1f} ({r['evaluations']}) | {r['prepare_s']:.0f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="case,demo,demo-outlier,densenet121")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--max-drop", type=float, default=0.01, help="quantization.max_drop (the task's metric: AUC)")
    ap.add_argument("--budget", type=float, default=1200.0, help="quantization.repair_budget_s")
    ap.add_argument("--threads", type=int, default=2, help="quantization.repair_threads (the search's sessions)")
    ap.add_argument("--densenet-images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100, help="timed calls per variant (interleaved)")
    ap.add_argument("--max-bench-s", type=float, default=300.0)
    ap.add_argument("--workdir", default=None, help="keeps datasets and the artifact cache between runs")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from medray.backends import library_modules
    from medray.machine import machine

    work = Path(args.workdir or tempfile.mkdtemp(prefix="medray-bench-repair-"))
    rows = []
    for name in args.models.split(","):
        for backend in args.backends.split(","):
            print(f"--- {name} × {backend}", flush=True)
            rows.append(run_one(name, backend, work, args))
            r = rows[-1]
            print(f"kept {r['kept_fraction']} ({r['executes']}), search {r['search_s']} s, speed vs INT8 "
                  f"{r['repaired_vs_int8_full']}x, vs fp32 {r['repaired_vs_fp32']}x", flush=True)
    mach = machine(modules=library_modules())
    doc = {"machine": mach, "args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    md = markdown(rows, mach)
    if args.markdown:
        Path(args.markdown).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
