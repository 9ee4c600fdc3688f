"""A two-node Ray cluster on one machine: `ray start --head` + `ray start --address=...`
as separate processes (token authentication on, loopback only), `jobs/evaluate.py`
submitted through the jobs API with `ray job submit --working-dir`, actors on both nodes,
custom metrics scraped from the head's Prometheus endpoint while the job runs, and metrics
equal to a single-node run on the same data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cluster import RAY, Cluster
from helpers import REPO, TINY_ARCH

pytestmark = pytest.mark.slow

N_TEST = 120
DATA = {"n_train": 8, "n_calibration": 8, "n_test": N_TEST, "image_size": 64}
MODEL_SIZE = 96


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("aiohttp", reason="ray job submission needs the dashboard: pip install 'ray[default]'")
    # Unix socket paths must stay short: not under pytest's deep tmp_path.
    root = Path(tempfile.mkdtemp(prefix="mr7-", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight 2-class resnet10t at MODEL_SIZE px: big enough that the actors,
    not the decode tasks, are the bottleneck, so work queues up and both actors get some
    (Ray Data hands an input-starved pool's blocks to the same idle actor)."""
    import torch

    from medray.models.factory import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mn-ckpt") / "tiny96.pt"
    meta = {"arch": TINY_ARCH, "num_classes": 2, "in_chans": 3, "input_size": MODEL_SIZE}
    return save_checkpoint(build_model(TINY_ARCH, 2, 3), path, meta)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny synthetic set with one unreadable test image (counted as a decode error)."""
    from medray.data.synthetic import ensure_synthetic

    root = ensure_synthetic("binary", tmp_path_factory.mktemp("mn") / "data", **DATA)
    bad = sorted((root / "test").glob("*.png"))[7]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    return root, bad.stem


def _overrides(data_root: Path, checkpoint: Path, out: str, cache: Path, streams: int) -> list[str]:
    return [
        # one run (no baseline) keeps the test short; ONNX Runtime actors also exercise the
        # artifact shipped from the driver
        "backend=onnxruntime", "baseline=null", "data=synthetic", f"data.root=file://{data_root}",
        *[f"data.{k}={v}" for k, v in DATA.items()], "data.on_error=skip",
        "model.name=tiny", f"model.arch={TINY_ARCH}", f"model.checkpoint={checkpoint}",
        f"model.input_size={MODEL_SIZE}", "batch_size=8", f"streams={streams}", "warmup_batches=1",
        f"output_dir={out}", f"cache_dir={cache}",
    ]


def _scrape(port: int) -> list[tuple[str, dict, float]]:
    """medray's samples from one node's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line.startswith("ray_medray_"):
            continue
        m = re.match(r"(\w+)\{(.*)\}\s+(\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def test_evaluate_job_on_two_nodes(cluster, dataset, checkpoint, tmp_path):
    data_root, bad_id = dataset
    nodes = cluster.alive_nodes()
    head_node = cluster.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
    head_node = next(n["node_id"] for n in head_node if n["is_head_node"])
    # the jobs API refuses a client without the token
    assert cluster._http_status("/api/jobs/") == 401
    assert cluster._http_status("/api/jobs/", token="wrong") == 403

    out = tmp_path / "out"
    job_log = tmp_path / "job.log"
    cmd = [
        *RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({
            "excludes": [".git", ".pytest_cache", "outputs", "multirun", "**/__pycache__"],
            # Ray Data starts dispatching when the first actor is up; the test needs both
            # nodes' actors to get work, so the pool waits for all of them first.
            "env_vars": {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"},
        }),
        "--", "python", "jobs/evaluate.py", "ray=cluster",
        *_overrides(data_root, checkpoint, f"file://{out}", tmp_path / "cache", streams=2),
    ]
    client_env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    job = subprocess.Popen(cmd, env=client_env, cwd=REPO, stdout=open(job_log, "w"), stderr=subprocess.STDOUT)
    seen: dict[str, list] = {"head": [], "worker": []}
    while job.poll() is None:  # scrape both nodes' endpoints while the job runs
        for name, port in cluster.metrics.items():
            try:
                seen[name] += _scrape(port)
            except OSError:
                pass
        if time.monotonic() - t0 > 300:
            job.kill()
            pytest.fail("the job did not finish in 300 s:\n" + job_log.read_text()[-3000:])
        time.sleep(0.3)
    log = job_log.read_text(errors="replace")
    assert job.returncode == 0, log[-4000:]
    assert re.search(r"Job '\w+' succeeded", log)
    # the job imported the medray shipped with --working-dir, not an installed copy
    src = re.search(r"medray \S+ from (\S+); outputs to", log).group(1)
    assert "runtime_resources" in src and "working_dir_files" in src, src

    # actors ran on both nodes, for both runs
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in doc["runs"]] == ["onnxruntime-fp32"]
    for r in doc["runs"]:
        pred = pd.read_parquet(out / "predictions" / f"{r['name']}.parquet")
        assert sorted(pred["node_id"].unique()) == nodes, r["name"]
        assert r["pool"]["nodes"] == nodes and r["pool"]["actors"] == 2
        assert r["n_samples"] == N_TEST - 1 and r["n_skipped"] == 1
    assert [s["sample_id"] for s in doc["skipped"]] == [bad_id]

    # custom metrics were on the head's endpoint during the run, tagged run/backend/precision/node
    names = {n for n, _, _ in seen["head"]}
    assert {"ray_medray_samples_processed_total", "ray_medray_batch_latency_ms_bucket",
            "ray_medray_samples_per_second"} <= names, names
    processed = [(lab, v) for n, lab, v in seen["head"] if n == "ray_medray_samples_processed_total"]
    assert processed and all(lab["node"] == head_node for lab, _ in processed)
    assert {(lab["run"], lab["backend"], lab["precision"]) for lab, _ in processed} == {("onnxruntime-fp32", "onnxruntime", "fp32")}
    assert max(v for _, v in processed) > 0
    both = seen["head"] + seen["worker"]
    assert {lab["node"] for n, lab, _ in both if n == "ray_medray_samples_processed_total"} == set(nodes)
    errors = [lab for n, lab, v in both if n == "ray_medray_errors_total" and v >= 1]
    assert errors and all(lab["stage"] == "decode" for lab in errors)

    # the same evaluation on one node (embedded Ray, one actor) gives the same metrics
    import ray

    from medray.config import to_config
    from medray.pipeline.evaluate import run

    single_out = tmp_path / "single"
    # (same cache_dir: the ONNX export is reused, as a second run on the head would)
    cfg = _compose([*_overrides(data_root, checkpoint, str(single_out), tmp_path / "cache", streams=1),
                    "ray=local", "ray.num_cpus=2", "ray.include_dashboard=false"])
    try:
        single = run(to_config(cfg))
    finally:
        ray.shutdown()
    for multi_run, single_run in zip(doc["runs"], single["runs"]):
        assert single_run["pool"]["actors"] == 1 and len(single_run["pool"]["nodes"]) == 1
        for k in ("accuracy", "balanced_accuracy", "auc_macro", "f1_macro"):
            assert multi_run["metrics"][k] == pytest.approx(single_run["metrics"][k], abs=1e-9), k
        a = pd.read_parquet(out / "predictions" / f"{multi_run['name']}.parquet").set_index("sample_id")
        b = pd.read_parquet(single_out / "predictions" / f"{multi_run['name']}.parquet").set_index("sample_id")
        assert list(a.index) == list(b.index)
        np.testing.assert_allclose(np.stack(a["probs"]), np.stack(b["probs"]), atol=1e-6)


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from medray.cli import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_min_gpus_asks_the_autoscaler_and_waits(monkeypatch):
    """ray.min_gpus: request GPUs from the autoscaler, wait until they are there, or fail
    after ray.scale_timeout_s with what to check (no cluster needed: Ray's calls faked)."""
    import ray
    import ray.autoscaler.sdk as sdk

    from medray.config import ConfigError, RayConfig
    from medray.pipeline.evaluate import wait_for_gpus

    gpus = iter([0, 0, 1, 2])
    asked = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8, "GPU": next(gpus)})
    monkeypatch.setattr(sdk, "request_resources", lambda bundles: asked.append(bundles))
    wait_for_gpus(2, timeout_s=10, poll_s=0.01)
    assert asked == [[{"GPU": 1}, {"GPU": 1}]]

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8})
    with pytest.raises(RuntimeError, match=r"ray.min_gpus=3: the cluster has 0 GPU\(s\) after 0.05s; check `ray status`"):
        wait_for_gpus(3, timeout_s=0.05, poll_s=0.01)
    with pytest.raises(ConfigError, match=r"ray.min_gpus=-1: use 0"):
        RayConfig(min_gpus=-1)
