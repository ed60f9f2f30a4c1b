"""Sizing rules: plain arithmetic, no cluster."""

from __future__ import annotations

import pytest

from rayscore._sizing import local_ray_cpus, rows_per_block

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


# --------------------------------------------------------------------------- rows_per_block


@pytest.mark.parametrize(
    "rows, actors, batch, expected",
    [
        (100_000, 2, 1024, 13312),  # ceil(100000/8)=12500 -> 13 batches
        (500, 2, 1024, 1024),  # never below one batch
        (0, 2, 1024, 1024),  # empty input still gives a valid size
        (8192, 2, 1024, 1024),  # exactly one batch per block
        (8193, 2, 1024, 2048),  # rounds up to whole batches
        (1000, 0, 10, 250),  # zero actors counts as one
        (1_000_000, 4, 1, 62500),
    ],
)
def test_rows_per_block(rows: int, actors: int, batch: int, expected: int) -> None:
    assert rows_per_block(rows, actors, batch) == expected


def test_rows_per_block_is_whole_batches_and_gives_every_actor_work() -> None:
    for rows in (1, 999, 10_000, 123_457):
        for actors in (1, 2, 3, 8):
            for batch in (1, 64, 1000):
                block = rows_per_block(rows, actors, batch)
                assert block % batch == 0
                assert block >= batch
                if rows >= 4 * actors * batch:
                    blocks = -(-rows // block)
                    assert blocks >= actors


def test_spark_executor_cores_default_to_the_machine_on_a_local_ray_only() -> None:
    from rayscore._sizing import AUTO_EXECUTOR_CORES_MAX, spark_executor_cores

    assert spark_executor_cores(None, local=True, physical_cpus=2) == 2
    assert spark_executor_cores(None, local=True, physical_cpus=1) == 1
    assert spark_executor_cores(None, local=True, physical_cpus=64) == AUTO_EXECUTOR_CORES_MAX
    assert spark_executor_cores(None, local=False, physical_cpus=64) == 1
    assert spark_executor_cores(3, local=True, physical_cpus=2) == 3
    assert spark_executor_cores(3, local=False, physical_cpus=2) == 3
