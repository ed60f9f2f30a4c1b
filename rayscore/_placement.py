"""Placement sized from the model: how many predictor actors fit, and where.

Pure rules over plain data (no Ray import): the caller reads ``ray.nodes()``
once, turns it into :class:`NodeShape` values with :func:`nodes_from_ray`, and
asks :func:`plan_pool` for a :class:`PoolPlan` before starting the pool.

Each actor asks Ray for ``memory_per_actor`` bytes of Ray's ``memory``
resource (see :func:`actor_memory`), so Ray never packs more model copies on a
node than the node's memory holds. A pool that cannot fit is refused before
anything starts, with one line naming the key, what is needed and what the
largest node has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._config import ActorsConfig

__all__ = [
    "NodeShape",
    "PoolPlan",
    "DEFAULT_MEMORY_FACTORS",
    "FALLBACK_MEMORY_FACTOR",
    "BATCH_MEMORY_FACTOR",
    "LOOKUP_MEMORY_FACTOR",
    "ACTOR_PROCESS_BYTES",
    "TABLE_SHARE",
    "nodes_from_ray",
    "memory_factor_for",
    "batch_bytes",
    "row_bytes",
    "actor_memory",
    "plan_pool",
    "format_bytes",
]

# Peak resident memory of one actor while it loads the model and predicts its
# first batch, as a multiple of the model file's size on disk. Measured with
# `python bench/bench_load_memory.py --mb 25 400 800` (the example's model with
# its Embedding table grown; keras 3.15.1, tensorflow-cpu 2.21.0, Python 3.11,
# Linux, 2 cores; a fresh process per format; peak RSS growth over the process
# after `import keras`, divided by the file size). .keras and .h5 weights are
# streamed into zero-filled variables (rayscore._weights): 1.29x at 800 MiB,
# 1.57x at 400 MiB, where TensorFlow's own first-use costs (~100-200 MiB, not
# proportional to the model) weigh more; Keras's own loader needed 6.2x (.keras)
# and 5.2x (.h5). The figures are in bench/RESULTS.md. A format not listed here
# gets FALLBACK_MEMORY_FACTOR (Keras's loader, the largest measured);
# `predict.memory_factor` overrides both.
DEFAULT_MEMORY_FACTORS: Mapping[str, float] = {
    "keras": 1.3,
    "h5": 1.3,
    # Loading grows memory by ~1.1x the directory (+26 MiB), measured at 50 MiB and
    # 800 MiB (Keras 3 exports, which store each weight twice), and 0.96x for a
    # 2.2 GB directory of a tf.Module (tests/integration/test_big_models.py).
    "savedmodel": 1.2,
}
FALLBACK_MEMORY_FACTOR = 6.5

# Resident memory of a predictor actor's process before its model: Python, Ray, pyarrow
# and TensorFlow imported. Measured: 635 MiB peak RSS before the load (the run report's
# rss_before_load; keras 3.15.1, tensorflow-cpu 2.21, Python 3.11, Linux), which counts
# library pages that the actors of a node share; 454-474 MiB were in use per actor of a
# 1M-row job with a 12 MB model. The loaders' factors above
# leave it out (they measure growth after `import keras`), so without it a small model
# asked Ray for a few MiB per actor and a node could be given more actors than its
# memory holds.
ACTOR_PROCESS_BYTES = 640 * 2**20

# Mapped embedding tables (rayscore._tables) live once per node, in its page cache, shared by
# its actors: at most this share of a node's free memory is set aside for them. A larger table
# is read partly from disk (its cold rows), and the rest of the node still holds actors.
TABLE_SHARE = 0.5

# An actor's memory for its batches, as a multiple of one model call's tensor bytes (batch_bytes):
# the Arrow batches in and out, the numpy feeds and outputs, the model's intermediate activations
# (an embedding lookup's rows are wider than its ids) and what TensorFlow's allocator keeps. Measured
# on the example's model (`python bench/compare.py --memory --rows 1000000 --batch-size 1024 auto`):
# 16,384 rows a call instead of 1,024 grew an actor's peak RSS by 0.20 GiB for 14.7 MiB more tensors
# a call, 13.6x. Four buffers, the figure before calls of 16 MiB, left the ask ~0.3 GiB short.
BATCH_MEMORY_FACTOR = 16
# And a multiple of one call's embedding lookups (ModelSpec.lookup_row_bytes times its rows), which
# the factor above saw only as far as the example's narrow (16-wide) table made them. Measured on the
# example's shape with a 2 GB, 64-wide table (20,480 bytes of lookups a row against 996 of inputs;
# `python bench/compare_big.py --model seed --rayscore-batch-size auto 16384 --repeat 3` and a sweep,
# bench/RESULTS.md): 16,384 rows a call instead of 4,096 grew the two actors' summed PSS by
# 0.49-0.59 GiB, about 1.1-1.3x the 240 MiB more of lookups a call; 2x leaves the allocator its slack.
LOOKUP_MEMORY_FACTOR = 2

_EPS = 1e-9


@dataclass(frozen=True)
class NodeShape:
    """One alive Ray node: its logical CPUs and GPUs and its Ray ``memory`` resource (bytes)."""

    node_id: str
    cpus: float
    gpus: float
    memory: int


@dataclass(frozen=True)
class PoolPlan:
    """The pool to start: its size, what each actor asks Ray for, and where actors fit.

    ``per_node`` maps every node's id to how many actors it can hold (0 for a
    node that holds none), after Spark's executors are taken away.
    """

    min_actors: int
    max_actors: int
    memory_per_actor: int
    per_node: dict[str, int]

    @property
    def capacity(self) -> int:
        """Actors the whole cluster can hold at once."""
        return sum(self.per_node.values())


def nodes_from_ray(ray_nodes: Iterable[Mapping[str, Any]]) -> list[NodeShape]:
    """The alive nodes of ``ray.nodes()`` as :class:`NodeShape` values.

    Reads each node's ``NodeID``, ``Alive`` and total ``Resources`` (``CPU``,
    ``GPU``, ``memory``; a missing one counts as 0). Dead nodes are left out.

    >>> nodes_from_ray([{"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "memory": 8e9}},
    ...                 {"NodeID": "b", "Alive": False, "Resources": {"CPU": 4.0}}])
    [NodeShape(node_id='a', cpus=4.0, gpus=0.0, memory=8000000000)]
    """
    shapes = []
    for node in ray_nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = node.get("Resources") or {}
        shapes.append(
            NodeShape(
                node_id=str(node.get("NodeID", "")),
                cpus=float(resources.get("CPU", 0.0)),
                gpus=float(resources.get("GPU", 0.0)),
                memory=int(resources.get("memory", 0)),
            )
        )
    return shapes


def memory_factor_for(loader: str, override: float | None = None) -> float:
    """``predict.memory_factor`` when set, else the loader's measured factor.

    >>> memory_factor_for("keras", 3.0)
    3.0
    """
    if override is not None:
        return float(override)
    return DEFAULT_MEMORY_FACTORS.get(loader, FALLBACK_MEMORY_FACTOR)


def batch_bytes(spec: Any, batch_size: int) -> int:
    """Bytes of one batch of a model's tensors: its inputs and the outputs whose shapes are known.

    ``spec`` is a :class:`rayscore.ModelSpec`. A dimension or dtype the model
    file does not state counts as 1 value of 4 bytes.
    """
    import numpy as np  # noqa: PLC0415

    total = 0
    for tensor in (*spec.inputs, *spec.outputs):
        values = 1
        for dim in tensor.shape or ():
            values *= int(dim) if dim is not None else 1
        try:
            itemsize = np.dtype(tensor.dtype).itemsize if tensor.dtype else 4
        except TypeError:
            itemsize = 8  # a dtype numpy does not know (string, bfloat16): 8 bytes, to be safe
        itemsize = itemsize or 8  # numpy's variable-size str: a pointer per value
        total += values * itemsize
    return total * int(batch_size)


def row_bytes(spec: Any) -> int | None:
    """Bytes of one row of a model's tensors (:func:`batch_bytes` of 1), or None when an input's size is open.

    An input whose shape the model file leaves open (``None``, or a ``None``
    dimension past the batch's) can be a row of any size; an output's is
    counted as :func:`batch_bytes` counts it.
    """
    if any(t.shape is None or None in t.shape for t in spec.inputs):
        return None
    return batch_bytes(spec, 1)


def actor_memory(
    model_bytes: int, *, memory_factor: float, batch_bytes: int, process_bytes: int = 0, lookup_bytes: int = 0
) -> int:
    """Bytes of Ray ``memory`` one predictor actor asks for.

    ``ceil(process_bytes + model_bytes * memory_factor + BATCH_MEMORY_FACTOR * batch_bytes
    + LOOKUP_MEMORY_FACTOR * lookup_bytes)``:
    the process before its model (:data:`ACTOR_PROCESS_BYTES` for a real
    pool), the model's copies while it is read, built and run
    (``memory_factor`` times its size on disk, measured per loader), plus the
    memory its model calls take, a measured multiple of one call's tensors
    (:data:`BATCH_MEMORY_FACTOR`) and of its embedding lookups' outputs
    (:data:`LOOKUP_MEMORY_FACTOR`).

    >>> actor_memory(4 * 2**30, memory_factor=1.5, batch_bytes=0) == 6 * 2**30
    True
    """
    if model_bytes < 0 or batch_bytes < 0 or process_bytes < 0 or lookup_bytes < 0:
        raise ValueError(
            f"sizes must be >= 0, got model_bytes={model_bytes}, batch_bytes={batch_bytes}, "
            f"process_bytes={process_bytes}, lookup_bytes={lookup_bytes}"
        )
    if memory_factor <= 0:
        raise ValueError(f"memory_factor must be > 0, got {memory_factor}")
    return math.ceil(process_bytes + model_bytes * memory_factor + _calls_memory(batch_bytes, lookup_bytes))


def _calls_memory(batch_bytes: int, lookup_bytes: int) -> int:
    """An actor's memory for its model calls: measured multiples of one call's tensors and lookups."""
    return BATCH_MEMORY_FACTOR * batch_bytes + LOOKUP_MEMORY_FACTOR * lookup_bytes


# --------------------------------------------------------------------------- planning


def _take_from_largest(free: dict[str, float], order: Sequence[str], amount: float) -> None:
    """Take ``amount`` from ``free``, draining the nodes in ``order`` one after another."""
    for node in order:
        if amount <= _EPS:
            return
        took = min(free[node], amount)
        free[node] -= took
        amount -= took


def _gpu_slots(gpus: float, per_actor: float) -> int:
    # Ray gives a fractional GPU request (< 1) a share of ONE GPU: 0.4 -> 2 per GPU,
    # not 5 per 2 GPUs. Requests of 1 or more take whole GPUs.
    if per_actor <= 1:
        return math.floor(gpus + _EPS) * math.floor(1 / per_actor + _EPS)
    return math.floor(gpus / per_actor + _EPS)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plural(n: float, word: str) -> str:
    return f"{_num(n)} {word}" + ("" if n == 1 else "s")


def plan_pool(
    nodes: Sequence[NodeShape],
    *,
    actors: ActorsConfig | Literal["auto"],
    model_bytes: int,
    memory_factor: float,
    batch_bytes: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    spark_cpus: float = 0,
    spark_memory: int = 0,
    process_bytes: int = 0,
    shared_bytes: int = 0,
    lookup_bytes: int = 0,
) -> PoolPlan:
    """Size the predictor pool from the model and the cluster's nodes.

    Each node holds ``min(CPU slots, GPU slots, memory slots)`` actors, where a
    memory slot is :func:`actor_memory` bytes of the node's Ray ``memory`` (with
    ``process_bytes`` for the actor's process itself) and
    GPU slots count only when ``gpus_per_actor > 0`` (then CPU-only nodes hold
    none). Fractional ``gpus_per_actor`` shares one GPU: 0.5 is two per GPU.
    ``model_bytes`` is what each actor holds itself; ``shared_bytes`` (mapped
    tables) count once per node, up to :data:`TABLE_SHARE` of its free memory.
    ``batch_bytes`` and ``lookup_bytes`` are one call's tensors and embedding
    lookups' outputs.

    Spark's executors (``spark_cpus`` CPUs, ``spark_memory`` bytes) are Ray
    actors that hold their share for the whole job, on nodes rayscore cannot
    know in advance. They are taken from the largest nodes first (by memory,
    then CPUs), draining one before the next: the pessimistic choice for the
    question that matters most here, whether one model copy fits anywhere.

    * ``actors: auto``: ``min_actors`` 1, ``max_actors`` everything that fits.
    * ``{min, max}`` or a fixed count: ``min`` must fit, else :class:`ConfigError`
      naming the binding resource (memory, CPUs or GPUs), needed vs available.
      A ``max`` above what fits is clamped to what fits: an autoscaling pool
      could never grow past it anyway.
    * A model whose one actor fits on no node is a :class:`ConfigError` saying
      how much one actor needs and how much the largest node has.
    """
    mem = actor_memory(
        model_bytes,
        memory_factor=memory_factor,
        batch_bytes=batch_bytes,
        process_bytes=process_bytes,
        lookup_bytes=lookup_bytes,
    )
    ids = [n.node_id for n in nodes]
    order = [n.node_id for n in sorted(nodes, key=lambda n: (n.memory, n.cpus), reverse=True)]
    free_cpu = {n.node_id: float(n.cpus) for n in nodes}
    free_mem = {n.node_id: float(n.memory) for n in nodes}
    gpus = {n.node_id: float(n.gpus) for n in nodes}
    _take_from_largest(free_cpu, order, float(spark_cpus))
    _take_from_largest(free_mem, order, float(spark_memory))

    cpu_slots = {i: math.floor(free_cpu[i] / cpus_per_actor + _EPS) for i in ids}
    gpu_slots = {i: _gpu_slots(gpus[i], gpus_per_actor) if gpus_per_actor > 0 else math.inf for i in ids}
    for i in ids:  # the page cache a node keeps for its mapped tables
        free_mem[i] -= min(float(shared_bytes), TABLE_SHARE * free_mem[i])
    mem_slots = {i: math.floor(free_mem[i] / mem + _EPS) if mem > 0 else math.inf for i in ids}
    per_node = {i: int(min(cpu_slots[i], gpu_slots[i], mem_slots[i])) for i in ids}
    capacity = sum(per_node.values())

    need = _need_text(model_bytes, memory_factor, batch_bytes, process_bytes, lookup_bytes)
    if shared_bytes:
        need += f"; mapped tables {format_bytes(shared_bytes)} once per node"
    spark = f" besides Spark's {_num(spark_cpus)}" if spark_cpus else ""
    if capacity == 0:
        raise ConfigError(
            _why_none_fits(
                ids, mem, need, free_mem, free_cpu, gpus, cpu_slots, gpu_slots, cpus_per_actor, gpus_per_actor, spark
            )
        )

    if actors == "auto":
        return PoolPlan(1, capacity, mem, per_node)
    if actors.min > capacity:
        n = actors.min
        totals = {
            "memory": sum(mem_slots.values()),
            "cpu": sum(cpu_slots.values()),
            "gpu": sum(gpu_slots.values()),
        }
        binding = min(totals, key=lambda k: totals[k])
        held = f"the cluster holds {capacity}"
        if binding == "memory" and totals["memory"] < n:
            largest = max(free_mem.values())
            raise ConfigError(
                f"predict.actors: {n} actors need {n} x {format_bytes(mem)} of memory ({need}); "
                f"{held} (largest node: {format_bytes(largest)} free)"
            )
        if binding == "cpu" and totals["cpu"] < n:
            raise ConfigError(
                f"predict.actors: {n} actors need {n} x {_plural(cpus_per_actor, 'CPU')}{spark}; "
                f"{held} (largest node: {_plural(max(free_cpu.values()), 'CPU')} free)"
            )
        if binding == "gpu" and totals["gpu"] < n:
            raise ConfigError(
                f"predict.actors: {n} actors need {n} x {_plural(gpus_per_actor, 'GPU')}; "
                f"{held} (largest node: {_plural(max(gpus.values()), 'GPU')})"
            )
        # Each resource alone would do, but no node has all of them together.
        what = [_plural(cpus_per_actor, "CPU")]
        if gpus_per_actor > 0:
            what.append(_plural(gpus_per_actor, "GPU"))
        what.append(f"{format_bytes(mem)} of memory")
        spread = ", ".join(f"{i}: {per_node[i]}" for i in ids)
        raise ConfigError(
            f"predict.actors: {n} actors need {', '.join(what[:-1])} and {what[-1]} each on one node; {held} ({spread})"
        )
    return PoolPlan(actors.min, min(actors.max, capacity), mem, per_node)


def _need_text(model_bytes: int, memory_factor: float, batch_bytes: int, process_bytes: int, lookup_bytes: int) -> str:
    text = f"model {format_bytes(model_bytes)} x {memory_factor:g}"
    if batch_bytes or lookup_bytes:
        text += f" + batches {format_bytes(_calls_memory(batch_bytes, lookup_bytes))}"
    if process_bytes:
        text += f" + process {format_bytes(process_bytes)}"
    return text


def _why_none_fits(
    ids: list[str],
    mem: int,
    need: str,
    free_mem: Mapping[str, float],
    free_cpu: Mapping[str, float],
    gpus: Mapping[str, float],
    cpu_slots: Mapping[str, float],
    gpu_slots: Mapping[str, float],
    cpus_per_actor: float,
    gpus_per_actor: float,
    spark: str,
) -> str:
    """The one-line reason no node holds even one actor."""
    if not ids:
        return "ray: the cluster has no alive nodes"
    largest_mem = max(free_mem.values())
    if largest_mem < mem:
        return (
            f"model: one actor needs {format_bytes(mem)} of memory ({need}), "
            f"the largest node has {format_bytes(largest_mem)} free"
        )
    if all(cpu_slots[i] < 1 for i in ids):
        return (
            f"predict.cpus_per_actor: one actor needs {_plural(cpus_per_actor, 'CPU')}{spark}, "
            f"the largest node has {_plural(max(free_cpu.values()), 'CPU')} free"
        )
    if all(gpu_slots[i] < 1 for i in ids):
        most = max(gpus.values())
        has = f"the largest node has {_plural(most, 'GPU')}" if most else "no node has a GPU"
        return f"predict.gpus_per_actor: one actor needs {_plural(gpus_per_actor, 'GPU')}, {has}"
    if any(cpu_slots[i] >= 1 and gpu_slots[i] >= 1 for i in ids):
        # Nodes with room for an actor's CPUs (and GPUs) exist, but their memory is too small.
        room = [i for i in ids if cpu_slots[i] >= 1 and gpu_slots[i] >= 1]
        kind = "GPU node" if gpus_per_actor > 0 else f"node with {_plural(cpus_per_actor, 'CPU')} free"
        return (
            f"model: one actor needs {format_bytes(mem)} of memory ({need}), "
            f"the largest {kind} has {format_bytes(max(free_mem[i] for i in room))} free"
        )
    # Some nodes have the CPUs, others the GPUs, none both.
    return (
        f"predict.gpus_per_actor: one actor needs {_plural(gpus_per_actor, 'GPU')} and "
        f"{_plural(cpus_per_actor, 'CPU')} on one node{spark}; no GPU node has the CPUs free"
    )


def format_bytes(n: float) -> str:
    """Bytes as GiB (from 1 GiB) or MiB, one decimal.

    >>> format_bytes(6 * 2**30), format_bytes(512 * 2**20), format_bytes(0)
    ('6.0 GiB', '512.0 MiB', '0.0 MiB')
    """
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"
