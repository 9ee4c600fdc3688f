"""Constants shared by test modules (importable through pytest's `pythonpath`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_ARCH = "resnet10t"
TINY_SIZE = 32
