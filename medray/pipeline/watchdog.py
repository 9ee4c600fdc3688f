"""The embedded Ray's watchdog: when the driver dies without shutting Ray down (kill -9, an
OOM kill), the processes it started — GCS, raylet, and the agents the raylet starts, which
otherwise outlive it with their ports open — are stopped.

    python -m medray.pipeline.watchdog <driver pid> <pid> [<pid> ...]

Started by :func:`medray.pipeline.cluster.start_ray` with the session's process ids; it
follows their descendants while the driver lives, and exits by itself once they are all
gone (a normal ``ray.shutdown()``).
"""

from __future__ import annotations

import os
import sys
import time

POLL_S = 1.0
GRACE_S = 5.0


def _tree(pids: set[int]):
    import psutil

    found = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            found[pid] = p
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            continue
    return found


def watch(driver: int, pids: set[int]) -> None:
    """Follow ``pids`` (and their descendants) while ``driver`` lives; stop them after."""
    import psutil

    known = _tree(pids)
    while True:
        time.sleep(POLL_S)
        alive = {pid: p for pid, p in known.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
        if not alive:
            return  # Ray was shut down normally
        if not psutil.pid_exists(driver):
            break
        known = {**alive, **_tree(set(alive))}
    procs = list(alive.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass


def main(argv: list[str]) -> None:
    driver, *pids = (int(a) for a in argv)
    watch(driver, set(pids))


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)
