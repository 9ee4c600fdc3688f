"""Parts on disk (resume parts, decoded-cache shards): what is written is what is read."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medray.io import read_columns, read_part, write_part


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {
        "sample_id": np.array([f"s{i}" for i in range(5)], dtype=object),
        "image": rng.integers(0, 256, (5, 7, 6, 3), dtype=np.uint8),
        "volume": rng.integers(0, 65535, (5, 2, 3, 4), dtype=np.uint16),
        "probs": rng.random((5, 3), dtype=np.float32),
        "t": rng.random(5),
    }


def test_columns_round_trip_with_shape_and_dtype(tmp_path, batch):
    write_part(tmp_path / "p.parquet", batch)
    out = read_columns(tmp_path / "p.parquet")
    assert set(out) == set(batch)
    for k, v in batch.items():
        assert out[k].dtype == v.dtype or v.dtype == object, k
        np.testing.assert_array_equal(out[k], v)


def test_selected_rows_in_the_order_asked(tmp_path, batch):
    write_part(tmp_path / "p.parquet", batch)
    rows = np.array([4, 1, 3])
    out = read_columns(tmp_path / "p.parquet", rows, skip=("t",))
    assert "t" not in out
    np.testing.assert_array_equal(out["image"], batch["image"][rows])
    np.testing.assert_array_equal(out["probs"], batch["probs"][rows])
    assert list(out["sample_id"]) == ["s4", "s1", "s3"]


def test_images_are_stored_as_one_binary_value_per_row(tmp_path, batch):
    # A list column is decoded through a level per element (~10x the memory of the pixels).
    write_part(tmp_path / "p.parquet", batch)
    schema = pq.read_schema(tmp_path / "p.parquet")
    assert pa.types.is_fixed_size_binary(schema.field("image").type)
    assert schema.field("image").type.byte_width == 7 * 6 * 3


def test_parts_written_as_fixed_size_lists_still_read(tmp_path, batch):
    cols = {k: pa.array(list(v)) if v.ndim == 1 else
            pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), int(np.prod(v.shape[1:])))
            for k, v in batch.items()}
    shapes = {k: list(v.shape[1:]) for k, v in batch.items() if v.ndim > 1}
    pq.write_table(pa.table(cols).replace_schema_metadata({"medray_shapes": json.dumps(shapes)}), tmp_path / "old.parquet")
    df = read_part(tmp_path / "old.parquet")
    np.testing.assert_array_equal(np.stack(df["volume"].to_numpy()), batch["volume"])
    np.testing.assert_array_equal(np.stack(df["probs"].to_numpy()), batch["probs"])
