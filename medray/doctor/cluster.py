"""The doctor's cheap checks on every node of a Ray cluster, before a job's work lands there.

A GPU node may lack what the head node has (TensorRT, onnxruntime-gpu, OpenVINO, a driver):
:func:`check_nodes` runs :func:`medray.doctor.checks.capability` in a zero-CPU task pinned
to each alive node that could host the job's actors, and fails with every node that cannot
run a requested backend × precision × device, naming the node and the fix.
"""

from __future__ import annotations

import logging
import platform

from medray.errors import ConfigError

log = logging.getLogger("medray.doctor")


def node_report(runs: list[tuple[str, str, str]]) -> dict:
    """This node's :func:`capability` of each ``(backend, precision, device)``."""
    from medray.doctor.checks import capability

    return {"hostname": platform.node(), "records": [capability(*r).as_dict() for r in runs]}


def _hosts(node: dict, runs: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The runs whose actors this node can host (GPU runs on GPU nodes, CPU runs where there are CPUs)."""
    res = node.get("Resources") or {}
    return [r for r in runs if (res.get("GPU", 0) >= 1 if r[2] == "cuda" else res.get("CPU", 0) > 0)]


def check_nodes(runs: list[tuple[str, str, str]], timeout_s: float = 300.0) -> list[dict]:
    """Every alive node's report; raises ConfigError naming each node that cannot run a run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    runs = sorted(set(runs))
    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    pending = []
    for node in ray.nodes():
        todo = _hosts(node, runs) if node.get("Alive") else []
        if todo:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            pending.append((node, task.options(scheduling_strategy=strategy).remote(todo)))
    problems, reports = [], []
    for node, ref in pending:
        where = f"node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:12]})"
        try:
            rep = ray.get(ref, timeout=timeout_s)
        except Exception as e:  # the check itself could not run there: as bad as a failed check
            problems.append(f"{where}: the node check did not run ({type(e).__name__}: {e})")
            continue
        rep.update(node_id=node["NodeID"], address=node.get("NodeManagerAddress"))
        reports.append(rep)
        for r in rep["records"]:
            if r["status"] != "ok":
                problems.append(f"{where}, host {rep['hostname']}: {r['backend']}-{r['precision']} on {r['device']} "
                                f"is {r['status']}: {r['reason']}" + (f"; fix: {r['fix']}" if r["fix"] else ""))
    if problems:
        raise ConfigError(
            f"the Ray cluster cannot run this job ({len(problems)} problem(s), nothing was started): "
            + " | ".join(problems) + ". `python -m medray.doctor` on that node shows the full check "
            "(ray.check_nodes=false skips this check)"
        )
    log.info("node check: %d node(s) can run %s", len(reports), ", ".join(f"{b}-{p} on {d}" for b, p, d in runs))
    return reports
