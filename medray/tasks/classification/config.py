"""task=classification's own options: the operating threshold (``threshold.*``) and
test-time augmentation (``tta``)."""

from __future__ import annotations

from dataclasses import dataclass

from medray.errors import fail as _fail

THRESHOLD_METHODS = ("fixed", "youden", "sensitivity", "specificity")
TTA_MODES = ("none", "tencrop")


@dataclass
class ThresholdConfig:
    """The operating threshold (binary: the positive class's probability; multilabel: each
    label's), chosen on the baseline's predictions of a validation split and applied
    unchanged to baseline and candidate on the evaluated split."""

    # fixed = ``value``; youden = max sensitivity + specificity − 1; sensitivity /
    # specificity = the threshold reaching ``target`` on the validation split.
    method: str = "fixed"
    target: float | None = None
    value: float = 0.5
    # Where the threshold is chosen; null = calibration.split (never the evaluated split).
    split: str | None = None
    # Validation samples the baseline scores for it (a deterministic subset; null = all).
    num_samples: int | None = 2000

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            _fail("threshold.method", self.method, f"use one of {', '.join(THRESHOLD_METHODS)}")
        if self.method in ("sensitivity", "specificity"):
            if self.target is None or not 0 < self.target <= 1:
                _fail("threshold.target", self.target, f"threshold.method={self.method} needs the {self.method} to reach, "
                      "a fraction in (0, 1], e.g. threshold.target=0.95")
        elif self.target is not None:
            _fail("threshold.target", self.target, f"threshold.method={self.method} takes no target; remove it "
                  "(or use threshold.method=sensitivity|specificity)")
        if not 0 <= self.value <= 1:
            _fail("threshold.value", self.value, "use a probability in [0, 1], e.g. 0.5")
        if self.num_samples is not None and self.num_samples < 10:
            _fail("threshold.num_samples", self.num_samples, "use at least 10 validation samples, or null for the whole split")
