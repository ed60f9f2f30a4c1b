"""Spark's side of scoring: each Spark task streams its partition's Arrow batches to the pool.

:func:`scored_frame` turns a DataFrame into a lazy one: a ``mapInArrow``
whose function runs in Spark's Python workers on any executor whose host
runs a node of the pool's Ray cluster (RayDP's executors are Ray actors;
Ray on Spark and a joined cluster put a Ray node on each executor host). Each worker joins Ray once, finds
the pool's actors by name, and for every batch of its partition sends the
rows (Arrow IPC, through Ray's object store) to a loaded actor, keeping a
few batches in flight so that Spark reads the next while the model scores
this one; it yields the predictions to Spark as they come back. The task
pulls a batch only while fewer than two per loaded actor are in flight
(:func:`pipelined`), so its reader runs ahead of the pool by that plus what
Spark's pipe to the worker holds; nothing is kept once written, and
Spark's own task retry covers a lost executor. Cost per worker: one Ray
connection (about a second, once per Python worker process).

:func:`score_partition` is that per-batch loop for every way in: the
``mapInArrow`` function here, and the column form's pandas UDF
(:mod:`rayscore._udf`), which hands it the batches it rebuilt from pandas.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from ._convert import Plan, from_ipc, output_type, to_ipc
from ._deploy.base import ray_auth_env
from ._errors import PredictError, RayscoreError, actor_died, find_rayscore_error, first_line, one_line
from ._model import ModelSpec, remember_outputs, remembered_outputs
from ._predict import REASON, ModelRef
from ._source import arrow_schema

log = logging.getLogger("rayscore")

__all__ = [
    "Route",
    "Counters",
    "Scoring",
    "score",
    "scored_frame",
    "route_for",
    "score_partition",
    "pipelined",
    "rebatch",
    "remote_error",
    "prediction_schema",
    "predictions_of",
    "typed_outputs",
    "check_outputs",
    "with_model_identity",
    "model_identity",
]

T = TypeVar("T")  # an item read
C = TypeVar("C")  # its call in flight
R = TypeVar("R")  # what the call gives back

# Batches a Spark task keeps in flight per loaded actor: one scored, one waiting. Memory: that many
# batches in Ray's object store per task (a few MB each), whatever the input's size.
IN_FLIGHT_PER_ACTOR = 2
READY_TIMEOUT_S = 3600  # for a worker to see one loaded actor (the pool may still be placing its actors)
_ready: set[str] = set()  # actors this worker process has seen loaded (a restarted one keeps its name)


@dataclass(frozen=True)
class Route:
    """What a Spark task needs to reach the pool: small and picklable (no handles, no model)."""

    address: str  # Ray's GCS
    namespace: str
    actors: tuple[str, ...]
    plan: Plan
    batch_rows: int
    schema: pa.Schema | None  # the predictions, as Spark expects them (a Ray Data task may learn them late)
    restarts: int = 0  # Ray restarts a dead actor this many times
    advice: str = ""  # what to change when an actor keeps dying (memory)
    made_by: str = "rayscore.predict"  # what to call again once the pool has stopped
    # Ray's token for a Spark task whose executor Ray did not start (it travels in the task's closure,
    # never in Spark's configuration); never in a repr.
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Counters:
    """Spark accumulators the tasks add to: rows sent to the pool, rows it quarantined.

    Spark merges a task's updates only when the task succeeds, so a task run
    again after a failure is counted once.
    """

    rows: Any
    quarantined: Any


@dataclass(frozen=True)
class Scoring:
    """A DataFrame's predictions: a lazy Spark DataFrame, computed by each action on it, and its counters."""

    frame: Any
    counters: Counters


def score(df: Any, plan: Plan, pool: Any, spec: ModelSpec, batch_rows: int) -> Scoring:
    """``df`` scored by ``pool``: ``plan.carried_columns``, then one column per output, tagged with the model.

    The output columns' types come from ``spec`` when the model file states
    every output's shape and dtype, else as :func:`typed_outputs` finds
    them (kept on this node, or a loaded actor's). Nothing is read or
    scored until an action runs.
    """
    schema = predictions_of(arrow_schema(df), plan, spec, pool)
    frame, counters = scored_frame(df, plan, pool, batch_rows, schema)
    return Scoring(with_model_identity(frame, plan, pool.model), counters)


def predictions_of(columns: pa.Schema, plan: Plan, spec: ModelSpec, pool: Any) -> pa.Schema:
    """:func:`prediction_schema` with every output's shape and dtype (:func:`typed_outputs`)."""
    return prediction_schema(columns, plan, typed_outputs(spec, pool))


def typed_outputs(spec: ModelSpec, pool: Any) -> ModelSpec:
    """``spec`` with every output's shape and dtype, from the first of: the model file, when it states them;
    ``pool``'s actors, when they have loaded; what a loaded copy of the same model reported on this node
    before (:func:`~rayscore._model.remembered_outputs`: its digest, loader, signature, custom objects'
    dotted name, Keras's version); a loaded actor of ``pool``, waiting for its load (seconds: a process,
    TensorFlow's import, the model's build), whose outputs are then kept.

    Kept outputs let the call return while the actors load, so that Spark's
    first action starts meanwhile; a model that then fails to load fails
    that action, as a file that states its outputs (``.h5``, SavedModel)
    does. A thread checks them against the first actor to load and keeps
    what it reports where they differ; until then a batch whose outputs
    differ fails in one line (:func:`check_outputs`).
    """
    if all(t.shape is not None and t.dtype is not None for t in spec.outputs):
        return spec
    identity = pool.model.outputs_identity()
    if not pool.loaded:
        kept = remembered_outputs(identity, spec.output_names) if identity else None
        if kept is not None:
            threading.Thread(
                target=_check_kept, args=(pool, identity, kept), name="rayscore-outputs-check", daemon=True
            ).start()
            return dataclasses.replace(spec, outputs=kept)
    loaded = pool.spec().outputs
    now = pool.model.outputs_identity()  # the model's digest may have been taken meanwhile
    if now is not None and identity in (None, now):  # not kept under a digest of files changed meanwhile
        remember_outputs(now, loaded)
    return dataclasses.replace(spec, outputs=loaded)


def _check_kept(pool: Any, identity: dict[str, Any], kept: tuple[Any, ...]) -> None:
    """Once an actor of ``pool`` has loaded, keep its outputs for ``identity`` in place of ``kept`` if they differ."""
    try:
        loaded = pool.spec().outputs
    except Exception:  # noqa: BLE001 - a model that fails to load fails the action, in its own words
        return
    if loaded != kept:
        remember_outputs(identity, loaded)
        log.warning(
            "model %s: its outputs differ from those kept for it on this node (now %s); kept anew",
            pool.model.path,
            ", ".join(f"{t.name} {t.dtype}{list(t.shape or ())}" for t in loaded),
        )


def check_outputs(table: pa.Table, route: Route) -> None:
    """Each output column of an actor's predictions has the type the call gave it (``route.schema``).

    They differ only when the call typed the columns from outputs kept on
    the driver's node (:func:`typed_outputs`) that the actors' model no
    longer gives (the same file under other custom objects' code or Keras
    settings): one line then, not a cast that fails or narrows the values.
    """
    for name, column in route.plan.outputs:
        got, want = table.schema.field(column).type, route.schema.field(column).type
        if got != want:
            raise PredictError(
                f"model output {name!r}: the pool's model gives {got} where the call typed column {column!r} "
                f"{want}, from the outputs kept for this model on the driver's node, which it no longer gives; "
                f"they are kept anew once an actor has loaded: call {route.made_by} again"
            )


def prediction_schema(columns: pa.Schema, plan: Plan, spec: ModelSpec) -> pa.Schema:
    """The Arrow schema of the predictions: carried input columns, outputs, and the problem column in quarantine."""
    outputs = {t.name: t for t in spec.outputs}
    fields = [columns.field(c) for c in plan.carried_columns]
    fields += [pa.field(col, output_type(outputs[name])) for name, col in plan.outputs]
    if plan.quarantine:
        fields.append(pa.field(REASON, pa.string()))
    return pa.schema(fields)


def with_model_identity(sdf: Any, plan: Plan, model: ModelRef) -> Any:
    """Tag each prediction column with the model that made it (Spark column metadata).

    Spark keeps column metadata in the schema it stores with parquet and ORC
    files and in table catalogs, so a score can be traced to its model from
    the output alone: ``df.schema["click"].metadata["rayscore"]``.
    """
    identity = model_identity(plan, model)
    return sdf.select(
        *[  # sdf[c], not F.col(c): a name with a dot is not a struct field here
            sdf[c].alias(c, metadata=identity[c]) if c in identity else sdf[c] for c in sdf.columns
        ]
    )


def model_identity(plan: Plan, model: ModelRef) -> dict[str, dict[str, Any]]:
    """Each prediction column's Spark column metadata: ``{"rayscore": {model_uri, …, model_output}}``."""
    identity = {
        "model_uri": model.path,
        "model_format": model.loader,
        "model_bytes": model.nbytes,
        "model_fingerprint": model.digest(),
    }
    if model.registry is not None:
        identity["model_registry"] = model.registry.identity()
    return {column: {"rayscore": {**identity, "model_output": name}} for name, column in plan.outputs}


def scored_frame(df: Any, plan: Plan, pool: Any, batch_rows: int, arrow_schema: pa.Schema) -> tuple[Any, Counters]:
    """``df``'s ``plan.read_columns`` scored by ``pool``, as a lazy Spark DataFrame with ``arrow_schema``'s columns."""
    from pyspark.sql.pandas.types import from_arrow_schema  # noqa: PLC0415

    sc = df.sparkSession.sparkContext
    counters = Counters(sc.accumulator(0), sc.accumulator(0))
    fn = functools.partial(score_partition, route_for(pool, plan, batch_rows, arrow_schema), counters)
    return df.select(*plan.read_columns).mapInArrow(fn, from_arrow_schema(arrow_schema)), counters


def route_for(
    pool: Any, plan: Plan, batch_rows: int, schema: pa.Schema | None, made_by: str = "rayscore.predict"
) -> Route:
    """How a Spark task reaches ``pool`` to score ``plan``'s columns, ``batch_rows`` at a time, into ``schema``."""
    import ray  # noqa: PLC0415

    return Route(
        ray.get_runtime_context().gcs_address,
        pool.namespace,
        pool.names,
        plan,
        batch_rows,
        schema,
        restarts=pool.restarts,
        advice=pool.memory_advice(batch_rows),
        made_by=made_by,
        env=tuple(ray_auth_env().items()),
    )


def score_partition(
    route: Route, counters: Counters | None, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Run in a Spark Python worker (or a Ray Data task): score ``batches`` on the pool, yield the predictions
    in order; ``counters`` (Spark's accumulators) count the rows, when there are any."""
    import ray  # noqa: PLC0415

    try:
        if not ray.is_initialized():
            _join(route)
        try:
            actors = [ray.get_actor(name, namespace=route.namespace) for name in route.actors]
        except ValueError:
            raise PredictError(
                "the actor pool this DataFrame was scored with has stopped (its session ended, or a later pool "
                f"needed its room): call {route.made_by} again"
            ) from None
        picker = _Picker(actors, route.actors)
        yield from pipelined(
            rebatch(batches, route.batch_rows),
            submit=lambda table: (picker.submit(route.plan, to_ipc(table)), table.num_rows),
            take=lambda call: _take(call, picker, route, counters),
            limit=lambda: IN_FLIGHT_PER_ACTOR * picker.ready,
        )
    except RayscoreError:
        raise
    except Exception as exc:
        raise remote_error(exc, route) from None


def pipelined(
    items: Iterable[T],
    submit: Callable[[T], C],
    take: Callable[[C], Iterable[R]],
    limit: Callable[[], int],
) -> Iterator[R]:
    """``take(submit(item))`` for each of ``items`` in order, with up to ``limit()`` submitted and not yet taken.

    The next item is pulled from ``items`` only when fewer than ``limit()``
    are in flight: the reader never runs further ahead of what is taken
    than that, and the caller's first result comes after ``limit()`` items
    at most (the first when the limit is 1).
    """
    in_flight: collections.deque[C] = collections.deque()
    for item in items:
        in_flight.append(submit(item))
        while len(in_flight) >= max(1, limit()):
            yield from take(in_flight.popleft())
    while in_flight:
        yield from take(in_flight.popleft())


def _join(route: Route) -> None:
    """Join the pool's Ray from a Spark Python worker: with Ray's token, on this host's Ray node.

    On RayDP the executor is Ray's and its workers inherit the token; a
    plain Spark executor's do not, so the route carries it. A host with no
    Ray node of that cluster (or a token Ray refuses) fails the task in one line.
    """
    import ray  # noqa: PLC0415

    if route.env:
        os.environ.update(dict(route.env))
        try:
            from ray._raylet import Config  # noqa: PLC0415

            Config.initialize("")  # Ray reads its authentication mode once: read it again
        except Exception:  # noqa: BLE001 - an older Ray reads the environment at init
            pass
    try:
        ray.init(
            address=route.address,
            namespace=route.namespace,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        raise PredictError(
            f"spark: a Spark task on host {socket.gethostname()} could not join the pool's Ray cluster at "
            f"{route.address}: {type(exc).__name__}: {first_line(exc)}. Every Spark executor host needs a Ray node "
            "of that cluster (ray start --address=…), or let rayscore start Ray on Spark (leave ray.address unset)"
        ) from None


def _take(call: tuple[Any, int], picker: _Picker, route: Route, counters: Counters | None) -> Iterator[pa.RecordBatch]:
    import ray  # noqa: PLC0415

    ref, rows = call
    table = from_ipc(ray.get(ref))
    picker.done(ref)
    if table.num_rows != rows:
        raise PredictError(f"a pool actor returned {table.num_rows} rows for a batch of {rows}")
    check_outputs(table, route)
    if counters is not None:
        counters.rows.add(rows)
        if REASON in table.column_names:
            counters.quarantined.add(rows - table.column(REASON).null_count)
    yield from table.select(route.schema.names).cast(route.schema).to_batches()


class _Picker:
    """Which actor gets the next batch: a loaded one with the fewest of this worker's batches in flight."""

    def __init__(self, actors: list[Any], names: tuple[str, ...]) -> None:
        self._actors, self._names = actors, names
        self._busy = [0] * len(actors)
        self._of: dict[Any, int] = {}
        self._next = os.getpid()  # workers start on different actors
        self._pending = {a.__ray_ready__.remote(): i for i, a in enumerate(actors) if names[i] not in _ready}

    @property
    def ready(self) -> int:
        return sum(1 for n in self._names if n in _ready) or 1

    def _refresh(self) -> None:
        import ray  # noqa: PLC0415

        if not self._pending:
            return
        wait_s = 0 if any(n in _ready for n in self._names) else READY_TIMEOUT_S
        done, _ = ray.wait(list(self._pending), num_returns=1, timeout=wait_s)
        if wait_s and not done:
            raise PredictError(f"no actor of the pool loaded the model within {READY_TIMEOUT_S} s")
        if done:
            done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        for ref in done:
            i = self._pending.pop(ref)
            ray.get(ref)  # an actor that failed to load raises its error here
            _ready.add(self._names[i])

    def submit(self, plan: Plan, batch: pa.Buffer) -> Any:
        self._refresh()
        loaded = [i for i, n in enumerate(self._names) if n in _ready]
        self._next += 1
        i = min(loaded, key=lambda j: (self._busy[j], (j - self._next) % len(self._names)))
        ref = self._actors[i].score.remote(plan, batch)
        self._busy[i] += 1
        self._of[ref] = i
        return ref

    def done(self, ref: Any) -> None:
        self._busy[self._of.pop(ref)] -= 1


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of ``rows`` rows (the last may be shorter), without copying rows."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        held.append(batch)
        count += batch.num_rows
        if count < rows:
            continue
        table = pa.Table.from_batches(held)
        start = 0
        while count - start >= rows:
            yield table.slice(start, rows)
            start += rows
        held = table.slice(start).to_batches()
        count -= start
    if count:
        yield pa.Table.from_batches(held)


def remote_error(exc: BaseException, route: Route | None = None) -> RayscoreError:
    """What a Spark task raises for ``exc``: rayscore's own error as itself (one line), else a PredictError.

    An actor that died for good (killed, its restarts used up) is named with
    its node and what to change.
    """
    inner = find_rayscore_error(exc)
    if inner is not None:
        return type(inner)(first_line(inner))
    if route is not None:
        died = actor_died(exc, doing="while scoring", restarts=route.restarts, advice=route.advice)
        if died is not None:
            return died
    return PredictError(f"the actor pool failed: {type(exc).__name__}: {one_line(str(exc))}")
