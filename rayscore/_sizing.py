"""Sizing rules as plain arithmetic over counts: unit-tested without a cluster."""

from __future__ import annotations

import math

__all__ = ["local_ray_cpus", "spark_executor_cores", "AUTO_EXECUTOR_CORES_MAX"]

AUTO_EXECUTOR_CORES_MAX = 4  # what the default 2g of executor memory holds for nested columns


def spark_executor_cores(configured: int | None, *, local: bool, physical_cpus: int) -> int:
    """Cores per Spark executor: ``spark.executor_cores``, else a default.

    On the embedded default (a local Ray) Spark's one executor gets the
    machine's cores (up to :data:`AUTO_EXECUTOR_CORES_MAX`): one task per
    core reads and writes, each keeping batches in flight at the pool, whose
    model calls wait on the tasks' reading and writing. On a cluster the
    executors share nodes with other work: 1.

    >>> spark_executor_cores(None, local=True, physical_cpus=2)
    2
    >>> spark_executor_cores(None, local=False, physical_cpus=64), spark_executor_cores(3, local=True, physical_cpus=2)
    (1, 3)
    """
    if configured is not None:
        return configured
    return max(1, min(physical_cpus, AUTO_EXECUTOR_CORES_MAX)) if local else 1


def local_ray_cpus(
    physical_cpus: int,
    *,
    spark_executors: int,
    executor_cores: int,
    max_actors: int,
    cpus_per_actor: float,
) -> int:
    """Logical CPUs for a local Ray that rayscore starts.

    RayDP's executors are Ray actors that hold their CPUs for the whole job,
    and they read and write while the pool's actors score. So the local node
    advertises enough logical CPUs for both the executors and the largest
    pool, plus one spare, and never fewer than the machine has.

    >>> local_ray_cpus(2, spark_executors=1, executor_cores=1, max_actors=2, cpus_per_actor=1)
    4
    """
    needed = spark_executors * executor_cores + math.ceil(max_actors * cpus_per_actor) + 1
    return max(int(physical_cpus), needed)
