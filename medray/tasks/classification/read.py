"""task=classification's read stage: blocks of file paths → the model's uint8 pixels
(small object-store traffic), sized so reading and inference overlap."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medray.specs import ModelSpec


def decode_batch(batch: dict[str, np.ndarray], prep, tta: str = "none", on_error: str = "fail") -> dict[str, np.ndarray]:
    """CPU task: file paths → the model's uint8 pixels (:func:`medray.data.preprocess.decode_image`;
    float32 for ``resize=xrv``): ``(N, H, W[, 3])``, or ``(N, 10, H, W[, 3])`` with ``tta=tencrop``.

    ``prep``: the resolved preprocessing (an int = the medray preset at that size).  A file
    that cannot be decoded stops the run (``on_error="fail"``: BadSampleError with its path
    and reason) or becomes a row with a ``skipped_reason`` and blank pixels (``"skip"``,
    what the pipeline uses: the driver then applies data.on_error, where the error keeps
    its path and reason).
    """
    from medray.data.policy import SAMPLE_ERRORS, describe
    from medray.data.preprocess import decode_image, medray_preset, pixel_dtype
    from medray.errors import BadSampleError
    from medray.monitoring import count_error

    if isinstance(prep, int):
        prep = medray_preset(prep)
    h, w = prep["size"]
    shape = ((10,) if tta == "tencrop" else ()) + (h, w) + ((3,) if prep["color"] == "rgb" else ())
    paths = batch["path"]
    images = np.zeros((len(paths), *shape), dtype=pixel_dtype(prep))  # float32 for resize=xrv
    reasons = np.full(len(paths), "", dtype=object)
    for i, p in enumerate(paths):
        try:
            # s3://, gs://... paths (data.root on shared storage) are read through pyarrow.fs.
            images[i] = decode_image(str(p), prep, tta)
        except SAMPLE_ERRORS as e:
            count_error("decode")
            if on_error != "skip":
                raise BadSampleError(str(p), describe(e)) from e
            reasons[i] = describe(e)
    return {"sample_id": batch["sample_id"], "image": images, "skipped_reason": reasons}


def model_prep(model: ModelSpec) -> dict:
    """The model's resolved preprocessing (the medray preset at its input size if unset)."""
    from medray.data.preprocess import medray_preset

    return model.preprocess or medray_preset(model.input_size)


# Samples per read task and actor call.  Ray Data costs 15-30 ms per actor call on a
# 2-core VM (measured, docs/benchmarks.md): with 64 samples a call, a fast backend (the
# demo model: 12 ms per 64) spent more time between calls than in them.  A read task
# costs about as much again (~45 ms of scheduling per task, measured with sleeping
# stages): when the read cost is measured, a block holds at least BLOCK_SECONDS of it.
BLOCK_SAMPLES = 256


BLOCK_SECONDS = 0.4


BLOCK_BYTES = 64 * 2**20  # a block's decoded uint8 input, ten crops included


def read_block_size(n: int, batch_size: int, actors: int, sample_bytes: int = 0, read_s: float | None = None) -> int:
    """Samples per read task (= per actor call): a multiple of the batch size (no ragged
    backend batches), about :data:`BLOCK_SAMPLES` (or :data:`BLOCK_SECONDS` of reading
    when one sample's ``read_s`` is known and cheaper) and at most :data:`BLOCK_BYTES` of
    input, but small enough that every actor gets several blocks (read and predict overlap)."""
    per_actor = math.ceil(n / (actors * 4 * batch_size))
    by_bytes = BLOCK_BYTES // max(1, sample_bytes * batch_size)
    target = max(BLOCK_SAMPLES, int(BLOCK_SECONDS / read_s)) if read_s else BLOCK_SAMPLES
    return batch_size * max(1, min(max(1, target // batch_size), by_bytes, per_actor))
