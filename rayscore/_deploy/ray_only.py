"""Ray without Spark: for ``rayscore.predict`` on a Ray Dataset (``rayscore.session(spark=False)``).

The Ray is the one this process is connected to (``ray.init``, or Ray
Data's own start), else the one at ``ray.address`` (or ``RAY_ADDRESS``),
else a local Ray started here. There is no Spark: Ray Data reads and
writes, and the pool's actors score. Cost: joining (about a second), or a
local Ray (2-3 s).
"""

from __future__ import annotations

from .ray_cluster import RayCluster

__all__ = ["RayOnly"]


class RayOnly(RayCluster):
    """A Ray cluster and no Spark; :meth:`stop` ends only a Ray it started or joined."""

    kind = "ray"

    def _may_start_local(self, master: str | None) -> bool:
        return True

    def start_spark(self) -> None:
        self._mark_up()

    def describe(self) -> str:
        return f"no Spark, {self._ray_text()}"
