"""The embedded Ray's processes do not outlive a driver killed with SIGKILL (the break-it
round found two Ray agents still listening after kill -9 of the driver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

DRIVER = """
import json, time, psutil, ray
from medray.backends.torch.config import TorchConfig
from medray.config import EvalConfig, RayConfig
from medray.pipeline.cluster import start_ray
start_ray(EvalConfig(backend=TorchConfig(), ray=RayConfig(num_cpus=1, include_dashboard=False)))
node = ray._private.worker._global_node
pids = {i.process.pid for infos in node.all_processes.values() for i in infos if i.process}
time.sleep(2)
for p in list(pids):
    pids |= {c.pid for c in psutil.Process(p).children(recursive=True)}
print(json.dumps(sorted(pids)), flush=True)
time.sleep(600)
"""


def test_a_killed_driver_leaves_no_ray_process_behind():
    import psutil

    p = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pids = json.loads(p.stdout.readline())
        assert len(pids) >= 3  # GCS, raylet, agents...
        assert all(psutil.pid_exists(pid) for pid in pids)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 60  # the watchdog polls every second, then 5 s of grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    assert [pid for pid in pids if _alive(pid)] == []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
