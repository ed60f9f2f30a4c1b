"""Sizing rules: plain arithmetic, no cluster."""

from __future__ import annotations

from rayscore._sizing import local_ray_cpus

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
