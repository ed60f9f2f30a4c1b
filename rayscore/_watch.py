"""While a job's Spark actions run: a RayDP Spark left without executors fails the job instead of waiting forever.

Only RayDP's Spark needs it: on any other cluster manager (standalone, YARN,
Kubernetes, Databricks) Spark starts new executors for lost ones itself, and
the watch stays off. RayDP's executors are Ray actors. When the node under them is lost (its
raylet and every process on it killed), Spark loses the executors and RayDP
does not start new ones, so Spark would wait for executors for ever. The
watch asks Spark every few seconds how many executors it has; once it has
had none for :data:`EXECUTORS_GONE_S`, it cancels the block's job group (never
another's: the SparkSession may be the caller's) and the job
fails in one line naming the Ray nodes lost since it started. While any
executor is left, Spark reruns the lost tasks on it and the job goes on.
Cost: one call into Spark's driver and, only at the end, one into Ray's GCS.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._deploy.base import is_raydp
from ._errors import PredictError

__all__ = ["EXECUTORS_GONE_S", "Gone", "lost_text", "watch_spark"]

EXECUTORS_GONE_S = 30.0  # RayDP's own restart of an executor, were it to come, takes a JVM start
POLL_S = 2.0


class Gone:
    """How long Spark has had no executor: ``seen(executors, now)`` is true once that is ``EXECUTORS_GONE_S``."""

    def __init__(self, after_s: float = EXECUTORS_GONE_S) -> None:
        self.after_s = after_s
        self.since: float | None = None

    def seen(self, executors: int, now: float) -> bool:
        if executors > 0:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.after_s


def lost_text(alive_before: set[str], nodes: Sequence[Mapping[str, Any]], after_s: float = EXECUTORS_GONE_S) -> str:
    """The one line for a Spark left without executors: which of ``alive_before``'s Ray nodes are dead now."""
    lost = [n for n in nodes if n["NodeID"] in alive_before and not n["Alive"]]
    if lost:
        names = ", ".join(f"{n['NodeManagerAddress']} (Ray node {n['NodeID'][:8]})" for n in lost)
        cause = f"Ray lost node {names} and with it every Spark executor"
    else:
        cause = "Spark lost every executor (no Ray node was lost)"
    return (
        f"spark: {cause}; RayDP starts no new ones, and none came back in {after_s:.0f} s, so the job stopped; "
        "what it was writing is not committed. Run it again: with output.mode: resume the shards already "
        "committed are kept and only the rest is scored"
    )


def _executors(sc: Any) -> int:
    return len(sc._jsc.sc().statusTracker().getExecutorInfos()) - 1  # the driver is listed too


@contextlib.contextmanager
def watch_spark(spark: Any) -> Iterator[None]:
    """Run the block (Spark actions) with the watch on; a block stopped by it raises its :class:`PredictError`.

    The block's Spark jobs run in the calling thread's job group, or in one
    of the watch's own when the thread has none, so that only they are
    cancelled.
    """
    import ray  # noqa: PLC0415

    if not is_raydp(spark):
        yield
        return
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    sc, done, gone = spark.sparkContext, threading.Event(), Gone()
    group = sc.getLocalProperty("spark.jobGroup.id")
    own_group = group is None
    if own_group:
        group = f"rayscore-watch-{uuid.uuid4().hex[:8]}"
        sc.setJobGroup(group, "rayscore", interruptOnCancel=False)
    lost: list[str] = []

    def watch() -> None:
        while not done.wait(POLL_S):
            try:
                if gone.seen(_executors(sc), time.monotonic()) and not done.is_set():
                    lost.append(lost_text(alive, ray.nodes()))
                    sc.cancelJobGroup(group)
                    return
            except Exception:  # noqa: BLE001 - Spark or Ray stopping under us: nothing left to watch
                return

    thread = threading.Thread(target=watch, name="rayscore-spark-watch", daemon=True)
    thread.start()
    try:
        yield
    except Exception as exc:
        if lost:
            raise PredictError(lost[0]) from exc
        raise
    finally:
        done.set()
        thread.join(timeout=2 * POLL_S)  # so a verdict just as the block ended cancels nothing after it
        if own_group:
            for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
                sc.setLocalProperty(key, None)
