"""Sizing rules as plain arithmetic over counts: unit-tested without a cluster."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["local_ray_cpus", "check_pool_fits", "rows_per_block"]


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
    even while idle. Reading (Spark), predicting (actors) and writing (Spark)
    run one after another, so the local node advertises enough logical CPUs for
    both the executors and the largest pool, plus one for Ray Data's own small
    tasks, and never fewer than the machine has.

    >>> local_ray_cpus(2, spark_executors=1, executor_cores=1, max_actors=2, cpus_per_actor=1)
    4
    """
    needed = spark_executors * executor_cores + math.ceil(max_actors * cpus_per_actor) + 1
    return max(int(physical_cpus), needed)


def check_pool_fits(
    total: Mapping[str, float],
    *,
    spark_cpus: float,
    min_actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> str | None:
    """Why a pool of ``min_actors`` cannot start on a cluster of ``total`` resources, or None.

    >>> check_pool_fits({"CPU": 2}, spark_cpus=1, min_actors=2, cpus_per_actor=1, gpus_per_actor=0)
    'predict.actors: 2 actors need 2 CPUs besides Spark's 1, the cluster has 2 CPUs in all'
    """
    cpus = float(total.get("CPU", 0))
    gpus = float(total.get("GPU", 0))
    need_cpu = min_actors * cpus_per_actor
    if need_cpu + spark_cpus > cpus + 1e-9:
        return (
            f"predict.actors: {min_actors} actors need {_fmt(need_cpu)} CPUs besides Spark's "
            f"{_fmt(spark_cpus)}, the cluster has {_fmt(cpus)} CPUs in all"
        )
    need_gpu = min_actors * gpus_per_actor
    if need_gpu > gpus + 1e-9:
        return f"predict.gpus_per_actor: {min_actors} actors need {_fmt(need_gpu)} GPUs, the cluster has {_fmt(gpus)}"
    return None


def rows_per_block(rows: int, max_actors: int, batch_size: int) -> int:
    """Rows per Ray block so that every actor gets work and no block is tiny.

    Each block goes to one actor as one task: fewer blocks than actors leaves
    actors idle, while a block smaller than a batch wastes model calls. Aim at
    four blocks per actor, in whole batches.

    >>> rows_per_block(100_000, 2, 1024)
    13312
    >>> rows_per_block(500, 2, 1024)
    1024
    """
    per_block = math.ceil(max(rows, 1) / (4 * max(max_actors, 1)))
    return max(batch_size, math.ceil(per_block / batch_size) * batch_size)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
