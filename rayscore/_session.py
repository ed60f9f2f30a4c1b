"""Stage 2, session: a Ray (local or joined) and RayDP's Spark on it.

rayscore stops exactly what it started: a local Ray it started is shut down,
a cluster it joined is only disconnected from, and a Ray or Spark the caller
had already started is left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._cds import ClassArchive
from ._config import RayConfig, SparkConfig
from ._errors import SessionError, translate_errors
from ._sizing import local_ray_cpus, spark_executor_cores

__all__ = ["Session", "session", "JAVA_OPTIONS", "remove_native_library_copies", "remove_lz4_copies", "import_spark",
           "connect_driver_to_ray"]

log = logging.getLogger("rayscore")

# Java 17 closes these packages; Spark, Arrow and Ray's Java serializer reach into them.
_OPENS = [
    "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.math", "java.net",
    "java.nio", "java.text", "java.time", "java.util", "java.util.concurrent",
    "java.util.concurrent.atomic", "java.util.regex", "jdk.internal.misc", "jdk.internal.ref",
    "sun.nio.ch", "sun.nio.cs", "sun.security.action", "sun.util.calendar",
]
JAVA_OPTIONS: tuple[str, ...] = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    *(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in _OPENS),
    "-Djdk.reflect.useDirectMethodHandle=false",
    "-Dio.netty.tryReflectionSetAccessible=true",
    # Load the classpath's classes (Spark's, RayDP's and Ray's jars, from the installed
    # wheels) without verifying their bytecode: class loading is most of what a JVM does
    # at start, and each job starts four. On 2 cores the example job took 46-51 s instead
    # of 54-55 s (bench/RESULTS.md). -XX:+BytecodeVerificationRemote in a JVM's
    # extraJavaOptions (spark.configs) turns it back on.
    "-XX:+UnlockDiagnosticVMOptions",
    "-XX:-BytecodeVerificationRemote",
)
# For Spark's driver and RayDP's app master, which plan and coordinate but never
# touch a row: compile with C1 only and collect with one thread. Their start then
# takes less CPU from the pool that scores meanwhile: on 2 cores, 1M rows took
# 33-34 s instead of 37-46 s (bench/RESULTS.md). Executors keep the JIT's defaults.
COORDINATOR_JAVA_OPTIONS: tuple[str, ...] = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# For Spark's executors, which write one job per wave of predictions: give the heap back
# after a wave (G1 shrinks it at each cycle past 30 % free, and runs a cycle after 2 s
# without one). Else the heap grew with the number of waves: the peak of all processes
# at 4M rows was 1.38x that at 1M; with these, 1.04x, at the same speed (bench/RESULTS.md).
EXECUTOR_JAVA_OPTIONS: tuple[str, ...] = ("-XX:MaxHeapFreeRatio=30", "-XX:MinHeapFreeRatio=10",
                                          "-XX:G1PeriodicGCInterval=2000")


SPARK_LOG_LEVEL = "ERROR"


class Session:
    """A Ray connection plus a RayDP Spark session; use :func:`session` to open one.

    Deployment: every node needs Java 17 and the same Python environment as
    the driver (Spark's Python workers run ``sys.executable``).
    """

    def __init__(self, ray_config: RayConfig | None = None, spark_config: SparkConfig | None = None,
                 *, max_actors: int = 1, cpus_per_actor: float = 1.0) -> None:
        self.ray_config = ray_config or RayConfig()
        self.spark_config = spark_config or SparkConfig()
        self._max_actors = max_actors
        self._cpus_per_actor = cpus_per_actor
        self.executor_cores = spark_executor_cores(self.spark_config.executor_cores,
                                                   local=self.ray_config.address is None,
                                                   physical_cpus=os.cpu_count() or 1)
        self._started_ray = False
        self._started_spark = False
        self.spark: Any = None
        self.startup_seconds = 0.0
        self._started_at = 0.0
        self._jvms_since: float | None = None  # when this session began starting Spark's JVMs
        self._archive: ClassArchive | None = None  # the class-data archive this start records (rayscore._cds)
        self.cds_builder_pid: int | None = None  # the archive's build this session's stop launched

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
            self._start_ray()
        except BaseException:
            self.stop()
            raise

    def start_spark(self, executors_on_demand: bool = False, *, stop_on_failure: bool = True) -> None:
        """The second half of :meth:`start`; ``startup_seconds`` then counts both halves.

        ``executors_on_demand``: start Spark's executors only when a Spark
        job first needs them (Spark's dynamic allocation from 0 up to
        ``spark.executors``; once started they stay), for a job that may
        need none: its actors read the input and write the output. That
        saves an executor JVM's start (CPU, and its heap) beside the pool.
        The executors' CPUs stay kept for them either way.

        ``stop_on_failure=False``: if Spark fails to start, leave Ray up for
        the caller to stop (:meth:`stop`) once it has stopped what runs on it.
        """
        self._jvms_since = time.time()
        try:
            self._start_spark(executors_on_demand)
        except BaseException:
            if stop_on_failure:
                self.stop()
            raise
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
                with _keep_sigterm_handler():
                    ray.init(**kwargs)
            except ConnectionError as exc:
                raise SessionError(
                    f"ray.address: cannot reach a Ray cluster at {cfg.address!r}: {exc}"
                ) from exc
        self._started_ray = True
        _quiet_ray_data()

    def _start_spark(self, executors_on_demand: bool = False) -> None:
        import raydp  # noqa: PLC0415

        cfg = self.spark_config
        coordinator = " ".join((*JAVA_OPTIONS, *COORDINATOR_JAVA_OPTIONS))
        configs: dict[str, str] = {
            "spark.ray.raydp_app_master.extraJavaOptions": coordinator,
            "spark.driver.extraJavaOptions": f"{coordinator} {_driver_logging_dir()}".strip(),
            "spark.executor.extraJavaOptions": " ".join((*JAVA_OPTIONS, *EXECUTOR_JAVA_OPTIONS)),
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # Array columns (token ids, matrices) read 3x faster through the vectorised
            # reader (measured: 1M rows of the example, 12.4 s -> 3.9 s); off by default in Spark 3.5.
            "spark.sql.parquet.enableNestedColumnVectorizedReader": "true",
            "spark.sql.orc.enableNestedColumnVectorizedReader": "true",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        }
        executors = cfg.executors
        if executors_on_demand and not any(k.startswith("spark.dynamicAllocation.") for k in cfg.configs):
            executors = 0
            configs.update({
                "spark.dynamicAllocation.enabled": "true",
                "spark.dynamicAllocation.shuffleTracking.enabled": "true",  # no external shuffle service
                "spark.dynamicAllocation.minExecutors": "0",
                "spark.dynamicAllocation.initialExecutors": "0",
                "spark.dynamicAllocation.maxExecutors": str(cfg.executors),
                "spark.dynamicAllocation.executorIdleTimeout": "86400s",  # once started, kept as static ones are
            })
        for key, value in cfg.configs.items():
            if key.endswith("extraJavaOptions"):
                configs[key] = f"{configs.get(key, '')} {value}".strip()
            else:
                configs[key] = str(value).lower() if isinstance(value, bool) else str(value)
        self._share_class_data(configs)
        driver = _DriverLaunch.start(cfg.app_name, executors, self.executor_cores, cfg.executor_memory, configs)
        with translate_errors("spark", SessionError):
            try:
                self.spark = raydp.init_spark(
                    app_name=cfg.app_name,
                    num_executors=executors,
                    executor_cores=self.executor_cores,
                    executor_memory=cfg.executor_memory,
                    configs=dict(configs),  # RayDP adds its own keys to the dict it is given
                    # Not yet: connect_driver_to_ray does it when a conversion first needs it.
                    fault_tolerant_mode=False,
                )
            finally:
                driver.join()
        self._started_spark = True
        self.spark.sparkContext.setLogLevel(SPARK_LOG_LEVEL)

    def _share_class_data(self, configs: dict[str, str]) -> None:
        """Give each of Spark's JVMs the class-data archive, or the option that records its classes.

        Only on a local Ray this session started: every JVM then runs on
        this machine, where the archive is. Put first, so that a user's own
        option in ``spark.configs`` wins.
        """
        if not (self.spark_config.class_data_sharing and self._started_ray and self.ray_config.address is None):
            return
        archive = ClassArchive.for_raydp(configs)
        option = archive.java_option() if archive is not None else ""
        if not option:
            return
        if archive.recording:  # its stop builds the archive
            self._archive = archive
        for key in ("spark.driver.extraJavaOptions", "spark.ray.raydp_app_master.extraJavaOptions",
                    "spark.executor.extraJavaOptions"):
            configs[key] = f"{option} {configs.get(key, '')}".strip()

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop what this session started; safe to call twice and after a failed start."""
        from ._sink import release_session_blocks  # noqa: PLC0415

        release_session_blocks()
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
        if self._archive is not None:
            # Ray's JVMs are gone; Spark's driver JVM lives as long as this process, and
            # its list already names every class it loaded (the JVM writes it as it loads).
            self.cds_builder_pid = self._archive.build_in_background()
            self._archive = None
        if self._jvms_since is not None:
            now = time.time()
            remove_native_library_copies(self._jvms_since, now)
            remove_lz4_copies(self._jvms_since, now)
            self._jvms_since = None

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


class _DriverLaunch:
    """Spark's driver JVM (pyspark's py4j gateway), launched in a thread while RayDP starts its app master.

    RayDP starts them one after the other: its app master (a Python actor
    that launches a JVM, which starts a Java actor in another JVM), and only
    then, with the master's address, Spark's driver JVM. That JVM needs only
    what it is launched with (class path, Java options, memory); the address
    comes later, with the SparkContext. So it boots meanwhile: 2-3 s off
    Spark's start where cores are free (on 2 cores that the pool scoring
    ahead keeps busy, less; bench/RESULTS.md). pyspark launches its gateway once per process,
    under ``SparkContext._lock``: RayDP's SparkContext waits for this one
    and reuses it. If it fails, RayDP launches its own as before, and raises
    what that one says. Nothing to stop: pyspark's gateway lives as long as
    this process, whoever launched it.
    """

    def __init__(self, thread: threading.Thread | None) -> None:
        self._thread = thread

    @classmethod
    def start(cls, app_name: str, executors: int, cores: int, memory: str | int,
              configs: dict[str, str]) -> _DriverLaunch:
        from pyspark import SparkConf, SparkContext  # noqa: PLC0415

        if SparkContext._gateway is not None:  # this process has one already: RayDP reuses it
            return cls(None)
        try:
            conf = SparkConf().setAll(_raydp_driver_configs(executors, cores, memory, configs).items())
            conf.setAppName(app_name)
        except Exception as exc:  # noqa: BLE001 - RayDP makes the same settings, and says what is wrong
            log.debug("not launching Spark's driver ahead of RayDP: %s", exc)
            return cls(None)

        def launch() -> None:
            try:
                SparkContext._ensure_initialized(conf=conf)
            except Exception as exc:  # noqa: BLE001 - RayDP launches it again and raises
                log.debug("launching Spark's driver ahead of RayDP failed: %s", exc)

        thread = threading.Thread(target=launch, name="rayscore-spark-driver", daemon=True)
        thread.start()
        return cls(thread)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _raydp_driver_configs(executors: int, cores: int, memory: str | int, configs: dict[str, str]) -> dict[str, str]:
    """The Spark settings RayDP's ``init_spark`` gives Spark's driver (its class path and Java agent added)."""
    from raydp.spark.ray_cluster import SparkCluster  # noqa: PLC0415

    # RayDP's own method, on an instance that starts nothing: the driver's JVM
    # must be launched exactly as RayDP would launch it.
    bare = SparkCluster.__new__(SparkCluster)
    bare._configs = dict(configs)
    bare._num_executors, bare._executor_cores, bare._executor_memory = executors, cores, memory
    bare._prepare_spark_configs()
    return dict(bare._configs)


_connect_lock = threading.Lock()
_connected: list[Any] = []  # RayDP's context whose driver this process connected (held: its id is not reused)


def connect_driver_to_ray() -> None:
    """Connect Spark's driver JVM to Ray, once per RayDP Spark session, before data is exchanged through Ray.

    RayDP's ``init_spark`` does it at start unless ``fault_tolerant_mode=False``,
    which :class:`Session` passes: the driver JVM then starts Ray's Java
    runtime (about 1 s and as much CPU, on the start-up's critical path). A
    job whose actors read and write the files never needs it; one where
    Spark reads the input into Ray, or reads the predictions from Ray, calls
    this first. A Spark session started by RayDP's defaults is connected already.
    """
    import raydp.context  # noqa: PLC0415

    with _connect_lock:
        context = raydp.context._global_spark_context
        if context is None or context._fault_tolerant_mode or any(context is c for c in _connected):
            return
        with translate_errors("connecting Spark's driver to Ray", SessionError):
            context._get_or_create_spark_cluster().connect_spark_driver_to_ray()
            # Ray's Java runtime reconfigures log4j on joining: Spark's INFO logs would flood the terminal.
            context.get_or_create_session().sparkContext.setLogLevel(SPARK_LOG_LEVEL)
        _connected[:] = [context]


def import_spark() -> None:
    """Import RayDP and pyspark here (about 1.5 s of CPU), before starting threads that import them too.

    Two threads importing pyspark at once can deadlock on its circular
    imports; Python then fails one of them with ``_DeadlockError``. And
    pyspark's Arrow type conversions import ``distutils`` when first called,
    which setuptools' distutils hook turns into importing setuptools with
    Python's import lock held, logging as it goes: if another thread then
    starts a process with a ``preexec_fn`` (pyspark's gateway, Ray's
    daemons), Python takes the logging lock and waits for the import lock
    before forking, and both threads wait forever. So it is imported here.
    """
    import pyspark.sql.pandas.types  # noqa: F401, PLC0415
    import raydp  # noqa: F401, PLC0415

    try:
        import distutils.version  # noqa: F401, PLC0415 - see above
    except ImportError:  # no distutils (Python 3.12 without setuptools): pyspark's import fails alike
        pass


RAY_JAVA_TMP = "/tmp/ray"  # hard-coded in Ray's Java runtime (RayNativeRuntime), whatever Ray's temp dir
_NATIVE_COPY = {"libcore_worker_library_java.so", "file_lock"}


def remove_native_library_copies(since: float, until: float, root: str = RAY_JAVA_TMP) -> int:
    """Delete the copies of Ray's Java native library that the JVMs of one session left behind.

    Each JVM that joins a running Ray (Spark's driver, RayDP's app master)
    copies ``libcore_worker_library_java.so`` (40 MB) into
    ``/tmp/ray/<epoch milliseconds>/`` and never removes it: 80-120 MB per
    run, which filled a 64 GB disk over this project's test runs. Only
    directories named for a moment between ``since`` and ``until``
    (``time.time()`` seconds) that hold nothing but that copy and its lock are
    removed; a running JVM keeps its mapped copy. Returns how many.
    """
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        if not (entry.name.isdigit() and since * 1000 <= int(entry.name) <= until * 1000):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and set(os.listdir(entry.path)) <= _NATIVE_COPY:
                shutil.rmtree(entry.path)
                removed += 1
        except OSError as exc:
            log.debug("could not remove %s: %s", entry.path, exc)
    return removed


def remove_lz4_copies(since: float, until: float, root: str | None = None) -> int:
    """Delete the copies of lz4-java's native library that Spark's JVMs of one session left in the temp dir.

    Each JVM that compresses (every executor, and the driver) copies
    ``liblz4-java-<n>.so`` (150 KB) and a ``.lck`` beside it into
    ``java.io.tmpdir`` and removes them when it exits; RayDP's executors are
    killed, so theirs stay, one pair per executor started. Only pairs
    written between ``since`` and ``until`` (``time.time()`` seconds) are
    removed; a running JVM keeps its mapped copy. Returns how many.
    """
    root = root or tempfile.gettempdir()
    removed = 0
    for library in Path(root).glob("liblz4-java-*.so"):
        try:
            if since <= library.stat().st_mtime <= until:
                library.unlink()
                Path(f"{library}.lck").unlink(missing_ok=True)
                removed += 1
        except OSError as exc:
            log.debug("could not remove %s: %s", library, exc)
    return removed


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
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep a SIGTERM handler the caller installed: ``ray.init`` replaces it with ``sys.exit``.

    The CLI turns SIGTERM into KeyboardInterrupt so that a run unwinds, stops
    what it started and exits 130; Ray's handler would exit 15 without a word.
    A default (non-Python) handler is left as Ray sets it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def _quiet_ray_data() -> None:
    from ray.data import DataContext  # noqa: PLC0415

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Its warning that progress bars are off only echoes the line above.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@contextmanager
def session(
    ray: RayConfig | dict[str, Any] | None = None,
    spark: SparkConfig | dict[str, Any] | None = None,
    *,
    max_actors: int = 1,
    cpus_per_actor: float = 1.0,
) -> Iterator[Session]:
    """Open a Ray + RayDP Spark session for :func:`rayscore.predict`; stop it on exit.

    With no arguments it starts a local Ray and one Spark executor (1 core,
    2 GB) and stops both when the block ends, on success, error or Ctrl-C.
    ``ray={"address": "auto"}`` joins a running cluster instead.
    ``max_actors``/``cpus_per_actor`` size a local Ray so that the largest
    predictor pool you will ask for fits beside Spark's executors.

    Example:
        >>> import rayscore
        >>> with rayscore.session() as s:                      # doctest: +SKIP
        ...     df = s.spark.read.parquet("features.parquet")
        ...     rayscore.predict(df, model="ctr.keras").show()
    """
    from ._config import ConfigError, format_validation_error  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    try:
        ray_cfg = ray if isinstance(ray, RayConfig) else RayConfig.model_validate(ray or {})
        spark_cfg = spark if isinstance(spark, SparkConfig) else SparkConfig.model_validate(spark or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RayConfig)) from None
    s = Session(ray_cfg, spark_cfg, max_actors=max_actors, cpus_per_actor=cpus_per_actor)
    s.start()
    try:
        yield s
    finally:
        s.stop()
