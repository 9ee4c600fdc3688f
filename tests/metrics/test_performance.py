"""latency_summary / speedup / throughput on hand-computed values."""

import math

import pytest

from medray.metrics.performance import latency_summary, speedup, throughput


def test_latency_summary_hand_computed():
    s = latency_summary([10.0, 20.0, 40.0], [2, 4, 4])
    # per-sample: 5, 5, 10 ; p95 linear: index 1.9 -> 5 + 0.9 * 5
    assert s["per_sample_p50"] == pytest.approx(5.0)
    assert s["per_sample_p95"] == pytest.approx(9.5)
    # total ms / total samples = 70 / 10 (not the mean of 5, 5, 10)
    assert s["per_sample_mean"] == pytest.approx(7.0)
    assert s["n_batches"] == 3


def test_latency_summary_even_count_and_last_partial_batch():
    s = latency_summary([16.0, 16.0, 16.0, 4.0], [8, 8, 8, 1])
    # per-sample: 2, 2, 2, 4 -> p50 2, p95 at index 2.85 -> 2 + .85 * 2
    assert s["per_sample_p50"] == pytest.approx(2.0)
    assert s["per_sample_p95"] == pytest.approx(3.7)
    assert s["per_sample_mean"] == pytest.approx(52 / 25)


def test_latency_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        latency_summary([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="no timed batches"):
        latency_summary([], [])
    with pytest.raises(ValueError, match="batch_sizes"):
        latency_summary([1.0], [0])
    with pytest.raises(ValueError, match="batch_ms"):
        latency_summary([float("nan")], [1])


def test_speedup_hand_computed():
    assert speedup(10.0, 4.0) == {
        "latency_reduction_pct": pytest.approx(60.0),
        "factor": pytest.approx(2.5),
    }
    slower = speedup(10.0, 20.0)
    assert slower["latency_reduction_pct"] == pytest.approx(-100.0)
    assert slower["factor"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "b,c", [(0, 5.0), (5.0, 0), (None, 5.0), (5.0, None), (math.nan, 1.0), (-1.0, 2.0)]
)
def test_speedup_guards(b, c):
    assert speedup(b, c) == {"latency_reduction_pct": None, "factor": None}


def test_throughput():
    assert throughput(100, 4.0) == pytest.approx(25.0)
    assert throughput(0, 5.0) == 0.0
    assert throughput(100, 0) is None
    assert throughput(100, None) is None
