"""One job through the stages: config → session → source → convert → predict → sink → report.

``run`` drives a whole job from a config; ``predict`` is the middle of it for a
DataFrame the caller already has. Both check everything they can before any
batch is scored: config (before any cluster starts), model file, columns,
dtypes and array lengths, output location.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from ._config import Config, ModelConfig, OutputConfig, PredictConfig, format_validation_error, load_config
from ._convert import Plan, make_plan, to_tensors
from ._errors import ConfigError, InputError, PredictError, RayscoreError, translate_errors
from ._cache import cache_root, cached_model
from ._model import ModelSpec, TensorSpec, fingerprint, import_custom_objects, model_bytes, resolve_loader
from ._storage import is_remote
from ._predict import REASON, FilePredictor, LoadLedger, ModelRef, Predictor, first_bad_row, summarize_loads
from ._report import RunResult, StageClock
from ._session import Session, import_spark
from ._sink import (REPORT_NAME, ActorSink, PartFiles, StagedWrite, actors_can_write, blocks_to_spark,
                    check_output_free, hold_for_session, to_spark, write_output)
from ._placement import ACTOR_PROCESS_BYTES, PoolPlan, batch_bytes, memory_factor_for, nodes_from_ray, plan_pool
from ._sizing import rows_per_block
from ._source import (ParquetFiles, SparkInput, arrow_schema, first_rows, footer_input, may_read_footers,
                      parquet_files, read_input)

__all__ = ["run", "predict", "inspect_model"]

log = logging.getLogger("rayscore")

SAMPLE_ROWS = 1000
READ_TASKS_PER_ACTOR = 2  # partitions fetched at once per actor: one scored, one arriving
POOL_START_TIMEOUT_S = 3600  # for the minimal pool to place its actors and load (copy) the model
POOL_CANCEL_TIMEOUT_S = 60  # for a cancelled pool's Ray Data job to end (its actors fail their next batch)
# Ray's object store bytes the job's blocks may hold per actor: a Spark-read input's blocks fetched
# ahead and predictions in flight (the actors' own parquet pieces and part files take none).
BLOCK_BYTES_PER_ACTOR = 512 * 2**20
# Predictions per actor that may wait in Ray's object store for Spark to write them before the pool waits.
UNWRITTEN_BYTES_PER_ACTOR = 1024 * 2**20


@dataclass
class _Scored:
    dataframe: Any
    rows_in: int
    rows_out: int
    loads: dict[str, Any] = field(default_factory=dict)
    rows_quarantined: int = 0
    blocks: list[Any] = field(default_factory=list, repr=False)  # what Spark reads: keep until written
    reader: str = "spark"  # who read the input: "parquet" (Ray, the files themselves) or "spark"


def inspect_model(model: ModelConfig) -> tuple[ModelRef, ModelSpec]:
    """Find the model and read its inputs/outputs without loading its weights.

    A remote model is first copied into this node's cache (one streamed read;
    reused while its listing is unchanged), which gives its fingerprint and a
    local copy to inspect; actors on this node then reuse that copy.
    """
    import_custom_objects(model.custom_objects)  # a bad import path fails here, not in every actor
    if is_remote(model.uri):
        root = cache_root(model.cache_dir, model.uri)
        assert root is not None
        copy = cached_model(model.uri, root, storage_options=model.storage_options)
        path, digest, nbytes, fetched = copy.path, copy.fingerprint, copy.nbytes, copy.copied
        local, loader = resolve_loader(path, model.format, uri=model.uri)
    else:
        local, loader = resolve_loader(model.uri, model.format)
        path, digest, nbytes, fetched = local, fingerprint(local), model_bytes(local), False
        root = model.cache_dir
    options = getattr(loader, "options", ())
    ref = ModelRef(path=model.uri if is_remote(model.uri) else local, loader=loader.name,
                   safe_mode=model.safe_mode, fingerprint=digest, nbytes=nbytes, cache_dir=root,
                   signature=model.signature if "signature" in options else None,
                   custom_objects=model.custom_objects if "custom_objects" in options else None,
                   storage_options=model.storage_options, fetched=fetched)
    return ref, loader.inspect(local, **({"signature": ref.signature} if ref.signature else {}))


def _check_sample(df: Any, plan: Plan, files: list[str] | None) -> None:
    """Convert the first rows exactly as the actors will, so bad shapes fail before scoring.

    The rows come from where the actors will read them: ``files``, the
    input's parquet files when Ray reads them itself (no Spark job), else
    Spark. In quarantine mode bad rows are expected, so only the columns'
    types are checked.
    """
    if plan.quarantine:
        return
    with translate_errors("reading a sample of the input", InputError):
        if files:
            sample = first_rows(files, list(plan.read_columns), SAMPLE_ROWS)
        else:
            batches = df.select(*plan.read_columns).limit(SAMPLE_ROWS)._collect_as_arrow()
            sample = pa.Table.from_batches(batches) if batches else None
    if sample is not None and sample.num_rows:
        try:
            to_tensors(sample, plan.bindings, reject_nan=plan.reject_nan)
        except InputError as exc:
            raise first_bad_row(sample, plan, exc) from None


def _files_checked(df: Any, plan: Plan, reader: str, sample: bool = True) -> list[str] | None:
    """Which way the input goes (its parquet files, or None: Spark), once its first rows pass the checks."""
    files = parquet_files(df.select(*plan.read_columns), reader)
    if sample:
        _check_sample(df, plan, files)
    return files


def plan_job(cfg: Config, spec: ModelSpec, df: Any, *, sample: bool = True) -> tuple[Plan, list[str] | None]:
    """Bind the config's model to the DataFrame's columns; check a sample of rows (unless ``sample=False``).

    Returns the plan and the input's parquet files if Ray reads them itself
    (:func:`parquet_files`), else None: Spark reads the input.
    """
    plan = _bind(cfg, spec, arrow_schema(df))
    return plan, _files_checked(df, plan, cfg.input.reader, sample)


def _bind(cfg: Config, spec: ModelSpec, schema: pa.Schema) -> Plan:
    return make_plan(
        spec, schema, inputs=cfg.model.inputs, outputs=cfg.model.outputs,
        keep_columns=cfg.output.keep_columns, key_columns=cfg.output.keys,
        quarantine=cfg.predict.on_bad_rows == "quarantine", reject_nan=cfg.predict.reject_nan,
        max_retries=cfg.predict.max_retries,
    )


def check_pool(spark_cpus: float, predict: PredictConfig, model: ModelRef, tensors: ModelSpec,
               spark_memory: int = 0) -> PoolPlan:
    """Size the pool from the model and the cluster's nodes, or refuse it before it starts.

    Memory per actor is the process before its model (``ACTOR_PROCESS_BYTES``),
    the model's bytes times its loader's measured factor and a few batches of
    ``tensors``; each node holds as many actors as its CPUs, GPUs and memory
    allow beside Spark's executors.
    """
    import ray  # noqa: PLC0415

    return plan_pool(
        nodes_from_ray(ray.nodes()),
        actors=predict.actors,
        model_bytes=model.nbytes,
        memory_factor=memory_factor_for(model.loader, predict.memory_factor),
        batch_bytes=batch_bytes(tensors, predict.batch_size),
        cpus_per_actor=predict.cpus_per_actor,
        gpus_per_actor=predict.gpus_per_actor,
        spark_cpus=spark_cpus,
        spark_memory=spark_memory,
        process_bytes=ACTOR_PROCESS_BYTES,
    )


def max_actors_hint(predict: PredictConfig) -> int:
    """The largest pool a local Ray should make room for (``auto``: one per core)."""
    return (os.cpu_count() or 1) if predict.actors == "auto" else predict.actors.max


def _plan_tensors(plan: Plan) -> ModelSpec:
    return ModelSpec(tuple(TensorSpec(b.input, b.shape, b.dtype) for b in plan.bindings),
                     tuple(TensorSpec(name, None, None) for name, _ in plan.outputs))


def _score(df: Any, plan: Plan, model: ModelRef, predict: PredictConfig, clock: StageClock,
           spark_cpus: float, files: list[str] | None = None) -> _Scored:
    """Spark DataFrame → Ray Dataset → actor pool → Ray Dataset of predictions → Spark DataFrame.

    With ``files`` (a plain parquet scan's, from :func:`parquet_files`) the
    pool's actors read them (:class:`ParquetFiles`): the pool starts, loads,
    and each actor scores its row groups as it decodes them. Without, ``df``
    goes through :class:`SparkInput`: the pool starts (and its actors load the model) while
    Spark counts and prepares the input in a background thread, and the first
    block is scored once Spark is done. Stages in the report:
    ``read_convert`` until the input is ready (Spark's side; nothing for
    parquet), ``predict`` from then until the last block is scored (``load``
    overlaps one or the other).
    """
    pool = check_pool(spark_cpus, predict, model, _plan_tensors(plan))
    selected = df.select(*plan.read_columns)
    with _job_data_context(pool.max_actors * BLOCK_BYTES_PER_ACTOR):
        source = _source(selected, plan, predict, pool, files)
        pooled = _in_pool(source, plan, model, predict, pool)
    return _back_to_spark(pooled, df.sparkSession, plan, model, clock)


def _source(selected: Any, plan: Plan, predict: PredictConfig, pool: PoolPlan,
            files: list[str] | None, schema: pa.Schema | None = None) -> SparkInput | ParquetFiles:
    """Where the pool's blocks come from: ``files`` read by Ray, else ``selected`` prepared by Spark."""
    if files:
        schema = schema if schema is not None else arrow_schema(selected)
        columns = pa.schema([schema.field(c) for c in plan.read_columns])
        return ParquetFiles(files, columns, actors=pool.max_actors, batch_rows=predict.batch_size)
    return SparkInput(selected, readers=READ_TASKS_PER_ACTOR * pool.max_actors,
                      block_rows=lambda rows: rows_per_block(rows, pool.max_actors, predict.batch_size))


@contextmanager
def _job_data_context(object_store_memory: float, cpus: float | None = None) -> Iterator[None]:
    """Ray Data's settings for one job, put back afterwards (its DataContext is process-wide).

    Datasets copy the current DataContext when they are made, so these hold
    for every dataset the job makes inside the block. ``cpus`` caps the
    CPUs the job's tasks and actors take (room kept for Spark's executors).
    """
    import ray  # noqa: PLC0415

    ctx = ray.data.DataContext.get_current()
    options = ctx.execution_options
    before = (ctx.raise_original_map_exception, ctx.wait_for_min_actors_s, options.resource_limits)
    # Let a RayscoreError raised in an actor (bad rows, say) reach us as itself,
    # not as Ray Data's UserCodeException whose pickled copy loses the cause.
    ctx.raise_original_map_exception = True
    # Score only once the whole minimal pool has loaded the model: else the
    # first actor up can take every block of a short job while the others are
    # still loading or copying the model to their node, and "2 actors" would
    # mean one.
    ctx.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    # Ray Data lets reads run ahead of the pool into up to half of Ray's object
    # store: gigabytes, so memory would grow with the input. A few blocks per
    # actor keep every actor busy (bench/compare.py --memory).
    options.resource_limits = ray.data.ExecutionResources.for_limits(cpu=cpus, object_store_memory=object_store_memory)
    try:
        yield
    finally:
        ctx.raise_original_map_exception, ctx.wait_for_min_actors_s, options.resource_limits = before


@dataclass
class _Pooled:
    """What the pool made: predictions in Ray's object store, not yet in Spark (or handed to a writer)."""

    out: Any  # a materialized Ray Dataset; None when each block went to a _Blocks as it came
    rows_in: int
    loads: dict[str, Any]
    rows_quarantined: int  # counted in ``out``; 0 when handed over (the writer counts them per wave)
    seconds: dict[str, float]  # read_convert, predict, load
    reader: str


def _in_pool(source: SparkInput | ParquetFiles, plan: Plan, model: ModelRef, predict: PredictConfig,
             pool: PoolPlan, ledger: Any = None, blocks: _Blocks | None = None,
             sink: ActorSink | None = None) -> _Pooled:
    """Score every block of ``source`` on the actor pool; stop the pool's actors, also on failure.

    Run inside :func:`_job_data_context`. ``ledger`` (a :class:`LoadLedger`)
    is made here unless the caller needs it, to cancel the job from another
    thread; it is killed here either way. With ``blocks``, each block of
    predictions is handed to it as soon as it is scored (``_Pooled.out`` is
    then None); without, they are all kept in a materialised Dataset. With
    ``sink`` (``source`` must be :class:`ParquetFiles`) the actors write the
    predictions themselves, and ``out`` holds what each piece wrote
    (:data:`WRITTEN`).
    """
    import ray  # noqa: PLC0415

    started = time.perf_counter()
    try:
        if ledger is None:
            ledger = ray.remote(LoadLedger).options(num_cpus=0).remote()
        source.start()
        try:
            # One expression: a Dataset kept in a local would stay alive with a raised
            # error's traceback and keep the pool's actors (and their CPUs) with it.
            # Ray Data places pool actors with its default SPREAD strategy: one per
            # node before two on one, so fewer model copies per node's memory and
            # cache (test_cluster.py checks it).
            # Parquet pieces: each actor reads its own, one piece a call (one queued beside it).
            files = isinstance(source, ParquetFiles)
            kwargs = {"columns": source.columns, "batch_rows": predict.batch_size, "sink": sink} if files else {}
            with translate_errors("predict", PredictError):
                out = _hand_over(source.dataset.map_batches(
                    FilePredictor if files else Predictor,
                    fn_constructor_kwargs={"model": model, "plan": plan, "ledger": ledger, **kwargs},
                    batch_size=1 if files else predict.batch_size,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors,
                                                       max_tasks_in_flight_per_actor=2 if files else None),
                    num_cpus=predict.cpus_per_actor,
                    memory=pool.memory_per_actor,  # so Ray never packs more model copies than a node holds
                    num_gpus=predict.gpus_per_actor or None,
                    zero_copy_batch=True,
                ), blocks)
        except BaseException as exc:
            _stop_pool(ledger)  # now, before Spark's side is waited for
            spark_error = source.cancel()
            # Spark's side failed first (the read tasks only echo it), unless this is
            # Ctrl-C or SIGTERM, which PySpark also answers by cancelling Spark's jobs.
            if spark_error is not None and isinstance(exc, Exception):
                raise spark_error from None
            raise
        rows_in = source.wait()
        with translate_errors("predict", PredictError):
            loads = summarize_loads(ray.get(ledger.loads.remote()))
            loads["working_batch_size"] = ray.get(ledger.working_batch_size.remote())
            first_scored = ray.get(ledger.first_scored.remote())
        loads["pool"] = {"min": pool.min_actors, "max": pool.max_actors, "memory_per_actor": pool.memory_per_actor}
        loads["first_scored"] = first_scored
    finally:
        if ledger is not None and ray.is_initialized():  # not once a failed run's Ray was shut down
            _stop_pool(ledger)
            ray.kill(ledger)
        source.release()  # Spark's copy of the input; the predictions are in Ray's object store now
    prepared = (source.prepared_at or started) - started
    seconds = {"read_convert": prepared, "predict": time.perf_counter() - started - prepared,
               "load": loads["load_seconds_max"]}
    if sink is not None:
        written = pa.concat_tables([t for t in ray.get(_block_refs(out)) if t.num_rows], promote_options="default")
        quarantined = int(pc.sum(written.column("quarantined")).as_py() or 0)
        rows_out = int(pc.sum(written.column("rows")).as_py() or 0) + quarantined
    else:
        rows_out = blocks.rows if blocks is not None else out.count()
        quarantined = _count_quarantined(_block_refs(out)) if plan.quarantine and out is not None else 0
    if rows_out != rows_in:
        raise PredictError(f"the actor pool returned {rows_out} rows for {rows_in} input rows")
    return _Pooled(out, rows_in, loads, quarantined, seconds,
                   reader="parquet" if isinstance(source, ParquetFiles) else "spark")


def _hand_over(scored: Any, blocks: _Blocks | None) -> Any:
    """``scored`` (a Ray Dataset) materialised, or run with each block put into ``blocks`` as it comes (None)."""
    if blocks is None:
        return scored.materialize()
    for bundle in scored.iter_internal_ref_bundles():
        for ref, meta in zip(bundle.block_refs, bundle.metadata):
            if meta.num_rows:  # Ray Data may leave empty, column-less blocks
                blocks.put(ref, meta.num_rows, meta.size_bytes or 0)
    return None


def _block_refs(ds: Any) -> list[Any]:
    return [ref for bundle in ds.iter_internal_ref_bundles() for ref in bundle.block_refs]


class _Blocks:
    """Blocks of predictions on their way from the pool to Spark's writer (Ray object refs).

    The pool's thread puts each block as Ray Data hands it over; the writer
    takes all that has arrived as one wave (one Spark write job), so waves
    grow when Spark writes slower than the pool scores. Once ``max_bytes``
    of blocks wait untaken (Spark not up yet, or slower than the pool), the
    pool waits: Ray's object store holds a bounded part of the predictions,
    not all of them, and each wave's blocks are freed once written.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._refs: list[Any] = []
        self._bytes = 0
        self._ended = False
        self._error: BaseException | None = None
        self.rows = 0  # put so far

    def put(self, ref: Any, rows: int, nbytes: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._ended or not self._refs or self._bytes < self._max_bytes)
            if self._ended:
                raise PredictError("the predictions' writer stopped; scoring stopped with it")
            self._refs.append(ref)
            self._bytes += nbytes
            self.rows += rows
            self._cond.notify_all()

    def end(self, error: BaseException | None = None) -> None:
        """No more blocks: the pool is done, or failed with ``error``, or the writer gave up."""
        with self._cond:
            self._ended = True
            self._error = self._error or error
            self._cond.notify_all()

    def take(self) -> list[Any]:
        """The blocks put since the last take (waits for one); [] once the pool is done; raises its error."""
        with self._cond:
            self._cond.wait_for(lambda: self._refs or self._ended)
            if self._error is not None:
                raise self._error
            refs, self._refs, self._bytes = self._refs, [], 0
            self._cond.notify_all()
            return refs


def _back_to_spark(pooled: _Pooled, spark: Any, plan: Plan, model: ModelRef, clock: StageClock) -> _Scored:
    """The pool's predictions as a Spark DataFrame (RayDP reads the blocks where they are)."""
    _clock_pool(clock, pooled)
    with clock.stage("write"), translate_errors("back into Spark", PredictError):
        scored, blocks = to_spark(pooled.out, spark)
        scored = with_model_identity(scored, plan, model)
    return _Scored(scored, pooled.rows_in, pooled.rows_in, pooled.loads, pooled.rows_quarantined, blocks,
                   reader=pooled.reader)


def _clock_pool(clock: StageClock, pooled: _Pooled) -> None:
    """The pool's stages and its first prediction into the job's clock."""
    for stage, seconds in pooled.seconds.items():
        clock.add(stage, seconds)
    if pooled.loads.get("first_scored") is not None:
        clock.seconds.setdefault("first_prediction", clock.since_start(pooled.loads["first_scored"]))


class _PoolThread:
    """The actor pool scoring in a daemon thread, while this one starts Spark or writes.

    With ``blocks`` the pool hands each block of predictions over as soon as
    it is scored (:func:`_write_as_scored` writes them meanwhile); without,
    :meth:`result` holds them all, materialised. ``cpus`` caps the CPUs of
    the job's Ray Data tasks and actors (None: no cap). :meth:`cancel`
    stops it from any thread.
    """

    def __init__(self, make_source: Callable[[], SparkInput | ParquetFiles], plan: Plan, model: ModelRef,
                 predict: PredictConfig, pool: PoolPlan, cpus: float | None, blocks: _Blocks | None,
                 sink: ActorSink | None = None) -> None:
        import ray  # noqa: PLC0415

        self.blocks = None if sink is not None else blocks
        self.sink = sink
        self._ledger = ray.remote(LoadLedger).options(num_cpus=0).remote()
        self._pooled: _Pooled | None = None
        self._error: BaseException | None = None

        def score() -> None:
            try:
                with _job_data_context(pool.max_actors * BLOCK_BYTES_PER_ACTOR, cpus=cpus):
                    self._pooled = _in_pool(make_source(), plan, model, predict, pool, self._ledger, self.blocks,
                                            sink)
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
                self._error = exc
            finally:
                if self.blocks is not None:
                    self.blocks.end(self._error)

        self._thread = threading.Thread(target=score, name="rayscore-pool", daemon=True)
        self._thread.start()

    @classmethod
    def for_dataframe(cls, df: Any, plan: Plan, files: list[str] | None, model: ModelRef, predict: PredictConfig,
                      spark_cpus: float, output: OutputConfig, sink: ActorSink | None = None) -> _PoolThread:
        """The pool scoring ``df`` (or its ``files``) as :func:`_score` does, its blocks handed over for ``output``
        (or written by the actors into ``sink``, which needs ``files``; removed if the pool is refused)."""
        try:
            pool = check_pool(spark_cpus, predict, model, _plan_tensors(plan))
        except BaseException:
            if sink is not None:
                sink.discard()
            raise
        selected = df.select(*plan.read_columns)
        return cls(lambda: _source(selected, plan, predict, pool, files), plan, model, predict, pool, None,
                   _unwritten_blocks(output, pool.max_actors), sink if files else None)

    def result(self) -> _Pooled:
        """Wait for the pool to finish; raise what it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._pooled is not None
        return self._pooled

    def cancel(self) -> None:
        """Stop the pool and wait for the thread: its actors fail their next batch, or stop before or after loading.

        The job then fails as on a bad row, and its actors are stopped as
        after any job (:func:`_in_pool`). Only if that takes longer than
        :data:`POOL_CANCEL_TIMEOUT_S` are they killed while Ray Data runs.
        """
        import ray  # noqa: PLC0415

        if self.blocks is not None:
            self.blocks.end()
        if not self._thread.is_alive() or not ray.is_initialized():  # done already, or gone with its Ray
            self.discard()
            return
        try:
            ray.get(self._ledger.cancel.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the job already ended and killed its ledger
            log.debug("cancelling the pool: %s", exc)
        self._thread.join(timeout=POOL_CANCEL_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("the cancelled pool did not stop in %d s: killing its actors", POOL_CANCEL_TIMEOUT_S)
            _stop_pool(self._ledger)
        self.discard()

    def discard(self) -> None:
        """Remove what the actors wrote, if they write the output (:class:`ActorSink`) and it was not committed."""
        if self.sink is not None:
            self.sink.discard()


def _unwritten_blocks(cfg: OutputConfig, pool_actors: int) -> _Blocks | None:
    """Where the pool puts its blocks for :func:`_write_as_scored`: a path output (tables are written at once)."""
    return _Blocks(pool_actors * UNWRITTEN_BYTES_PER_ACTOR) if cfg.format != "table" else None


class _ScoreAhead(_PoolThread):
    """Score a plain local parquet input while Spark starts, from a plan made without Spark.

    Otherwise Spark's start (10-25 s on 2 cores) comes before the first
    batch. Made once Ray is up (in a thread, while RayDP starts Spark), from
    the files and footer schema :func:`footer_input` finds; a daemon thread runs the pool
    on them (:class:`ParquetFiles`), its Ray Data job capped to the CPUs
    that Spark's executors will not hold. Once Spark has the job's
    DataFrame, the plan and files it gives must be these (:meth:`agrees`),
    else the job is cancelled (:meth:`cancel`) and scored the usual way.
    Cost: none beyond the usual job; a cancelled one loaded the model for
    nothing.
    """

    def __init__(self, plan: Plan, files: list[str], schema: pa.Schema, model: ModelRef, predict: PredictConfig,
                 pool: PoolPlan, cpus: float, blocks: _Blocks | None, sink: ActorSink | None) -> None:
        self.plan, self.files = plan, files
        super().__init__(lambda: _source(None, plan, predict, pool, files, schema), plan, model, predict, pool,
                         cpus, blocks, sink)

    @classmethod
    def start(cls, cfg: Config, spec: ModelSpec, model: ModelRef, spark_cpus: float) -> _ScoreAhead | None:
        """Start scoring if the input's files can be planned without Spark, else None."""
        import ray  # noqa: PLC0415

        found = footer_input(cfg.input) if cfg.output.mode != "resume" else None
        if found is None:
            return None
        files, schema = found
        try:
            plan = _bind(cfg, spec, schema)
            _check_sample(None, plan, files)
        except RayscoreError as exc:  # Spark's view of the input decides, and names what is wrong
            log.debug("not scoring ahead of Spark: %s", exc)
            return None
        pool = check_pool(spark_cpus, cfg.predict, model, _plan_tensors(plan))
        # Ray Data would take every free CPU for its tasks, and Spark's executors
        # could not start; the pool and one small task at a time fit beside them.
        needed = pool.max_actors * cfg.predict.cpus_per_actor + 1
        cpus = max(ray.cluster_resources().get("CPU", 0.0) - spark_cpus, needed)
        return cls(plan, files, schema, model, cfg.predict, pool, cpus, _unwritten_blocks(cfg.output, pool.max_actors),
                   _actor_sink(cfg, plan, schema, model))

    @staticmethod
    def may_write(cfg: Config) -> bool:
        """Whether :meth:`start` may make a pool whose actors read the input and write the outputs (a cheap guess:
        no file is read)."""
        return may_read_footers(cfg.input) and _why_spark_writes(cfg) is None  # resume: Spark writes

    def agrees(self, plan: Plan, files: list[str] | None) -> bool:
        """Whether Spark's DataFrame gives this job: the same plan, read by Ray from the same files."""
        return plan == self.plan and files == self.files


def _actor_sink(cfg: Config, plan: Plan, schema: pa.Schema, model: ModelRef) -> ActorSink | None:
    """The outputs' part files, made ready for the pool's actors to write, or None: Spark writes them.

    For a job whose input the actors read themselves (``schema``: the
    input's Arrow schema) and whose outputs they may write
    (:func:`actors_can_write`). The files hold the columns Spark's writer
    would write: ``keep_columns`` then the model's outputs (tagged with the
    model's identity), and ``key_columns`` with a ``reason`` for
    quarantined rows.
    """
    why = _why_spark_writes(cfg)
    if why is not None:
        log.debug("Spark writes the predictions (%s)", why)
        return None
    kept = pa.schema([schema.field(c) for c in plan.keep_columns])
    output = None
    try:
        output = PartFiles.make(cfg.output.path or "", kept, model_identity(plan, model))
        errors = None
        if plan.quarantine:
            rejected = pa.schema([schema.field(c) for c in plan.key_columns] + [pa.field("reason", pa.string())])
            errors = PartFiles.make(cfg.output.errors_path or "", rejected, {})
    except TypeError as exc:  # a kept column Spark has no type for: Spark's writer says what it makes of it
        if output is not None:
            output.discard()
        log.debug("Spark writes the predictions (%s)", exc)
        return None
    return ActorSink(output, errors)


def _why_spark_writes(cfg: Config) -> str | None:
    """Why Spark must write the job's outputs (the predictions, and quarantined rows), or None: the actors may."""
    outputs = [cfg.output, *([errors_output(cfg)] if cfg.predict.on_bad_rows == "quarantine" else [])]
    return next((reason for out in outputs if (reason := actors_can_write(out))), None)


def _stop_pool(ledger: Any) -> None:
    """Kill the pool's actors now, once the job is scored or has failed.

    Ray Data only drops its handles to them. After a failure, the raised
    error's traceback can keep those alive until Python's cycle collector
    runs, and with them the actors' CPUs and model copies. And an actor let go
    that way exits through Python's exit handlers, where Ray 2.60's core
    worker can deadlock: we found such actors, model and all, still running
    after their Ray had stopped. ``ray.kill`` ends the process without them.
    """
    import ray  # noqa: PLC0415

    if not ray.is_initialized():  # its Ray was stopped, and the actors with it (a call would start a new Ray)
        return
    try:
        actors = ray.get(ledger.actors.remote(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - best effort: the job's own error matters more
        log.warning("could not list the pool's actors to stop them: %s", exc)
        return
    for actor in actors:
        ray.kill(actor)


def with_model_identity(sdf: Any, plan: Plan, model: ModelRef) -> Any:
    """Tag each prediction column with the model that made it (Spark column metadata).

    Spark keeps column metadata in the schema it stores with parquet and ORC
    files and in table catalogs, so a score can be traced to its model from
    the output alone: ``df.schema["click"].metadata["rayscore"]``.
    """
    identity = model_identity(plan, model)
    return sdf.select(*[  # sdf[c], not F.col(c): a name with a dot is not a struct field here
        sdf[c].alias(c, metadata=identity[c]) if c in identity else sdf[c] for c in sdf.columns])


def model_identity(plan: Plan, model: ModelRef) -> dict[str, dict[str, Any]]:
    """Each prediction column's Spark column metadata: ``{"rayscore": {model_uri, …, model_output}}``."""
    identity = {"model_uri": model.path, "model_format": model.loader, "model_bytes": model.nbytes,
                "model_fingerprint": model.fingerprint}
    return {column: {"rayscore": {**identity, "model_output": name}} for name, column in plan.outputs}


def _count_quarantined(refs: list[Any]) -> int:
    """Rows with a problem in the blocks ``refs``, counted where the blocks are (no copy to the driver)."""
    import ray  # noqa: PLC0415

    @ray.remote(num_cpus=0)
    def count(block: pa.Table) -> int:
        if block.num_rows == 0:  # Ray Data may pass empty blocks with no columns
            return 0
        return block.num_rows - block.column(REASON).null_count

    return int(sum(ray.get([count.remote(ref) for ref in refs])))


def _prepare(df: Any, model: ModelConfig, keep_columns: Sequence[str],
             max_retries: int, reader: str) -> tuple[ModelRef, ModelSpec, Plan, list[str] | None]:
    ref, spec = inspect_model(model)
    plan = make_plan(spec, arrow_schema(df), inputs=model.inputs, outputs=model.outputs,
                     keep_columns=keep_columns, max_retries=max_retries)
    return ref, spec, plan, _files_checked(df, plan, reader)


def predict(
    df: Any,
    model: str | Mapping[str, Any] | ModelConfig,
    *,
    keep_columns: Sequence[str] = (),
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    batch_size: int = 1024,
    actors: int | Mapping[str, int] = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    reader: str = "auto",
) -> Any:
    """Score a Spark DataFrame with a Keras model on a pool of Ray actors.

    ``df`` must come from a RayDP Spark session (``rayscore.session()``).
    Returns a Spark DataFrame with ``keep_columns`` followed by one column per
    model output. The predictions are held in Ray's object store until the
    session ends (they are not recomputed when the DataFrame is read twice).

    Each actor loads the model once, from ``model`` (a path every node can
    read); the model is never serialised. Memory per actor: one model copy
    plus a few batches.

    When ``df`` is a plain parquet scan (at most a selection of columns on a
    ``spark.read.parquet`` of files every node mounts), the pool's actors read
    its files with pyarrow and Spark only writes; ``reader="spark"`` makes
    Spark read it as it would any other DataFrame.

    Example:
        >>> with rayscore.session() as s:                       # doctest: +SKIP
        ...     df = s.spark.read.parquet("features.parquet")
        ...     scored = rayscore.predict(df, model="ctr.keras", keep_columns=["id"],
        ...                               batch_size=1024, actors=2)
        ...     scored.write.parquet("scores.parquet")
    """
    model_cfg = _validate(ModelConfig, model if not isinstance(model, str) else {"uri": model}, "model",
                          extra={"inputs": inputs, "outputs": outputs})
    predict_cfg = _validate(PredictConfig, {"batch_size": batch_size, "actors": actors,
                                            "cpus_per_actor": cpus_per_actor,
                                            "gpus_per_actor": gpus_per_actor}, "predict")
    if reader not in ("auto", "spark"):
        raise ConfigError(f"reader must be 'auto' or 'spark', got {reader!r}")
    ref, _spec, plan, files = _prepare(df, model_cfg, tuple(keep_columns), predict_cfg.max_retries, reader)
    spark_cpus = _spark_cpus(df.sparkSession)
    scored = _score(df, plan, ref, predict_cfg, StageClock(), spark_cpus, files)
    hold_for_session(scored.blocks)  # Spark may read the DataFrame (or ones made from it) any time later
    return scored.dataframe


def _validate(cls: type[Any], data: Any, prefix: str, extra: Mapping[str, Any] | None = None) -> Any:
    if isinstance(data, cls):
        data = data.model_dump()
    data = dict(data)
    for key, value in (extra or {}).items():
        if value is not None:
            data[key] = value
    try:
        cfg = cls.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc, cls)
        raise ConfigError("; ".join(f"{prefix}.{part}" for part in msg.split("; "))) from None
    if cls is ModelConfig and "://" not in cfg.uri:
        cfg = cfg.model_copy(update={"uri": os.path.abspath(os.path.expanduser(cfg.uri))})
    return cfg


def _spark_cpus(spark: Any) -> float:
    conf = spark.sparkContext.getConf()
    return float(conf.get("spark.executor.instances", "1")) * float(conf.get("spark.executor.cores", "1"))


def new_result(cfg: Config, ref: ModelRef, spec: ModelSpec, plan: Plan) -> RunResult:
    """A RunResult with what is known before scoring."""
    return RunResult(
        output=cfg.output.path or cfg.output.table,
        model_uri=cfg.model.uri,
        model_format=spec.format,
        model_bytes=ref.nbytes,
        model_fingerprint=ref.fingerprint,
        model_copies=int(ref.fetched),
        batch_size=cfg.predict.batch_size,
        output_columns=list(plan.keep_columns) + list(plan.output_columns),
        errors_output=cfg.output.errors_path if plan.quarantine else None,
    )


def split_quarantined(sdf: Any, plan: Plan) -> tuple[Any, Any]:
    """(scored rows, error rows) of ``sdf`` as Spark DataFrames: outputs beside keep_columns; keys beside a reason."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not plan.quarantine:
        return sdf, None
    good = sdf.filter(F.col(REASON).isNull()).select(*plan.keep_columns, *plan.output_columns)
    bad = sdf.filter(F.col(REASON).isNotNull()).select(*plan.key_columns, F.col(REASON).alias("reason"))
    return good, bad


def errors_output(cfg: Config) -> OutputConfig:
    """Where quarantined rows go: output.errors_path, in the output's format (parquet for tables)."""
    fmt = "parquet" if cfg.output.format == "table" else cfg.output.format
    mode = "overwrite" if cfg.output.mode == "resume" else cfg.output.mode
    return OutputConfig(format=fmt, path=cfg.output.errors_path, mode=mode, options=cfg.output.options,
                        writer=cfg.output.writer)


def _run_once(cfg: Config, df: Any, plan: Plan, files: list[str] | None, ref: ModelRef, spec: ModelSpec,
              clock: StageClock, spark_cpus: float, ahead: _ScoreAhead | None = None,
              cancel_on_interrupt: bool = True) -> RunResult:
    """Score everything in one pass (or take what ``ahead`` scores) and write it (staged, counted, committed).

    A path output is written while the pool scores (:func:`_write_as_scored`);
    a table once all is scored. ``cancel_on_interrupt``: stop the pool here on
    Ctrl-C or SIGTERM too (not when the caller's stop of Ray will).
    """
    spark = df.sparkSession
    result = new_result(cfg, ref, spec, plan)
    result.scored_ahead = ahead is not None
    write_started = 0.0
    expected = 0

    def report(written: int) -> str:
        result.rows_out = expected
        result.seconds = dict(clock.seconds)
        result.seconds["write"] = round(result.seconds.get("write", 0.0) + time.perf_counter() - write_started, 3)
        result.seconds["total"] = clock.since_start()
        if cfg.output.path:
            result.report_path = f"{cfg.output.path.rstrip('/')}/{REPORT_NAME}"
        return result.to_json()

    if cfg.output.format == "table":
        result.output_writer = "spark"
        scored = (_back_to_spark(ahead.result(), spark, plan, ref, clock) if ahead is not None
                  else _score(df, plan, ref, cfg.predict, clock, spark_cpus, files))
        _fold(result, scored.reader, scored.rows_in, scored.loads, scored.rows_quarantined)
        good, bad = split_quarantined(scored.dataframe, plan)
        expected = scored.rows_in - scored.rows_quarantined
        write_started = time.perf_counter()
        result.write_jobs = 1
        with clock.stage("write"):
            if bad is not None:
                write_output(spark, bad, errors_output(cfg), scored.rows_quarantined, report)
            result.rows_out = write_output(spark, good, cfg.output, expected, report)
    else:
        job = ahead or _PoolThread.for_dataframe(
            df, plan, files, ref, cfg.predict, spark_cpus, cfg.output,
            _actor_sink(cfg, plan, arrow_schema(df), ref) if files else None)
        sink = job.sink
        outputs = [StagedWrite(spark, cfg.output, sink.output if sink else None)]
        if plan.quarantine:
            outputs.append(StagedWrite(spark, errors_output(cfg), sink.errors if sink else None))
        result.output_writer = "parquet" if sink else "spark"
        try:
            if sink is not None:  # the actors write: nothing for Spark to do until the commit
                pooled = job.result()
                quarantined = pooled.rows_quarantined
            else:
                pooled, quarantined, result.write_jobs = _write_as_scored(job, spark, plan, ref, clock, outputs)
            _clock_pool(clock, pooled)
            _fold(result, pooled.reader, pooled.rows_in, pooled.loads, quarantined)
            expected = pooled.rows_in - quarantined
            write_started = time.perf_counter()
            with clock.stage("write"):
                if plan.quarantine:
                    outputs[1].commit(quarantined, report)
                result.rows_out = outputs[0].commit(expected, report)
        except BaseException as exc:
            if cancel_on_interrupt or isinstance(exc, Exception):
                job.cancel()
            raise
        finally:
            for out in outputs:
                out.discard()
            job.discard()
    clock.seconds["total"] = clock.since_start()
    result.seconds = dict(clock.seconds)
    return result


def _fold(result: RunResult, reader: str, rows_in: int, loads: dict[str, Any], quarantined: int) -> None:
    result.input_reader = reader
    result.rows_in = rows_in
    result.add_loads(loads)
    result.rows_quarantined = quarantined


def _write_as_scored(job: _PoolThread, spark: Any, plan: Plan, model: ModelRef, clock: StageClock,
                     outputs: list[StagedWrite]) -> tuple[_Pooled, int, int]:
    """Write the pool's predictions with Spark while it scores; return the pool's result, rows quarantined, waves.

    Each wave is what the pool scored while the previous one was written:
    one Spark job appends it to ``outputs[0]`` (good rows) and
    ``outputs[1]`` (quarantined ones, if any); its blocks are freed once
    written. Cost: one Spark write job per wave; the object store holds
    the predictions not yet written, up to the pool's bound
    (:class:`_Blocks`), instead of all of them.
    """
    import ray  # noqa: PLC0415

    assert job.blocks is not None
    schema: pa.Schema | None = None
    quarantined = waves = 0
    while wave := job.blocks.take():
        waves += 1
        began = time.perf_counter()
        with clock.stage("write"), translate_errors("back into Spark", PredictError):
            if schema is None:
                schema = ray.get(ray.remote(num_cpus=0)(_schema_of).remote(wave[0]))
            sdf, ipc = blocks_to_spark(wave, schema, spark)
            if plan.quarantine:
                quarantined += _count_quarantined(wave)
            good, bad = split_quarantined(with_model_identity(sdf, plan, model), plan)
            outputs[0].append(good)
            if bad is not None:
                outputs[1].append(bad)
        log.debug("wrote %d blocks of predictions in %.1f s (%.1f s after the job began)",
                  len(wave), time.perf_counter() - began, clock.since_start())
        del wave, ipc  # Spark has written them: free the blocks and their IPC copies
    return job.result(), quarantined, waves


def _schema_of(block: pa.Table) -> pa.Schema:
    return block.schema


def run(config: str | os.PathLike[str] | Mapping[str, Any] | Config, *, session: Session | None = None) -> RunResult:
    """Run a whole scoring job from a config file path or a mapping with the same keys.

    Starts Ray and RayDP's Spark (or joins ``ray.address``), scores, writes
    the predictions with Spark's writer and commits them together with a JSON
    run report (``_rayscore_report.json`` inside the output directory). Stops
    what it started, also on error or Ctrl-C. Pass an open ``session`` to
    reuse it (its ray/spark settings win over the config's). Without one,
    a parquet path on local disk is scored from as soon as Ray is up, while
    Spark starts (:class:`_ScoreAhead`; ``RunResult.scored_ahead``).

    Example:
        >>> result = rayscore.run("configs/example.yaml")      # doctest: +SKIP
        >>> result.rows_in == result.rows_out
        True
    """
    cfg = load_config(config)
    clock = StageClock()
    ref, spec = inspect_model(cfg.model)  # fails fast on a bad model, before any cluster
    check_output_free(cfg.output)
    if cfg.predict.on_bad_rows == "quarantine":
        check_output_free(errors_output(cfg))
    own = session is None
    if own:
        session = Session(cfg.ray, cfg.spark, max_actors=max_actors_hint(cfg.predict),
                          cpus_per_actor=cfg.predict.cpus_per_actor)
    assert session is not None
    ahead: _ScoreAhead | None = None
    try:
        if own:
            session.start_ray()
            import_spark()
            # The pool scoring ahead is planned (footers read, a sample checked, part files made:
            # about 1 s) while RayDP starts Spark, which waits for nothing of it.
            with ThreadPoolExecutor(1, thread_name_prefix="rayscore-plan") as planner:
                planned = planner.submit(_ScoreAhead.start, cfg, spec, ref, session.spark_cpus)
                try:
                    # Actors that read and write the files leave Spark's executors nothing to do.
                    # If Spark fails, Ray stays up until the pool is cancelled (below): a pool
                    # left scoring on a Ray that is gone makes Ray start a new one for it.
                    session.start_spark(executors_on_demand=_ScoreAhead.may_write(cfg), stop_on_failure=False)
                finally:
                    ahead = planned.result()
            clock.add("startup", session.startup_seconds)
        else:
            clock.add("startup", 0.0)
        spark = session.spark
        with clock.stage("read_convert"):
            df = read_input(spark, cfg.input)
            # The sample is checked before a pool starts (bad rows cost no model load);
            # the pool scoring ahead checked the same rows of the same files.
            plan, files = plan_job(cfg, spec, df, sample=ahead is None)
            if ahead is not None and not ahead.agrees(plan, files):
                log.info("Spark reads the input otherwise than its files' footers say: scoring it anew")
                ahead.cancel()
                ahead = None
                _check_sample(df, plan, files)
            check_output_free(cfg.output, spark)
            if plan.quarantine:
                check_output_free(errors_output(cfg), spark)
        if cfg.output.mode == "resume":
            from ._resume import run_resumable  # noqa: PLC0415

            return run_resumable(cfg, df, plan, ref, spec, clock, session.spark_cpus)
        result = _run_once(cfg, df, plan, files, ref, spec, clock, session.spark_cpus, ahead,
                           cancel_on_interrupt=not session.owns_ray)
        ahead = None
        return result
    except Exception:
        # The pool scoring ahead stops before its Ray does: left running, its thread would
        # call into a Ray that is gone, and Ray would start a new one for it.
        if ahead is not None:
            ahead.cancel()
        raise
    finally:
        # After Ctrl-C or SIGTERM, stopping a Ray that this run started ends the pool with it
        # (the quick way after a signal to the process group, which leaves no Ray to ask);
        # a Ray of the caller's stays.
        if ahead is not None and not session.owns_ray:
            ahead.cancel()
        if own:
            session.stop()
        if ahead is not None:  # what its actors wrote, once they are stopped
            ahead.discard()
