"""Stage 2, session: a Spark session and a Ray cluster its executors reach, for one job or one block.

Which Spark and which Ray is a deployment (:mod:`rayscore._deploy`), chosen
once: RayDP's Spark on a local or joined Ray (the default), the caller's
SparkSession (or one built from ``spark.master``) with Ray on Spark, or with
a Ray cluster already on its hosts. rayscore stops exactly what it started:
a Ray or Spark it started is stopped, a cluster it joined is only
disconnected from, and a SparkSession or Ray the caller had is left running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._config import RayConfig, SparkConfig, validated
from ._deploy import choose, register, unregister
from ._deploy.base import JAVA_OPTIONS, SPARK_LOG_LEVEL, Deployment, keep_signal_handlers
from ._errors import RayscoreError
from ._logs import diverted, others_to_log
from ._pool import stop_pools

__all__ = ["Session", "session", "JAVA_OPTIONS", "SPARK_LOG_LEVEL"]

log = logging.getLogger("rayscore")

_keep_signal_handlers = keep_signal_handlers  # the name the unit tests know


class Session:
    """A Spark session and a Ray cluster its executors reach; use :func:`session` to open one.

    Deployment: every node needs Java 17 and the same Python environment as
    the driver (Spark's Python workers run ``sys.executable``). Unless
    ``verbose``, what Ray, Spark and TensorFlow print goes to the log file
    (:mod:`rayscore._logs`), which errors name. ``spark`` is a SparkSession
    of the caller's to score on (never stopped here).
    """

    def __init__(
        self,
        ray_config: RayConfig | None = None,
        spark_config: SparkConfig | None = None,
        *,
        max_actors: int = 1,
        cpus_per_actor: float = 1.0,
        verbose: bool = False,
        spark: Any = None,
    ) -> None:
        self.ray_config = ray_config or RayConfig()
        self.spark_config = spark_config or SparkConfig()
        self.verbose = verbose
        self.deployment: Deployment = choose(
            self.ray_config, self.spark_config, spark=spark, max_actors=max_actors, cpus_per_actor=cpus_per_actor
        )
        self._up = False

    @property
    def spark(self) -> Any:
        return self.deployment.spark

    @property
    def startup_seconds(self) -> float:
        return self.deployment.startup_seconds

    # ------------------------------------------------------------------ start
    def start(self) -> Session:
        """Start (or join) both sides, in the deployment's order; on failure stop what was started."""
        self.start_ray()
        self.start_spark()
        return self

    def start_ray(self) -> None:
        """The first half of :meth:`start`: Ray up, so that a pool's actors can load while Spark starts."""
        self._starting(self.deployment.start_ray)

    def start_spark(self) -> None:
        """The second half of :meth:`start`; ``startup_seconds`` then counts both halves."""
        self._starting(self.deployment.start_spark)
        self._up = True
        register(self.spark, self.deployment)
        if self.deployment.announce:
            log.warning("scoring on %s", self.deployment.describe())

    def _starting(self, step: Any) -> None:
        try:
            with others_to_log(self.verbose):
                step()
        except BaseException as exc:
            self.stop()
            named = _naming_the_log(exc)
            if named is exc:
                raise
            raise named from exc

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop what this session started; safe to call twice and after a failed start."""
        with others_to_log(self.verbose):
            stop_pools()
            unregister(self.deployment)
            self.deployment.stop()
        self._up = False

    @property
    def owns_ray(self) -> bool:
        """Whether :meth:`stop` ends the Ray connection this session made, ending every actor of its pools."""
        return self.deployment.owns_ray

    @property
    def spark_cpus(self) -> float:
        """Ray CPUs Spark's executors hold (RayDP's executors are Ray actors; elsewhere 0)."""
        return self.deployment.spark_cpus

    def __enter__(self) -> Session:
        return self if self._up else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _naming_the_log(exc: BaseException) -> BaseException:
    """A start-up error of ours with the log file (where Ray's and Spark's own lines went) named."""
    path = diverted()
    if isinstance(exc, RayscoreError) and not exc.user_error and path is not None and "(logs: " not in str(exc):
        return type(exc)(f"{exc} (logs: {path})")
    return exc


@contextmanager
def session(
    ray: RayConfig | dict[str, Any] | None = None,
    spark: Any = None,
    *,
    ray_on_spark: dict[str, Any] | None = None,
    max_actors: int = 1,
    cpus_per_actor: float = 1.0,
    verbose: bool = False,
) -> Iterator[Session]:
    """Open a Spark + Ray session for :func:`rayscore.predict`; stop what it started on exit.

    With no arguments it starts a local Ray and RayDP's Spark on it (one
    executor, 2 GB) and stops both when the block ends, on success, error or
    Ctrl-C. ``ray={"address": "auto"}`` joins a running cluster instead.

    ``spark`` is either RayDP's settings (a dict of the config's ``spark``
    keys; ``{"master": "spark://host:7077"}`` builds a plain SparkSession
    instead) or a SparkSession of yours: then rayscore scores on it as it is
    and never stops it, and finds a Ray its executors' hosts belong to: the
    one this process is connected to, ``ray["address"]`` or ``RAY_ADDRESS``,
    a local Ray for a ``local[N]`` master, else Ray on Spark started inside
    your Spark application (sized by ``ray_on_spark``: ``worker_nodes``,
    ``cpus_per_node``, ``gpus_per_node``, ``memory_per_node``,
    ``object_store_memory_per_node``), stopped when the block ends.
    ``spark=False`` opens Ray alone (a local Ray, or the cluster ``ray``
    names), for :func:`rayscore.predict` on Ray Datasets: its pools live
    until the block ends.
    ``max_actors``/``cpus_per_actor`` size a Ray rayscore starts so that the
    largest predictor pool you will ask for fits. What Ray, Spark and
    TensorFlow print goes to a log file (``$TMPDIR/rayscore-logs/``) unless
    ``verbose=True``.

    Example:
        >>> import rayscore
        >>> with rayscore.session() as s:                      # doctest: +SKIP
        ...     df = s.spark.read.parquet("features.parquet")
        ...     rayscore.predict(df, model="ctr.keras").show()
        >>> with rayscore.session(spark=spark, ray_on_spark={"worker_nodes": 2}):   # doctest: +SKIP
        ...     rayscore.predict(spark.table("features"), model="/dbfs/models/ctr.keras").write.parquet("out")
    """
    ray_cfg = validated(RayConfig, ray or {}, "ray")
    if spark is False:  # Ray alone, for Ray Datasets
        s = Session(ray_cfg, spark=False, max_actors=max_actors, cpus_per_actor=cpus_per_actor, verbose=verbose)
    else:
        given = spark if hasattr(spark, "sparkContext") else None  # a SparkSession, not settings
        extra: dict[str, Any] = {"ray_on_spark": ray_on_spark}
        if given is not None and ray_on_spark is not None:
            extra["master"] = str(given.sparkContext.master)  # the sizing is checked against the given master
        spark_cfg = validated(SparkConfig, {} if given is not None else spark or {}, "spark", extra=extra)
        s = Session(
            ray_cfg, spark_cfg, max_actors=max_actors, cpus_per_actor=cpus_per_actor, verbose=verbose, spark=given
        )
    s.start()
    try:
        yield s
    finally:
        s.stop()
