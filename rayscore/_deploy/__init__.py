"""Deployments: which Spark and which Ray a job runs on, chosen once per job.

* RayDP, the default (:mod:`.raydp_spark`): RayDP's Spark on a local Ray or
  one joined at ``ray.address``.
* Ray on Spark (:mod:`.ray_on_spark`): the caller's Spark, or one built from
  ``spark.master``, with a Ray cluster started inside that application.
* A Ray cluster (:mod:`.ray_cluster`): the caller's Spark, or one built
  from ``spark.master``, beside a Ray joined (``ray.init``, ``ray.address``,
  ``RAY_ADDRESS``), or a local Ray for a ``local[N]`` master.

:func:`choose` picks one from the config (and a SparkSession the caller
passes); :func:`attach` does the same for ``rayscore.predict`` on a
DataFrame whose SparkSession no rayscore session opened, and keeps what it
started until the interpreter exits. Every deployment implements
:class:`~.base.Deployment`; nothing else in rayscore branches on the kind.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from .._config import RayConfig, SparkConfig, is_local_master
from .base import Deployment, is_raydp, spark_master
from .ray_cluster import RayCluster, joinable_address
from .ray_on_spark import RayOnSpark
from .ray_only import RayOnly
from .raydp_spark import RayDP, RayDPSession

__all__ = [
    "Deployment",
    "choose",
    "attach",
    "attach_ray",
    "spark_cpus_held",
    "attached",
    "register",
    "unregister",
    "detach_all",
    "is_raydp",
]

log = logging.getLogger("rayscore")


def choose(
    ray_config: RayConfig,
    spark_config: SparkConfig,
    *,
    spark: Any = None,
    max_actors: int = 1,
    cpus_per_actor: float = 1.0,
) -> Deployment:
    """The deployment for these settings; nothing is started yet.

    RayDP when no SparkSession is given and ``spark.master`` is unset (the
    embedded default); Ray alone for ``spark=False`` (Ray Datasets).
    Otherwise a plain Spark: beside the Ray this process is connected to or
    ``ray.address``/``RAY_ADDRESS`` names, a local Ray for a ``local``
    master, else Ray on Spark started inside the application.
    """
    import ray  # noqa: PLC0415

    sizing = {"max_actors": max_actors, "cpus_per_actor": cpus_per_actor}
    if spark is False:
        return RayOnly(ray_config, spark_config, **sizing)
    if spark is not None and is_raydp(spark):
        return RayDPSession(spark)
    if spark is None and spark_config.master is None:
        return RayDP(ray_config, spark_config, **sizing)
    master = spark_master(spark) if spark is not None else spark_config.master
    assert master is not None
    joined = ray.is_initialized() or joinable_address(ray_config) is not None
    if joined or (is_local_master(master) and spark_config.ray_on_spark is None):
        return RayCluster(ray_config, spark_config, spark=spark, **sizing)
    return RayOnSpark(ray_config, spark_config, spark=spark, **sizing)


_lock = threading.Lock()
_attached: dict[str, Deployment] = {}  # by Spark application id: what rayscore.predict started for it


def attach(spark: Any, *, max_actors: int, cpus_per_actor: float, verbose: bool = False) -> Deployment:
    """The deployment for ``rayscore.predict`` on a DataFrame of ``spark``, started on first use.

    A SparkSession that a :func:`rayscore.session` block opened (or was given)
    has its deployment already; any other is given one here, said in one line
    on standard error, and kept for later calls until the interpreter exits,
    :func:`detach_all`, or the next call after that SparkSession stopped.
    The caller's SparkSession is never stopped.
    """
    from .._logs import others_to_log  # noqa: PLC0415

    app = str(spark.sparkContext.applicationId)
    _stop_orphans()
    with _lock:
        found = _attached.get(app)
        if found is not None:
            return found
        deployment = choose(
            RayConfig(), SparkConfig(), spark=spark, max_actors=max_actors, cpus_per_actor=cpus_per_actor
        )
        try:
            with others_to_log(verbose):
                deployment.start_ray()
                deployment.start_spark()
        except BaseException:
            with others_to_log(verbose):
                deployment.stop()
            raise
        _attached[app] = deployment
        _stop_at_exit()
    log.warning("scoring on %s", deployment.describe())
    return deployment


RAY_ONLY = "ray"  # the key of attach_ray's deployment among those kept


def attach_ray(*, max_actors: int, cpus_per_actor: float, verbose: bool = False) -> None:
    """A Ray for ``rayscore.predict`` on a Ray Dataset: the one this process is connected to, else one started
    (joined at ``RAY_ADDRESS``, or local) here, said in one line and kept until the interpreter exits."""
    import ray  # noqa: PLC0415

    from .._logs import others_to_log  # noqa: PLC0415

    with _lock:
        if ray.is_initialized():
            return
        deployment = choose(
            RayConfig(), SparkConfig(), spark=False, max_actors=max_actors, cpus_per_actor=cpus_per_actor
        )
        with others_to_log(verbose):
            deployment.start_ray()
            deployment.start_spark()
        _attached[RAY_ONLY] = deployment
        _stop_at_exit()
    log.warning("scoring on %s", deployment.describe())


_exit_hooked = False


def _stop_at_exit() -> None:
    """Have :func:`detach_all` run when the interpreter exits, before it waits for non-daemon threads.

    Ray on Spark runs non-daemon threads in this process (its Spark job
    server), and Python joins those before it runs ``atexit`` handlers: an
    ``atexit`` hook would never run and the interpreter would never exit.
    ``threading._register_atexit`` (what ``concurrent.futures`` uses) runs
    before that join.
    """
    global _exit_hooked
    if _exit_hooked:
        return
    _exit_hooked = True
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(detach_all)
    else:  # pragma: no cover - every supported Python has it
        atexit.register(detach_all)


def _stop_orphans() -> None:
    """Stop what :func:`attach` started for SparkSessions that have stopped since (their Ray on Spark's head)."""
    with _lock:
        orphans = [(a, d) for a, d in _attached.items() if d.spark is not None and d.spark.sparkContext._jsc is None]
        for app, _ in orphans:
            del _attached[app]
    for _, deployment in orphans:
        try:
            deployment.stop()
        except Exception as exc:  # noqa: BLE001 - what is left of a stopped session
            log.debug("stopping %s of a stopped SparkSession: %s", deployment.kind, exc)


def spark_cpus_held() -> float:
    """Ray CPUs the Spark executors of this process's deployments hold (RayDP's are Ray actors)."""
    with _lock:
        return sum(d.spark_cpus for d in _attached.values())


def attached(spark: Any) -> Deployment | None:
    """The deployment :func:`attach` or a session registered for ``spark``, if any."""
    with _lock:
        return _attached.get(str(spark.sparkContext.applicationId))


def register(spark: Any, deployment: Deployment) -> None:
    """A session's deployment, so that ``rayscore.predict`` on its DataFrames uses it (a Ray-only one has none)."""
    if spark is None:
        return
    with _lock:
        _attached[str(spark.sparkContext.applicationId)] = deployment


def unregister(deployment: Deployment) -> None:
    with _lock:
        for app in [a for a, d in _attached.items() if d is deployment]:
            del _attached[app]


def detach_all() -> None:
    """Stop what :func:`attach` started (the pools first); at exit, or by hand."""
    from .._pool import stop_pools  # noqa: PLC0415

    with _lock:
        deployments = list(_attached.values())
        _attached.clear()
    if deployments:
        stop_pools()
    for deployment in deployments:
        try:
            deployment.stop()
        except Exception as exc:  # noqa: BLE001 - the interpreter is exiting
            log.debug("stopping %s: %s", deployment.kind, exc)
