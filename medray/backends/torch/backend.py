"""PyTorch eager inference: fp32 (TF32 explicitly off), tf32, fp16/bf16 autocast."""

from __future__ import annotations

import contextlib

import numpy as np

from medray.backends.base import Backend, BackendError

_AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(Backend):
    name = "torch"

    @classmethod
    def capability(cls, precision: str, device: str, detail: dict) -> tuple[str, str, str] | None:
        from medray.machine import machine

        if device == "cpu" and precision == "bf16" and not {"avx512_bf16", "amx_bf16"} & set(machine(False)["cpu_flags"]):
            detail["note"] = "no AVX512_BF16/AMX: torch emulates bf16 on this CPU (slower than fp32)"
        return None

    def _load(self) -> None:
        import torch

        from medray.models.loaders import load_torch_model

        spec = self.spec
        torch.set_num_threads(spec.threads)
        if spec.device == "cuda":
            if not torch.cuda.is_available():
                raise BackendError(f"{spec.name}: device=cuda but this worker sees no CUDA device")
            # PyTorch lets cuDNN use TF32 by default: "fp32" would silently be TF32.
            tf32 = spec.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        m = spec.model
        model = load_torch_model(m)
        self._device = torch.device(spec.device)
        model = model.to(self._device)
        if getattr(spec.backend, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        dtype = _AUTOCAST.get(spec.precision)
        self._autocast = (
            (lambda: torch.autocast(self._device.type, dtype=getattr(torch, dtype))) if dtype else contextlib.nullcontext
        )
        self._torch = torch

    def _infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        t = torch.from_numpy(x)
        if self._device.type == "cuda":
            t = t.pin_memory().to(self._device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            out = self._model(t)
        return out.float().cpu().numpy()

    def _close(self) -> None:
        self._model = None

    def _effective_precision(self) -> dict:
        torch = self._torch
        info = {"requested": self.spec.precision, "source": "torch"}
        if self.spec.precision in _AUTOCAST:
            info["executed"] = self.spec.precision
            info["mechanism"] = f"autocast({_AUTOCAST[self.spec.precision]})"
        elif self.spec.device == "cuda":
            tf32 = bool(torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32)
            info["executed"] = "tf32" if tf32 else "fp32"
        else:
            info["executed"] = "fp32"
        info["param_dtypes"] = sorted({str(p.dtype) for p in self._model.parameters()})
        return info
