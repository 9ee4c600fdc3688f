"""Options of backend=torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medray.backends.config import BackendConfig


@dataclass
class TorchConfig(BackendConfig):
    """PyTorch eager: the baseline."""

    name: str = "torch"
    channels_last: bool = False

    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "cpu": ("fp32", "bf16"),
        "cuda": ("fp32", "tf32", "fp16", "bf16"),
    }
    NEEDS_TORCH_MODEL: ClassVar[bool] = True
    LIBRARIES: ClassVar[dict[str, str]] = {"torch": "pip install 'torch>=2.4,<2.15'"}
