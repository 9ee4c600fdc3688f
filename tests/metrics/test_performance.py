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


def _timeline(n: int, read_rate: float, infer_rate: float, ready: float, batch: int = 8):
    """A simulated run: reads from t=0 at ``read_rate``, one actor from ``ready`` predicting
    batches at ``infer_rate`` as soon as their samples are read."""
    import numpy as np

    t_read = (np.arange(n) + 1) / read_rate
    t_read0 = t_read - 1 / read_rate
    t_start, t_end, uid = np.zeros(n), np.zeros(n), []
    t = ready
    for b, i in enumerate(range(0, n, batch)):
        j = min(n, i + batch)
        t = max(t, t_read[j - 1])
        t_start[i:j], t = t, t + (j - i) / infer_rate
        t_end[i:j] = t
        uid += [f"actor:{b}"] * (j - i)
    return t_read0, t_read, t_start, t_end, uid, float(t_end.max())


@pytest.mark.parametrize("read_rate, infer_rate", [(100.0, 1000.0), (1000.0, 100.0)])
def test_end_to_end_throughput_is_the_slower_stage_whatever_the_set_size(read_rate, infer_rate):
    """A small set is read before the actor is up (banked): its end-to-end rate must still be
    the slower stage's, as a large set's is (the old actor-clock span gave the backend's)."""
    from medray.metrics.performance import pipeline_rates

    slower = min(read_rate, infer_rate)
    for n in (256, 2048):
        t_read0, t_read, t_start, t_end, uid, done = _timeline(n, read_rate, infer_rate, ready=3.0)
        r = pipeline_rates(t_read0, t_read, t_start, t_end, uid, t_submit=0.0, t_done=done)
        assert r["throughput_sps"] == pytest.approx(slower, rel=0.05), (n, r)
        assert r["startup_s"] == pytest.approx(3.0) and r["wall_s"] == pytest.approx(done)
        assert r["inference_sps"] == pytest.approx(infer_rate, rel=1e-6)  # busy time only


def test_inference_capacity_sums_the_actors():
    import numpy as np

    from medray.metrics.performance import pipeline_rates

    # two actors, 10 samples each: one busy 1 s in total, the other 0.5 s
    t_start = np.r_[np.zeros(5), np.full(5, 2.0), np.zeros(10)]
    t_end = np.r_[np.full(5, 0.5), np.full(5, 2.5), np.full(10, 0.5)]
    uid = ["a:0"] * 5 + ["a:1"] * 5 + ["b:0"] * 10
    r = pipeline_rates(np.full(20, -0.5), np.zeros(20), t_start, t_end, uid, t_submit=-1.0, t_done=3.0)
    assert r["inference_sps"] == pytest.approx(10 / 1.0 + 10 / 0.5)
    assert r["startup_s"] == pytest.approx(1.0) and r["throughput_sps"] == pytest.approx(20 / 3.0)
    empty = pipeline_rates([], [], [], [], [], 0.0, 1.0)
    assert empty["throughput_sps"] is None and empty["inference_sps"] is None and empty["wall_s"] == 1.0


def test_busy_time_is_the_union_of_the_intervals():
    from medray.metrics.performance import busy_time

    assert busy_time([0, 1, 5], [2, 3, 6]) == pytest.approx(4.0)  # [0,3] ∪ [5,6]
    assert busy_time([0, 0], [1, 1]) == pytest.approx(1.0) and busy_time([], []) == 0.0


def test_a_read_workers_first_block_does_not_set_the_read_rate():
    """A new read worker imports the decoders in its first block: that block is left out."""
    import numpy as np

    from medray.metrics.performance import pipeline_rates

    # 3 blocks of 10 by one worker: the first took 2 s (imports), the others 0.1 s each
    t0 = np.repeat([0.0, 2.0, 2.1], 10)
    t1 = np.repeat([2.0, 2.1, 2.2], 10)
    r = pipeline_rates(t0, t1, np.full(30, 2.2), np.full(30, 2.21), ["a:0"] * 30, 0.0, 2.21, read_pid=np.ones(30))
    assert r["throughput_sps"] == pytest.approx(20 / 0.2)


def test_a_retried_batch_is_counted_once_in_the_rates():
    """A batch delivered twice (its actor retried after returning it) is one batch of work:
    execute drops the identical second copy before the rates, as here."""
    import numpy as np
    import pandas as pd

    from medray.pipeline.execute import rates
    from medray.pipeline.faults import dedupe_retried

    n = 64
    t_read0, t_read, t_start, t_end, uid, done = _timeline(n, 1000.0, 100.0, ready=1.0)
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "probs": [np.array([0.3, 0.7], np.float32)] * n,
                       "t_read0": t_read0, "t_read": t_read, "t_start": t_start, "t_end": t_end, "batch_uid": uid,
                       "read_pid": 1})
    again = df.iloc[:8].assign(batch_uid="actor:retry", t_start=done, t_end=done + 0.08)  # the same 8 outputs again
    both = pd.concat([df, again], ignore_index=True)
    clock = {"t_submit": 0.0, "t_done": done + 0.08}
    once, n_dup = dedupe_retried("r", both)
    assert n_dup == 8 and len(once) == n
    right, wrong = rates(once, clock), rates(both, clock)
    assert right["inference_sps"] == pytest.approx(100.0, rel=1e-6)
    # The end-to-end rate is samples over the driver's clock: 64 samples, not 72.
    assert right["throughput_sps"] == pytest.approx(64 / (clock["t_done"] - 1.0), rel=1e-6)
    assert wrong["throughput_sps"] == pytest.approx(72 / (clock["t_done"] - 1.0), rel=1e-6)  # the defect
