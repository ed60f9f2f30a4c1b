"""One job through the stages: config → session → source → plan → pool → stream → sink → report.

``run`` drives a whole job from a config; ``predict`` turns a DataFrame the
caller already has into a lazy DataFrame of predictions. Both check
everything they can before any batch is scored: config (before any cluster
starts), model file, columns, dtypes and array lengths, output location.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._config import Config, ModelConfig, load_config, scoring_settings
from ._convert import make_plan
from ._dataset import is_dataset, predict_dataset
from ._deploy import attach
from ._model import ModelSpec
from ._plan import check_sample, errors_output, inspect_model, max_actors_hint, new_result, plan_job, sized
from ._pool import Pool, check_pool, pool_for
from ._predict import ModelRef
from ._progress import ProgressArg, Tracker, sinks_for
from ._report import RunResult, StageClock
from ._resume import run_resumable
from ._session import Session
from ._sink import REPORT_NAME, check_output_free, recover_commit, write_scored
from ._source import InputFiles, arrow_schema, read_input
from ._stream import score

__all__ = ["run", "predict", "inspect_model"]

log = logging.getLogger("rayscore")


def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config,
    *,
    session: Session | None = None,
    verbose: bool = False,
    progress: ProgressArg = True,
) -> RunResult:
    """Run a whole scoring job from a config file path or a mapping with the same keys.

    Starts Ray and RayDP's Spark (or joins ``ray.address``), scores, writes
    the predictions with Spark's writer and commits them together with a JSON
    run report (``_rayscore_report.json`` inside the output directory). Stops
    what it started, also on error or Ctrl-C. Pass an open ``session`` to
    reuse it (its ray/spark settings win over the config's). The pool's
    actors start loading the model as soon as Ray is up, while Spark starts.
    What Ray, Spark and TensorFlow print goes to a log file
    (``$TMPDIR/rayscore-logs/``, named in errors) unless ``verbose=True``.

    ``progress``: ``True`` shows live progress (a bar on a terminal or in a
    notebook, else a plain line on standard error when something changes),
    ``False`` nothing; a function is called about once a second with a
    :class:`~rayscore.Progress`, and once more with ``done=True`` at the end.

    Example:
        >>> result = rayscore.run("configs/example.yaml")      # doctest: +SKIP
        >>> result.rows_in == result.rows_out
        True
    """
    cfg = load_config(config)
    ref, spec = inspect_model(cfg.model)  # fails fast on a bad model, before any cluster
    cfg = cfg.model_copy(update={"predict": sized(cfg.predict, spec)})
    check_output_free(cfg.output)
    if cfg.predict.on_bad_rows == "quarantine":
        check_output_free(errors_output(cfg))
    tracker = Tracker(sinks_for(progress))
    clock = StageClock(on_stage=tracker.phase)
    try:
        result = _run(cfg, ref, spec, session, verbose, tracker, clock)
    except BaseException:
        tracker.close()
        raise
    tracker.finish(result.rows_in, result.rows_quarantined)
    return result


def _run(
    cfg: Config,
    ref: ModelRef,
    spec: ModelSpec,
    session: Session | None,
    verbose: bool,
    tracker: Tracker,
    clock: StageClock,
) -> RunResult:
    own = session is None
    if own:
        session = Session(
            cfg.ray,
            cfg.spark,
            max_actors=max_actors_hint(cfg.predict),
            cpus_per_actor=cfg.predict.cpus_per_actor,
            verbose=verbose,
        )
    assert session is not None
    pool: Pool | None = None

    def start_pool() -> Pool:
        nonlocal pool
        if pool is None:
            pool = Pool(ref, cfg.predict, check_pool(session.spark_cpus, cfg.predict, ref, spec))
            tracker.pool(pool)
        return pool

    try:
        if own:
            session.start_ray()
            if cfg.output.mode != "resume":  # resume starts it once a shard needs scoring
                start_pool()  # its actors load the model while Spark starts
            session.start_spark()
        clock.add("startup", session.startup_seconds if own else 0.0)
        spark = session.spark
        tracker.spark(spark)
        with clock.stage("read_convert"):
            recover_commit(spark, cfg.output)  # a half-done commit of a killed run, before anything else
            if cfg.predict.on_bad_rows == "quarantine":
                recover_commit(spark, errors_output(cfg))
            df = read_input(spark, cfg.input)
            files = InputFiles.of(spark, df)
            plan = plan_job(cfg, spec, df)
            check_output_free(cfg.output, spark)
            if plan.quarantine:
                check_output_free(errors_output(cfg), spark)
        if cfg.output.mode == "resume":
            return run_resumable(cfg, df, files, plan, start_pool, ref, spec, clock, tracker)
        scorer = start_pool()
        tracker.phase("loading")
        scorer.wait()
        result = new_result(cfg, ref, spec, plan)
        result.deployment = session.deployment.facts()

        def report(rows: int, quarantined: int) -> str:
            result.rows_in, result.rows_quarantined, result.rows_out = rows, quarantined, rows - quarantined
            scorer.report_into(result, clock)
            if cfg.output.path:
                result.report_path = f"{cfg.output.path.rstrip('/')}/{REPORT_NAME}"
            return result.to_json()

        scoring = score(df, plan, scorer, spec, cfg.predict.batch_size)
        tracker.counting(scoring.counters.rows)
        errors = errors_output(cfg) if plan.quarantine else None
        with tracker.jobs(spark):
            rows, quarantined = write_scored(
                spark, scoring, plan, cfg.output, errors, report, clock, check=lambda: files.check(spark)
            )
        # A table output has no report file, so report() may not have run: the counts are set here.
        result.rows_in, result.rows_quarantined, result.rows_out = rows, quarantined, rows - quarantined
        scorer.report_into(result, clock)
        return result
    finally:
        tracker.halt()  # no more looks while Ray and Spark stop
        if pool is not None:
            pool.stop()
        if own:
            session.stop()


def predict(
    df: Any,
    model: str | Mapping[str, Any] | ModelConfig,
    *,
    keep_columns: Sequence[str] = (),
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    batch_size: int | Literal["auto"] = "auto",
    actors: int | Mapping[str, int] = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    progress: ProgressArg = True,
) -> Any:
    """Score a Spark DataFrame with a Keras model on a pool of Ray actors: a lazy Spark DataFrame.

    ``df`` may come from any SparkSession: a ``rayscore.session()`` block's
    (RayDP's Spark on Ray by default, or the session you passed it), RayDP's
    own, or a plain one of yours (``spark://``, YARN, ``local-cluster``,
    ``local[N]``, Databricks). For a plain one outside a session block the
    first call finds a Ray its executors' hosts belong to (the one this
    process is connected to, ``RAY_ADDRESS``, a local Ray for ``local[N]``,
    else Ray on Spark started inside your application, one worker node sized
    for ``actors``), says which in one line on standard error, and keeps it
    until the interpreter exits; your SparkSession is never stopped.
    Returns a Spark DataFrame with ``keep_columns`` followed by one column per
    model output, computed by each action that uses it (write, count,
    collect), as Spark computes any DataFrame: Spark reads ``df`` and streams
    its batches through the session's actor pool for this model, which is
    made on first use and kept until the session ends (one model load per
    actor for the session). Nothing is held between actions.

    ``df`` may also be a Ray Dataset (``ray.data.Dataset``): then the result
    is a lazy Ray Dataset of the same columns, scored by the same pool
    without Spark (:mod:`rayscore._dataset`: at the call Ray is joined or
    started, the model bound to ``ds.schema()``; the pool lives until the
    session block ends, else until the interpreter exits; ``progress`` is
    Ray Data's own).

    Each actor loads the model once, from ``model`` (a path every node can
    read); the model is never serialised. Memory per actor: one model copy
    plus a few batches, less its large embedding tables, which the actors of
    a node map from the model file and share (``model={"uri": ...,
    "mmap_min_bytes": 0}`` loads them into each actor). Cost at the call: the model's inputs and outputs
    read from its file, and a Spark job that checks the first rows (reading only the partitions that hold
    them); when the file does not state its outputs' shapes (a ``.keras`` file does not), the call also
    waits for the first actor to load the model, which it started before that job, unless a loaded copy of
    the same model (by its digest) reported them on this node before: they are kept, so that the call returns
    while the actors load and a model that fails to load fails the first action instead.

    ``progress``: each action that scores through the pool shows its
    progress (rows scored, rows/s, Spark's tasks, the actors), as
    :func:`run`'s ``progress`` says: a bar on a terminal or in a notebook,
    plain lines elsewhere, ``False`` nothing, or a function that gets each
    :class:`~rayscore.Progress` (the last one of an action with ``done=True``).
    The latest ``predict`` call for a pool sets it.

    Example:
        >>> with rayscore.session() as s:                       # doctest: +SKIP
        ...     df = s.spark.read.parquet("features.parquet")
        ...     scored = rayscore.predict(df, model="ctr.keras", keep_columns=["id"],
        ...                               batch_size=1024, actors=2)
        ...     scored.write.parquet("scores.parquet")
    """
    model_cfg, predict_cfg = scoring_settings(
        model, inputs, outputs, batch_size, actors, cpus_per_actor, gpus_per_actor
    )
    if is_dataset(df):
        return predict_dataset(df, model_cfg, predict_cfg, tuple(keep_columns))
    ref, spec = inspect_model(model_cfg)
    predict_cfg = sized(predict_cfg, spec)
    plan = make_plan(
        spec,
        arrow_schema(df),
        inputs=model_cfg.inputs,
        outputs=model_cfg.outputs,
        keep_columns=tuple(keep_columns),
        max_retries=predict_cfg.max_retries,
    )
    deployment = attach(df.sparkSession, max_actors=max_actors_hint(predict_cfg), cpus_per_actor=cpus_per_actor)
    pool = pool_for(ref, spec, predict_cfg, deployment.spark_cpus)  # its actors load while the sample is read
    check_sample(df, plan)
    pool.watch_actions(df.sparkSession, progress)
    return score(df, plan, pool, spec, predict_cfg.batch_size).frame
