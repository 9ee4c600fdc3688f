"""A two-node Ray cluster on one machine for the tests: `ray start --head` + `ray start
--address=...` as separate processes (token authentication on, loopback only).
Importable through pytest's `pythonpath`."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# 127.0.0.2 is loopback too, but Ray does not swap it for the machine's network address
# (as it does 127.0.0.1): all the cluster's traffic stays on this machine's loopback.
NODE_IP = "127.0.0.2"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports(worker_base: int) -> list[str]:
    """Every port a node opens, chosen here: two raylets on one machine must not collide."""
    args = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port"):
        args += [flag, str(_free_port())]
    return args + ["--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 199)]


def _worker_port_base() -> int:
    """Start of two free 200-port ranges for the nodes' worker processes."""
    for base in range(21000, 60000, 400):
        ports = (base, base + 199, base + 200, base + 399)
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.2", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class Cluster:
    """Head and worker `ray start --block` processes; terminating them stops their nodes."""

    def __init__(self, root: Path, worker_env: dict[str, str] | None = None):
        self.root = root
        # Extra environment of the worker node only (e.g. a PYTHONPATH that hides a library).
        self.worker_env = worker_env or {}
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            # export custom metrics every 0.5 s (default 10 s) so a short job shows them
            RAY_metrics_report_interval_ms="500",
            # stop at once on SIGTERM (no 30 s drain: nothing runs on the nodes any more)
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        )
        self.gcs, self.dash = _free_port(), _free_port()
        self.metrics = {"head": _free_port(), "worker": _free_port()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def _start(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.root / f"{name}.log"
        self.procs[name] = subprocess.Popen(
            [*RAY, "start", "--block", f"--node-ip-address={NODE_IP}", "--num-cpus=2", "--num-gpus=0",
             f"--metrics-export-port={self.metrics[name]}", f"--temp-dir={self.root / name}",
             "--disable-usage-stats", *args],
            env={**self.env, **(self.worker_env if name == "worker" else {})},
            stdout=open(self.logs[name], "w"), stderr=subprocess.STDOUT,
        )

    def start(self, timeout: float = 120.0) -> None:
        base = _worker_port_base()
        self._start("head", ["--head", f"--port={self.gcs}", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                             "--ray-client-server-port", str(_free_port()), *_node_ports(base)])
        self._wait(lambda: self._http_status("/api/version") in (200, 401), "the head's dashboard", timeout)
        self._start("worker", [f"--address={NODE_IP}:{self.gcs}", *_node_ports(base + 200)])
        self._wait(lambda: len(self.alive_nodes()) == 2, "two alive nodes", timeout)

    def _wait(self, ready, what: str, timeout: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ray start ({name}) exited {p.returncode}:\n{self.tail(name)}")
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {timeout:g}s:\n" + "\n".join(self.tail(n) for n in self.procs))

    def tail(self, name: str, n: int = 30) -> str:
        return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-n:])

    def _http_status(self, path: str, token: str | None = None) -> int:
        req = urllib.request.Request(self.dashboard + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def get(self, path: str):
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.gcs}"

    def nodes(self) -> list[dict]:
        return self.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]

    def alive_nodes(self) -> list[str]:
        nodes = self.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return sorted(n["node_id"] for n in nodes if n["state"] == "ALIVE")

    def stop(self) -> None:
        for name in ("worker", "head"):  # the head last
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()  # `ray start --block` stops its node's processes on SIGTERM
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


