"""The Ray cluster a run uses: start or connect, check it has the device asked for, its shape.

Everything here runs on the driver; the device checks fail before any artifact is built.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from medray.config import EvalConfig
from medray.errors import ConfigError
from medray.monitoring import step

log = logging.getLogger("medray.cluster")


def start_ray(cfg: EvalConfig) -> bool:
    """Connect to ``ray.address`` or start an embedded local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if cfg.ray.address is None:
        kwargs.update(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
        if cfg.ray.include_dashboard is not None:
            kwargs["include_dashboard"] = cfg.ray.include_dashboard
    else:
        kwargs["address"] = cfg.ray.address
    ray.init(**kwargs)
    from medray import console

    console.route_worker_logs()  # the workers' output to evaluate.log, not the console
    if cfg.ray.address is None:
        start_watchdog()
    return True


def start_watchdog() -> None:
    """Stop the embedded Ray's processes if this driver dies without shutting it down
    (:mod:`medray.pipeline.watchdog`); a detached process of its own."""
    import subprocess
    import sys

    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return
    pids = [str(info.process.pid) for infos in node.all_processes.values() for info in infos if info.process]
    if not pids:
        return
    subprocess.Popen([sys.executable, "-m", "medray.pipeline.watchdog", str(os.getpid()), *pids],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def local_gpu_count() -> int:
    """GPUs an embedded Ray would see (CUDA_VISIBLE_DEVICES respected)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def preflight(cfg: EvalConfig) -> None:
    """Fail before any work when the embedded Ray could not give the device asked for."""
    if cfg.ray.address is None and cfg.ray.num_gpus:
        have = local_gpu_count()
        if cfg.ray.num_gpus > have:
            raise ConfigError(
                f"ray.num_gpus={cfg.ray.num_gpus}: this machine shows {have} GPU(s) to CUDA, and an embedded Ray "
                f"must not advertise GPUs it does not have; use ray.num_gpus<={have} or null"
            )
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cfg.ray.num_cpus > cores:
            raise ConfigError(
                f"ray.num_cpus={cfg.ray.num_cpus}: this machine has {cores} CPU cores; advertising more would "
                f"oversubscribe them (threads are sized from Ray's count); use ray.num_cpus<={cores} or null"
            )
    if cfg.device == "cuda" and cfg.ray.address is None:
        gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else local_gpu_count()
        if gpus < 1:
            raise ConfigError(
                "device=cuda: the embedded local Ray would have no GPU (this machine shows none to "
                f"CUDA; ray.num_gpus is not set); {_gpu_fix(cfg)}"
            )


def _gpu_fix(cfg: EvalConfig) -> str:
    if cfg.backend.SUPPORTED.keys() == {"cuda"}:  # trt: there is no CPU to fall back to
        return f"backend={cfg.backend.name} runs only on NVIDIA GPUs: run on a GPU machine, or ray.address=<cluster with GPUs>"
    return "run with device=cpu, or ray.address=<cluster with GPUs>"


def require_cluster_gpu(cfg: EvalConfig) -> None:
    """device=cuda on a connected cluster: fail before any artifact is built if Ray's
    cluster resources list no GPU (a remote cluster's GPUs are known only once connected)."""
    import ray

    res = ray.cluster_resources()
    if cfg.device == "cuda" and res.get("GPU", 0) < 1:
        raise ConfigError(
            f"device=cuda: the Ray cluster has no GPU (resources: {res.get('CPU', 0):g} CPU, "
            f"{res.get('GPU', 0):g} GPU); {_gpu_fix(cfg)}"
        )


def wait_for_gpus(n: int, timeout_s: float, poll_s: float = 5.0) -> None:
    """Ask the autoscaler for ``n`` GPUs (``ray.min_gpus``) and wait until the cluster has
    them: the actor pool is sized on the GPUs present when a run starts, so GPU worker
    nodes that scale from zero must be up first."""
    import ray
    from ray.autoscaler.sdk import request_resources

    have = float(ray.cluster_resources().get("GPU", 0))
    if have >= n:
        return
    request_resources(bundles=[{"GPU": 1}] * n)
    t0 = time.perf_counter()
    with step(f"ray.min_gpus={n}: waiting for the autoscaler (cluster has {have:g} GPU)", log):
        while (have := float(ray.cluster_resources().get("GPU", 0))) < n:
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(
                    f"ray.min_gpus={n}: the cluster has {have:g} GPU(s) after {timeout_s:g}s; check `ray status` "
                    "(instance limits, spot capacity, max_workers in cluster.yaml) or raise ray.scale_timeout_s"
                )
            time.sleep(poll_s)


def cluster_shape() -> tuple[float, float, int]:
    """(CPUs, GPUs, cores of the smallest alive node) of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    cores = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return float(res.get("CPU", 0)), float(res.get("GPU", 0)), max(1, min(cores or [os.cpu_count() or 1]))
