"""What every benchmark (and the node doctor) records about the machine it ran on, so numbers can be compared."""

from __future__ import annotations

import os
import platform

# CPU features that change which kernels the backends pick (bf16/AMX paths, VNNI int8).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


# Always recorded with ``versions``; callers add the inference libraries
# (medray.backends.library_modules()).
CORE_MODULES = ("numpy", "PIL", "ray", "torch")


def machine(versions: bool = True, modules: tuple[str, ...] | list[str] = ()) -> dict:
    """CPU model and features, cores, memory, load, Python and (``versions``: imports them)
    the versions of :data:`CORE_MODULES` and ``modules``."""
    cpu, flags = None, set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    found = {}
    for mod in dict.fromkeys([*CORE_MODULES, *modules]) if versions else ():
        try:
            found[mod] = __import__(mod).__version__
        except Exception:  # not installed: the benchmark that needs it says so itself
            pass
    return {
        "cpu": cpu or platform.processor(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem,
        # A loaded machine makes every figure meaningless: recorded with the figures.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        **found,
    }
