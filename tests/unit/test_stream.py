"""Spark's side of the stream, without a cluster: batching, Arrow IPC, the predictions' schema, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from rayscore import InputError, PredictError
from rayscore._convert import Binding, Plan, from_ipc, to_ipc
from rayscore._errors import OutputError, actor_died, translate_errors
from rayscore._model import ModelSpec, TensorSpec
from rayscore._predict import REASON
from rayscore._stream import IN_FLIGHT_PER_ACTOR, Route, pipelined, prediction_schema, rebatch, remote_error


def batches(*sizes: int) -> list[pa.RecordBatch]:
    start, out = 0, []
    for n in sizes:
        out.append(pa.record_batch({"id": pa.array(range(start, start + n), pa.int64())}))
        start += n
    return out


@pytest.mark.parametrize(
    ("sizes", "rows", "expected"),
    [
        ((10_000,), 4096, [4096, 4096, 1808]),
        ((1000, 1000, 1000), 2500, [2500, 500]),
        ((3, 0, 4), 10, [7]),
        ((4096, 4096), 4096, [4096, 4096]),
        ((), 10, []),
    ],
)
def test_batches_are_regrouped_into_the_batch_size_in_order(sizes, rows, expected) -> None:
    tables = list(rebatch(batches(*sizes), rows))
    assert [t.num_rows for t in tables] == expected
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert ids == list(range(sum(sizes)))


def test_a_slice_travels_as_its_own_rows_not_its_parents_buffer() -> None:
    """Pickling a sliced Arrow table carries the whole parent; the IPC stream carries the slice."""
    big = pa.table({"id": np.arange(100_000), "t": pa.array([[1.0] * 20] * 100_000, pa.list_(pa.float32()))})
    piece = big.slice(40_000, 1000)
    sent = to_ipc(piece)
    assert sent.size < len(pickle.dumps(piece, protocol=5)) / 50
    back = from_ipc(sent)
    assert back.equals(piece)
    assert back.column("id").to_pylist() == list(range(40_000, 41_000))


def plan(quarantine: bool = False) -> Plan:
    return Plan(
        bindings=(Binding("x", "x", (3,), "float32"),),
        outputs=(("click", "p_click"), ("topics", "topics")),
        keep_columns=("id",),
        key_columns=("id",),
        quarantine=quarantine,
    )


SPEC = ModelSpec(
    inputs=(TensorSpec("x", (3,), "float32"),),
    outputs=(TensorSpec("click", (1,), "float32"), TensorSpec("topics", (5,), "float16")),
)


def test_the_predictions_schema_is_the_kept_columns_then_the_outputs() -> None:
    columns = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32())), ("day", pa.string())])
    assert prediction_schema(columns, plan(), SPEC) == pa.schema(
        [("id", pa.int64()), ("p_click", pa.float32()), ("topics", pa.list_(pa.float32()))]
    )
    assert prediction_schema(columns, plan(quarantine=True), SPEC).names == ["id", "p_click", "topics", REASON]


class _RayTaskError(Exception):
    """Ray's wrapper: its str() is a traceback, the original is its ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray::Predictor.score()\n  File ...\n{type(cause).__name__}: {cause}")
        self.cause = cause


def test_a_task_raises_rayscores_own_error_as_one_line_and_anything_else_as_a_predict_error() -> None:
    bad = remote_error(_RayTaskError(InputError("column 'price': null (first bad row: id=20: null)\nmore")))
    assert type(bad) is InputError and str(bad) == "column 'price': null (first bad row: id=20: null)"
    other = remote_error(RuntimeError("the actor died\nunexpectedly"))
    assert type(other) is PredictError
    assert str(other) == "the actor pool failed: RuntimeError: the actor died unexpectedly"


class Py4JJavaError(Exception):
    """What pyspark raises for a failed Spark job (its module is py4j's)."""


Py4JJavaError.__module__ = "py4j.protocol"


def test_the_driver_reads_the_error_a_spark_task_raised_back_into_its_class() -> None:
    text = (
        "An error occurred while calling o123.save.\n: org.apache.spark.SparkException: Job aborted due to "
        "stage failure: Task 0 in stage 3.0 failed 4 times ... org.apache.spark.api.python.PythonException: "
        'Traceback (most recent call last):\n  File "/x/rayscore/_stream.py", line 90, in score_partition\n'
        "rayscore._errors.InputError: a batch of 500 rows failed (first bad row: id=3000: column 'price': null)\n"
        "\n\tat org.apache.spark.api.python.BasePythonRunner"
    )
    with pytest.raises(InputError) as info:
        with translate_errors("output.path", OutputError):
            raise Py4JJavaError(text)
    assert str(info.value) == "a batch of 500 rows failed (first bad row: id=3000: column 'price': null)"


class ActorDiedError(Exception):
    """Ray's error for an actor dead for good, as its str() reads (class name and text are what count)."""


KILLED = ActorDiedError(
    "The actor died unexpectedly before finishing this task.\n\tclass_name: Predictor\n\tactor_id: 9f\n"
    "\tpid: 3759\n\tname: rayscore-9df6afb63ee4-1\n\tnamespace: ns\n\tip: 10.0.0.7\n"
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) ..."
)


def test_an_actor_dead_for_good_is_named_with_its_node_and_what_to_change() -> None:
    route = Route("gcs", "ns", ("a",), None, 500, pa.schema([]), restarts=3, advice="To fit: lower it")
    said = remote_error(KILLED, route)
    assert type(said) is PredictError
    assert str(said) == (
        "predict: actor rayscore-9df6afb63ee4-1 died while scoring, 4 times (Ray restarts an actor 3 times); its "
        "process on node 10.0.0.7 was killed (Ray: Worker unexpectedly exits with a connection error code 2.), "
        "most likely for memory. To fit: lower it"
    )
    monitor = ActorDiedError(
        str(KILLED).replace(
            "Worker exit detail: Worker",
            "Worker exit detail: Task was killed due to the node running out of memory. Worker",
        )
    )
    assert (
        "memory ran out on node 10.0.0.7: Ray's memory monitor killed it (Ray: Task was killed due to the node "
        "running out of memory.). To fit" in str(actor_died(monitor, doing="loading", restarts=3, advice="To fit"))
    )
    # An actor whose constructor raised is not a killed process: that error speaks for itself.
    assert (
        actor_died(
            ActorDiedError("The actor died because of an error raised in its creation task, x"),
            doing="x",
            restarts=3,
            advice="",
        )
        is None
    )


@pytest.mark.parametrize("actors", [1, 2, 3])
def test_the_reader_runs_ahead_of_what_is_taken_by_at_most_the_in_flight_bound(actors) -> None:
    events: list[tuple[str, int]] = []

    def read(n: int):
        for i in range(n):
            events.append(("read", i))
            yield i

    def take(call: int):
        events.append(("took", call))
        yield call * 10

    limit = IN_FLIGHT_PER_ACTOR * actors
    got = list(pipelined(read(20), submit=lambda i: i, take=take, limit=lambda: limit))
    assert got == [i * 10 for i in range(20)]  # every item once, in order
    read_so_far = taken = lead = 0
    for kind, _ in events:
        read_so_far += kind == "read"
        taken += kind == "took"
        lead = max(lead, read_so_far - taken)
    assert lead == limit  # never more than the bound, and the bound is used
    assert events.index(("took", 0)) == limit  # the first result comes once ``limit`` items are in flight


def test_the_bound_follows_the_actors_that_become_ready_and_is_never_below_one() -> None:
    ready = [0]  # no actor loaded yet: one batch at a time, not none
    in_flight, peak = [0], []

    def submit(i: int) -> int:
        in_flight[0] += 1
        peak.append(in_flight[0])
        if i == 3:
            ready[0] = 2  # two actors loaded while the task streams
        return i

    def take(call: int):
        in_flight[0] -= 1
        yield call

    assert list(pipelined(range(10), submit, take, limit=lambda: IN_FLIGHT_PER_ACTOR * ready[0])) == list(range(10))
    assert peak[:4] == [1, 1, 1, 1] and max(peak) == IN_FLIGHT_PER_ACTOR * 2
