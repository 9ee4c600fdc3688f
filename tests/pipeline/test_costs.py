"""What one sample costs each stage, measured on the driver before a CPU run (the CPU split)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from medray.pipeline import costs
from medray.tasks.classification import ClassificationTask

SLEEP_S = 0.004  # what the slow reader adds per sample


def _images(root, n: int) -> pd.DataFrame:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / f"img{i:03d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8)).save(p)
        rows.append({"sample_id": f"img{i:03d}", "path": str(p), "problem": ""})
    return pd.DataFrame(rows)


class SlowReader(ClassificationTask):
    """The classification reader, SLEEP_S slower per sample (a decoder of known cost)."""

    def reader(self, spec):
        fn, kwargs = super().reader(spec)

        def slow(batch, **kw):
            time.sleep(SLEEP_S * len(batch["path"]))
            return fn(batch, **kw)

        return slow, kwargs


def _cache(tmp_path, task, spec, samples, n_cached: int):
    """The decoded cache of ``task``'s reader with the first ``n_cached`` samples in it."""
    from medray.data.cache import DecodedCache, cache_parts, cached

    fn, kwargs = task.reader(spec)
    cache = DecodedCache(str(tmp_path / "cache"), cache_parts(fn, kwargs))
    cache.prepare()
    if n_cached:
        first, _ = cache.lookup(samples.head(n_cached))
        cached(fn, str(cache.dir))({c: first[c].to_numpy() for c in first.columns if c != "problem"}, **kwargs)
    todo, stats = cache.lookup(samples)
    assert stats["hits"] == n_cached
    return todo, str(cache.dir)


def test_read_cost_mixes_cache_hits_and_decoding_in_the_sets_proportion(tmp_path, tiny_spec):
    task, spec = SlowReader(), tiny_spec(batch_size=4)
    samples = _images(tmp_path / "img", 40)
    cold, _ = costs.read_cost(task, spec, samples)
    assert SLEEP_S <= cold < 3 * SLEEP_S  # the sleep, a 48-px PNG's decode, a loaded machine's slack
    todo, where = _cache(tmp_path, task, spec, samples, 20)
    half, rows = costs.read_cost(task, spec, todo, where)
    assert 0.5 * SLEEP_S <= half < 0.8 * cold  # half the samples read back without the decoder
    todo, where = _cache(tmp_path, task, spec, samples, 40)
    warm, _ = costs.read_cost(task, spec, todo, where)
    assert warm < 0.25 * cold
    # What the reader produced: the model's input pixels of readable samples, for the backend probe.
    assert rows["image"].dtype == np.uint8 and rows["image"].shape[1:] == (spec.model.input_size,) * 2
    assert "skipped_reason" not in rows and len(rows["sample_id"]) == costs.PROBE_SAMPLES


class SlowSecondHalf(ClassificationTask):
    """A set whose second half costs SLEEP_S more per sample (bigger images of one class)."""

    def reader(self, spec):
        fn, kwargs = super().reader(spec)

        def slow(batch, **kw):
            time.sleep(SLEEP_S * sum(int(p[-7:-4]) >= 20 for p in batch["path"]))
            return fn(batch, **kw)

        return slow, kwargs


def test_read_cost_samples_the_whole_set_not_its_head(tmp_path, tiny_spec):
    cost, _ = costs.read_cost(SlowSecondHalf(), tiny_spec(batch_size=4), _images(tmp_path / "img", 40))
    assert 0.3 * SLEEP_S < cost < 0.8 * SLEEP_S + 0.002  # about half the samples pay SLEEP_S


def test_backend_cost_is_measured_once_per_configuration(tmp_path, tiny_spec, monkeypatch):
    import torch

    task, spec = ClassificationTask(), tiny_spec(batch_size=4)
    _, rows = costs.read_cost(task, spec, _images(tmp_path / "img", 10))
    threads = torch.get_num_threads()
    first = costs.backend_cost(task, spec, rows, str(tmp_path))
    assert first > 0 and torch.get_num_threads() == threads  # the probe's one thread does not stay set
    assert len(list((tmp_path / "costs").glob("*.json"))) == 1

    def no_probe(*a):
        raise AssertionError("measured again")

    monkeypatch.setattr(costs, "_time_backend", no_probe)
    assert costs.backend_cost(task, spec, rows, str(tmp_path)) == first  # read back, not re-measured
    # Another batch, precision, TTA or medray source is another configuration.
    for other in (replace(spec, batch_size=8), replace(spec, precision="fp16"), replace(spec, tta="hflip")):
        with pytest.raises(AssertionError, match="measured again"):
            costs.backend_cost(task, other, rows, str(tmp_path))
    monkeypatch.setattr(costs, "_code", lambda: "edited")
    with pytest.raises(AssertionError, match="measured again"):
        costs.backend_cost(task, spec, rows, str(tmp_path))


@pytest.mark.parametrize("bad", ['{"infer_s": NaN}', '{"infer_s": -1}', '{"infer_s": null}', "{broken"])
def test_a_damaged_cost_file_is_measured_again(tmp_path, tiny_spec, monkeypatch, bad):
    task, spec = ClassificationTask(), tiny_spec(batch_size=4)
    _, rows = costs.read_cost(task, spec, _images(tmp_path / "img", 10))
    costs.backend_cost(task, spec, rows, str(tmp_path))
    (path,) = (tmp_path / "costs").glob("*.json")
    path.write_text(bad)
    monkeypatch.setattr(costs, "_time_backend", lambda *a: 0.123)
    assert costs.backend_cost(task, spec, rows, str(tmp_path)) == 0.123


def test_no_readable_sample_is_an_error_naming_it(tmp_path, tiny_spec, monkeypatch):
    # execute._costs turns it into a warning and the fixed split (test below).
    monkeypatch.setattr(costs, "MIN_SAMPLES", 4)
    bad = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)], "path": [str(tmp_path / f"gone{i}.png") for i in range(12)],
                        "problem": ""})
    with pytest.raises(ValueError, match="none of the 9 samples read to measure it was readable"):
        costs.stage_costs(ClassificationTask(), tiny_spec(batch_size=4), bad, str(tmp_path))


def test_backend_cost_is_the_actors_work_per_sample_ten_crops_included(tmp_path, tiny_spec):
    """tta=tencrop runs ten backend calls per sample: the probe, which times the task's own
    predict, sees about ten times the work of one view."""
    task = ClassificationTask()
    samples = _images(tmp_path / "img", 10)
    one = tiny_spec(batch_size=4)
    ten = tiny_spec(batch_size=4, tta="tencrop")
    per = {}
    for name, spec in (("one", one), ("ten", ten)):
        _, rows = costs.read_cost(task, spec, samples)
        per[name] = min(costs.backend_cost(task, spec, rows, str(tmp_path / name / str(i))) for i in range(3))
    assert 4 < per["ten"] / per["one"] < 20, per


def test_small_runs_gpu_runs_and_segmentation_keep_the_fixed_split(tmp_path, tiny_spec, monkeypatch):
    from medray.tasks.segmentation import SegmentationTask

    task, spec = ClassificationTask(), tiny_spec(batch_size=4)
    samples = _images(tmp_path / "img", 12)
    assert costs.stage_costs(task, spec, samples, str(tmp_path)) is None  # fewer than MIN_SAMPLES
    monkeypatch.setattr(costs, "MIN_SAMPLES", 10)
    got = costs.stage_costs(task, spec, samples, str(tmp_path))
    assert got is not None and got.read_s > 0 and got.infer_s > 0 and 0 < got.infer_share < 1
    assert costs.stage_costs(task, replace(spec, device="cuda"), samples, str(tmp_path)) is None
    assert costs.stage_costs(SegmentationTask(), spec, samples, str(tmp_path)) is None


class RemoteFailure(Exception):
    """As Ray's RayTaskError: what the task raised is its ``cause``."""

    def __init__(self, cause):
        super().__init__(f"ray::medray.measure_costs() failed with a long traceback ... {cause}")
        self.cause = cause


@pytest.mark.parametrize("wrap", [False, True])
def test_a_probe_that_fails_is_a_warning_and_the_fixed_split(tiny_spec, monkeypatch, caplog, wrap):
    from medray.pipeline import execute

    def fails(*a):
        e = ImportError("No module named 'openvino'")
        raise RemoteFailure(e) if wrap else e

    monkeypatch.setattr(execute, "_measure", fails)
    monkeypatch.setattr(costs, "MIN_SAMPLES", 0)
    with caplog.at_level(logging.WARNING, logger="medray.execute"):
        assert execute._costs(ClassificationTask(), tiny_spec(), pd.DataFrame(), "/nowhere", None) is None
    assert "could not measure what a sample costs (ImportError: No module named 'openvino')" in caplog.text.replace(
        " on this node", "")
    assert "fixed CPU split" in caplog.text and "traceback" not in caplog.text


def test_runs_that_keep_the_fixed_split_start_no_probe(tiny_spec, monkeypatch):
    from medray.pipeline import execute

    monkeypatch.setattr(execute, "_measure", lambda *a: pytest.fail("probed"))
    assert execute._costs(ClassificationTask(), tiny_spec(), pd.DataFrame({"sample_id": ["a"]}), "/nowhere", None) is None
