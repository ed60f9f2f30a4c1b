"""Placement rules: pool size and per-actor memory over synthetic cluster shapes, no cluster."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from rayscore import ConfigError, ModelSpec, TensorSpec
from rayscore._config import ActorsConfig
from rayscore._model import loaders
from rayscore._placement import (
    ACTOR_PROCESS_BYTES,
    BATCH_MEMORY_FACTOR,
    DEFAULT_MEMORY_FACTORS,
    FALLBACK_MEMORY_FACTOR,
    LOOKUP_MEMORY_FACTOR,
    NodeShape,
    PoolPlan,
    actor_memory,
    batch_bytes,
    format_bytes,
    memory_factor_for,
    nodes_from_ray,
    plan_pool,
    row_bytes,
)

GiB = 2**30
MiB = 2**20


def node(node_id: str, cpus: float, mem_gib: float, gpus: float = 0) -> NodeShape:
    return NodeShape(node_id=node_id, cpus=cpus, gpus=gpus, memory=int(mem_gib * GiB))


def pool(n: int, m: int | None = None) -> ActorsConfig:
    return ActorsConfig(min=n, max=n if m is None else m)


def plan(nodes: list[NodeShape], actors: Any = "auto", **kw: Any) -> PoolPlan:
    """plan_pool with a 1 GiB model x 2.0 (2 GiB per actor), 1 CPU, no GPU, no batches, unless told."""
    args: dict[str, Any] = {
        "model_bytes": 1 * GiB,
        "memory_factor": 2.0,
        "batch_bytes": 0,
        "cpus_per_actor": 1,
        "gpus_per_actor": 0,
    }
    args.update(kw)
    return plan_pool(nodes, actors=actors, **args)


def error(nodes: list[NodeShape], actors: Any = "auto", **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        plan(nodes, actors, **kw)
    text = str(info.value)
    assert "\n" not in text, f"message is not one line: {text!r}"
    return text


# --------------------------------------------------------------------------- actor_memory, format_bytes


def test_actor_memory_formula() -> None:
    assert actor_memory(4 * GiB, memory_factor=1.5, batch_bytes=0) == 6 * GiB
    assert actor_memory(4 * GiB, memory_factor=1.5, batch_bytes=8 * MiB) == 6 * GiB + BATCH_MEMORY_FACTOR * 8 * MiB
    assert BATCH_MEMORY_FACTOR == 16
    assert actor_memory(0, memory_factor=2.0, batch_bytes=0) == 0
    lookups = actor_memory(0, memory_factor=1.0, batch_bytes=MiB, lookup_bytes=80 * MiB)
    assert lookups == BATCH_MEMORY_FACTOR * MiB + LOOKUP_MEMORY_FACTOR * 80 * MiB
    with pytest.raises(ValueError, match="lookup_bytes=-1"):
        actor_memory(1, memory_factor=1.0, batch_bytes=0, lookup_bytes=-1)


def test_actor_memory_counts_the_process_before_the_model() -> None:
    assert actor_memory(4 * GiB, memory_factor=1.5, batch_bytes=0, process_bytes=640 * MiB) == 6 * GiB + 640 * MiB
    # A small model's actor is mostly its process (Python, Ray, TensorFlow): 12 MB x 1.3 alone is 15.6 MB.
    assert actor_memory(12 * MiB, memory_factor=1.3, batch_bytes=0, process_bytes=ACTOR_PROCESS_BYTES) > 640 * MiB
    with pytest.raises(ValueError, match="process_bytes=-1"):
        actor_memory(1, memory_factor=1.0, batch_bytes=0, process_bytes=-1)


def test_plan_pool_fits_actors_by_their_process_too() -> None:
    node = [NodeShape("n1", cpus=16, gpus=0, memory=4 * GiB)]
    kwargs = {
        "actors": "auto",
        "model_bytes": 100 * MiB,
        "memory_factor": 1.0,
        "batch_bytes": 0,
        "cpus_per_actor": 1,
        "gpus_per_actor": 0,
    }
    assert plan_pool(node, **kwargs).max_actors == 16  # CPUs bind: 16 x 100 MiB fits in 4 GiB
    with_process = plan_pool(node, **kwargs, process_bytes=924 * MiB)
    assert with_process.max_actors == 4 and with_process.memory_per_actor == GiB
    with pytest.raises(ConfigError) as caught:
        plan_pool(node, **{**kwargs, "actors": ActorsConfig(min=5, max=5)}, process_bytes=924 * MiB)
    assert str(caught.value) == (
        "predict.actors: 5 actors need 5 x 1.0 GiB of memory "
        "(model 100.0 MiB x 1 + process 924.0 MiB); the cluster holds 4 "
        "(largest node: 4.0 GiB free)"
    )


def test_actor_memory_rounds_up_to_whole_bytes() -> None:
    assert actor_memory(3, memory_factor=1.5, batch_bytes=0) == 5
    assert isinstance(actor_memory(10**9, memory_factor=1.3, batch_bytes=1), int)


@pytest.mark.parametrize(
    "kw",
    [
        {"model_bytes": -1, "memory_factor": 1.0, "batch_bytes": 0},
        {"model_bytes": 1, "memory_factor": 1.0, "batch_bytes": -1},
        {"model_bytes": 1, "memory_factor": 0.0, "batch_bytes": 0},
    ],
)
def test_actor_memory_rejects_nonsense(kw: dict[str, Any]) -> None:
    kw = dict(kw)
    model_bytes = kw.pop("model_bytes")
    with pytest.raises(ValueError):
        actor_memory(model_bytes, **kw)


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0.0 MiB"),
        (512 * MiB, "512.0 MiB"),
        (1536 * 1024, "1.5 MiB"),
        (GiB - 1, "1024.0 MiB"),
        (GiB, "1.0 GiB"),
        (int(13.5 * GiB), "13.5 GiB"),
        (6 * GiB + 32 * MiB, "6.0 GiB"),
        (2048 * GiB, "2048.0 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_memory_factor_for() -> None:
    """The figures the README and configs/example.yaml state (measured: bench/RESULTS.md)."""
    assert memory_factor_for("keras") == 1.3
    assert memory_factor_for("h5") == 1.3
    assert memory_factor_for("savedmodel") == 1.2
    assert memory_factor_for("keras", 3.5) == 3.5
    assert memory_factor_for("onnx") == FALLBACK_MEMORY_FACTOR
    assert memory_factor_for("onnx", 1.2) == 1.2


def test_every_registered_loader_has_a_measured_factor() -> None:
    for name in loaders:
        assert DEFAULT_MEMORY_FACTORS[name] >= 1.0, name


def test_batch_bytes_counts_inputs_and_known_outputs() -> None:
    spec = ModelSpec(
        inputs=(
            TensorSpec("ids", (20,), "int32"),
            TensorSpec("how", (24, 7), "float32"),
            TensorSpec("price", (), "float64"),
            TensorSpec("text", (), "string"),
        ),
        outputs=(TensorSpec("click", (1,), "float32"), TensorSpec("unknown", None, None)),
    )
    per_row = 20 * 4 + 24 * 7 * 4 + 8 + 8 + 4 + 4
    assert batch_bytes(spec, 1024) == per_row * 1024


def test_row_bytes_is_none_when_an_input_is_open() -> None:
    known = (TensorSpec("ids", (20,), "int32"), TensorSpec("price", (), "float32"))
    unknown_out = (TensorSpec("click", None, None),)
    assert row_bytes(ModelSpec(inputs=known, outputs=unknown_out)) == 20 * 4 + 4 + 4
    for open_input in (TensorSpec("seq", (None,), "int32"), TensorSpec("image", None, "float32")):
        assert row_bytes(ModelSpec(inputs=(*known, open_input), outputs=unknown_out)) is None


def test_module_imports_no_ray_at_top_level() -> None:
    import rayscore._placement as placement

    tree = ast.parse(Path(placement.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n == "ray" or n.startswith("ray.")]


# --------------------------------------------------------------------------- nodes_from_ray


def test_nodes_from_ray_realistic_listing() -> None:
    listing = [
        {
            "NodeID": "3f1c" * 14,
            "Alive": True,
            "NodeManagerAddress": "10.0.0.1",
            "NodeName": "10.0.0.1",
            "Resources": {
                "CPU": 16.0,
                "memory": 42949672960.0,
                "object_store_memory": 18406716211.0,
                "node:10.0.0.1": 1.0,
                "node:__internal_head__": 1.0,
            },
        },
        {
            "NodeID": "9ab2" * 14,
            "Alive": True,
            "NodeManagerAddress": "10.0.0.2",
            "Resources": {
                "CPU": 8.0,
                "GPU": 2.0,
                "accelerator_type:A100": 1.0,
                "memory": 85899345920.0,
                "object_store_memory": 36000000000.0,
                "node:10.0.0.2": 1.0,
            },
        },
        {
            "NodeID": "dead" * 14,
            "Alive": False,
            "NodeManagerAddress": "10.0.0.3",
            "Resources": {"CPU": 64.0, "memory": 1e12},
        },
        {"NodeID": "77aa" * 14, "Alive": True, "Resources": {"node:10.0.0.4": 1.0}},  # no CPU/memory keys
    ]
    assert nodes_from_ray(listing) == [
        NodeShape("3f1c" * 14, 16.0, 0.0, 40 * GiB),
        NodeShape("9ab2" * 14, 8.0, 2.0, 80 * GiB),
        NodeShape("77aa" * 14, 0.0, 0.0, 0),
    ]
    assert all(isinstance(n.memory, int) for n in nodes_from_ray(listing))


def test_nodes_from_ray_empty() -> None:
    assert nodes_from_ray([]) == []


# --------------------------------------------------------------------------- CPU-only clusters


def test_cpu_only_single_node() -> None:
    # 8 CPUs, 32 GiB / 2 GiB = 16 memory slots: CPUs bind
    result = plan([node("n1", 8, 32)], pool(2))
    assert result == PoolPlan(min_actors=2, max_actors=2, memory_per_actor=2 * GiB, per_node={"n1": 8})
    assert result.capacity == 8


def test_several_cpu_nodes_each_bound_by_its_own_resource() -> None:
    nodes = [node("a", 4, 64), node("b", 2, 64), node("c", 8, 8)]  # c: 8 GiB / 2 GiB = 4
    result = plan(nodes, "auto")
    assert result.per_node == {"a": 4, "b": 2, "c": 4}
    assert (result.min_actors, result.max_actors) == (1, 10)


def test_fractional_cpus_per_actor() -> None:
    result = plan([node("n1", 3, 64)], "auto", cpus_per_actor=0.5)
    assert result.per_node == {"n1": 6}


def test_fixed_pool_that_fits_exactly() -> None:
    result = plan([node("a", 2, 4), node("b", 2, 4)], pool(4))
    assert (result.min_actors, result.max_actors) == (4, 4)


# --------------------------------------------------------------------------- GPU nodes


def test_half_a_gpu_per_actor_is_two_per_gpu() -> None:
    result = plan([node("g1", 16, 128, gpus=2)], "auto", gpus_per_actor=0.5)
    assert result.per_node == {"g1": 4}


def test_fractional_gpu_shares_one_gpu() -> None:
    # 0.4 GPU: two per GPU (Ray will not split one actor across GPUs), so 4 on 2 GPUs, not 5
    result = plan([node("g1", 16, 128, gpus=2)], "auto", gpus_per_actor=0.4)
    assert result.per_node == {"g1": 4}


def test_whole_gpus_per_actor() -> None:
    result = plan([node("g4", 32, 256, gpus=4), node("g1", 32, 256, gpus=1)], "auto", gpus_per_actor=2)
    assert result.per_node == {"g4": 2, "g1": 0}


def test_gpu_node_bound_by_cpus() -> None:
    result = plan([node("g1", 2, 128, gpus=8)], "auto", gpus_per_actor=1)
    assert result.per_node == {"g1": 2}


def test_mixed_cluster_gpu_actors_only_on_gpu_nodes() -> None:
    nodes = [node("cpu-1", 32, 128), node("gpu-1", 8, 64, gpus=1), node("cpu-2", 16, 64)]
    result = plan(nodes, "auto", gpus_per_actor=1)
    assert result.per_node == {"cpu-1": 0, "gpu-1": 1, "cpu-2": 0}
    assert (result.min_actors, result.max_actors) == (1, 1)


def test_mixed_cluster_cpu_actors_use_every_node() -> None:
    nodes = [node("cpu-1", 4, 128), node("gpu-1", 2, 64, gpus=1)]
    assert plan(nodes, "auto").per_node == {"cpu-1": 4, "gpu-1": 2}


def test_gpu_pool_larger_than_the_gpus() -> None:
    nodes = [node("g1", 8, 64, gpus=1), node("g2", 8, 64, gpus=1), node("c", 64, 256)]
    msg = error(nodes, pool(3), gpus_per_actor=1)
    assert msg == "predict.actors: 3 actors need 3 x 1 GPU; the cluster holds 2 (largest node: 1 GPU)"


def test_gpus_asked_on_a_cpu_only_cluster() -> None:
    msg = error([node("a", 8, 64), node("b", 8, 64)], pool(1), gpus_per_actor=1)
    assert msg == "predict.gpus_per_actor: one actor needs 1 GPU, no node has a GPU"


def test_more_gpus_per_actor_than_any_node_has() -> None:
    msg = error([node("g", 8, 64, gpus=2)], "auto", gpus_per_actor=4)
    assert msg == "predict.gpus_per_actor: one actor needs 4 GPUs, the largest node has 2 GPUs"


def test_gpu_nodes_without_free_cpus() -> None:
    # the GPU node has 1 CPU, the actor needs 2; the CPU node has the CPUs but no GPU
    msg = error([node("g", 1, 64, gpus=1), node("c", 16, 64)], "auto", gpus_per_actor=1, cpus_per_actor=2)
    assert msg == (
        "predict.gpus_per_actor: one actor needs 1 GPU and 2 CPUs on one node; no GPU node has the CPUs free"
    )


# --------------------------------------------------------------------------- memory-bound


def test_memory_bound_big_model() -> None:
    # 4 GiB x 1.5 = 6 GiB per actor: 13.5 GiB holds 2 although 16 CPUs are free
    result = plan([node("n1", 16, 13.5), node("n2", 16, 30)], "auto", model_bytes=4 * GiB, memory_factor=1.5)
    assert result.memory_per_actor == 6 * GiB
    assert result.per_node == {"n1": 2, "n2": 5}


def test_memory_bound_pool_too_large() -> None:
    msg = error([node("n1", 16, 13.5)], pool(3), model_bytes=4 * GiB, memory_factor=1.5)
    assert msg == (
        "predict.actors: 3 actors need 3 x 6.0 GiB of memory (model 4.0 GiB x 1.5); "
        "the cluster holds 2 (largest node: 13.5 GiB free)"
    )


def test_memory_bound_pool_too_large_with_batches() -> None:
    msg = error([node("n1", 16, 13.5)], pool(3, 5), model_bytes=4 * GiB, memory_factor=1.5, batch_bytes=8 * MiB)
    assert msg == (
        "predict.actors: 3 actors need 3 x 6.1 GiB of memory (model 4.0 GiB x 1.5 + batches 128.0 MiB); "
        "the cluster holds 2 (largest node: 13.5 GiB free)"
    )


def test_model_fits_on_no_node() -> None:
    msg = error(
        [node("a", 16, 4), node("b", 8, 2)], pool(1), model_bytes=4 * GiB, memory_factor=1.5, batch_bytes=8 * MiB
    )
    assert msg == (
        "model: one actor needs 6.1 GiB of memory (model 4.0 GiB x 1.5 + batches 128.0 MiB), "
        "the largest node has 4.0 GiB free"
    )


def test_model_fits_on_no_node_with_auto_too() -> None:
    msg = error([node("a", 16, 4)], "auto", model_bytes=4 * GiB, memory_factor=1.5)
    assert msg == "model: one actor needs 6.0 GiB of memory (model 4.0 GiB x 1.5), the largest node has 4.0 GiB free"


def test_model_fits_only_on_a_node_without_gpus() -> None:
    nodes = [node("gpu", 8, 4, gpus=1), node("big-cpu", 32, 128)]
    msg = error(nodes, "auto", model_bytes=4 * GiB, memory_factor=1.5, gpus_per_actor=1)
    assert msg == (
        "model: one actor needs 6.0 GiB of memory (model 4.0 GiB x 1.5), the largest GPU node has 4.0 GiB free"
    )


def test_resources_each_enough_but_never_on_one_node() -> None:
    # a: CPUs but memory for 1; b: memory but 1 CPU. 5 CPU slots, 33 memory slots, 2 actors fit.
    msg = error([node("a", 4, 2), node("b", 1, 64)], pool(3))
    assert msg == (
        "predict.actors: 3 actors need 1 CPU and 2.0 GiB of memory each on one node; the cluster holds 2 (a: 1, b: 1)"
    )


def test_zero_sized_model_is_not_memory_bound() -> None:
    result = plan([node("n1", 4, 0)], "auto", model_bytes=0)
    assert result.memory_per_actor == 0
    assert result.per_node == {"n1": 4}


# --------------------------------------------------------------------------- CPU-bound errors


def test_cpu_bound_pool_too_large() -> None:
    msg = error([node("n1", 4, 64)], pool(4), spark_cpus=1)
    assert msg == (
        "predict.actors: 4 actors need 4 x 1 CPU besides Spark's 1; the cluster holds 3 (largest node: 3 CPUs free)"
    )


def test_cpu_bound_without_spark() -> None:
    msg = error([node("n1", 2, 64), node("n2", 1, 64)], pool(4, 8), cpus_per_actor=1)
    assert msg == "predict.actors: 4 actors need 4 x 1 CPU; the cluster holds 3 (largest node: 2 CPUs free)"


def test_actor_needs_more_cpus_than_any_node_has() -> None:
    msg = error([node("n1", 3, 64), node("n2", 2, 64)], pool(1), cpus_per_actor=4, spark_cpus=1)
    assert msg == ("predict.cpus_per_actor: one actor needs 4 CPUs besides Spark's 1, the largest node has 2 CPUs free")


def test_no_alive_nodes() -> None:
    assert error([], "auto") == "ray: the cluster has no alive nodes"


# --------------------------------------------------------------------------- auto and clamping


def test_auto_takes_everything_that_fits() -> None:
    nodes = [node("a", 8, 10), node("b", 8, 64, gpus=1)]  # a: 10/2 = 5 by memory; b: 8 by CPUs
    result = plan(nodes, "auto")
    assert result == PoolPlan(1, 13, 2 * GiB, {"a": 5, "b": 8})


def test_auto_on_a_one_slot_cluster() -> None:
    result = plan([node("a", 1, 2)], "auto")
    assert (result.min_actors, result.max_actors) == (1, 1)


def test_max_above_capacity_is_clamped() -> None:
    result = plan([node("a", 3, 64)], pool(1, 10))
    assert (result.min_actors, result.max_actors) == (1, 3)
    result = plan([node("a", 3, 64)], pool(2, 10))
    assert (result.min_actors, result.max_actors) == (2, 3)


def test_max_within_capacity_is_kept() -> None:
    result = plan([node("a", 8, 64)], pool(1, 4))
    assert (result.min_actors, result.max_actors) == (1, 4)


# --------------------------------------------------------------------------- Spark's executors


def test_spark_taken_from_the_largest_node_first() -> None:
    nodes = [node("small", 4, 8), node("big", 4, 16)]
    result = plan(nodes, "auto", spark_cpus=2, spark_memory=4 * GiB)
    # big: 2 CPUs, 12 GiB left -> 2; small untouched: 4 CPUs, 8 GiB -> 4
    assert result.per_node == {"small": 4, "big": 2}


def test_spark_drains_one_node_before_the_next() -> None:
    nodes = [node("small", 4, 8), node("big", 4, 16)]
    result = plan(nodes, "auto", spark_cpus=6, spark_memory=18 * GiB)
    # big: 0 CPUs, 0 GiB; small: 2 CPUs, 6 GiB -> 2
    assert result.per_node == {"small": 2, "big": 0}


def test_spark_larger_than_the_cluster_leaves_nothing() -> None:
    msg = error([node("a", 2, 64)], "auto", spark_cpus=3)
    assert msg == "predict.cpus_per_actor: one actor needs 1 CPU besides Spark's 3, the largest node has 0 CPUs free"


def test_spark_memory_can_make_the_model_not_fit() -> None:
    msg = error([node("a", 8, 8)], pool(1), model_bytes=4 * GiB, memory_factor=1.5, spark_memory=4 * GiB)
    assert msg == ("model: one actor needs 6.0 GiB of memory (model 4.0 GiB x 1.5), the largest node has 4.0 GiB free")


def test_spark_is_not_taken_from_gpus() -> None:
    result = plan([node("g", 4, 64, gpus=1)], "auto", gpus_per_actor=1, spark_cpus=2, spark_memory=2 * GiB)
    assert result.per_node == {"g": 1}


def test_plan_is_frozen() -> None:
    result = plan([node("a", 2, 8)], "auto")
    with pytest.raises(AttributeError):
        result.max_actors = 5  # type: ignore[misc]
