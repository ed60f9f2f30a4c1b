"""The one interface a deployment implements: a Spark session and a Ray cluster its executors reach.

A job chooses its deployment once (:func:`rayscore._deploy.choose`); the
session, the pipeline, the watch and the report ask it only what this
module names. Also the pieces the deployments share: Java 17's module
openings, keeping the caller's signal handlers across Ray's and pyspark's
start-up, Ray's authentication token for processes Ray did not start, and
a plain SparkSession built from a master.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .._config import RayConfig, SparkConfig, spark_options
from .._errors import DeploymentError, SessionError

__all__ = [
    "Deployment",
    "JAVA_OPTIONS",
    "SPARK_LOG_LEVEL",
    "keep_signal_handlers",
    "ray_auth_env",
    "ray_init",
    "build_spark",
    "spark_master",
    "is_raydp",
    "check_python_workers",
    "token_auth_on",
]

log = logging.getLogger("rayscore")

# Java 17 closes these packages; Spark, Arrow and Ray's Java serializer reach into them.
_OPENS = [
    "java.lang",
    "java.lang.invoke",
    "java.lang.reflect",
    "java.io",
    "java.math",
    "java.net",
    "java.nio",
    "java.text",
    "java.time",
    "java.util",
    "java.util.concurrent",
    "java.util.concurrent.atomic",
    "java.util.regex",
    "jdk.internal.misc",
    "jdk.internal.ref",
    "sun.nio.ch",
    "sun.nio.cs",
    "sun.security.action",
    "sun.util.calendar",
]
JAVA_OPTIONS: tuple[str, ...] = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    *(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in _OPENS),
    "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true",
)

SPARK_LOG_LEVEL = "ERROR"

# What rayscore sets on a Spark it builds: Arrow for the stream, the nested vectorised readers
# (array columns read 3x faster, bench/RESULTS.md; off by default in Spark 3.5), no UI or console bar.
SPARK_DEFAULTS: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.enableNestedColumnVectorizedReader": "true",
    "spark.sql.orc.enableNestedColumnVectorizedReader": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


class Deployment:
    """A Spark session and a Ray cluster its executors reach; what rayscore started, it stops.

    Two halves, so that the pool's actors can load the model while Spark
    starts where the order allows it: after :meth:`start_ray` a pool may be
    asked for, after :meth:`start_spark` Spark runs jobs. ``startup_seconds``
    counts both. :meth:`stop` stops exactly what this deployment started and
    leaves the caller's SparkSession, their jobs and a Ray cluster it joined
    running.
    """

    kind = "deployment"  # a short name for the report and the one line that says which
    # Whether Spark's cluster manager starts a new executor for a lost one (RayDP's does not).
    replaces_lost_executors = True
    # Whether starting it says so on standard error (the embedded default goes without saying).
    announce = True

    def __init__(
        self,
        ray_config: RayConfig,
        spark_config: SparkConfig,
        *,
        spark: Any = None,
        max_actors: int = 1,
        cpus_per_actor: float = 1.0,
    ) -> None:
        self.ray_config = ray_config
        self.spark_config = spark_config
        self.spark: Any = spark
        # The largest pool the job will ask for: what a Ray started here is sized for.
        self.max_actors = max_actors
        self.cpus_per_actor = cpus_per_actor
        self.startup_seconds = 0.0
        self._began = 0.0
        self._built_spark = False  # self.spark was built here from spark.master (and is stopped here)

    def start_ray(self) -> None:
        raise NotImplementedError

    def start_spark(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def owns_ray(self) -> bool:
        """Whether :meth:`stop` ends the Ray cluster (and every actor on it)."""
        return False

    @property
    def spark_cpus(self) -> float:
        """Ray CPUs that Spark's executors hold (only where they are Ray actors) and the pool cannot have."""
        return 0.0

    def describe(self) -> str:
        """One line: which Spark, which Ray, and who started each."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """What each side got, for the run report: the kind, Spark's master and slots, Ray's nodes and CPUs."""
        import ray  # noqa: PLC0415

        facts: dict[str, Any] = {"kind": self.kind, "line": self.describe()}
        if self.spark is not None:
            sc = self.spark.sparkContext
            facts["spark"] = {"master": sc.master, "application_id": sc.applicationId}
        if ray.is_initialized():
            nodes = [n for n in ray.nodes() if n["Alive"]]
            facts["ray"] = {
                "nodes": len(nodes),
                "cpus": sum(n["Resources"].get("CPU", 0.0) for n in nodes),
                "gpus": sum(n["Resources"].get("GPU", 0.0) for n in nodes),
            }
        return facts

    def _build_spark(self) -> None:
        """The SparkSession from ``spark.master`` when the caller gave none."""
        if self.spark is None:
            self.spark = build_spark(self.spark_config)
            self._built_spark = True

    def _stop_built_spark(self) -> None:
        """Stop the SparkSession only if :meth:`_build_spark` built it: the caller's is theirs."""
        if self._built_spark and self.spark is not None:
            self._built_spark = False
            self.spark.stop()
            self.spark = None

    def _spark_text(self) -> str:
        """``rayscore's Spark (master)`` or ``the caller's Spark (master)``, for :meth:`describe`."""
        who = "rayscore's" if self._built_spark else "the caller's"
        master = spark_master(self.spark) if self.spark is not None else self.spark_config.master
        return f"{who} Spark ({master})"

    def _mark_started(self) -> None:
        if not self._began:
            self._began = time.perf_counter()

    def _mark_up(self) -> None:
        self.startup_seconds = time.perf_counter() - self._began if self._began else 0.0


def is_raydp(spark: Any) -> bool:
    """Whether ``spark`` is RayDP's Spark on Ray (its master is RayDP's app master, ``ray://…``)."""
    return str(spark.sparkContext.master).startswith("ray://")


def spark_master(spark: Any) -> str:
    return str(spark.sparkContext.master)


def check_python_workers(spark: Any) -> None:
    """Refuse, in one line, a Spark whose Python workers lack this driver's Ray or rayscore.

    Spark's Python workers run ``PYSPARK_PYTHON`` as it was when the
    SparkSession was made (``python3`` by default), not this interpreter. One
    task of one row imports both on an executor and reports their versions
    (about a second); Ray on Spark's worker nodes and the scoring tasks need
    the same Ray as the driver.
    """
    import ray  # noqa: PLC0415

    import rayscore  # noqa: PLC0415

    def versions(_: Any) -> Any:
        import socket  # noqa: PLC0415
        import sys  # noqa: PLC0415

        try:
            import ray  # noqa: PLC0415

            import rayscore  # noqa: PLC0415
        except ImportError as exc:
            return [(socket.gethostname(), sys.executable, None, None, str(exc))]
        return [(socket.gethostname(), sys.executable, ray.__version__, rayscore.__version__, "")]

    sc = spark.sparkContext
    (host, python, ray_version, rayscore_version, problem), *_ = (
        sc.parallelize([0], 1).mapPartitions(versions).collect()
    )
    fix = (
        f"install ray=={ray.__version__} and rayscore=={rayscore.__version__} in the Python every Spark node runs, "
        "or point PYSPARK_PYTHON at one that has them before the SparkSession is made"
    )
    if problem:
        raise DeploymentError(
            f"spark: Spark's Python workers ({python} on {host}) cannot import them: {problem}; {fix}"
        )
    if (ray_version, rayscore_version) != (ray.__version__, rayscore.__version__):
        raise DeploymentError(
            f"spark: Spark's Python workers ({python} on {host}) have ray {ray_version} and rayscore "
            f"{rayscore_version}, this driver ray {ray.__version__} and rayscore {rayscore.__version__}; {fix}"
        )


def ray_auth_env() -> dict[str, str]:
    """Ray's token for processes Ray did not start (Spark's Python workers, Ray on Spark's nodes); {} if none.

    Ray 2.60 turns token authentication on for a cluster ``ray.init`` or
    ``ray start`` makes, and a process that joins must say ``RAY_AUTH_MODE=token``
    and hold the token. Ray's own workers inherit both; a Spark executor does
    not. The token travels inside the task's closure (or Ray on Spark's start
    hook), never in Spark's configuration or UI.
    """
    from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode  # noqa: PLC0415

    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return {}
    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": loader.get_raw_token()}


def ray_init(**kwargs: Any) -> None:
    """``ray.init`` with the caller's signal handlers kept (Ray replaces SIGTERM's)."""
    import ray  # noqa: PLC0415

    with keep_signal_handlers():
        ray.init(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True, **kwargs)


def build_spark(cfg: SparkConfig, extra: Mapping[str, str] | None = None) -> Any:
    """A plain SparkSession on ``cfg.master`` (rayscore's defaults, then ``spark.configs``); the caller stops it.

    Refuses when this process already has a SparkContext: Spark allows one
    per process, and a session of the caller's is theirs to pass in.
    """
    from pyspark import SparkContext  # noqa: PLC0415
    from pyspark.sql import SparkSession  # noqa: PLC0415

    if SparkContext._active_spark_context is not None:
        raise SessionError(
            f"spark.master: this process already has a Spark session ({SparkContext._active_spark_context.master}); "
            "pass it in (rayscore.session(spark=spark)) instead of naming a master"
        )
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    java = " ".join(JAVA_OPTIONS)
    configs: dict[str, str] = {
        **SPARK_DEFAULTS,
        "spark.driver.extraJavaOptions": java,
        "spark.executor.extraJavaOptions": java,
        "spark.pyspark.python": sys.executable,
        "spark.executor.memory": cfg.executor_memory,
        **(extra or {}),
    }
    if cfg.executor_cores is not None:
        configs["spark.executor.cores"] = str(cfg.executor_cores)
    for key, value in spark_options(cfg.configs).items():
        configs[key] = f"{configs.get(key, '')} {value}".strip() if key.endswith("extraJavaOptions") else value
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    for key, value in configs.items():
        builder = builder.config(key, value)
    with keep_signal_handlers():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(SPARK_LOG_LEVEL)
    return spark


@contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Keep the SIGTERM and SIGINT handlers the caller installed, which Ray and pyspark replace.

    ``ray.init`` replaces SIGTERM's with ``sys.exit``; pyspark's SparkContext
    replaces SIGINT's with one that cancels Spark's jobs and then raises, which
    in the middle of a Spark job's call made the job's error, not the
    interrupt, reach the caller; Ray on Spark installs a SIGTERM handler of its
    own. The CLI turns both signals into KeyboardInterrupt so that a run
    unwinds, stops what it started and exits 130. Python's own defaults are
    left as Ray and pyspark set them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(signum, handler)


def token_auth_on() -> None:
    """Token authentication for the cluster about to start (unless ``RAY_AUTH_MODE=disabled``), with a token.

    ``ray start --head`` turns it on by default in Ray 2.60 and makes a token
    if there is none, but Ray on Spark asks its start hook for the worker
    nodes' environment before it starts the head: the token must exist by
    then. Saying so here also makes this process join with the token.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return
    from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
        _enable_token_auth,
        ensure_token_if_auth_enabled,
    )

    _enable_token_auth()
    ensure_token_if_auth_enabled(create_token_if_missing=True)
