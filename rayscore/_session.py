"""Stage 2, session: a Ray (local or joined) and RayDP's Spark on it.

rayscore stops exactly what it started: a local Ray it started is shut down,
a cluster it joined is only disconnected from, and a Ray or Spark the caller
had already started is left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._config import RayConfig, SparkConfig, spark_options, validated
from ._errors import RayscoreError, SessionError, translate_errors
from ._logs import diverted, others_to_log
from ._pool import stop_pools
from ._sizing import local_ray_cpus, spark_executor_cores

__all__ = ["Session", "session", "JAVA_OPTIONS"]

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


class Session:
    """A Ray connection plus a RayDP Spark session; use :func:`session` to open one.

    Deployment: every node needs Java 17 and the same Python environment as
    the driver (Spark's Python workers run ``sys.executable``). Unless
    ``verbose``, what Ray, Spark and TensorFlow print goes to the log file
    (:mod:`rayscore._logs`), which errors name.
    """

    def __init__(
        self,
        ray_config: RayConfig | None = None,
        spark_config: SparkConfig | None = None,
        *,
        max_actors: int = 1,
        cpus_per_actor: float = 1.0,
        verbose: bool = False,
    ) -> None:
        self.ray_config = ray_config or RayConfig()
        self.verbose = verbose
        self.spark_config = spark_config or SparkConfig()
        self._max_actors = max_actors
        self._cpus_per_actor = cpus_per_actor
        self.executor_cores = spark_executor_cores(
            self.spark_config.executor_cores, local=self.ray_config.address is None, physical_cpus=os.cpu_count() or 1
        )
        self._started_ray = False
        self._started_spark = False
        self.spark: Any = None
        self.startup_seconds = 0.0
        self._started_at = 0.0

    # ------------------------------------------------------------------ start
    def start(self) -> Session:
        """Start (or join) Ray, then RayDP's Spark on it; on failure stop what was started."""
        self.start_ray()
        self.start_spark()
        return self

    def start_ray(self) -> None:
        """The first half of :meth:`start`: Ray alone, so that work can begin while Spark starts."""
        self._started_at = time.perf_counter()
        # Spark's Python workers (used by to_spark) must run this interpreter.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        try:
            with others_to_log(self.verbose):
                self._start_ray()
        except BaseException as exc:
            self.stop()
            named = _naming_the_log(exc)
            if named is exc:
                raise
            raise named from exc

    def start_spark(self) -> None:
        """The second half of :meth:`start`; ``startup_seconds`` then counts both halves."""
        try:
            with others_to_log(self.verbose):
                self._start_spark()
        except BaseException as exc:
            self.stop()
            named = _naming_the_log(exc)
            if named is exc:
                raise
            raise named from exc
        self.startup_seconds = time.perf_counter() - self._started_at

    def _start_ray(self) -> None:
        import ray  # noqa: PLC0415
        from ray.job_config import JobConfig  # noqa: PLC0415

        if ray.is_initialized():
            log.info("using the Ray this process is already connected to")
            return
        cfg = self.ray_config
        kwargs: dict[str, Any] = {
            "job_config": JobConfig(jvm_options=list(JAVA_OPTIONS)),
            "logging_level": logging.WARNING,
            "log_to_driver": False,
            "configure_logging": True,
        }
        if cfg.address is None:
            kwargs["address"] = "local"
            kwargs["include_dashboard"] = cfg.dashboard
            if cfg.num_gpus is not None:
                kwargs["num_gpus"] = cfg.num_gpus
            kwargs["num_cpus"] = cfg.num_cpus or local_ray_cpus(
                os.cpu_count() or 1,
                spark_executors=self.spark_config.executors,
                executor_cores=self.executor_cores,
                max_actors=self._max_actors,
                cpus_per_actor=self._cpus_per_actor,
            )
        else:
            kwargs["address"] = cfg.address
        with translate_errors(f"ray.address {cfg.address or 'local'}", SessionError):
            try:
                with _keep_signal_handlers():
                    ray.init(**kwargs)
            except ConnectionError as exc:
                raise SessionError(f"ray.address: cannot reach a Ray cluster at {cfg.address!r}: {exc}") from exc
        self._started_ray = True

    def _start_spark(self) -> None:
        import raydp  # noqa: PLC0415

        cfg = self.spark_config
        java = " ".join(JAVA_OPTIONS)
        configs: dict[str, str] = {
            "spark.ray.raydp_app_master.extraJavaOptions": java,
            "spark.driver.extraJavaOptions": f"{java} {_driver_logging_dir()}".strip(),
            "spark.executor.extraJavaOptions": java,
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Array columns (token ids, matrices) read 3x faster through the vectorised
            # reader (bench/RESULTS.md); off by default in Spark 3.5.
            "spark.sql.parquet.enableNestedColumnVectorizedReader": "true",
            "spark.sql.orc.enableNestedColumnVectorizedReader": "true",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        }
        for key, value in spark_options(cfg.configs).items():
            configs[key] = f"{configs.get(key, '')} {value}".strip() if key.endswith("extraJavaOptions") else value
        with translate_errors("spark", SessionError), _keep_signal_handlers():
            self.spark = raydp.init_spark(
                app_name=cfg.app_name,
                num_executors=cfg.executors,
                executor_cores=self.executor_cores,
                executor_memory=cfg.executor_memory,
                configs=configs,
                # Spark's driver never exchanges data with Ray (its executors' Python
                # workers do), so it need not join Ray as RayDP's default would have it.
                fault_tolerant_mode=False,
            )
        self._started_spark = True
        self.spark.sparkContext.setLogLevel(SPARK_LOG_LEVEL)
        # RayDP returns before its executors have started (a JVM each); Spark is up once it can
        # run a job. One tiny JVM-only job waits for the first, so that ``startup_seconds`` counts
        # it rather than the job's first stage.
        with translate_errors("spark: starting its executors", SessionError):
            self.spark.range(1).count()

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop what this session started; safe to call twice and after a failed start."""
        with others_to_log(self.verbose):
            self._stop()

    def _stop(self) -> None:
        stop_pools()
        if self._started_spark:
            self._started_spark = False
            try:
                import raydp  # noqa: PLC0415

                raydp.stop_spark()
            except Exception as exc:  # noqa: BLE001 - stopping must go on
                log.warning("stopping RayDP's Spark failed: %s", exc)
            self.spark = None
        if self._started_ray:
            self._started_ray = False
            import ray  # noqa: PLC0415

            ray.shutdown()

    @property
    def owns_ray(self) -> bool:
        """Whether :meth:`stop` shuts Ray down (this session started it), ending every actor on it."""
        return self._started_ray

    @property
    def spark_cpus(self) -> float:
        return float(self.spark_config.executors * self.executor_cores)

    def __enter__(self) -> Session:
        return self.start() if self.spark is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _naming_the_log(exc: BaseException) -> BaseException:
    """A start-up error of ours with the log file (where Ray's and Spark's own lines went) named."""
    path = diverted()
    if isinstance(exc, RayscoreError) and not exc.user_error and path is not None and "(logs: " not in str(exc):
        return type(exc)(f"{exc} (logs: {path})")
    return exc


def _driver_logging_dir() -> str:
    """``-Dray.logging.dir=<this Ray session's logs>`` for Spark's driver JVM.

    RayDP's Java agent in that JVM writes to ``ray.logging.dir``, else to
    ``/tmp/ray/session_latest/logs``; RayDP sets it for its app master but not
    for the driver. Ray does not replace a dangling ``session_latest`` link
    (one whose session directory was cleaned away), and the agent then kills
    the JVM at start ("Error create log dir"). Read from Ray's node object, as
    RayDP does for its app master; empty if this process has no Ray node.
    """
    import ray  # noqa: PLC0415

    node = ray._private.worker._global_node
    return f"-Dray.logging.dir={node.get_logs_dir_path()}" if node is not None else ""


@contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Keep the SIGTERM and SIGINT handlers the caller installed, which Ray and pyspark replace.

    ``ray.init`` replaces SIGTERM's with ``sys.exit``; pyspark's SparkContext
    replaces SIGINT's with one that cancels Spark's jobs and then raises, which
    in the middle of a Spark job's call made the job's error, not the
    interrupt, reach the caller. The CLI turns both signals into
    KeyboardInterrupt so that a run unwinds, stops what it started and exits
    130. Python's own defaults are left as Ray and pyspark set them.
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


@contextmanager
def session(
    ray: RayConfig | dict[str, Any] | None = None,
    spark: SparkConfig | dict[str, Any] | None = None,
    *,
    max_actors: int = 1,
    cpus_per_actor: float = 1.0,
    verbose: bool = False,
) -> Iterator[Session]:
    """Open a Ray + RayDP Spark session for :func:`rayscore.predict`; stop it on exit.

    With no arguments it starts a local Ray and one Spark executor (1 core,
    2 GB) and stops both when the block ends, on success, error or Ctrl-C.
    ``ray={"address": "auto"}`` joins a running cluster instead.
    ``max_actors``/``cpus_per_actor`` size a local Ray so that the largest
    predictor pool you will ask for fits beside Spark's executors.
    What Ray, Spark and TensorFlow print goes to a log file
    (``$TMPDIR/rayscore-logs/``) unless ``verbose=True``.

    Example:
        >>> import rayscore
        >>> with rayscore.session() as s:                      # doctest: +SKIP
        ...     df = s.spark.read.parquet("features.parquet")
        ...     rayscore.predict(df, model="ctr.keras").show()
    """
    ray_cfg = validated(RayConfig, ray or {}, "ray")
    spark_cfg = validated(SparkConfig, spark or {}, "spark")
    s = Session(ray_cfg, spark_cfg, max_actors=max_actors, cpus_per_actor=cpus_per_actor, verbose=verbose)
    s.start()
    try:
        yield s
    finally:
        s.stop()
