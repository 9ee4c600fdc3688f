"""Subgroups of both tasks: which metadata columns the report breaks results down by, and
each group's change vs the baseline with the worst group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medray.errors import ConfigError

if TYPE_CHECKING:
    from medray.data.table import SampleTable
    from medray.tasks.base import RunConfig


def subgroup_columns(cfg: RunConfig, table: SampleTable) -> list[str]:
    """The columns of ``report.subgroups`` (null = the dataset's), checked to exist."""
    wanted = table.subgroup_columns if cfg.report.subgroups is None else list(cfg.report.subgroups)
    missing = [c for c in wanted if c not in table.samples.columns]
    if missing:
        have = table.subgroup_columns or "none (add data.metadata=<csv with sample_id + columns>)"
        raise ConfigError(f"report.subgroups: {missing} are not columns of dataset {table.name}; its subgroup columns: {have}")
    return wanted


def subgroup_changes(entry: dict, base_groups: dict, value: str, base_key: str, delta_key: str) -> None:
    """Each group of ``entry["subgroups"]`` gets the baseline's ``value`` (as ``base_key``) and
    the change (``delta_key``); ``entry["worst_subgroup"]`` is the group with the largest drop.
    Classification compares macro AUC, segmentation mean Dice."""
    worst = None
    for col, groups in entry["subgroups"].items():
        bmap = {g["group"]: g[value] for g in base_groups.get(col, [])}
        for g in groups:
            b = bmap.get(g["group"])
            g[base_key] = b
            g[delta_key] = g[value] - b if g[value] is not None and b is not None else None
            if g[delta_key] is not None and (worst is None or g[delta_key] < worst[delta_key]):
                worst = {"attribute": col, "group": g["group"], "n": g["n"], delta_key: g[delta_key]}
    entry["worst_subgroup"] = worst
