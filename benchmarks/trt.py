"""TensorRT precisions on one GPU, as seed 001 compares them by hand (GPU only).

For each precision (fp32, tf32, fp16, int8 by default) medray evaluates the model with
``backend=trt``: fp32 against the PyTorch fp32 baseline, the lower precisions against
TensorRT fp32 (seed 001's comparison), all on the same samples.  Prints one row per
precision — images/s, latency, AUC and its delta, agreement, engine size, the precision
the engine inspector says ran — as Markdown, and writes them as JSON.

    python benchmarks/trt.py --data synthetic --batch-size 32 --streams 2 --limit 2000 \\
        --json trt.json --markdown trt.md [hydra overrides ...]

Extra arguments are passed to the evaluate config (e.g. ``model=... model.checkpoint=...``).
Exits with status 2 and a message when there is no CUDA GPU or no TensorRT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "tf32", "fp16", "int8")


def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark (None when it can)."""
    try:
        import torch
    except ImportError as e:
        return f"torch cannot be imported ({e})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible on this machine (torch.cuda.is_available() is False)"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed: pip install 'medray[trt]'"
    return None


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medray.cli import register_configs
    from medray.config import to_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_config(hydra_compose(config_name="evaluate", overrides=overrides))


def row(doc: dict, vs_torch: dict | None = None) -> dict:
    """One seed-001-style row from an evaluate metrics document (its last run)."""
    r = doc["runs"][-1]
    base = next((b for b in doc["runs"] if b["role"] == "baseline"), None)
    eff = r.get("effective_precision") or {}
    art = r.get("artifact") or {}
    out = {
        "precision": r["precision"],
        "executed": eff.get("executed"),
        "images_per_s": r["throughput_sps"],
        "latency_ms_p50": r["latency_ms"]["per_sample_p50"],
        "latency_ms_p95": r["latency_ms"]["per_sample_p95"],
        "auc": r["metrics"].get("auc_macro"),
        "accuracy": r["metrics"].get("accuracy"),
        "baseline": base["name"] if base else None,
        "auc_delta": (r.get("metric_deltas") or {}).get("auc_macro"),
        "agreement_top1": (r.get("agreement") or {}).get("top1"),
        "speedup": (r.get("speedup") or {}).get("factor"),
        "engine_mb": art["bytes"] / 1e6 if art.get("bytes") else None,
        "engine_build_s": art.get("build_s"),
        "gpu": (eff.get("gpu") or {}).get("gpu_name"),
        "compute_capability": (eff.get("gpu") or {}).get("compute_capability"),
        "tensorrt": (eff.get("gpu") or {}).get("tensorrt"),
        "warnings": [w for w in doc.get("warnings", []) if w.startswith(r["name"])],
    }
    if vs_torch is not None and out["auc"] is not None and vs_torch.get("auc") is not None:
        out["auc_delta_vs_torch"] = out["auc"] - vs_torch["auc"]
    return out


def not_faster(rows: list[dict]) -> list[str]:
    """Lower precisions that are not faster than TensorRT fp32 (seed 001's question)."""
    fp32 = next((r for r in rows if r["precision"] == "fp32"), None)
    if fp32 is None:
        return []
    return [
        f"trt-{r['precision']} is not faster than trt-fp32 ({r['images_per_s']:.1f} vs {fp32['images_per_s']:.1f} images/s)"
        for r in rows
        if r["precision"] != "fp32" and r["images_per_s"] <= fp32["images_per_s"]
    ]


def markdown(rows: list[dict], setup: str) -> str:
    def f(x, fmt):
        return "–" if x is None else fmt.format(x)

    lines = [
        setup,
        "",
        "| precision | executed | images/s | latency p50 (ms/img) | AUC | ΔAUC vs baseline | baseline | agreement | engine (MB) | build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['executed'] or '?'} | {f(r['images_per_s'], '{:.1f}')} | {f(r['latency_ms_p50'], '{:.3f}')} "
            f"| {f(r['auc'], '{:.4f}')} | {f(r['auc_delta'], '{:+.4f}')} | {r['baseline'] or '–'} "
            f"| {f(r['agreement_top1'], '{:.4f}')} | {f(r['engine_mb'], '{:.1f}')} | {f(r['engine_build_s'], '{:.1f}')} |"
        )
    warnings = not_faster(rows) + [w for r in rows for w in r["warnings"]]
    if warnings:
        lines += ["", "Warnings:", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--limit", type=int, default=2000, help="evaluated samples (data.limit)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--streams", type=int, default=2, help="actors (CUDA streams) per GPU")
    ap.add_argument("--output-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args, overrides = ap.parse_known_args(argv)

    problem = gpu_problem()
    if problem:
        print(f"benchmarks/trt.py needs an NVIDIA GPU with TensorRT: {problem}", file=sys.stderr)
        return 2

    import ray

    from medray.pipeline.cluster import start_ray
    from medray.pipeline.evaluate import run

    out_root = Path(args.output_dir or tempfile.mkdtemp(prefix="medray-trt-bench-"))
    common = [f"data={args.data}", f"data.limit={args.limit}", f"batch_size={args.batch_size}", f"streams={args.streams}", *overrides]
    precisions = ["fp32", *[p for p in args.precisions if p != "fp32"]]
    rows, torch_row = [], None
    started = False
    try:
        for p in precisions:
            baseline = "torch-fp32" if p == "fp32" else "trt-fp32"
            cfg = compose([*common, "backend=trt", f"precision={p}", f"baseline={baseline}", f"output_dir={out_root / p}"])
            started = start_ray(cfg) or started  # one Ray for every run
            doc = run(cfg)
            if p == "fp32":
                b = next(r for r in doc["runs"] if r["role"] == "baseline")
                torch_row = {"auc": b["metrics"].get("auc_macro"), "images_per_s": b["throughput_sps"]}
            if p in args.precisions:
                rows.append(row(doc, torch_row))
    finally:
        if started:
            ray.shutdown()
    gpu = next((r["gpu"] for r in rows if r["gpu"]), "?")
    setup = (
        f"TensorRT {rows[0]['tensorrt'] if rows else '?'} on {gpu} (compute capability {rows[0]['compute_capability'] if rows else '?'}), "
        f"data={args.data} limit={args.limit}, batch {args.batch_size}, {args.streams} streams per GPU; "
        f"PyTorch fp32 on the same GPU: {torch_row['images_per_s']:.1f} images/s, AUC {torch_row['auc']:.4f}"
        if torch_row and torch_row.get("auc") is not None
        else f"TensorRT on {gpu}, data={args.data} limit={args.limit}, batch {args.batch_size}, {args.streams} streams"
    )
    md = markdown(rows, setup)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "rows": rows, "torch_fp32": torch_row}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
