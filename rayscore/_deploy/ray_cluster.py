"""A plain Spark beside a Ray cluster already on its executors' hosts (or a local Ray for a ``local`` master).

The Ray is the one this process is connected to (``ray.init``), else the
one at ``ray.address`` (or ``RAY_ADDRESS``), else, for a ``local[N]``
master only, a local Ray started here. Spark's executors are not Ray
actors: their CPUs are not taken from Ray's, and Spark's own cluster manager
replaces a lost executor. Every Spark executor host must run a Ray node
(``ray start --address=…``): a task on a host without one fails in one
line naming the host. Cost: joining (about a second), or a local Ray (2-3 s).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .._config import RayConfig, is_local_master
from .._errors import DeploymentError, SessionError, translate_errors
from .._sizing import local_ray_cpus
from .base import Deployment, check_python_workers, ray_init, spark_master

__all__ = ["RayCluster", "joinable_address"]

log = logging.getLogger("rayscore")


def joinable_address(ray_config: RayConfig) -> str | None:
    """The Ray cluster to join: ``ray.address``, else ``RAY_ADDRESS``; None when neither names one."""
    return ray_config.address or os.environ.get("RAY_ADDRESS") or None


class RayCluster(Deployment):
    """The caller's (or a built) SparkSession, and a Ray its executors' hosts belong to.

    :meth:`stop` disconnects from a joined cluster (leaving it running),
    shuts down a local Ray it started, and stops the SparkSession only if it
    built it from ``spark.master``.
    """

    kind = "ray-cluster"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # Deployment's arguments
        super().__init__(*args, **kwargs)
        self._connected = False  # this deployment called ray.init
        self._local = False  # ... for a local Ray it started
        self._address: str | None = None

    def start_ray(self) -> None:
        import ray  # noqa: PLC0415

        self._mark_started()
        if ray.is_initialized():
            self._address = ray.get_runtime_context().gcs_address
            return
        address = joinable_address(self.ray_config)
        master = spark_master(self.spark) if self.spark is not None else self.spark_config.master
        if address is None:
            if not self._may_start_local(master):
                raise DeploymentError(
                    f"ray.address: a {master!r} master needs a Ray cluster on its executors' hosts: set ray.address "
                    "(or RAY_ADDRESS), or let rayscore start Ray on Spark (leave ray.address unset)"
                )
            cfg = self.ray_config
            kwargs: dict[str, Any] = {"address": "local", "include_dashboard": cfg.dashboard}
            kwargs["num_cpus"] = cfg.num_cpus or local_ray_cpus(
                os.cpu_count() or 1,
                spark_executors=0,
                executor_cores=0,
                max_actors=self.max_actors,
                cpus_per_actor=self.cpus_per_actor,
            )
            if cfg.num_gpus is not None:
                kwargs["num_gpus"] = cfg.num_gpus
            with translate_errors("ray (local)", SessionError):
                ray_init(**kwargs)
            self._local = True
        else:
            with translate_errors(f"ray.address {address}", SessionError):
                _token_if_held()
                try:
                    ray_init(address=address)
                except ConnectionError as exc:
                    raise SessionError(
                        f"ray.address: cannot reach a Ray cluster at {address!r}: {exc} (is it up? A cluster with "
                        "token authentication, Ray's default, also needs its token here: RAY_AUTH_TOKEN or "
                        "~/.ray/auth_token)"
                    ) from exc
        self._connected = True
        self._address = ray.get_runtime_context().gcs_address

    def _may_start_local(self, master: str | None) -> bool:
        """Whether no Ray to join may mean a local Ray started here: only for a Spark on this machine."""
        return master is not None and is_local_master(master)

    def start_spark(self) -> None:
        self._build_spark()
        check_python_workers(self.spark)
        self._mark_up()

    def stop(self) -> None:
        if self._connected:
            self._connected = False
            import ray  # noqa: PLC0415

            ray.shutdown()
        self._stop_built_spark()

    @property
    def owns_ray(self) -> bool:
        return self._connected

    def describe(self) -> str:
        return f"{self._spark_text()} with {self._ray_text()}"

    def _ray_text(self) -> str:
        if self._local:
            return "a local Ray started by rayscore"
        if self._connected:
            return f"the Ray cluster at {self._address} (joined)"
        return f"the Ray this process is connected to ({self._address})"


def _token_if_held() -> None:
    """Join with Ray's token when this process holds one and ``RAY_AUTH_MODE`` is unset.

    ``ray start --head`` turns token authentication on by default (Ray 2.60)
    and saves the token in ``~/.ray/auth_token``; ``ray.init(address=…)``
    does not look for it unless ``RAY_AUTH_MODE=token``, and fails with a
    bare "Failed to connect". Ray's own rule for a new local cluster
    (use the token if one is there) is applied to joining too.
    """
    from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
