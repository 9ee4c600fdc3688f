"""What this node is: Python, OS, CPU features, GPUs, and the inference libraries it can import.

Nothing here needs Ray, Hydra or any optional backend: a library that is not installed is
reported as missing with the command that installs it.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess

from medray.machine import machine

# CPU features that decide which kernels the backends may use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# module → (what it is for, how to install it): medray's own, then every backend's
# declared libraries (medray.backends.config.BackendConfig.LIBRARIES), see wanted().
CORE_LIBRARIES = {
    "torch": ("exports, the demo models", "pip install 'torch>=2.4,<2.15'"),
    "torchvision": ("timm's dependency", "pip install 'torchvision>=0.19,<0.30'"),
    "timm": ("model=timm / demo models", "pip install 'timm>=1,<2'"),
    "onnx": ("ONNX exports", "pip install 'onnx>=1.16,<2'"),
    "ray": ("running jobs (not the doctor)", "pip install -e ."),
}


def wanted() -> dict[str, tuple[str, str]]:
    """Every library the doctor reports: medray's own and each registered backend's
    (its purpose: the backends and precisions that import it)."""
    from medray.backends import REGISTRY, config_class

    uses: dict[str, list[str]] = {}
    fixes: dict[str, str] = {k: v[1] for k, v in CORE_LIBRARIES.items()}
    for name in REGISTRY:
        cls = config_class(name)
        for lib, fix in cls.LIBRARIES.items():
            uses.setdefault(lib, []).append(f"backend={name}")
            fixes.setdefault(lib, fix)
        for precision, libs in cls.PRECISION_LIBRARIES.items():
            for lib, fix in libs.items():
                uses.setdefault(lib, []).append(f"backend={name} precision={precision}")
                fixes.setdefault(lib, fix)
    out = {}
    for lib in [*CORE_LIBRARIES, *(k for k in uses if k not in CORE_LIBRARIES)]:
        purpose = ", ".join(uses.get(lib, []) + ([CORE_LIBRARIES[lib][0]] if lib in CORE_LIBRARIES else []))
        out[lib] = (purpose, fixes[lib])
    return out


def cpu() -> dict:
    """CPU model, cores, memory and the features of :data:`CPU_FLAGS` present."""
    m = machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": m["cpu"], "cores": m["cores"], "memory_gib": m["memory_gib"],
            "flags": {f: f in flags for f in CPU_FLAGS}}


def has_cpu_bf16(info: dict | None = None) -> bool:
    flags = (info or cpu())["flags"]
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def system() -> dict:
    return {"python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(), "hostname": platform.node()}


def import_library(name: str):
    """The module, or raise ImportError with the reason (a broken install included)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise
    except Exception as e:  # a library that is present but fails to initialise
        raise ImportError(f"{name} is installed but fails to import: {type(e).__name__}: {e}") from None


def libraries() -> dict:
    """Each library of :func:`wanted`: installed, version, or the error and the fix."""
    out = {}
    for name, (purpose, fix) in wanted().items():
        try:
            mod = import_library(name)
            out[name] = {"installed": True, "version": getattr(mod, "__version__", "?"), "for": purpose}
        except ImportError as e:
            out[name] = {"installed": False, "error": str(e), "fix": fix, "for": purpose}
    return out


def gpus() -> dict:
    """CUDA GPUs as torch sees them (name, compute capability, memory), the driver from
    nvidia-smi, the CUDA runtime torch was built with; ``available`` False with the reason."""
    out: dict = {"available": False, "devices": [], "driver": None, "cuda_runtime": None}
    try:
        import torch

        out["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            out["available"] = True
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out["devices"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                                       "memory_gib": round(p.total_memory / 2**30, 1)})
        else:
            out["reason"] = ("torch.cuda.is_available() is False"
                             + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                                if "CUDA_VISIBLE_DEVICES" in os.environ else "")
                             + ("; torch is a CPU-only build" if torch.version.cuda is None else ""))
    except Exception as e:
        out["reason"] = f"torch cannot query CUDA: {e}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                out["driver"] = r.stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    elif not out["available"]:
        out.setdefault("reason", "no CUDA device")
        out["reason"] += "; nvidia-smi not found (no NVIDIA driver on this node)"
    return out


def compute_capability(index: int = 0) -> tuple[int, int] | None:
    try:
        import torch

        return torch.cuda.get_device_capability(index) if torch.cuda.is_available() else None
    except Exception:
        return None
