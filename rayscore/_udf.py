"""The column form: :func:`udf` makes a Spark column of predictions, scored by the session's pool.

Spark's own ways in (``predict_batch_udf``, ``mlflow.pyfunc.spark_udf``)
hand back a function that makes a column, usable wherever Spark takes one:
``withColumn``, a ``select`` beside other expressions, SQL after
``spark.udf.register``. :func:`udf` does the same, and its rows are scored
by the long-lived actors ``rayscore.predict`` uses (:func:`~rayscore._pool.pool_for`),
not by a model copy in each Spark Python worker.

Spark 3.5 has no Arrow-native column UDF (``mapInArrow``, Arrow all the
way, is a plan node, not a column), so the column is a pandas iterator UDF.
Spark converts each Arrow batch of the input columns to pandas (an array
column becomes an object Series holding one numpy array per row);
:func:`input_batches` turns it back into Arrow, named as the plan reads it,
and from there the batches take ``rayscore.predict``'s path
(:func:`rayscore._stream.score_partition`: regrouped to the batch size, two
in flight per loaded actor, the same errors); the predictions go back to
pandas (:func:`to_pandas`) and Spark converts them to Arrow once more.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ._config import ModelConfig, scoring_settings
from ._convert import Plan, check_column_type, make_plan
from ._deploy import attach
from ._errors import InputError, SessionError
from ._model import ModelSpec
from ._plan import inspect_model, max_actors_hint, sized
from ._pool import pool_for
from ._progress import ProgressArg
from ._stream import Route, predictions_of, route_for, score_partition

__all__ = ["udf", "ScoringUDF", "column_plan", "return_type", "input_batches", "to_arrow", "to_pandas"]

NAME = "rayscore"  # the function's name in Spark's plans and default column names
# The key columns that name a bad row in errors, as no key of the caller's reaches the UDF: the Spark
# partition it came from and its place among that partition's rows the UDF got.
ROW_KEYS = ("spark_partition", "row")


def udf(
    model: str | Mapping[str, Any] | ModelConfig,
    *,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    batch_size: int | Literal["auto"] = "auto",
    actors: int | Mapping[str, int] = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    progress: ProgressArg = True,
) -> ScoringUDF:
    """A function that makes a Spark column of the model's predictions, as ``predict_batch_udf`` does.

    ``f = rayscore.udf(model=...)`` takes the keyword arguments of
    :func:`rayscore.predict` but ``keep_columns`` (nothing is kept: the
    column goes beside whatever else you select). ``f(*columns)`` takes the
    model's input columns in the model's input order (names or Columns;
    none: the columns named as the inputs, or as ``inputs`` maps them) and
    makes a column: a struct with one field per output (named as
    ``outputs`` maps them), or the output itself when there is one. Use it
    anywhere Spark takes a column: ``df.withColumn("p", f(*cols))``,
    ``df.select("id", f(*cols).alias("p"))``, or in SQL after
    ``spark.udf.register("ctr", f)``.

    Rows are scored by the session's pool for this model and these
    settings, the one ``rayscore.predict`` uses: made on first use, kept
    until the session ends (one model load per actor for the session, tables
    mapped once per node), with ``predict``'s progress (``progress``) for
    each action that scores.

    Cost at the call: no Spark job (there is no DataFrame yet). The model's
    inputs and outputs are read from its file; the SparkSession active in
    this thread gets its deployment (:func:`rayscore.predict`'s, started on
    first use) and the pool its actors, which start loading; Spark needs
    the column's type now, so when the file does not state its outputs'
    shapes (a ``.keras`` file does not) the call waits for the first actor
    to load the model, as ``predict`` does (unless a loaded copy of the
    same model reported them on this node before: they are kept).

    Cost per batch: what ``predict`` pays, plus Spark's pandas UDF
    machinery: Spark converts array columns through pandas, one numpy
    array per row, which rayscore converts back to Arrow; the predictions
    go through pandas again on their way back. ``predict``'s ``mapInArrow``
    stays in Arrow, so it is the faster form for a whole DataFrame
    (``bench/compare.py`` measures both beside ``predict_batch_udf``);
    choose the column where it must sit among other expressions or in SQL.

    Bad input: nothing checks a sample before the job, since there is no
    DataFrame to check. The first bad row fails its Spark task with
    ``predict``'s one-line error, naming the column and the row by its
    Spark partition and its place among that partition's rows
    (``… (first bad row: spark_partition=0, row=30: column 'hour_of_week':
    100 values, model input 'hour_of_week' expects 168)``); Spark retries
    the task (``spark.task.maxFailures``), then fails the action with its
    own error, which carries that line (``rayscore._errors.InputError: …``).
    A Spark write then fails as Spark's writers fail on any error: nothing
    committed (no ``_SUCCESS``, no part files), and with
    ``mode("overwrite")`` the old output already deleted; rayscore commits
    nothing itself (its staged commit is ``rayscore run``'s). Spark hands a
    pandas UDF a null number as NaN, so the column carries each input's
    null flags beside it and a null fails as in ``predict``; a function
    called from SQL gets only the columns written there, so there a null
    number is scored as NaN.

    Spark may evaluate a deterministic UDF twice (a filter on one of its
    fields pushed below the projection), so the column is nondeterministic
    to Spark: each row is scored once, and a filter written after it runs
    after scoring: filter the DataFrame before you score it.

    Example:
        >>> with rayscore.session() as s:                       # doctest: +SKIP
        ...     ctr = rayscore.udf(model="ctr.keras", batch_size=1024, actors=2)
        ...     df = s.spark.read.parquet("features.parquet")
        ...     cols = ["title_0", "title_1", "title_2", "title_3", "hour_of_week", "price"]
        ...     scored = df.withColumn("p", ctr(*cols)).select("id", "p.click", "p.topics")
        ...     s.spark.udf.register("ctr", ctr)
        ...     s.spark.sql("SELECT id, ctr(title_0, title_1, title_2, title_3, hour_of_week, price).click FROM t")
    """
    model_cfg, predict_cfg = scoring_settings(
        model, inputs, outputs, batch_size, actors, cpus_per_actor, gpus_per_actor
    )
    spark = _active_spark()
    ref, spec = inspect_model(model_cfg)
    predict_cfg = sized(predict_cfg, spec)
    given = model_cfg.inputs or {}
    columns = tuple(given.get(name, name) for name in spec.input_names)
    plan_for = functools.partial(
        column_plan, spec, outputs=model_cfg.outputs, max_retries=predict_cfg.max_retries, inputs=given
    )
    plan = plan_for(columns)  # a bad inputs/outputs mapping fails here, before anything starts
    deployment = attach(spark, max_actors=max_actors_hint(predict_cfg), cpus_per_actor=cpus_per_actor)
    pool = pool_for(ref, spec, predict_cfg, deployment.spark_cpus)
    schema = predictions_of(pa.schema([]), plan, spec, pool)
    pool.watch_actions(spark, progress)
    route = route_for(pool, plan, predict_cfg.batch_size, schema, made_by="rayscore.udf")
    return ScoringUDF(route, plan_for, columns, return_type(schema))


def _active_spark() -> Any:
    from pyspark.sql import SparkSession  # noqa: PLC0415

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise SessionError(
            "rayscore.udf: no SparkSession is active in this thread: call it inside a rayscore.session() "
            "block, or after SparkSession.builder.getOrCreate()"
        )
    return spark


class ScoringUDF:
    """What :func:`udf` returns: call it with the model's input columns to make the column of its predictions.

    ``spark.udf.register(name, f)`` makes it a SQL function of those
    columns: Spark reads ``func``, ``returnType``, ``evalType`` and
    ``deterministic`` from it, as from its own UDFs. ``returnType`` is the
    column's Spark type.
    """

    def __init__(
        self,
        route: Route,
        plan_for: Callable[[Sequence[str]], Plan],
        columns: tuple[str, ...],
        arrow_type: pa.DataType,
    ) -> None:
        from pyspark.rdd import PythonEvalType  # noqa: PLC0415
        from pyspark.sql.pandas.types import from_arrow_type  # noqa: PLC0415

        self._route, self._plan_for, self.columns = route, plan_for, columns
        self.returnType = from_arrow_type(arrow_type)
        self.evalType = PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF
        # Spark pushes a filter on a deterministic UDF's result below the projection that makes it, and
        # then evaluates the UDF twice: once for the filter, once for the column (observed in
        # tests/integration/test_udf.py). Nondeterministic, it stays where it is written: one model call a row.
        self.deterministic = False
        self.func = functools.partial(score_columns, route)  # SQL's: its columns named as the model's inputs
        self.__name__ = NAME

    def asNondeterministic(self) -> ScoringUDF:  # noqa: N802 - Spark's name, which spark.udf.register looks for
        return self

    def __call__(self, *columns: Any) -> Any:
        """A Spark Column of the predictions of ``columns`` (the model's inputs, in order; none: ``self.columns``)."""
        from pyspark.sql import functions as F  # noqa: PLC0415
        from pyspark.sql.udf import UserDefinedFunction  # noqa: PLC0415

        columns = columns or self.columns
        if len(columns) != len(self.columns):
            raise InputError(arity(self._route.plan, len(columns)))
        # Errors name each column as it was passed: a name, or the expression Spark prints.
        plan = self._plan_for([_column_name(c, default) for c, default in zip(columns, self.columns)])
        route = dataclasses.replace(self._route, plan=plan)
        made = UserDefinedFunction(
            functools.partial(score_columns, route), self.returnType, NAME, self.evalType, deterministic=False
        )
        # Spark hands a pandas UDF a null number as NaN; each column's null flags travel beside it (one
        # boolean a row) so that a null is refused as predict refuses it, not scored as a NaN.
        return made(*columns, *(F.isnull(c) for c in columns))


def _column_name(column: Any, default: str) -> str:
    if isinstance(column, str):
        return column
    try:
        return str(column._jc.toString())
    except Exception:  # noqa: BLE001 - a Column without a JVM side (Spark Connect): the input's own name
        return default


def column_plan(
    spec: ModelSpec,
    columns: Sequence[str],
    *,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    max_retries: int = 0,
) -> Plan:
    """Model input ``i`` read from ``columns[i]``, outputs named as ``outputs`` maps them (:func:`make_plan`).

    The columns' types are not known until Spark sends them (each batch's
    are checked then), so they are bound here as any numbers of the
    inputs' ranks; ``inputs`` (the caller's mapping, which named
    ``columns``) is checked for names the model does not have. Rows are
    named in errors by :data:`ROW_KEYS`, renamed away from the columns.
    """
    if len(columns) != len(spec.inputs):
        raise InputError(arity(spec, len(columns)))
    keys = tuple(_free_name(k, columns) for k in ROW_KEYS)
    fields = {c: pa.list_(pa.float64()) if t.shape else pa.float64() for c, t in zip(columns, spec.inputs)}
    schema = pa.schema([*fields.items(), *((k, pa.int64()) for k in keys)])
    # The caller's mapping first, so that make_plan names an input the model lacks; then the columns.
    bound = {**(inputs or {}), **dict(zip(spec.input_names, columns))}
    return make_plan(spec, schema, inputs=bound, outputs=outputs, key_columns=keys, max_retries=max_retries)


def _free_name(name: str, taken: Sequence[str]) -> str:
    while name in taken:
        name = f"_{name}"
    return name


def arity(model: ModelSpec | Plan, got: int) -> str:
    """The line for a call with ``got`` columns to a model with other inputs."""
    names = model.input_names if isinstance(model, ModelSpec) else [b.input for b in model.bindings]
    return f"rayscore.udf: the model takes {len(names)} input columns, in this order: {', '.join(names)}; got {got}"


def return_type(predictions: pa.Schema) -> pa.DataType:
    """The column's Arrow type: a struct of the outputs' columns, or the one output's type."""
    if len(predictions) == 1:
        return predictions.field(0).type
    return pa.struct(list(predictions))


def score_columns(route: Route, batches: Iterator[Any]) -> Iterator[Any]:
    """The pandas iterator UDF, in a Spark Python worker: each batch of input Series scored on the pool, in order."""
    from pyspark import TaskContext  # noqa: PLC0415

    task = TaskContext.get()
    partition = task.partitionId() if task is not None else 0
    for scored in score_partition(route, None, input_batches(route.plan, batches, partition)):
        yield to_pandas(scored)


def input_batches(plan: Plan, batches: Iterable[Any], partition: int) -> Iterator[pa.RecordBatch]:
    """The pandas UDF's batches (a Series, or a tuple of them) as Arrow, named as ``plan`` reads them.

    A batch holds the inputs' Series, then (from the column form) each
    input's null flags, which make its nulls null again. Each row also
    gets its keys (:data:`ROW_KEYS`): ``partition`` and its place among the
    rows of ``batches``. A column whose type cannot feed its input fails
    here, in ``predict``'s words.
    """
    partition_key, row_key = plan.key_columns
    inputs = len(plan.bindings)
    start = 0
    for batch in batches:
        series = batch if isinstance(batch, tuple) else (batch,)
        if len(series) not in (inputs, 2 * inputs):
            raise InputError(arity(plan, len(series)))
        nulls = series[inputs:] or (None,) * inputs  # the column form's null flags; SQL's call has none
        columns = {b.column: to_arrow(s, n) for b, s, n in zip(plan.bindings, series[:inputs], nulls)}
        for binding in plan.bindings:
            kind = columns[binding.column].type
            if not pa.types.is_null(kind):  # all null: the conversion's nulls error names them
                check_column_type(binding, kind)
        rows = len(series[0])
        columns[partition_key] = pa.array(np.full(rows, partition, dtype=np.int64))
        columns[row_key] = pa.array(np.arange(start, start + rows, dtype=np.int64))
        start += rows
        yield pa.RecordBatch.from_pydict(columns)


def to_arrow(series: Any, nulls: Any = None) -> pa.Array:
    """A column as Spark's pandas UDF hands it over, as Arrow.

    Numbers stay as they are, but for the rows ``nulls`` (a boolean Series,
    when given) flags: Spark gave a null as NaN, and without its flags it
    stays NaN. An array column, an object Series of numpy arrays (``None``
    for a null array), becomes a list array of the arrays' own type,
    converted from the arrays in one pass; nested arrays are left to
    Arrow's inference.
    """
    values = series.to_numpy()
    if values.dtype != object:
        mask = nulls.to_numpy(dtype=bool) if nulls is not None else None
        return pa.array(values, mask=mask if mask is not None and mask.any() else None)
    first = next((v for v in values if v is not None), None)
    if isinstance(first, np.ndarray) and first.ndim == 1 and first.dtype != object:
        return pa.array(values, type=pa.list_(pa.from_numpy_dtype(first.dtype)), from_pandas=False)
    return pa.array(values, from_pandas=False)


def to_pandas(predictions: pa.RecordBatch) -> Any:
    """The predictions as a pandas UDF returns them to Spark: the one output's Series, or a DataFrame (a struct)."""
    if predictions.num_columns == 1:
        return predictions.column(0).to_pandas()
    return predictions.to_pandas()
