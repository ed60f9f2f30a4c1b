"""Stage 5, predict: a pool of long-lived Ray actors, one model copy each.

Each :class:`Predictor` loads the model in its constructor from shared
storage (``model.uri``) and keeps it for the whole job. The model itself never
travels: only its uri, the column plan and the batches do. Memory per actor:
one model copy plus a few batches of tensors, less the large embedding tables
it maps from the node's model file (:mod:`rayscore._tables`), which the
node's actors share.
"""

from __future__ import annotations

import importlib.metadata
import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import _tables
from ._cache import cache_root, cached_model
from ._convert import Plan, from_ipc, output_type, row_problems, to_columns, to_ipc, to_tensors
from ._errors import InputError, ModelError, PredictError, model_error_text
from ._model import ModelSpec, fingerprint, known_fingerprint, loaders
from ._registry import RegistryModel, cached_download
from ._timeline import Timeline

__all__ = ["ModelRef", "Predictor", "local_copy", "LoadLedger", "predict_table", "first_bad_row", "REASON"]


@dataclass(frozen=True)
class ModelRef:
    """Where an actor finds the model: a path or uri and a loader name. Small and picklable.

    ``storage_options`` may hold credentials: kept out of ``repr`` (and so out
    of logs and error messages).
    """

    path: str  # a local path, or the remote uri (then copied into the node's cache first)
    loader: str
    safe_mode: bool = True
    # sha256 of a remote model's bytes, from its copy; "" for a local model, whose digest() is taken in the
    # background while the actors start (rayscore._model.fingerprint_soon)
    fingerprint: str = ""
    nbytes: int = 0
    cache_dir: str | None = None  # copy into this node-local cache first (RAYSCORE_CACHE_DIR wins)
    signature: str | None = None  # for loaders that take one (savedmodel)
    custom_objects: str | None = None  # a dotted path to a dict of classes (keras, h5)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    fetched: bool = field(default=False, compare=False)  # the driver copied it into its node's cache
    registry: RegistryModel | None = None  # a models:/ or runs:/ uri, as resolved when the job started
    mmap_min_bytes: int | None = None  # map embedding tables this large (keras, h5; rayscore._tables)
    mmap_on_gpu: bool = False  # GPU actors map them too
    shared_bytes: int = 0  # bytes of the tables the driver found mappable: held once per node, not per actor

    def options(self, *, gpu: bool = False) -> dict[str, Any]:
        """Keyword arguments for this loader's load() beyond the path (``gpu``: for an actor with GPUs)."""
        refused = None
        if gpu and not self.mmap_on_gpu and self.mmap_min_bytes:
            refused = "a GPU actor keeps its tables on the device (model.mmap_on_gpu: false)"
        opts = {
            "signature": self.signature,
            "custom_objects": self.custom_objects,
            "mmap_min_bytes": self.mmap_min_bytes,
            "mmap_refused": refused,
        }
        return {k: v for k, v in opts.items() if v is not None}

    def digest(self) -> str:
        """``sha256:<hex>`` of the model's bytes: the copy's for a remote model; a local model's, waiting for
        the read that :func:`~rayscore._plan.inspect_model` started (nothing to wait for once it is done)."""
        return self.fingerprint or fingerprint(self.path)

    def outputs_identity(self) -> dict[str, Any] | None:
        """What decides the model's outputs, to find them kept on this node
        (:func:`~rayscore._model.remembered_outputs`): its digest, loader, signature, custom objects' dotted
        name and this node's Keras version; None while its digest is not known without a read. (The custom
        objects' code and Keras's settings are not in it: a kept output that the actors' model no longer
        gives is found at the first batch, :func:`~rayscore._stream.check_outputs`.)"""
        digest = self.fingerprint or known_fingerprint(self.path)
        if not digest:
            return None
        try:
            keras_version = importlib.metadata.version("keras")
        except importlib.metadata.PackageNotFoundError:
            keras_version = None
        return {
            "fingerprint": digest,
            "loader": self.loader,
            "signature": self.signature,
            "custom_objects": self.custom_objects,
            "keras": keras_version,
        }

    def shared_on(self, gpu: bool) -> int:
        """Bytes of mapped tables an actor (with GPUs, when ``gpu``) shares with the others on its node."""
        return 0 if gpu and not self.mmap_on_gpu else self.shared_bytes


def _check_same_inputs(expected: tuple[Any, ...], spec: ModelSpec, path: str) -> None:
    have = {t.name for t in spec.inputs}
    missing = [b.input for b in expected if b.input not in have]
    if missing:
        raise ModelError(f"model {path} has no input {missing[0]!r} (inputs: {', '.join(sorted(have))})")


RESIDENT_EVERY_S = 5.0  # how often an actor with mapped tables reads their page-cache residency

REASON = "__rayscore_reason"  # per-row problem, in quarantine mode; null for scored rows


def row_keys(batch: pa.Table, plan: Plan, row: int) -> str:
    """``id=17, day='2024-01-02'``: the key columns of one row, for messages."""
    keys = plan.key_columns[:4]
    return ", ".join(f"{k}={batch.column(k)[row].as_py()!r}" for k in keys) if keys else f"row {row} of the batch"


def first_bad_row(batch: pa.Table, plan: Plan, exc: InputError) -> InputError:
    """``exc`` with the keys and problem of the first bad row appended."""
    reasons = row_problems(batch, plan.bindings, reject_nan=plan.reject_nan)
    bad = np.flatnonzero(np.not_equal(reasons, None))
    if not len(bad):
        return exc
    return InputError(f"{exc} (first bad row: {row_keys(batch, plan, int(bad[0]))}: {reasons[bad[0]]})")


def predict_table(model: Any, plan: Plan, batch: pa.Table, limit: BatchLimit | None = None) -> pa.Table:
    """Score one Arrow batch: convert, predict, convert back, carry input columns beside.

    In quarantine mode, rows that cannot be converted come back with null
    predictions and their problem in the ``REASON`` column.
    """
    reasons = None
    try:
        feeds = to_tensors(batch, plan.bindings, reject_nan=plan.reject_nan)
        good = batch
    except InputError as exc:
        if not plan.quarantine:
            raise first_bad_row(batch, plan, exc) from None
        reasons = row_problems(batch, plan.bindings, reject_nan=plan.reject_nan)
        mask = np.not_equal(reasons, None)
        good = batch.filter(pa.array(~mask))
        feeds = to_tensors(good, plan.bindings, reject_nan=plan.reject_nan) if good.num_rows else None
    types = {col: output_type(_output_spec(model, name)) for name, col in plan.outputs}
    columns: dict[str, Any] = {name: good.column(name) for name in plan.carried_columns}
    if feeds is not None:
        predictions = _predict_with_retries(model, plan, good, feeds, limit)
        made = to_columns(predictions, plan.outputs, good.num_rows)
        columns.update({col: made[col].cast(types[col]) for col in made})
    else:
        columns.update({col: pa.nulls(0, types[col]) for col in types})
    if not plan.quarantine:
        return pa.table(columns)
    columns[REASON] = pa.nulls(good.num_rows, pa.string())
    scored = pa.table(columns)
    if reasons is None:
        return scored
    mask = np.not_equal(reasons, None)
    bad = batch.filter(pa.array(mask))
    rejected = {name: bad.column(name) for name in plan.carried_columns}
    rejected.update({col: pa.nulls(bad.num_rows, types[col]) for col in types})
    rejected[REASON] = pa.array(list(reasons[mask]), pa.string())
    return pa.concat_tables([scored, pa.table(rejected, schema=scored.schema)])


def _output_spec(model: Any, name: str) -> Any:
    return next(t for t in model.spec.outputs if t.name == name)


@dataclass
class BatchLimit:
    """Rows per model call on this actor: None (the whole batch) until a device runs out of memory.

    On an out-of-memory error the batch is split in halves down to ``floor``
    rows; the size that worked is kept for the rest of the job.
    """

    rows: int | None = None
    floor: int = 1
    splits: int = 0
    retries: int = 0  # model calls run again after an error (the split's included), for progress


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (or host) allocation failure that a smaller batch may avoid."""
    text = str(exc)
    return (
        type(exc).__name__ in ("ResourceExhaustedError", "OutOfMemoryError", "MemoryError")
        or "RESOURCE_EXHAUSTED" in text
        or "OOM when allocating" in text
        or "out of memory" in text.lower()
    )


def _predict_in_chunks(model: Any, feeds: dict[str, np.ndarray], rows: int, limit: BatchLimit) -> dict[str, np.ndarray]:
    while True:
        size = min(rows, limit.rows or rows)
        try:
            parts = [model.predict({k: v[i : i + size] for k, v in feeds.items()}) for i in range(0, rows, size)]
        except Exception as exc:
            if not is_out_of_memory(exc) or size <= limit.floor:
                raise
            limit.rows = max(limit.floor, size // 2)
            limit.splits += 1
            limit.retries += 1
            continue
        if len(parts) == 1:
            return dict(parts[0])
        return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}


def _predict_with_retries(
    model: Any, plan: Plan, batch: pa.Table, feeds: dict[str, np.ndarray], limit: BatchLimit | None = None
) -> Any:
    attempts = plan.max_retries + 1
    limit = limit or BatchLimit()
    for attempt in range(1, attempts + 1):
        try:
            return _predict_in_chunks(model, feeds, batch.num_rows, limit)
        except Exception as exc:  # noqa: BLE001 - the model's own error, retried then named
            if attempt < attempts:
                limit.retries += 1
                continue
            # No ``from exc``: TF's errors do not pickle, and this one must cross
            # from the actor to the driver intact.
            raise PredictError(
                f"a batch of {batch.num_rows} rows (first row: {row_keys(batch, plan, 0)}) failed "
                f"{attempts} time(s) (predict.max_retries: {plan.max_retries}): "
                f"{type(exc).__name__}: {model_error_text(exc)}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


class Predictor:
    """One pool actor: loads the model once, in its constructor, and scores Arrow batches for its whole life.

    Spark's Python workers call :meth:`score` with a batch as Arrow IPC
    (:mod:`rayscore._stream`); the predictions go back the same way. A
    model error is retried ``plan.max_retries`` times here, then fails the
    batch naming its first key values. An actor that dies is restarted by
    Ray (it loads the model again) and its in-flight calls are run again,
    so each row is still scored once. Memory: one model copy plus the
    batches in flight.
    """

    def __init__(self, model: ModelRef, ledger: str | None = None) -> None:
        import ray  # noqa: PLC0415

        t0, started = time.perf_counter(), time.time()
        context = ray.get_runtime_context()
        # The ledger's name, not its handle: a handle among an actor's constructor arguments is a
        # reference Ray warns about for restartable actors (and logs on every start).
        self._ledger = ray.get_actor(ledger, namespace=context.namespace) if ledger else None
        self._key = f"{os.getpid()}@{context.get_node_id()[:8]}"  # pids repeat across nodes
        if self._ledger is not None:
            self._ledger.loading.remote(context.get_actor_name(), os.getpid(), context.get_node_id(), started)
        prepare = getattr(loaders[model.loader], "prepare", None)
        if prepare is not None:  # the framework's import (TensorFlow), so that what follows is the model's
            prepare()
        rss_before = _peak_rss()
        path, copied = local_copy(model)
        devices = _prepare_devices()
        self._model = loaders[model.loader].load(
            path, safe_mode=model.safe_mode, **model.options(gpu=bool(devices["gpu_ids"]))
        )
        self._path = model.path
        self._checked: set[Plan] = set()
        self._limit = BatchLimit()
        self._reported_rss = 0
        self._mapped = any(t["mapped"] for t in self._model.info.get("tables", []))
        self._resident_at = 0.0
        if self._ledger is not None:
            ray.get(
                self._ledger.record.remote(
                    {
                        "name": context.get_actor_name(),
                        "pid": os.getpid(),
                        "node": context.get_node_id(),
                        "started": started,
                        "loaded": time.time(),
                        "load_seconds": time.perf_counter() - t0,
                        "output_shapes": {t.name: list(t.shape or ()) for t in self._model.spec.outputs},
                        "loaded_from": path,
                        "copied": copied,
                        "rss_before_load": rss_before,
                        "tables": self._model.info.get("tables", []),
                        **devices,
                    }
                )
            )
        self._report_rss()

    def spec(self) -> ModelSpec:
        """The loaded model's inputs and outputs (shapes the model file may not state)."""
        return self._model.spec

    def score(self, plan: Plan, batch: Any) -> Any:
        """Score one batch (Arrow IPC, :func:`to_ipc`); the predictions as Arrow IPC."""
        if plan not in self._checked:
            _check_same_inputs(plan.bindings, self._model.spec, self._path)
            self._checked.add(plan)
        before, retries, began = self._limit.rows, self._limit.retries, time.time()
        table = predict_table(self._model, plan, from_ipc(batch), self._limit)
        if self._ledger is not None:
            quarantined = table.num_rows - table.column(REASON).null_count if REASON in table.column_names else 0
            self._ledger.batch.remote(
                self._key, began, time.time(), table.num_rows, batch.size, quarantined, self._limit.retries - retries
            )
            if self._limit.rows != before:
                self._ledger.shrunk.remote(os.getpid(), self._limit.rows)
        self._report_rss()
        return to_ipc(table)

    def _report_rss(self) -> None:
        """Tell the ledger this process's peak RSS when it has grown by 16 MB or more.

        And, every few seconds, how many bytes of its mapped tables are in the
        node's page cache (``mincore``: a few ms for a 30 GB table).
        """
        if self._ledger is None:
            return
        peak = _peak_rss()
        if peak >= self._reported_rss + (16 << 20):
            self._ledger.peak_rss.remote(os.getpid(), peak)
            self._reported_rss = peak
        if self._mapped and time.monotonic() >= self._resident_at + RESIDENT_EVERY_S:
            self._ledger.table_resident.remote(os.getpid(), _tables.resident())
            self._resident_at = time.monotonic()


def local_copy(model: ModelRef) -> tuple[str, bool]:
    """(where this process reads the model, whether that took a copy): the node's cache, else in place."""
    root = cache_root(model.cache_dir, model.path)
    if model.registry is not None:
        assert root is not None
        got = cached_download(model.registry, root, fingerprint=model.fingerprint)
        return got.path, got.copied
    if not root:
        return model.path, False
    copy = cached_model(model.path, root, fingerprint=model.fingerprint or None, storage_options=model.storage_options)
    return copy.path, copy.copied


def _peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _prepare_devices() -> dict[str, Any]:
    """Record the GPUs Ray gave this actor; let TensorFlow grow into them rather than grab all.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's GPUs, so the model lands
    on (only) those. Called before the model is built.
    """
    import ray  # noqa: PLC0415

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if gpu_ids and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    return {"gpu_ids": gpu_ids, "cuda_visible_devices": visible}


class LoadLedger:
    """A tiny actor on the driver's node that the predictors report to; read for progress and the report.

    It holds each actor's model loads (and restarts), peak memory, batch
    splits, and every batch scored: counted for progress
    (:meth:`snapshot`) and folded into a bounded :class:`Timeline` for the
    report. Cost: one fire-and-forget call per batch scored.
    """

    def __init__(self) -> None:
        self._loads: list[dict[str, Any]] = []
        self._working: dict[int, int] = {}
        self._peaks: dict[int, int] = {}
        self._resident: dict[int, int] = {}
        self._first_scored: float | None = None
        self._incarnations: dict[str, list[dict[str, Any]]] = {}  # actor name -> its processes, in order
        self._totals = {"rows": 0, "bytes": 0, "batches": 0, "quarantined": 0, "retries": 0}
        self._timeline = Timeline(time.time())

    def loading(self, name: str, pid: int, node: str, at: float) -> None:
        """Actor ``name`` began loading the model in process ``pid`` (a second process of a name is a restart)."""
        key = f"{pid}@{node[:8]}"  # as the predictor names its batches
        self._incarnations.setdefault(name, []).append(
            {"key": key, "pid": pid, "node": node, "started": at, "loaded": None}
        )

    def record(self, info: dict[str, Any]) -> None:
        """A model load finished (``info`` as :meth:`loads` returns it)."""
        self._loads.append(info)
        for inc in self._incarnations.get(info.get("name", ""), []):
            if inc["pid"] == info["pid"]:
                inc["loaded"] = info.get("loaded")

    def batch(self, key: str, start: float, end: float, rows: int, nbytes: int, quarantined: int, retries: int) -> None:
        """Process ``key`` (pid@node) scored a batch of ``rows`` (``nbytes`` of Arrow) from ``start`` to ``end``."""
        self._first_scored = end if self._first_scored is None else min(end, self._first_scored)
        for total, value in (("rows", rows), ("bytes", nbytes), ("batches", 1)):
            self._totals[total] += value
        self._totals["quarantined"] += quarantined
        self._totals["retries"] += retries
        self._timeline.add(key, start, end, rows)

    def first_scored(self) -> float | None:
        return self._first_scored

    def peak_rss(self, pid: int, rss: int) -> None:
        self._peaks[pid] = max(rss, self._peaks.get(pid, 0))

    def table_resident(self, pid: int, nbytes: int) -> None:
        """Bytes of process ``pid``'s mapped tables found in its node's page cache."""
        self._resident[pid] = max(nbytes, self._resident.get(pid, 0))

    def shrunk(self, pid: int, rows: int) -> None:
        self._working[pid] = rows

    def working_batch_size(self) -> int | None:
        return min(self._working.values()) if self._working else None

    def loads(self) -> list[dict[str, Any]]:
        return [
            {**x, "peak_rss": self._peaks.get(x["pid"], 0), "table_resident_peak": self._resident.get(x["pid"], 0)}
            for x in self._loads
        ]

    def snapshot(self) -> dict[str, Any]:
        """What progress shows: the batch totals, and the actors loaded, loading and restarted."""
        last = [incs[-1] for incs in self._incarnations.values()]
        return {
            **self._totals,
            "loaded": sum(1 for inc in last if inc["loaded"] is not None),
            "loading": sum(1 for inc in last if inc["loaded"] is None),
            "restarted": sum(len(incs) - 1 for incs in self._incarnations.values()),
            "first_scored": self._first_scored,
        }

    def timeline(self) -> dict[str, Any]:
        """Per actor, each process's load and its batches over time (:meth:`Timeline.to_dict`), for the report."""
        now = time.time()
        keys = [inc["key"] for incs in self._incarnations.values() for inc in incs]
        out = self._timeline.to_dict(keys, until=now)
        out["actors"] = [
            {"name": name, "restart": i, **inc}
            for name, incs in sorted(self._incarnations.items())
            for i, inc in enumerate(incs)
        ]
        out["read_at"] = now
        return out


def summarize_loads(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Count and time of model loads, as the run report shows them."""
    seconds = [float(x["load_seconds"]) for x in loads]
    shapes = loads[0]["output_shapes"] if loads else {}
    return {
        "model_loads": len(loads),
        "load_seconds_max": max(seconds) if seconds else 0.0,
        "load_seconds_mean": float(np.mean(seconds)) if seconds else 0.0,
        "output_shapes": shapes,
        "nodes": len({x["node"] for x in loads}),
        "model_copies": sum(1 for x in loads if x.get("copied")),
        "gpu_ids": sorted({g for x in loads for g in x.get("gpu_ids", [])}),
        "tables": loads[0].get("tables", []) if loads else [],
        "table_bytes_resident_peak": max((x.get("table_resident_peak", 0) for x in loads), default=0),
        "actor_loads": [
            {
                "node": x["node"][:12],
                "pid": x["pid"],
                "load_seconds": round(float(x["load_seconds"]), 3),
                "rss_before_load": x.get("rss_before_load", 0),
                "peak_rss": x.get("peak_rss", 0),
                "mapped_tables": [t["layer"] for t in x.get("tables", []) if t["mapped"]],
                "gpu_ids": x.get("gpu_ids", []),
                "cuda_visible_devices": x.get("cuda_visible_devices", ""),
            }
            for x in loads
        ],
    }
