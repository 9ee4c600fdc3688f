"""Metrics computed once, on the driver, from merged per-sample outputs.

``classification`` (accuracy, balanced accuracy, AUC, F1, per-class table),
``agreement`` (candidate vs baseline, paired by sample_id) and ``performance``
(latency percentiles, speed-up, throughput). All return plain JSON-serialisable values.
"""
