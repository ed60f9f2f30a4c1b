"""Ray on Spark's start hook for the clusters rayscore starts (:mod:`.ray_on_spark`).

A module of its own: it imports Ray at the top (its base class), and Ray on
Spark loads it by name, so ``import rayscore`` does not import Ray.
"""

from __future__ import annotations

import os
import sys

from ray.util.spark.start_hook_base import RayOnSparkStartHook

from .base import ray_auth_env, token_auth_on

__all__ = ["RayscoreStartHook"]


class RayscoreStartHook(RayOnSparkStartHook):
    """Ray on Spark's start hook: the interpreter's ``bin/`` on ``PATH`` and Ray's token for every Ray node.

    Ray on Spark loads it by name (``RAY_ON_SPARK_START_HOOK``) in the driver
    and passes :meth:`custom_environment_variables` to the head's and each
    worker node's ``ray start``, through the Spark job's closure.
    """

    def __init__(self, is_global: bool = False) -> None:  # Ray's loader calls it without arguments
        super().__init__(is_global)

    def custom_environment_variables(self) -> dict[str, str]:
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        token_auth_on()  # asked before the head starts: the token must exist now, not once the head made it
        return {"PATH": path, **ray_auth_env()}
