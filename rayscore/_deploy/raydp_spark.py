"""RayDP: Spark on Ray, the embedded default. Ray first (local, or joined at ``ray.address``), then RayDP's Spark on it.

Spark's executors are Ray actors: they hold Ray CPUs for the whole job (the
pool is sized beside them), and RayDP starts no new executor for a lost one
(the watch, :mod:`rayscore._watch`, fails the job instead of waiting). Cost:
a local Ray (2-3 s) and RayDP's app master and executors (a JVM each).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .._config import RayConfig, SparkConfig, spark_options
from .._errors import SessionError, translate_errors
from .._sizing import local_ray_cpus, spark_executor_cores
from .base import JAVA_OPTIONS, SPARK_DEFAULTS, SPARK_LOG_LEVEL, Deployment, keep_signal_handlers

__all__ = ["RayDP", "RayDPSession"]

log = logging.getLogger("rayscore")


class RayDP(Deployment):
    """A local or joined Ray, and RayDP's Spark on it; both started here, both stopped by :meth:`stop`."""

    kind = "raydp"
    replaces_lost_executors = False
    announce = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Deployment's arguments (no SparkSession)
        super().__init__(*args, **kwargs)
        self.executor_cores = spark_executor_cores(
            self.spark_config.executor_cores, local=self.ray_config.address is None, physical_cpus=os.cpu_count() or 1
        )
        self._started_ray = False
        self._started_spark = False
        self._joined = False

    def start_ray(self) -> None:
        import ray  # noqa: PLC0415
        from ray.job_config import JobConfig  # noqa: PLC0415

        self._mark_started()
        # Spark's Python workers must run this interpreter.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        if ray.is_initialized():
            log.info("using the Ray this process is already connected to")
            self._joined = True
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
                max_actors=self.max_actors,
                cpus_per_actor=self.cpus_per_actor,
            )
        else:
            kwargs["address"] = cfg.address
            self._joined = True
        with translate_errors(f"ray.address {cfg.address or 'local'}", SessionError):
            try:
                with keep_signal_handlers():
                    ray.init(**kwargs)
            except ConnectionError as exc:
                raise SessionError(f"ray.address: cannot reach a Ray cluster at {cfg.address!r}: {exc}") from exc
        self._started_ray = True

    def start_spark(self) -> None:
        import raydp  # noqa: PLC0415

        cfg = self.spark_config
        java = " ".join(JAVA_OPTIONS)
        configs: dict[str, str] = {
            "spark.ray.raydp_app_master.extraJavaOptions": java,
            "spark.driver.extraJavaOptions": f"{java} {_driver_logging_dir()}".strip(),
            "spark.executor.extraJavaOptions": java,
            **SPARK_DEFAULTS,
        }
        for key, value in spark_options(cfg.configs).items():
            configs[key] = f"{configs.get(key, '')} {value}".strip() if key.endswith("extraJavaOptions") else value
        with translate_errors("spark", SessionError), keep_signal_handlers():
            self.spark = raydp.init_spark(
                app_name=cfg.app_name,
                num_executors=cfg.executors,
                executor_cores=self.executor_cores,
                executor_memory=cfg.executor_memory,
                configs=configs,
                # Spark's driver never exchanges data with Ray for rayscore (its executors' Python
                # workers do), so it joins Ray only when asked: ray.data.from_spark needs it.
                fault_tolerant_mode=cfg.fault_tolerant_mode,
            )
        self._started_spark = True
        self.spark.sparkContext.setLogLevel(SPARK_LOG_LEVEL)
        # RayDP returns before its executors have started (a JVM each); Spark is up once it can
        # run a job. One tiny JVM-only job waits for the first, so that ``startup_seconds`` counts
        # it rather than the job's first stage.
        with translate_errors("spark: starting its executors", SessionError):
            self.spark.range(1).count()
        self._mark_up()

    def stop(self) -> None:
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
        return self._started_ray  # a joined cluster too: this driver's actors end when it disconnects

    @property
    def spark_cpus(self) -> float:
        return float(self.spark_config.executors * self.executor_cores)

    def describe(self) -> str:
        executors = f"{self.spark_config.executors} Spark executor(s)"
        if self.ray_config.address is not None:
            return f"joined the Ray cluster at {self.ray_config.address} and started RayDP's Spark ({executors})"
        if self._joined:
            return f"started RayDP's Spark on the Ray this process is connected to ({executors})"
        return f"started a local Ray and RayDP's Spark ({executors})"


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


class RayDPSession(Deployment):
    """A RayDP Spark session the caller started (``raydp.init_spark``): used as it is, nothing stopped."""

    kind = "raydp"
    replaces_lost_executors = False

    def __init__(self, spark: Any) -> None:
        super().__init__(RayConfig(), SparkConfig(), spark=spark)

    def start_ray(self) -> None:
        import ray  # noqa: PLC0415

        if not ray.is_initialized():
            raise SessionError(
                "this DataFrame's Spark is RayDP's, but this process is not connected to its Ray "
                "(raydp.init_spark was called in another process?)"
            )

    def start_spark(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def spark_cpus(self) -> float:
        conf = self.spark.sparkContext.getConf()
        return float(conf.get("spark.executor.instances", "1")) * float(conf.get("spark.executor.cores", "1"))

    def describe(self) -> str:
        return "RayDP's Spark on Ray, started by the caller"
