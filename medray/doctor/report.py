"""The doctor's document (JSON) and its console table."""

from __future__ import annotations

import time

from medray.doctor import environment as env
from medray.doctor.checks import diagnose


def collect(backends=None, devices=None, run_models: bool = True, bench: bool = False,
            batches: tuple[int, ...] = (64, 256), iters: int = 3) -> dict:
    """Everything the doctor knows about this node: environment, one record per backend ×
    precision × device, and (``bench``) the DenseNet121 figures."""
    t0 = time.perf_counter()
    _quiet_libraries()
    records = diagnose(backends, devices, run_models=run_models)
    doc = {
        "system": env.system(),
        "cpu": env.cpu(),
        "gpus": env.gpus(),
        "libraries": env.libraries(),
        "checks": [r.as_dict() for r in records],
        "mode": "run" if run_models else "quick",
    }
    if bench:
        from medray.doctor.bench import bench as run_bench

        doc["bench"] = run_bench(records, batches, iters)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    return doc


def exit_code(doc: dict, asked: list[str] | None) -> int:
    checks = doc["checks"]
    if any(c["status"] == "failed" for c in checks):
        return 1
    for b in asked or []:
        if not any(c["backend"] == b and c["status"] == "ok" for c in checks):
            return 1
    return 0


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(n) for x, n in zip(r, w)).rstrip()  # noqa: E731
    return [line(header), line(["-" * n for n in w]), *map(line, rows)]


def render(doc: dict) -> str:
    s, c, g = doc["system"], doc["cpu"], doc["gpus"]
    flags = " ".join(f for f, on in c["flags"].items() if on) or "none of " + ", ".join(c["flags"])
    out = [f"medray doctor — {s['hostname']}: Python {s['python']}, {s['os']} ({s['machine']})",
           f"CPU: {c['model']}, {c['cores']} cores, {c['memory_gib']} GiB; features: {flags}"]
    if g["available"]:
        for d in g["devices"]:
            out.append(f"GPU {d['index']}: {d['name']} (compute {d['compute_capability']}, {d['memory_gib']} GiB), "
                       f"driver {g['driver'] or '?'}, CUDA runtime {g['cuda_runtime']}")
    else:
        out.append(f"GPU: none ({g.get('reason', 'no CUDA device')})")
    out += ["", "Libraries:"]
    for name, lib in doc["libraries"].items():
        out.append(f"  {name:12s} {lib['version']}" if lib["installed"] else f"  {name:12s} missing — {lib['fix']}")
    out += ["", f"Backend × precision × device ({doc['mode']}: "
            + ("a tiny model run and compared with the reference backend's fp32" if doc["mode"] == "run" else "no model run") + "):"]
    rows = []
    for r in doc["checks"]:
        d = r["detail"]
        if r["status"] == "ok":
            what = ", ".join(x for x in (
                f"max|Δp| {d['max_abs_prob_diff']:.1e}" if "max_abs_prob_diff" in d else "",
                f"margin corr {d['margin_correlation']:.3f}" if "margin_correlation" in d else "",
                f"executes {d['executed']}" if d.get("executed") else "",
                d.get("note", "")) if x)
        else:
            what = r["reason"] + (f" — fix: {r['fix']}" if r["fix"] else "")
        rows.append([r["backend"], r["precision"], r["device"], r["status"].upper() if r["status"] == "failed" else r["status"],
                     what])
    out += ["  " + x for x in _table(["backend", "precision", "device", "status", "details"], rows)]
    if doc.get("bench"):
        b0 = doc["bench"][0]
        out += ["", f"Bench: {b0['arch']} {b0['size']} px, random weights, median of timed batches:"]
        brow = [[b["backend"], b["precision"], b["device"], str(b["batch"]),
                 f"{b['img_per_s']:.1f}" if b["status"] == "ok" else "–",
                 f"{b['latency_ms_per_sample']:.2f}" if b["status"] == "ok" else b.get("reason", "")[:80]]
                for b in doc["bench"]]
        out += ["  " + x for x in _table(["backend", "precision", "device", "batch", "img/s", "ms/img"], brow)]
    n = {k: sum(1 for r in doc["checks"] if r["status"] == k) for k in ("ok", "missing", "unsupported", "failed")}
    out += ["", f"{n['ok']} ok, {n['missing']} missing, {n['unsupported']} unsupported, {n['failed']} failed "
            f"({doc['seconds']} s)"]
    return "\n".join(out)


def _quiet_libraries() -> None:
    """The libraries' own chatter (ONNX Runtime's graph-serialisation warning, NNCF's
    progress) is not the doctor's output; -v shows medray's logs."""
    import logging

    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except Exception:
        pass
    logging.getLogger("nncf").setLevel(logging.ERROR)
