"""The actor pool: long-lived :class:`Predictor` actors, one model copy each, found by name from Spark.

A :class:`Pool` asks Ray for its actors as soon as it is made; they load
the model meanwhile (while Spark starts, for ``rayscore run``). Each actor
is named, so Spark's Python workers (:mod:`rayscore._stream`) can reach it
with nothing but its name; the model itself never travels. Actors are
spread over the nodes (one per node before two on one, so fewer copies
per node's memory and cache), each asks for its memory (``_placement``),
and one that dies is started again by Ray, its in-flight calls run again.

Pools made by :func:`rayscore.predict` live as long as the Ray session
(:func:`pool_for`, :func:`stop_pools`); ``rayscore run`` makes its own and
stops it when the job ends.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from ._config import PredictConfig
from ._errors import PredictError, actor_died, translate_errors
from ._model import ModelSpec, file_state
from ._placement import (
    ACTOR_PROCESS_BYTES,
    PoolPlan,
    batch_bytes,
    format_bytes,
    memory_factor_for,
    nodes_from_ray,
    plan_pool,
)
from ._predict import LoadLedger, ModelRef, Predictor, summarize_loads
from ._progress import ActionWatch, ProgressArg
from ._report import RunResult, StageClock

__all__ = ["Pool", "check_pool", "pool_for", "pool_key", "stop_pools", "POOL_START_TIMEOUT_S", "MAX_RESTARTS"]

log = logging.getLogger("rayscore")

POOL_START_TIMEOUT_S = 3600  # for the minimal pool to place its actors and load (copy) the model
# An actor that dies (killed, out of memory, its node lost) is started again up to this many times,
# and the calls it had in flight are run again; after that its batches fail the job.
MAX_RESTARTS = 3


def check_pool(
    spark_cpus: float, predict: PredictConfig, model: ModelRef, spec: ModelSpec, spark_memory: int = 0
) -> PoolPlan:
    """Size the pool from the model and the cluster's nodes, or refuse it before it starts.

    Memory per actor is the process before its model (``ACTOR_PROCESS_BYTES``),
    the model's bytes it holds itself times its loader's measured factor and a
    few batches; its mapped tables count once per node. Each node holds as
    many actors as its CPUs, GPUs and memory allow beside Spark's executors.
    """
    import ray  # noqa: PLC0415

    shared = model.shared_on(predict.gpus_per_actor > 0)
    return plan_pool(
        nodes_from_ray(ray.nodes()),
        actors=predict.actors,
        model_bytes=model.nbytes - shared,
        shared_bytes=shared,
        memory_factor=memory_factor_for(model.loader, predict.memory_factor),
        batch_bytes=batch_bytes(spec, predict.batch_size),
        lookup_bytes=spec.lookup_row_bytes * predict.batch_size,
        cpus_per_actor=predict.cpus_per_actor,
        gpus_per_actor=predict.gpus_per_actor,
        spark_cpus=spark_cpus,
        spark_memory=spark_memory,
        process_bytes=ACTOR_PROCESS_BYTES,
    )


class Pool:
    """``plan.max_actors`` predictor actors for one model; scoring may begin once ``plan.min_actors`` have loaded.

    Actors that do not fit yet stay queued in Ray and join when placed.
    Cost: one model load per actor (plus one per restart), for the pool's life.
    """

    restarts = MAX_RESTARTS

    def __init__(self, model: ModelRef, predict: PredictConfig, plan: PoolPlan, reserve_cpus: float = 0.0) -> None:
        import ray  # noqa: PLC0415
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415

        _make_room(predict, plan, reserve_cpus)
        self.model, self.plan = model, plan
        self.namespace = ray.get_runtime_context().namespace
        prefix = f"rayscore-{uuid.uuid4().hex[:12]}"
        # The ledger lives with the driver: a lost worker node must not take the pool's records with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.ledger = (
            ray.remote(LoadLedger).options(num_cpus=0, name=f"{prefix}-ledger", scheduling_strategy=here).remote()
        )
        options: dict[str, Any] = {
            "num_cpus": predict.cpus_per_actor,
            "memory": plan.memory_per_actor,  # so Ray never packs more model copies than a node holds
            "scheduling_strategy": "SPREAD",
            "max_restarts": MAX_RESTARTS,
            "max_task_retries": -1,  # bounded by the restarts
        }
        if predict.gpus_per_actor:
            options["num_gpus"] = predict.gpus_per_actor
        self.names = tuple(f"{prefix}-{i}" for i in range(plan.max_actors))
        actor = ray.remote(Predictor)
        self.actors = [actor.options(name=name, **options).remote(model, f"{prefix}-ledger") for name in self.names]
        self._loaded = False  # the minimal pool has loaded
        self._watch: ActionWatch | None = None

    def watch_actions(self, spark: Any, progress: ProgressArg) -> None:
        """Show progress for each Spark action that scores through this pool, as ``progress`` asks (False: none)."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if progress is not False:
            self._watch = ActionWatch(self, spark, progress)

    def wait(self, timeout: float = POOL_START_TIMEOUT_S) -> None:
        """Wait until ``plan.min_actors`` actors have loaded the model; raise the first load error."""
        import ray  # noqa: PLC0415

        if self._loaded:
            return
        began = time.perf_counter()
        pending = [a.__ray_ready__.remote() for a in self.actors]
        ready = 0
        with translate_errors("loading the model", PredictError):
            while ready < self.plan.min_actors:
                left = timeout - (time.perf_counter() - began)
                done, pending = ray.wait(pending, num_returns=1, timeout=max(left, 0))
                if not done:
                    raise PredictError(
                        f"predict.actors: {ready} of the {self.plan.min_actors} actors the pool needs loaded the "
                        f"model within {timeout:.0f} s (the cluster lacks room for them, or the model is slow to load)"
                    )
                try:
                    ray.get(done[0])
                except Exception as exc:
                    died = actor_died(
                        exc, doing="loading the model", restarts=self.restarts, advice=self.memory_advice()
                    )
                    if died is None:
                        raise
                    raise died from exc
                ready += 1
        self._loaded = True

    def memory_advice(self, batch_rows: int | None = None) -> str:
        """What to change when an actor keeps being killed for memory: scoring ``batch_rows``, or loading."""
        ask = f"each actor asks Ray for {format_bytes(self.plan.memory_per_actor)} now"
        if batch_rows is None:
            return (
                f"To fit: raise predict.memory_factor so that Ray places fewer actors on a node ({ask}), "
                "run fewer actors (predict.actors), or use nodes with more memory"
            )
        return (
            f"To fit: lower predict.batch_size (now {batch_rows}), raise predict.memory_factor so that Ray "
            f"places fewer actors on a node ({ask}), or run fewer actors (predict.actors)"
        )

    @property
    def loaded(self) -> bool:
        """Whether the pool's minimum has loaded the model, as :meth:`wait` found."""
        return self._loaded

    def spec(self) -> ModelSpec:
        """The model's inputs and outputs as a loaded copy knows them (waits for the pool)."""
        import ray  # noqa: PLC0415

        self.wait()
        with translate_errors("loading the model", PredictError):
            done, _ = ray.wait([a.spec.remote() for a in self.actors], num_returns=1)
            return ray.get(done[0])

    def loads(self) -> dict[str, Any]:
        """The pool's loads so far, as the run report shows them."""
        import ray  # noqa: PLC0415

        with translate_errors("predict", PredictError):
            loads = summarize_loads(ray.get(self.ledger.loads.remote()))
            loads["working_batch_size"] = ray.get(self.ledger.working_batch_size.remote())
            loads["first_scored"] = ray.get(self.ledger.first_scored.remote())
            loads["timeline"] = ray.get(self.ledger.timeline.remote())
        loads["pool"] = {
            "min": self.plan.min_actors,
            "max": self.plan.max_actors,
            "memory_per_actor": self.plan.memory_per_actor,
        }
        return loads

    def report_into(self, result: RunResult, clock: StageClock) -> None:
        """The pool's loads, its slowest load and its first prediction into ``result`` and ``clock``.

        Called again as the job goes on: it replaces what it put in before.
        """
        loads = self.loads()
        result.model_loads = result.model_copies = 0
        result.actor_loads = []
        result.add_loads(loads)
        result.model_copies += int(self.model.fetched)
        clock.seconds["load"] = round(loads["load_seconds_max"], 3)
        if loads.get("first_scored") is not None:
            clock.seconds["first_prediction"] = clock.since_start(loads["first_scored"])
        clock.seconds["total"] = clock.since_start()
        result.seconds = dict(clock.seconds)
        result.timeline = {**loads["timeline"], "job_began": clock.began, "stages": list(clock.spans)}

    def stop(self) -> None:
        """Kill the actors and the ledger now (their model copies and CPUs go back to Ray); safe to call twice."""
        import ray  # noqa: PLC0415

        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if not ray.is_initialized():  # its Ray was stopped, and the actors with it (a call would start a new Ray)
            return
        for actor in [*self.actors, self.ledger]:
            try:
                ray.kill(actor)
            except Exception as exc:  # noqa: BLE001 - best effort: the job's own error matters more
                log.debug("stopping a pool actor: %s", exc)
        self.actors = []


_lock = threading.RLock()
_pools: dict[tuple[Any, ...], Pool] = {}  # the session's pools, for rayscore.predict


def pool_for(
    model: ModelRef, spec: ModelSpec, predict: PredictConfig, spark_cpus: float, reserve_cpus: float = 0.0
) -> Pool:
    """The session's pool for ``model`` and these pool settings, made on first use (one load per actor).

    ``spark_cpus``: Ray CPUs that are not the pool's to size for; ``reserve_cpus``: CPUs to keep free
    beside it when it is made (earlier pools are stopped for them).
    """
    settings = (predict.actors, predict.cpus_per_actor, predict.gpus_per_actor, predict.memory_factor)
    key = (*pool_key(model), *settings, predict.batch_size)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = Pool(model, predict, check_pool(spark_cpus, predict, model, spec), reserve_cpus)
        return pool


def pool_key(model: ModelRef) -> tuple[Any, ...]:
    """What makes two pools' models the same: where it is, its bytes (a remote model's digest, a local model's
    files' sizes, times and inodes, known before its digest is taken) and how it is loaded."""
    return (
        model.path,
        model.fingerprint or file_state(model.path),
        model.loader,
        model.safe_mode,
        model.signature,
        model.custom_objects,
        model.cache_dir,
        model.mmap_min_bytes,
        model.mmap_on_gpu,
    )


def _make_room(predict: PredictConfig, plan: PoolPlan, reserve_cpus: float = 0.0) -> None:
    """Stop the session's pools (:func:`pool_for`) if a new pool's minimum would not fit beside them.

    A session keeps each ``rayscore.predict`` pool for its later actions;
    one that stands in the way of another pool is stopped, and a DataFrame
    it scored then fails its next action with a clear error. ``reserve_cpus``
    must stay free beside the new pool (Ray Data's own tasks need them).
    """
    _stop_others_unless_free(
        {
            "CPU": plan.min_actors * predict.cpus_per_actor + reserve_cpus,
            "GPU": plan.min_actors * predict.gpus_per_actor,
            "memory": plan.min_actors * plan.memory_per_actor,
        }
    )


def leave_cpus_free(cpus: float, keep: Pool) -> None:
    """Stop the session's pools but ``keep`` if fewer than ``cpus`` of Ray's CPUs are free (for Ray Data's tasks)."""
    _stop_others_unless_free({"CPU": cpus}, keep)


def _stop_others_unless_free(need: dict[str, float], keep: Pool | None = None) -> None:
    import ray  # noqa: PLC0415

    with _lock:
        others = {k: p for k, p in _pools.items() if p is not keep}
        if not others:
            return
        free = ray.available_resources()
        if all(free.get(k, 0.0) >= v for k, v in need.items() if v):
            return
        log.info("stopping the session's %d earlier actor pool(s) to make room", len(others))
        for key in others:
            del _pools[key]
    for pool in others.values():
        pool.stop()


def stop_pools() -> None:
    """Stop every pool :func:`pool_for` made (the session is ending)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.stop()
