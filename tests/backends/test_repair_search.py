"""The INT8 repair's search, gate and fallback chain as pure logic (fake evaluators with a
known answer), and the naming of layers (ONNX node → torch module)."""

from __future__ import annotations

import math

import pytest

from medray.backends.onnx.search import Gate, SearchOptions, Unavailable, fallback_chain, margin, search, violations
from medray.backends.onnx.surgery import torch_module_path

GROUPS = [f"/l{i}/Conv" for i in range(10)]
REF = {"auc_macro": 0.95}


def evaluator(needed: set[str], calls: list | None = None, per_missing: float = 0.1):
    """AUC = fp32's minus ``per_missing`` for every needed group that is not kept."""

    def evaluate(kept: frozenset) -> dict:
        if calls is not None:
            calls.append(kept)
        return {"auc_macro": REF["auc_macro"] - per_missing * len(needed - kept)}

    return evaluate


def test_gate_drop_ratio_subgroups_and_unmeasurable():
    g = Gate("auc_macro", max_drop=0.01)
    assert g.slack(REF, {"auc_macro": 0.94})[0] == pytest.approx(0.0)  # exactly the limit passes
    assert margin([g], REF, {"auc_macro": 0.939}) < 0
    assert g.slack(REF, {"auc_macro": None})[0] == -math.inf
    r = Gate("dice_mean", min_ratio=0.999)
    assert margin([r], {"dice_mean": 0.9}, {"dice_mean": 0.8991}) == pytest.approx(0.0, abs=1e-12)
    assert margin([r], {"dice_mean": 0.9}, {"dice_mean": 0.898}) < 0
    sub = Gate("auc_macro", max_drop=0.02, subgroups=True)
    ref = {"auc_macro": 0.9, "auc_macro@sex=F": 0.9, "auc_macro@sex=M": 0.8}
    got = {"auc_macro": 0.9, "auc_macro@sex=F": 0.89, "auc_macro@sex=M": 0.77}
    s, worst = sub.slack(ref, got)
    assert worst == "auc_macro@sex=M" and s == pytest.approx(-0.01)
    assert violations([sub], ref, got) == ["auc_macro in every subgroup drop <= 0.02: auc_macro@sex=M 0.7700 vs fp32 0.8000"]
    assert sub.slack({"auc_macro": 0.9}, got)[0] == -math.inf  # no subgroup measured: not a pass


def test_full_int8_that_passes_keeps_nothing():
    res = search(GROUPS, evaluator(set()), [Gate("auc_macro", max_drop=0.01)], REF)
    assert res.passed and res.kept == [] and res.evaluations == 1


def test_one_bad_layer_found_by_leave_one_out_in_proxy_order():
    calls = []
    order = ["/l7/Conv", "/l3/Conv", *[g for g in GROUPS if g not in ("/l7/Conv", "/l3/Conv")]]
    res = search(GROUPS, evaluator({"/l3/Conv"}, calls), [Gate("auc_macro", max_drop=0.01)], REF, order=order)
    assert res.kept == ["/l3/Conv"] and res.final == {"auc_macro": pytest.approx(0.95)}
    # full INT8, then the proxy's first two probes: the second passes and ends the search
    assert calls == [frozenset(), frozenset({"/l7/Conv"}), frozenset({"/l3/Conv"})]
    assert [s["step"] for s in res.steps] == ["full_int8", "probe:leave_one_out", "probe:leave_one_out"]
    assert res.steps[-1]["passes"] and res.steps[0]["metrics"] == {"auc_macro": pytest.approx(0.85)}


@pytest.mark.parametrize("probe", ["leave_one_out", "only_one"])
def test_two_bad_layers_need_the_binary_search_and_pruning(probe):
    needed = {"/l2/Conv", "/l8/Conv"}
    res = search(GROUPS, evaluator(needed), [Gate("auc_macro", max_drop=0.01)], REF, options=SearchOptions(probe=probe))
    assert set(res.kept) == needed and res.passed
    assert {"prefix"} <= {s["step"] for s in res.steps}
    # every step's kept set is logged with its metric and whether it passed
    for s in res.steps:
        assert s["passes"] == (needed <= set(s["kept"]))


def test_no_set_within_max_kept_or_budget_stops_with_the_reason():
    needed = set(GROUPS[:6])
    res = search(GROUPS, evaluator(needed), [Gate("auc_macro", max_drop=0.01)], REF, options=SearchOptions(max_kept=0.5))
    assert not res.passed and res.kept is None and "no set of at most 5 of 10 layers" in res.stopped
    res = search(GROUPS, evaluator({"/l1/Conv"}), [Gate("auc_macro", max_drop=0.01)], REF, options=SearchOptions(max_kept=0))
    assert res.kept is None and "allows no layer in float" in res.stopped and res.evaluations == 1
    res = search(GROUPS, evaluator(needed), [Gate("auc_macro", max_drop=0.01)], REF, options=SearchOptions(budget_s=1e-9))
    assert res.kept is None and res.stopped.startswith("time budget spent")


def test_memo_reuses_evaluations_of_an_earlier_search():
    calls, memo = [], {}
    gate = [Gate("auc_macro", max_drop=0.01)]
    search(GROUPS, evaluator({"/l5/Conv"}, calls), gate, REF, memo=memo)
    n = len(calls)
    res = search(GROUPS, evaluator({"/l5/Conv"}, calls), [Gate("auc_macro", max_drop=0.02)], REF, memo=memo)
    assert len(calls) == n and res.evaluations == 0 and res.reused == len(res.steps) and res.kept == ["/l5/Conv"]


def test_fallback_chain_reports_every_step_and_stops_at_the_first_pass():
    gates = [Gate("auc_macro", max_drop=0.01)]

    def unavailable():
        raise Unavailable("CPU has no FP16")

    steps = fallback_chain([("int8-mixed", lambda: None), ("fp16", unavailable), ("bf16", lambda: {"auc_macro": 0.90}),
                            ("fp32", lambda: {"auc_macro": 0.95}), ("never", lambda: 1 / 0)], gates, REF)
    assert [s["precision"] for s in steps] == ["int8-mixed", "fp16", "bf16", "fp32"]
    assert [s["passes"] for s in steps] == [False, False, False, True]
    assert steps[1]["skipped"] == "CPU has no FP16" and steps[0]["metrics"] is None
    assert steps[2]["violations"] == ["auc_macro drop <= 0.01: auc_macro 0.9000 vs fp32 0.9500"]


@pytest.mark.parametrize("node, module", [
    ("/stem/stem.3/Conv", "stem.3"),
    ("/layer2/layer2.0/down/down.0/Conv", "layer2.0.down.0"),
    ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
    ("/fc/Gemm", "fc"),
    ("/features/denseblock1/denselayer1/conv1/Conv", "features.denseblock1.denselayer1.conv1"),
    ("Conv_0", None),
])
def test_torch_module_path_from_exporter_scopes(node, module):
    assert torch_module_path(node) == module


def test_probes_leave_half_the_budget_to_the_prefix_search(monkeypatch):
    """120 layers at 10 s per evaluation and a 600 s budget: probing every layer would spend
    it all; the probes stop at half and the binary search over the proxy order finds the set."""
    import medray.backends.onnx.search as search_mod

    clock = [0.0]
    monkeypatch.setattr(search_mod.time, "perf_counter", lambda: clock[0])
    groups = [f"/l{i}/Conv" for i in range(120)]
    needed = {groups[3], groups[40]}
    inner = evaluator(needed, per_missing=0.1)

    def evaluate(kept):
        clock[0] += 10.0
        return inner(kept)

    res = search(groups, evaluate, [Gate("auc_macro", max_drop=0.01)], REF,
                 options=SearchOptions(budget_s=600, max_kept=0.5))
    probes = [s for s in res.steps if s["step"].startswith("probe")]
    assert len(probes) < 31 and res.passed and needed <= set(res.kept)
    assert {"prefix"} <= {s["step"] for s in res.steps}
