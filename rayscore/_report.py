"""The run report: what a job did, how long each stage took, which model made it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RunResult", "StageClock", "STAGES"]

STAGES = ("startup", "read_convert", "load", "predict", "write")


@dataclass
class RunResult:
    """What :func:`rayscore.run` did. Also written as JSON beside the output.

    ``rows_in == rows_out + rows_quarantined`` always. ``shards`` (resume
    mode) counts ``total``, ``reused`` (committed by an earlier run) and
    ``scored`` (by this run).

    ``model_registry`` names the MLflow model a ``models:/`` or ``runs:/``
    uri resolved to when the job started (``name``, ``version``, ``alias``,
    ``run_id``, ``source``, the ``pinned`` uri every actor loaded, and the
    ``tracking_uri``); empty for other models.

    ``model_copies`` counts copies made into node-local caches (one per node
    and model version); ``working_batch_size`` is the smallest rows per model
    call an actor fell back to after running out of device memory (None: never).
    ``actor_loads`` lists, per model load, the actor's node and pid, its load
    seconds, its resident memory before the load and its peak (bytes,
    loading then predicting), the GPUs Ray gave it and the
    ``CUDA_VISIBLE_DEVICES`` it saw; ``actor_peak_rss`` is the largest peak.

    ``seconds`` holds wall-clock seconds per stage: ``startup`` (Ray + Spark
    up; the pool's actors load the model meanwhile), ``read_convert`` (the
    input's schema and the sample check), ``load`` (the slowest actor's
    model load), ``predict`` (the Spark job that reads the input, streams it
    through the pool and writes the predictions: reading, scoring and
    writing overlap), ``write`` (counted and committed). Two entries are
    moments, not stages, counted from the job's start: ``first_prediction``
    (the first batch scored) and ``total`` (the output committed).

    ``tables`` lists the model's embedding tables of ``model.mmap_min_bytes``
    or more (``layer``, ``nbytes``, ``mapped``, and the ``reason`` one is not),
    as the first actor loaded them; each entry of ``actor_loads`` names the
    tables that actor mapped (a GPU actor maps none unless
    ``model.mmap_on_gpu``). ``table_bytes_resident_peak`` is the most bytes of
    mapped tables found in a node's page cache while the job ran.

    ``deployment`` says which Spark and which Ray the job ran on and what
    each side got: ``kind`` (``raydp``, ``ray-on-spark``, ``ray-cluster``),
    the one ``line`` that said so, Spark's ``master`` and application id,
    Ray's nodes, CPUs and GPUs, and for Ray on Spark the Spark task slots its
    worker nodes held and those left for scoring.

    ``timeline`` is where the time went, for the HTML report: the stages'
    spans (seconds from the job's start), each actor process's load
    (``started``, ``loaded``: epoch seconds, like ``job_began``) and its rows
    and busy seconds per bucket of ``bucket_s`` seconds from ``origin``.
    """

    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    output: str | None = None
    errors_output: str | None = None
    model_uri: str = ""
    model_format: str = ""
    model_bytes: int = 0
    model_fingerprint: str = ""
    model_registry: dict[str, str] = field(default_factory=dict)
    actors: dict[str, int] = field(default_factory=dict)
    model_loads: int = 0
    model_copies: int = 0
    nodes: int = 0
    gpu_ids: list[str] = field(default_factory=list)
    working_batch_size: int | None = None
    memory_per_actor: int = 0
    actor_peak_rss: int = 0
    actor_loads: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    table_bytes_resident_peak: int = 0
    batch_size: int = 0
    output_columns: list[str] = field(default_factory=list)
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report_path: str | None = None
    shards: dict[str, int] = field(default_factory=dict)
    timeline: dict[str, Any] = field(default_factory=dict)
    deployment: dict[str, Any] = field(default_factory=dict)

    def add_loads(self, loads: dict[str, Any]) -> None:
        """Fold one actor pool's load summary in (resume runs one pool per shard)."""
        self.model_loads += loads["model_loads"]
        self.model_copies += loads.get("model_copies", 0)
        self.actor_loads += loads.get("actor_loads", [])
        self.actor_peak_rss = max([self.actor_peak_rss, *(a["peak_rss"] for a in loads.get("actor_loads", []))])
        self.nodes = max(self.nodes, loads.get("nodes", 0))
        self.gpu_ids = sorted(set(self.gpu_ids) | set(loads.get("gpu_ids", [])))
        self.output_shapes = loads["output_shapes"] or self.output_shapes
        self.tables = loads.get("tables") or self.tables
        self.table_bytes_resident_peak = max(self.table_bytes_resident_peak, loads.get("table_bytes_resident_peak", 0))
        if "pool" in loads:
            pool = loads["pool"]
            self.actors = {"min": pool["min"], "max": pool["max"]}
            self.memory_per_actor = pool["memory_per_actor"]
        working = loads.get("working_batch_size")
        if working is not None:
            self.working_batch_size = min(working, self.working_batch_size or working)

    @property
    def rows_per_second(self) -> float:
        """Rows scored per second of the predict stage."""
        t = self.seconds.get("predict", 0.0)
        return self.rows_out / t if t else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_per_second"] = round(self.rows_per_second, 1)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class StageClock:
    """Accumulates wall-clock seconds per named stage, and when each ran (``spans``, for the timeline).

    ``on_stage(name)``, if set, hears each stage begin (the progress display's phase).
    """

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.spans: list[dict[str, Any]] = []
        self.began = time.time()
        self.on_stage = on_stage

    def since_start(self, at: float | None = None) -> float:
        """Seconds from this clock's making (the job's start) until ``at`` (a ``time.time()``; default now)."""
        return round((time.time() if at is None else at) - self.began, 3)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        t0, start = time.perf_counter(), self.since_start()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0, start)

    def add(self, name: str, seconds: float, start: float | None = None) -> None:
        """``seconds`` more of stage ``name``, which began ``start`` seconds into the job (default: it ends now)."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)
        start = self.since_start() - seconds if start is None else start
        self.spans.append({"name": name, "start": round(start, 3), "end": round(start + seconds, 3)})
