"""Sizing rules as plain arithmetic over counts: unit-tested without a cluster."""

from __future__ import annotations

import math

__all__ = [
    "local_ray_cpus",
    "spark_executor_cores",
    "auto_batch_rows",
    "AUTO_EXECUTOR_CORES_MAX",
    "AUTO_BATCH_BYTES",
    "AUTO_LOOKUP_BYTES",
    "AUTO_BATCH_ROWS",
    "UNKNOWN_ROW_BATCH_ROWS",
]

AUTO_EXECUTOR_CORES_MAX = 4  # what the default 2g of executor memory holds for nested columns

# `predict.batch_size: auto`. A model call through the pool has a fixed cost (a Ray task, an object
# put and get, the Arrow IPC framing: ~1-2 ms, bench/profile_hop.py) besides what it costs per byte;
# calls of ~16 MiB of tensors make the fixed part small. Measured on the example model (1,004 bytes
# a row, 2 cores, bench/compare.py --repeat 5): 4,096 rows a call (4 MiB) gave rayscore.predict's
# second write 0.88x the Arrow UDF, 16,384 rows (16 MiB) 0.95x. The ceiling keeps a wide row's
# few rows from growing a call further, and the actor's memory ask
# (rayscore._placement.BATCH_MEMORY_FACTOR times a call) bounded.
AUTO_BATCH_BYTES = 16 * 2**20
AUTO_BATCH_ROWS = (64, 16_384)  # the fewest and most rows a call that `auto` picks
# And at most this many bytes of embedding lookups a call (ModelSpec.lookup_row_bytes: a row's ids
# times its tables' widths), a second bound: those outputs are most of a recommendation model's call
# and never cross the hop, so the fixed cost above does not bound them; what they cost is memory and
# its bandwidth. Measured on the example's shape with a 2 GB, 64-wide table (20,480 bytes of lookups
# a row, 2 cores, `bench/compare_big.py --model seed --rayscore-batch-size auto 16384 --repeat 3`):
# 4,096 rows a call (80 MiB of lookups) wrote 200,000 rows in 6.9-7.0 s against 7.9-9.2 s at 16,384
# (320 MiB), 2.90x the UDF's rows/s against 2.69x, its two actors 0.55 GiB smaller. The example's own
# 16-wide table makes 5,120 bytes a row: 16,384 rows are 80 MiB, so its calls stay as measured above.
AUTO_LOOKUP_BYTES = 128 * 2**20
# A model input with a dimension the file leaves open (a sequence, an image of any size) has rows
# of unknown bytes: `auto` then takes the old fixed default rather than guess them small.
UNKNOWN_ROW_BATCH_ROWS = 1024


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


def auto_batch_rows(row_bytes: int | None, lookup_bytes: int = 0) -> int:
    """Rows per model call for ``predict.batch_size: auto``, from the bytes of one row of the model's tensors.

    The largest power of two whose calls hold at most :data:`AUTO_BATCH_BYTES`
    of tensors (``row_bytes`` a row) and at most :data:`AUTO_LOOKUP_BYTES` of
    embedding lookups (``lookup_bytes`` a row), within :data:`AUTO_BATCH_ROWS`;
    ``None`` (an input dimension the model file leaves open) gives
    :data:`UNKNOWN_ROW_BATCH_ROWS`. It depends on the model alone, not on the
    node: the same on 2 cores, a 64-core node or a GPU, and an actor's memory
    ask grows with it (``rayscore._placement.actor_memory``).

    >>> auto_batch_rows(1004), auto_batch_rows(4), auto_batch_rows(300_000), auto_batch_rows(None)
    (16384, 16384, 64, 1024)
    >>> auto_batch_rows(4096), auto_batch_rows(4097)
    (4096, 2048)
    >>> auto_batch_rows(1004, lookup_bytes=5120), auto_batch_rows(996, lookup_bytes=20_480)
    (16384, 4096)
    """
    if row_bytes is None:
        return UNKNOWN_ROW_BATCH_ROWS
    low, high = AUTO_BATCH_ROWS
    fits = AUTO_BATCH_BYTES // max(1, int(row_bytes))
    if lookup_bytes > 0:
        fits = min(fits, AUTO_LOOKUP_BYTES // int(lookup_bytes))
    return max(low, min(high, 1 << (fits.bit_length() - 1) if fits else 0))
