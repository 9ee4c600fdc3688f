"""The report axis' options (``report.*``): what report.md / metrics.json break results down by."""

from __future__ import annotations

from dataclasses import dataclass

from medray.errors import fail as _fail


@dataclass
class ReportConfig:
    """What report.md / metrics.json break the results down by."""

    # Metadata columns whose groups get their own AUC and the candidate's change (null =
    # the dataset's: ChestX-ray14's Patient Gender, Age band, View Position; every column
    # of data.metadata).  [] = none.
    subgroups: list[str] | None = None
    # Groups smaller than this are not reported (their AUC is noise).
    min_subgroup_size: int = 10
    # ECE bins (equal width and equal mass).
    calibration_bins: int = 15
    # PNGs (ROC, reliability, confusion, subgroup ΔAUC, flipped samples) beside report.md.
    plots: bool = True
    # task=segmentation: HD95 and surface Dice at this tolerance (mm) beside Dice; null = off.
    surface_tolerance_mm: float | None = 2.0

    def __post_init__(self) -> None:
        if self.min_subgroup_size < 1:
            _fail("report.min_subgroup_size", self.min_subgroup_size, "use a positive number of samples, e.g. 10")
        if self.calibration_bins < 2:
            _fail("report.calibration_bins", self.calibration_bins, "use at least 2 bins (15 is usual)")
        if self.surface_tolerance_mm is not None and not self.surface_tolerance_mm > 0:
            _fail("report.surface_tolerance_mm", self.surface_tolerance_mm, "use a positive tolerance in mm (e.g. 2), or null")
