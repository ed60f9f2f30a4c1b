"""Sizing rules: plain arithmetic, no cluster."""

from __future__ import annotations

import pytest

from rayscore._sizing import (
    AUTO_BATCH_BYTES,
    AUTO_BATCH_ROWS,
    AUTO_LOOKUP_BYTES,
    UNKNOWN_ROW_BATCH_ROWS,
    auto_batch_rows,
    local_ray_cpus,
)

# --------------------------------------------------------------------------- auto_batch_rows


def test_auto_batch_rows_of_the_example_model() -> None:
    # examples/models/ctr.keras: 4 x int32[20] + float32[24, 7] + float32 in, two outputs of unstated shape
    row = 4 * 20 * 4 + 24 * 7 * 4 + 4 + 4 + 4
    assert auto_batch_rows(row) == 16_384
    # Its lookups: 4 titles x 20 ids x a 16-wide float32 table. The same with a 64-wide one (compare_big's seed).
    assert auto_batch_rows(row, lookup_bytes=4 * 20 * 16 * 4) == 16_384
    assert auto_batch_rows(row, lookup_bytes=4 * 20 * 64 * 4) == 4096


@pytest.mark.parametrize("lookup_bytes", [1, 100, 8192, 8193, 20_480, 10**6, 10**9])
def test_auto_batch_rows_keeps_a_calls_lookups_within_their_bytes(lookup_bytes: int) -> None:
    rows = auto_batch_rows(4, lookup_bytes=lookup_bytes)
    low, high = AUTO_BATCH_ROWS
    assert low <= rows <= high and rows & (rows - 1) == 0
    if rows > low:
        assert rows * lookup_bytes <= AUTO_LOOKUP_BYTES
    if rows < high:
        assert 2 * rows * lookup_bytes > AUTO_LOOKUP_BYTES
    assert auto_batch_rows(4, lookup_bytes=0) == high  # no lookups: the tensors' bound alone


@pytest.mark.parametrize("row_bytes", [1, 7, 100, 1000, 1023, 1024, 1025, 5000, 40_000, 262_144, 10**7])
def test_auto_batch_rows_is_a_power_of_two_within_the_bounds_and_the_bytes(row_bytes: int) -> None:
    rows = auto_batch_rows(row_bytes)
    low, high = AUTO_BATCH_ROWS
    assert low <= rows <= high
    assert rows & (rows - 1) == 0
    if low < rows:
        assert rows * row_bytes <= AUTO_BATCH_BYTES  # never over the byte target, but at the floor
    if rows < high:
        assert 2 * rows * row_bytes > AUTO_BATCH_BYTES  # and the largest power of two under it


def test_auto_batch_rows_falls_as_rows_widen() -> None:
    widths = [10, 1000, 2000, 4000, 16_000, 100_000, 1_000_000]
    rows = [auto_batch_rows(w) for w in widths]
    assert rows == sorted(rows, reverse=True)
    assert rows == [16_384, 16_384, 8192, 4096, 1024, 128, 64]


def test_auto_batch_rows_of_an_open_shape_is_the_old_default() -> None:
    assert auto_batch_rows(None) == UNKNOWN_ROW_BATCH_ROWS == 1024


# --------------------------------------------------------------------------- local_ray_cpus


def test_local_ray_cpus_doc_example() -> None:
    assert local_ray_cpus(2, spark_executors=1, executor_cores=1, max_actors=2, cpus_per_actor=1) == 4


def test_local_ray_cpus_never_below_the_machine() -> None:
    assert local_ray_cpus(16, spark_executors=1, executor_cores=1, max_actors=2, cpus_per_actor=1) == 16


def test_local_ray_cpus_counts_executors_pool_and_one_spare() -> None:
    # 2 executors x 2 cores + 3 actors x 2 CPUs + 1
    assert local_ray_cpus(1, spark_executors=2, executor_cores=2, max_actors=3, cpus_per_actor=2) == 11


def test_local_ray_cpus_rounds_fractional_pool_up() -> None:
    # 3 actors x 0.5 CPU = 1.5 -> 2; + 1 executor core + 1
    assert local_ray_cpus(1, spark_executors=1, executor_cores=1, max_actors=3, cpus_per_actor=0.5) == 4


def test_local_ray_cpus_returns_int() -> None:
    assert isinstance(
        local_ray_cpus(
            8.0,
            spark_executors=1,
            executor_cores=1,
            max_actors=1,  # type: ignore[arg-type]
            cpus_per_actor=1.0,
        ),
        int,
    )


def test_sized_makes_auto_a_number_once_the_model_is_read() -> None:
    from rayscore._config import PredictConfig
    from rayscore._plan import sized
    from rayscore._spec import ModelSpec, TensorSpec

    spec = ModelSpec(inputs=(TensorSpec("ids", (1000,), "int32"),), outputs=(TensorSpec("p", (1,), "float32"),))
    assert sized(PredictConfig(), spec).batch_size == 4096  # 4,004 bytes a row
    assert sized(PredictConfig(batch_size=300), spec).batch_size == 300
    open_spec = ModelSpec(inputs=(TensorSpec("ids", (None,), "int32"),), outputs=())
    assert sized(PredictConfig(), open_spec).batch_size == 1024
    titles = ModelSpec(inputs=(TensorSpec("t", (20,), "int32"),), outputs=(), lookup_row_bytes=20 * 256 * 4)
    assert sized(PredictConfig(), titles).batch_size == 4096  # 80 bytes of ids, 20 KiB of lookups a row
