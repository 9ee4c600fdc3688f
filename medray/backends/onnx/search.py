"""The INT8 repair's search: the fewest layer groups kept in float so that the clinical
gate holds, judged by the task's own metric on the validation split.

Pure logic over two callables — ``evaluate(kept) -> metrics`` (the metrics of the INT8
model with the ``kept`` groups in float) and the :class:`Gate` limits — so it is the same
for every backend and tested without a model.

1. full INT8: if it passes, nothing is kept;
2. sensitivity probes, cheapest first (the proxy order: the groups whose inputs INT8
   damages most): ``leave_one_out`` = all groups INT8 but this one (stops at the first
   that passes: one group is the smallest non-empty set), or ``only_one`` = only this
   group INT8;
3. the groups ranked by the metric (ties: proxy order); a binary search for the shortest
   passing prefix, at most ``max_kept`` of the groups;
4. backward pruning: a kept group whose return to INT8 still passes goes back.

Every evaluation is logged (step, kept set, metrics, margin, time); evaluations are
memoised by kept set, and ``budget_s`` stops the search with the best passing set found.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger("medray.backends.repair")

# Float noise: a drop of exactly the limit passes.
EPS = 1e-12
PROBES = ("leave_one_out", "only_one")
# The share of quantization.repair_budget_s the probes may take before the prefix search.
PROBE_SHARE = 0.5
SUBGROUP = "@"  # "<metric>@<column>=<group>": a subgroup's value of a metric


@dataclass(frozen=True)
class Gate:
    """One limit of the clinical gate, on the validation split.

    ``metric`` may drop by at most ``max_drop`` (absolute) from the reference (the fp32
    model's value), or must stay at least ``min_ratio`` × the reference (MLPerf's 99.9 %
    Dice rule).  ``subgroups``: the limit holds in every subgroup of ``metric`` (the worst
    one counts).  ``key``: the config key it came from (messages).
    """

    metric: str
    max_drop: float | None = None
    min_ratio: float | None = None
    subgroups: bool = False
    key: str = ""

    def _pairs(self, ref: dict, got: dict) -> list[tuple[str, float | None, float | None]]:
        if not self.subgroups:
            return [(self.metric, ref.get(self.metric), got.get(self.metric))]
        prefix = f"{self.metric}{SUBGROUP}"
        return [(k, v, got.get(k)) for k, v in ref.items() if k.startswith(prefix)]

    def slack(self, ref: dict, got: dict) -> tuple[float, str]:
        """(limit − shortfall, the worst metric's name): ≥ 0 passes; −inf when unmeasurable."""
        worst, name = math.inf, self.metric
        pairs = self._pairs(ref, got)
        if not pairs:
            return -math.inf, f"{self.metric} (no subgroup measurable)" if self.subgroups else self.metric
        for k, r, g in pairs:
            if r is None or g is None or not math.isfinite(r) or not math.isfinite(g):
                return -math.inf, k
            s = self.max_drop - (r - g) if self.max_drop is not None else g - self.min_ratio * r
            if s < worst:
                worst, name = s, k
        return worst, name

    def describe(self) -> str:
        what = f"{self.metric} in every subgroup" if self.subgroups else self.metric
        limit = f"drop <= {self.max_drop:g}" if self.max_drop is not None else f">= {self.min_ratio:g} x fp32"
        return f"{what} {limit}" + (f" ({self.key})" if self.key else "")


def margin(gates: Iterable[Gate], ref: dict, got: dict) -> float:
    """The smallest slack over the gates (≥ 0: every limit holds)."""
    return min((g.slack(ref, got)[0] for g in gates), default=math.inf)


def violations(gates: Iterable[Gate], ref: dict, got: dict) -> list[str]:
    """What fails, in words (empty = the gate holds)."""
    out = []
    for g in gates:
        s, name = g.slack(ref, got)
        if s < -EPS:
            out.append(f"{g.describe()}: {name} {_fmt(got.get(name))} vs fp32 {_fmt(ref.get(name))}"
                       if math.isfinite(s) else f"{g.describe()}: {name} not measurable")
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def summary(gates: Iterable[Gate], metrics: dict) -> dict:
    """The metrics a step records: the non-subgroup ones, and the lowest subgroup of each subgroup gate."""
    out = {k: (None if v is None else round(float(v), 6)) for k, v in metrics.items() if SUBGROUP not in k}
    for g in gates:
        if g.subgroups:
            sub = {k: v for k, v in metrics.items() if k.startswith(f"{g.metric}{SUBGROUP}") and v is not None}
            if sub:
                k = min(sub, key=lambda k: sub[k] if math.isfinite(sub[k]) else -math.inf)
                out[f"{g.metric}{SUBGROUP}lowest"] = {"group": k.split(SUBGROUP, 1)[1], "value": round(float(sub[k]), 6)}
    return out


@dataclass
class SearchResult:
    """What the search found; ``kept`` None: no INT8 set passed (``stopped`` says why)."""

    kept: list[str] | None
    passed: bool
    full_int8: dict
    final: dict | None
    steps: list[dict] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    evaluations: int = 0
    reused: int = 0
    stopped: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Search:
    """One search's memo, log and budget."""

    def __init__(self, evaluate, gates, ref, budget_s, memo):
        self.evaluate, self.gates, self.ref = evaluate, list(gates), ref
        self.t0, self.budget = time.perf_counter(), budget_s
        self.memo: dict[frozenset, dict] = memo if memo is not None else {}
        self.res = SearchResult(None, False, {}, None)

    def left(self) -> bool:
        return time.perf_counter() - self.t0 < self.budget

    def margin(self, kept: frozenset) -> float:
        return margin(self.gates, self.ref, self.memo[kept])

    def passes(self, kept: frozenset) -> bool:
        return self.margin(kept) >= -EPS

    def ev(self, kept: frozenset, step: str) -> dict:
        if kept in self.memo:
            self.res.reused += 1
        else:
            self.memo[kept] = self.evaluate(kept)
            self.res.evaluations += 1
        m = self.margin(kept)
        self.res.steps.append({"step": step, "kept": sorted(kept), "metrics": summary(self.gates, self.memo[kept]),
                               "margin": None if not math.isfinite(m) else round(m, 6), "passes": m >= -EPS,
                               "t_s": round(time.perf_counter() - self.t0, 3)})
        log.info("repair search %s: %d kept%s, margin %.4f (%s) at %.0f s", step, len(kept),
                 f" ({sorted(kept)[0]}{', ...' if len(kept) > 1 else ''})" if kept else "", m,
                 "passes" if m >= -EPS else "fails", self.res.steps[-1]["t_s"])
        return self.memo[kept]


def sensitivity(s: _Search, groups: list[str], order: list[str], probe: str) -> dict[str, float]:
    """The margin of each probe, in ``order`` until :data:`PROBE_SHARE` of the budget is
    spent (unprobed groups keep their proxy rank); a passing leave-one-out probe ends the
    probing.  The rest of the budget is the binary search's and the pruning's: a model of
    a hundred layers at seconds per evaluation would otherwise spend it all on probes."""
    out: dict[str, float] = {}
    everything = frozenset(groups)
    for g in order:
        if time.perf_counter() - s.t0 >= PROBE_SHARE * s.budget:
            break
        kept = frozenset([g]) if probe == "leave_one_out" else everything - {g}
        s.ev(kept, f"probe:{probe}")
        out[g] = s.margin(kept)
        if probe == "leave_one_out" and out[g] >= -EPS:
            break
    return out


def _rank(groups: list[str], order: list[str], sens: dict[str, float], probe: str) -> list[str]:
    """Most useful to keep first: the largest leave-one-out margin, or the smallest margin
    with only that group in INT8 (the most harmful); unprobed groups last, in proxy order."""
    rank = {g: i for i, g in enumerate(order)}
    sign = -1 if probe == "leave_one_out" else 1

    def key(g: str):
        v = sens.get(g)
        return (0, sign * v, rank[g]) if v is not None and math.isfinite(v) else (1, 0, rank[g])

    return sorted(groups, key=key)


def _shortest_prefix(s: _Search, ranked: list[str], limit: int) -> frozenset | None:
    """Binary search for the shortest passing prefix of ``ranked`` (monotone assumed;
    the pruning pass makes up for some of what that misses)."""
    if not s.left():
        return None
    top = frozenset(ranked[:limit])
    s.ev(top, "prefix")
    if not s.passes(top):
        return None
    best, lo, hi = top, 1, limit
    while lo < hi and s.left():
        mid = (lo + hi) // 2
        cand = frozenset(ranked[:mid])
        s.ev(cand, "prefix")
        if s.passes(cand):
            hi, best = mid, cand
        else:
            lo = mid + 1
    return best


def _prune(s: _Search, best: frozenset, ranked: list[str]) -> frozenset:
    for g in sorted(best, key=lambda g: -ranked.index(g)):  # least useful first
        if not s.left() or len(best) <= 1:
            break
        trial = best - {g}
        s.ev(trial, "prune")
        if s.passes(trial):
            best = trial
    return best


@dataclass(frozen=True)
class SearchOptions:
    """``probe``: leave_one_out | only_one; ``budget_s``: wall-clock limit; ``max_kept``: the
    largest fraction of the groups that may be kept in float."""

    probe: str = "leave_one_out"
    budget_s: float = 600.0
    max_kept: float = 0.5


def search(groups: list[str], evaluate: Callable[[frozenset], dict], gates: Iterable[Gate], ref: dict, *,
           order: list[str] | None = None, options: SearchOptions = SearchOptions(),
           memo: dict | None = None) -> SearchResult:
    """The smallest set of ``groups`` kept in float so that ``gates`` hold against ``ref``.

    ``order``: the probes' order (cheapest / most suspicious first); ``memo``: evaluations
    already made (kept set → metrics), reused and extended.
    """
    probe, max_kept = options.probe, options.max_kept
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r}: use one of {', '.join(PROBES)}")
    order = list(order or groups)
    s = _Search(evaluate, gates, ref, options.budget_s, memo)
    s.res.full_int8 = s.ev(frozenset(), "full_int8")
    best: frozenset | None = frozenset() if s.passes(frozenset()) else None
    limit = int(max_kept * len(groups))
    if best is None and limit == 0:
        s.res.stopped = f"quantization.repair_max_kept={max_kept:g} allows no layer in float ({len(groups)} layers)"
    elif best is None:
        sens = sensitivity(s, groups, order, probe)
        s.res.sensitivity = {k: (round(v, 6) if math.isfinite(v) else None) for k, v in sens.items()}
        ranked = _rank(groups, order, sens, probe)
        single = [g for g, v in sens.items() if probe == "leave_one_out" and v >= -EPS]
        best = frozenset(single[:1]) if single else _shortest_prefix(s, ranked, limit)
        if best is not None and not single:
            best = _prune(s, best, ranked)
        if best is None:
            s.res.stopped = ("time budget spent (quantization.repair_budget_s)" if not s.left() else
                             f"no set of at most {limit} of {len(groups)} layers (quantization.repair_max_kept="
                             f"{max_kept:g}) passes")
    s.res.wall_s = round(time.perf_counter() - s.t0, 3)
    if best is not None:
        s.res.kept, s.res.passed, s.res.final = sorted(best), True, s.memo[best]
    return s.res


class Unavailable(Exception):
    """A fallback precision this backend / machine cannot run: the step is skipped, with why."""


def fallback_chain(steps: list[tuple[str, Callable[[], dict | None]]], gates: Iterable[Gate], ref: dict) -> list[dict]:
    """Try each ``(precision, evaluate)`` in order and stop at the first that passes; every
    step is reported.  ``evaluate`` returns the validation metrics, None when it has no
    candidate (the INT8 search found none), or raises :class:`Unavailable` (skipped)."""
    gates = list(gates)
    report = []
    for name, fn in steps:
        t = time.perf_counter()
        entry: dict = {"precision": name}
        try:
            metrics = fn()
        except Unavailable as e:
            metrics, entry["skipped"] = None, str(e)
        ok = metrics is not None and margin(gates, ref, metrics) >= -EPS
        entry.update(metrics=None if metrics is None else summary(gates, metrics), passes=ok,
                     violations=violations(gates, ref, metrics) if metrics is not None else [],
                     s=round(time.perf_counter() - t, 2))
        report.append(entry)
        if ok:
            break
    return report
