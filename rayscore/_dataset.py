"""Ray Datasets in and out: ``rayscore.predict(ds, …)`` scores a Ray Dataset on the session's actor pool.

A Ray Data user with a multi-GB Keras model has the Spark user's problem:
``map_batches`` with an actor class loads one copy per actor through Keras
(about 6x the file's bytes at peak), maps no table once per node and checks
nothing before the run. Here the model lives in rayscore's pool, the same
named, long-lived ``Predictor`` actors that score Spark's batches, and the
dataset gets one more ``map_batches`` stage: tasks that hold no CPU, each
handing its batch (Arrow IPC, through Ray's object store) to a loaded actor
and returning the predictions (:func:`rayscore._stream.score_partition`,
the code Spark's Python workers run). Ray Data's streaming executor runs
that stage like any other, with its backpressure: nothing is materialised
beyond the blocks Ray Data holds anyway, and each task keeps at most two
batches per loaded actor in flight. The pool is sized with
``DATA_CPUS`` of Ray's CPUs left to Ray Data's own tasks (its reads): on a
2-core machine, actors holding every CPU would leave the reads none.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import pyarrow as pa

from ._config import ModelConfig, PredictConfig
from ._convert import make_plan
from ._deploy import attach_ray, spark_cpus_held
from ._errors import InputError
from ._model import ModelSpec
from ._plan import inspect_model, max_actors_hint, sized
from ._pool import leave_cpus_free, pool_for
from ._stream import Route, prediction_schema, remote_error, route_for, score_partition

__all__ = ["DATA_CPUS", "is_dataset", "predict_dataset", "dataset_schema"]

DATA_CPUS = 1.0  # Ray CPUs the pool leaves to Ray Data's own tasks (reads, other maps)


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a Ray Dataset (without importing Ray Data for a Spark DataFrame)."""
    return type(obj).__module__.startswith("ray.data")


def dataset_schema(ds: Any) -> pa.Schema:
    """The Arrow schema of ``ds``'s rows; a dataset whose blocks are not Arrow's is refused in one line.

    Cost: Ray Data's own ``ds.schema()`` (a read's file metadata; after a
    transformation Ray Data may run it on the first block).
    """
    schema = ds.schema()
    base = getattr(schema, "base_schema", None)
    if isinstance(base, pa.Schema):
        return base
    if schema is None:
        raise InputError("the dataset has no rows (its schema is unknown); nothing to score")
    try:
        return pa.schema([pa.field(n, pa.from_numpy_dtype(t)) for n, t in zip(schema.names, schema.types)])
    except (TypeError, pa.ArrowException, AttributeError) as exc:
        raise InputError(
            f"the dataset's columns are not Arrow types ({schema}): "
            "give rayscore.predict a dataset of Arrow blocks, e.g. ds.map_batches(fn, batch_format='pyarrow')"
        ) from exc


def predict_dataset(ds: Any, model_cfg: ModelConfig, predict_cfg: PredictConfig, keep_columns: tuple[str, ...]) -> Any:
    """``ds`` scored by the pool for this model: a lazy Ray Dataset of ``keep_columns`` then one column per output.

    At the call: Ray is joined or started (:func:`rayscore._deploy.attach_ray`)
    unless this process is connected, the model's inputs and outputs are
    read from its file and bound to ``ds``'s columns (a missing column or a
    wrong type fails here, in one line), and the pool is made on first use
    (its actors start loading; the call does not wait for them: a file that
    does not state its outputs' shapes, a ``.keras`` file, has them read from
    the first loaded actor by the first task). Nothing is read or scored
    until the dataset is consumed, and a model that fails to load fails it then.
    """
    attach_ray(max_actors=max_actors_hint(predict_cfg), cpus_per_actor=predict_cfg.cpus_per_actor)
    ref, spec = inspect_model(model_cfg)
    predict_cfg = sized(predict_cfg, spec)
    columns = dataset_schema(ds)
    plan = make_plan(
        spec,
        columns,
        inputs=model_cfg.inputs,
        outputs=model_cfg.outputs,
        keep_columns=keep_columns,
        max_retries=predict_cfg.max_retries,
    )
    # Sized as if DATA_CPUS were Spark's, and made with them free: other pools that hold them are stopped.
    pool = pool_for(ref, spec, predict_cfg, DATA_CPUS + spark_cpus_held(), reserve_cpus=DATA_CPUS)
    leave_cpus_free(DATA_CPUS, keep=pool)  # the pool was made earlier: later pools may hold them since
    # A .keras file does not state its outputs' shapes: the first task asks a loaded actor, so the call
    # need not wait for the load (Ray Data reads meanwhile; Spark needs the schema at once, Ray Data not).
    known = all(t.shape is not None and t.dtype is not None for t in spec.outputs)
    route = route_for(pool, plan, predict_cfg.batch_size, prediction_schema(columns, plan, spec) if known else None)
    # Ray Data warns when a stage gets fewer blocks than its task cap; one task keeps every actor busy,
    # so for this stage the advice (more blocks) would not help.
    warnings.filterwarnings("ignore", message=r"The maximum number of concurrent tasks for 'MapBatches\(score_table\)'")
    scored = ds.select_columns(list(plan.read_columns)).map_batches(
        functools.partial(score_table, route),
        batch_format="pyarrow",
        # A whole block a call (Ray Data holds it already): the task sends it in batches of batch_size,
        # two per loaded actor in flight, as a Spark task does.
        batch_size=None,
        zero_copy_batch=True,
        udf_modifying_row_count=False,
        num_cpus=0,  # a hand-off task waits on the pool: it must not hold a CPU the actors need
        concurrency=2 * pool.plan.max_actors,
    )
    # A bad row's error reaches the consumer as rayscore's own (``except rayscore.InputError``, its one
    # line last), not as Ray Data's UserCodeException; this dataset's context only, not the caller's.
    scored.context.raise_original_map_exception = True
    return scored


_schemas: dict[tuple[str, ...], pa.Schema] = {}  # by the pool's actors: what a loaded actor said, once a process


def score_table(route: Route, table: pa.Table) -> pa.Table:
    """Run in a Ray Data task: ``table``'s rows scored on the pool, as the predictions' table."""
    if route.schema is None:
        schema = _schemas.get(route.actors)
        if schema is None:
            schema = _schemas[route.actors] = prediction_schema(table.schema, route.plan, _loaded_spec(route))
        route = dataclasses.replace(route, schema=schema)
    return pa.Table.from_batches(list(score_partition(route, None, table.to_batches())), schema=route.schema)


def _loaded_spec(route: Route) -> ModelSpec:
    """The model's inputs and outputs as the first of the pool's actors to load it knows them."""
    import ray  # noqa: PLC0415

    try:
        calls = [ray.get_actor(name, namespace=route.namespace).spec.remote() for name in route.actors]
        done, _ = ray.wait(calls, num_returns=1)
        return ray.get(done[0])
    except Exception as exc:
        raise remote_error(exc, route) from None
