"""Ray on Spark: a Ray cluster started inside a Spark application (``ray.util.spark.setup_ray_cluster``).

For the Spark a team already runs (standalone, YARN, ``local-cluster``,
Databricks): the Ray head runs on Spark's driver and each Ray worker node
is one long Spark task on an executor, so every executor host that runs a
worker node belongs to the Ray cluster and Spark's Python workers there
reach the pool by name. Costs: the start-up (about 30 s on a loopback
standalone cluster here, more on a busy one), and the Spark task slots the
worker nodes hold while they live (``cpus_per_node`` each), which the
scoring job's own tasks cannot use: :func:`slots_left` refuses a plan that
leaves none.

Ray's traps, answered here: Ray on Spark runs ``ray`` found on ``PATH``
(a venv that is not activated has none), and Ray 2.60's worker nodes must
hold the head's authentication token; both reach the worker nodes through
Ray on Spark's start hook, whose environment travels in the task closure,
never in Spark's configuration. Ray on Spark installs its own SIGTERM
handler and sets ``RAY_ADDRESS`` in this process: the first is undone at
once, the second when the cluster stops.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from .._config import RayOnSparkConfig, to_bytes
from .._errors import DeploymentError, SessionError, one_line
from .._placement import format_bytes
from .base import (
    Deployment,
    check_python_workers,
    keep_signal_handlers,
    ray_init,
    spark_master,
    token_auth_on,
)

__all__ = ["RayOnSpark", "slots_left", "node_cpus", "SUPPORTED", "START_HOOK"]

log = logging.getLogger("rayscore")

SUPPORTED = ("spark://", "yarn", "local-cluster[")  # the masters Ray on Spark starts worker nodes on
EXECUTORS_WAIT_S = 120.0  # for a cluster master's first executor to register
START_HOOK = "rayscore._deploy.start_hook.RayscoreStartHook"  # loaded by Ray on Spark by name
HEAD_STOP_S = 60.0  # for the head node to drain and end once told to


def node_cpus(cfg: RayOnSparkConfig, max_actors: int, cpus_per_actor: float) -> int:
    """CPUs per Ray worker node: ``cpus_per_node``, else what the largest pool asks for, on one node.

    >>> node_cpus(RayOnSparkConfig(), 2, 1.0), node_cpus(RayOnSparkConfig(cpus_per_node=4), 2, 1.0)
    (2, 4)
    """
    if cfg.cpus_per_node is not None:
        return cfg.cpus_per_node
    return max(1, math.ceil(max_actors * cpus_per_actor / cfg.worker_nodes))


def slots_left(total_slots: int, worker_nodes: int, cpus_per_node: int, task_cpus: int = 1) -> int:
    """Spark task slots left for the scoring job once Ray on Spark's worker nodes hold theirs.

    Each worker node is one Spark task asking for ``cpus_per_node`` cores,
    which is ``cpus_per_node / spark.task.cpus`` slots.

    >>> slots_left(4, 1, 2), slots_left(4, 2, 2), slots_left(8, 1, 2, task_cpus=2)
    (2, 0, 7)
    """
    return total_slots - worker_nodes * math.ceil(cpus_per_node / task_cpus)


class RayOnSpark(Deployment):
    """Ray on Spark, started here on the caller's SparkSession (or one built from ``spark.master``).

    :meth:`stop` shuts the Ray cluster down (its worker nodes' Spark job is
    cancelled, their slots come back) and stops the SparkSession only if it
    was built here.
    """

    kind = "ray-on-spark"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Deployment's arguments
        super().__init__(*args, **kwargs)
        self.sizing = self.spark_config.ray_on_spark or RayOnSparkConfig()
        self.cpus_per_node = node_cpus(self.sizing, self.max_actors, self.cpus_per_actor)
        self._started = False
        self._address_before: str | None = None
        self._cluster: Any = None
        self.slots: dict[str, int] = {}

    def start_ray(self) -> None:
        self._mark_started()
        master = spark_master(self.spark) if self.spark is not None else str(self.spark_config.master)
        if not master.startswith(SUPPORTED):
            raise DeploymentError(
                f"spark.master: Ray on Spark does not run on a {master!r} master (it needs spark://…, yarn or "
                "local-cluster[…]); start a Ray cluster on the executors' hosts and set ray.address instead"
            )
        self._build_spark()
        self._check_room()
        check_python_workers(self.spark)
        self._setup()

    def _check_room(self) -> None:
        from ray.util.spark.utils import get_max_num_concurrent_tasks  # noqa: PLC0415

        sc = self.spark.sparkContext
        deadline = time.monotonic() + EXECUTORS_WAIT_S
        while len(sc._jsc.sc().statusTracker().getExecutorInfos()) < 2:  # the driver is listed too
            if time.monotonic() > deadline:
                raise SessionError(
                    f"spark.master: no Spark executor registered with {sc.master} within {EXECUTORS_WAIT_S:.0f} s "
                    "(is a worker up, with the cores and memory spark.executor_* ask for?)"
                )
            time.sleep(0.5)
        total = int(get_max_num_concurrent_tasks(sc, None))
        task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        left = slots_left(total, self.sizing.worker_nodes, self.cpus_per_node, task_cpus)
        self.slots = {"spark_slots": total, "ray_worker_nodes_hold": total - left, "left_for_scoring": left}
        if left < 1:
            raise DeploymentError(
                f"spark.ray_on_spark: {self.sizing.worker_nodes} Ray worker node(s) of {self.cpus_per_node} CPU(s) "
                f"would hold {total - left} of Spark's {total} task slots for as long as they live, leaving "
                f"{left} for the scoring job's tasks: ask for fewer or smaller worker nodes "
                "(spark.ray_on_spark.worker_nodes, cpus_per_node) or give Spark more executor cores"
            )

    def _setup(self) -> None:
        from ray.util.spark import setup_ray_cluster  # noqa: PLC0415

        self._address_before = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ON_SPARK_START_HOOK"] = START_HOOK
        token_auth_on()
        size = self.sizing
        try:
            with keep_signal_handlers():
                address, _ = setup_ray_cluster(
                    max_worker_nodes=size.worker_nodes,
                    min_worker_nodes=size.worker_nodes,
                    num_cpus_worker_node=self.cpus_per_node,
                    num_gpus_worker_node=size.gpus_per_node,
                    num_cpus_head_node=size.head_cpus,
                    memory_worker_node=_bytes(size.memory_per_node),
                    object_store_memory_worker_node=_bytes(size.object_store_memory_per_node),
                    head_node_options={"include_dashboard": self.ray_config.dashboard},
                )
        except Exception as exc:  # Ray on Spark raises ValueError/RuntimeError with its own wording
            cause = exc.__cause__ or exc
            raise SessionError(
                f"spark.ray_on_spark: Ray on Spark did not start on {spark_master(self.spark)}: "
                f"{type(cause).__name__}: {one_line(str(cause))}"
            ) from exc
        finally:
            os.environ.pop("RAY_ON_SPARK_START_HOOK", None)
        self._started = True
        from ray.util.spark import cluster_init  # noqa: PLC0415

        # Ray on Spark's handle on the cluster it started: its head process, for a shutdown that fails half-way.
        self._cluster = cluster_init._active_ray_cluster
        ray_init(address=address)

    def start_spark(self) -> None:
        self._mark_up()

    def stop(self) -> None:
        import ray  # noqa: PLC0415

        if self._started:
            self._started = False
            if ray.is_initialized():
                ray.shutdown()
            try:
                from ray.util.spark import shutdown_ray_cluster  # noqa: PLC0415

                with keep_signal_handlers():
                    shutdown_ray_cluster()
            except Exception as exc:  # noqa: BLE001 - stopping must go on
                log.debug("Ray on Spark's shutdown failed (%s): ending its head node here", exc)
                self._end_head()
            if self._address_before is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = self._address_before
        self._stop_built_spark()

    def _end_head(self) -> None:
        """End the head node ourselves when Ray on Spark's shutdown stopped half-way.

        Its shutdown cancels the worker nodes' Spark job first, and on a
        SparkSession the caller has stopped already that raises before the
        head process is ended; the head's output thread (not a daemon) then
        keeps the interpreter from exiting. Ending the head ends its
        daemons, and the worker nodes went with the stopped executors.
        """
        from ray.util.spark import cluster_init  # noqa: PLC0415

        cluster = self._cluster
        if cluster is not None and not cluster.is_shutdown:
            cluster.head_proc.terminate()
            try:
                cluster.head_proc.wait(timeout=HEAD_STOP_S)
            except Exception:  # noqa: BLE001 - it would not end: kill it
                cluster.head_proc.kill()
            cluster.is_shutdown = True
        if cluster_init._active_ray_cluster is cluster:
            cluster_init._active_ray_cluster = None  # so that a later Ray on Spark may start in this process

    @property
    def owns_ray(self) -> bool:
        return self._started

    def describe(self) -> str:
        size = self.sizing
        gpus = f", {size.gpus_per_node} GPU(s)" if size.gpus_per_node else ""
        memory = f", {format_bytes(_bytes(size.memory_per_node))} each" if size.memory_per_node else ""
        slots = (
            f"; they hold {self.slots['ray_worker_nodes_hold']} of Spark's {self.slots['spark_slots']} task slots"
            if self.slots
            else ""
        )
        return (
            f"Ray on Spark started by rayscore on {self._spark_text()}: {size.worker_nodes} worker node(s) x "
            f"{self.cpus_per_node} CPU(s){gpus}{memory}{slots}"
        )

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "ray_on_spark": {"cpus_per_node": self.cpus_per_node, **self.slots}}


def _bytes(text: str | None) -> int | None:
    return None if text is None else to_bytes(text)
