"""ray.check_nodes on a two-node local cluster: the worker node lacks OpenVINO (a PYTHONPATH
that hides it, as on a node where it is not installed); `jobs/evaluate.py backend=openvino`
fails before any work, naming that node and the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cluster import Cluster
from helpers import REPO, TINY_ARCH, TINY_SIZE

pytestmark = pytest.mark.slow


def test_a_node_without_the_backend_fails_the_job_before_work(tmp_path, tiny_checkpoint):
    pytest.importorskip("openvino", reason="the driver must have OpenVINO for this test")
    hidden = tmp_path / "no-openvino"
    (hidden / "openvino").mkdir(parents=True)
    (hidden / "openvino" / "__init__.py").write_text('raise ImportError("No module named openvino (hidden)")\n')
    root = Path(tempfile.mkdtemp(prefix="mr8-", dir="/tmp"))  # short: Unix socket paths
    c = Cluster(root, worker_env={"PYTHONPATH": str(hidden)})
    try:
        c.start()
        worker = next(n["node_id"] for n in c.nodes() if not n["is_head_node"] and n["state"] == "ALIVE")
        head = next(n["node_id"] for n in c.nodes() if n["is_head_node"])
        out = tmp_path / "out"
        r = subprocess.run(
            [sys.executable, "jobs/evaluate.py", "backend=openvino", "baseline=null", "ray=cluster",
             f"ray.address={c.address}", "data=synthetic", f"data.root={tmp_path}/data", "data.n_train=2",
             "data.n_calibration=2", "data.n_test=8", "data.image_size=32", "model.name=tiny", f"model.arch={TINY_ARCH}",
             f"model.checkpoint={tiny_checkpoint}", f"model.input_size={TINY_SIZE}", "batch_size=4",
             f"output_dir={out}", f"cache_dir={tmp_path}/cache"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**c.env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
        msg = r.stdout + r.stderr
        assert r.returncode == 2, msg[-3000:]
        assert "the Ray cluster cannot run this job" in msg and "nothing was started" in msg
        assert worker[:12] in msg and head[:12] not in msg  # the worker node, not the head
        assert "openvino-fp32 on cpu is missing: openvino cannot be imported" in msg
        assert "fix: pip install -e '.[openvino]'" in msg
        assert not (out / "predictions").exists() and not (out / "metrics.json").exists()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
