"""Decode once: the decoded cache's hits, misses, damaged shards and concurrent writers,
and the same metrics cold and warm."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_ARCH, TINY_SIZE

from medray.data.cache import COLUMNS, DecodedCache, cache_parts, cached
from medray.data.preprocess import decode_gray
from medray.tasks.classification.read import decode_batch


def _images(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / f"img{i:02d}.png"
        Image.fromarray(np.random.default_rng(seed + i).integers(0, 255, (60, 50), dtype=np.uint8)).save(p)
        rows.append({"sample_id": f"s{i:02d}", "path": str(p)})
    return pd.DataFrame(rows)


class Counting:
    """decode_batch, counting the paths it really decoded."""

    def __init__(self):
        self.decoded: list[str] = []
        self.__name__, self.__qualname__, self.__module__ = "decode_batch", "decode_batch", decode_batch.__module__

    def __call__(self, batch, **kw):
        self.decoded += [str(p) for p in batch["path"]]
        return decode_batch(batch, **kw)


def _read(cache: DecodedCache, samples: pd.DataFrame, fn, size: int = TINY_SIZE):
    looked, stats = cache.lookup(samples)
    batch = {c: looked[c].to_numpy() for c in ("sample_id", "path", *COLUMNS)}
    return cached(fn, str(cache.dir))(batch, prep=size, on_error="skip"), stats


def test_second_read_hits_and_equals_a_fresh_decode(tmp_path):
    samples = _images(tmp_path / "img", 6)
    cache = DecodedCache(str(tmp_path / "c"), cache_parts(decode_batch, {"prep": TINY_SIZE}))
    fn = Counting()
    cold, s1 = _read(cache, samples, fn)
    assert s1 == {"dir": str(cache.dir), "hits": 0, "misses": 6} and len(fn.decoded) == 6
    warm, s2 = _read(cache, samples, fn)
    assert s2["hits"] == 6 and len(fn.decoded) == 6  # nothing decoded again
    for i, p in enumerate(samples["path"]):
        np.testing.assert_array_equal(warm["image"][i], decode_gray(p, TINY_SIZE))
    np.testing.assert_array_equal(cold["image"], warm["image"])
    assert list(warm["sample_id"]) == list(samples["sample_id"]) and not any(warm["skipped_reason"])


def test_a_changed_file_is_a_miss_for_that_sample_only(tmp_path):
    samples = _images(tmp_path / "img", 5)
    cache = DecodedCache(str(tmp_path / "c"), cache_parts(decode_batch, {"prep": TINY_SIZE}))
    fn = Counting()
    _read(cache, samples, fn)
    changed = samples["path"].iat[2]
    _images(tmp_path / "other", 3, seed=99)
    os.replace(tmp_path / "other" / "img02.png", changed)  # new content, new mtime and size
    out, stats = _read(cache, samples, fn)
    assert stats["hits"] == 4 and stats["misses"] == 1 and fn.decoded[5:] == [changed]
    np.testing.assert_array_equal(out["image"][2], decode_gray(changed, TINY_SIZE))


def test_another_preprocessing_is_another_cache(tmp_path):
    samples = _images(tmp_path / "img", 3)
    a = DecodedCache(str(tmp_path / "c"), cache_parts(decode_batch, {"prep": TINY_SIZE}))
    b = DecodedCache(str(tmp_path / "c"), cache_parts(decode_batch, {"prep": TINY_SIZE + 8}))
    assert a.dir != b.dir
    _read(a, samples, Counting())
    out, stats = _read(b, samples, Counting(), size=TINY_SIZE + 8)
    assert stats["hits"] == 0 and out["image"].shape == (3, TINY_SIZE + 8, TINY_SIZE + 8)


def test_a_damaged_shard_is_dropped_and_rebuilt(tmp_path, caplog):
    samples = _images(tmp_path / "img", 4)
    cache = DecodedCache(str(tmp_path / "c"), cache_parts(decode_batch, {"prep": TINY_SIZE}))
    _read(cache, samples, Counting())
    (shard,) = cache.dir.glob("shard-*.parquet")
    shard.write_bytes(b"PAR1 garbage")
    fn = Counting()
    with caplog.at_level("WARNING", logger="medray.cache"):
        out, stats = _read(cache, samples, fn)
    assert f"shard {shard.name} is unreadable" in caplog.text and not shard.exists()
    assert stats["hits"] == 0 and len(fn.decoded) == 4
    assert cache.lookup(samples)[1]["hits"] == 4  # a new, good shard
    np.testing.assert_array_equal(out["image"][0], decode_gray(samples["path"].iat[0], TINY_SIZE))


def _writer(args):
    cache_dir, parts, samples = args
    cache = DecodedCache(cache_dir, parts)
    out, _ = _read(cache, samples, decode_batch)
    return out["image"]


def test_concurrent_writers_leave_only_whole_shards(tmp_path):
    samples = _images(tmp_path / "img", 12)
    parts = cache_parts(decode_batch, {"prep": TINY_SIZE})
    DecodedCache(str(tmp_path / "c"), parts).prepare()
    chunks = [samples.iloc[i:i + 8] for i in (0, 2, 4, 0)]  # overlapping, one repeated
    with mp.get_context("spawn").Pool(4) as pool:
        outs = pool.map(_writer, [(str(tmp_path / "c"), parts, c) for c in chunks])
    cache = DecodedCache(str(tmp_path / "c"), parts)
    assert not list(cache.dir.glob(".*.tmp"))
    looked, stats = cache.lookup(samples)
    assert stats["hits"] == 12
    warm, _ = _read(cache, samples, Counting())
    for out, c in zip(outs, chunks):
        np.testing.assert_array_equal(out, warm["image"][c.index])


@pytest.mark.slow
def test_metrics_are_the_same_cold_and_warm(ray_local, tmp_path, tiny_checkpoint):
    from medray.backends.onnxruntime.config import OnnxRuntimeConfig
    from medray.config import EvalConfig, RayConfig
    from medray.data.config import DataConfig
    from medray.models.config import ModelConfig
    from medray.pipeline.execute import execute
    from medray.pipeline.prepare import prepare
    from medray.report.document import build_metrics

    def cfg(cache):
        return EvalConfig(backend=OnnxRuntimeConfig(), data=DataConfig(root=str(tmp_path / "data"), n_train=2, n_calibration=2,
                                                                        n_test=40, image_size=64, cache=cache),
                          model=ModelConfig(name="tiny", arch=TINY_ARCH, checkpoint=str(tiny_checkpoint), input_size=TINY_SIZE),
                          ray=RayConfig(num_cpus=2), batch_size=8, output_dir=str(tmp_path / "out"),
                          cache_dir=str(tmp_path / "cache"), warmup_batches=0)

    docs = []
    for cache in ("off", "auto", "auto"):
        c = cfg(cache)
        table, samples, specs, task = prepare(c)
        results = execute(c, task, samples, specs)
        docs.append((results, build_metrics(c, table, samples, results, task)))
    (off, d_off), (cold, d_cold), (warm, d_warm) = docs
    assert off[0].read_cache is None
    # cold: the baseline decodes and writes, the candidate already reads; warm: all hits
    assert cold[0].read_cache["hits"] == 0 and cold[1].read_cache["hits"] == 40
    assert warm[0].read_cache["hits"] == warm[1].read_cache["hits"] == 40
    for a, b in ((d_off, d_cold), (d_cold, d_warm)):
        for ra, rb in zip(a["runs"], b["runs"]):
            assert ra["metrics"] == rb["metrics"] and ra["n_samples"] == rb["n_samples"] == 40
    for r in warm:
        np.testing.assert_array_equal(np.stack(r.predictions["probs"]), np.stack(off[[x.spec.name for x in off].index(r.spec.name)].predictions["probs"]))
    assert d_warm["runs"][1]["read_cache"]["hits"] == 40


def test_the_key_names_the_decoders_versions_without_importing_them(monkeypatch):
    import subprocess
    import sys
    from importlib import metadata

    code = ("import sys; from medray.data.cache import cache_parts; "
            "p = cache_parts(print, {}); assert 'monai' not in sys.modules, 'imported'; print(p['monai'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == metadata.version("monai")
    before = cache_parts(decode_batch, {"prep": TINY_SIZE})
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: "99.0" if d == "pillow" else real(d))
    after = cache_parts(decode_batch, {"prep": TINY_SIZE})
    assert after["PIL"] == "99.0" and DecodedCache("/x", before).dir != DecodedCache("/x", after).dir
