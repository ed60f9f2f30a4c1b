"""The column form without a cluster: its type, its plan, pandas back to Arrow, and the errors a bad row gets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayscore import ConfigError, InputError
from rayscore._model import LoadedModel, ModelSpec, TensorSpec
from rayscore._predict import predict_table
from rayscore._stream import prediction_schema, rebatch
from rayscore._udf import ROW_KEYS, column_plan, input_batches, return_type, to_arrow, to_pandas

SPEC = ModelSpec(
    inputs=(
        TensorSpec("title", (3,), "int32"),
        TensorSpec("hours", (2, 2), "float32"),
        TensorSpec("price", (), "float32"),
    ),
    outputs=(TensorSpec("click", (1,), "float32"), TensorSpec("topics", (5,), "float32")),
)
COLUMNS = ("title", "hours", "price")


def spark_hands_over(table: pa.Table) -> tuple:
    """The Series Spark 3.5's pandas UDF gets for ``table``'s columns (``to_pandas(date_as_object=True)``)."""
    return tuple(table.column(c).combine_chunks().to_pandas(date_as_object=True) for c in table.column_names)


def features(rows: int, start: int = 0) -> pa.Table:
    ids = np.arange(start, start + rows)
    return pa.table(
        {
            "title": pa.array([[int(i), 1, 2] for i in ids], pa.list_(pa.int32())),
            "hours": pa.array([[float(i)] * 4 for i in ids], pa.list_(pa.float32())),
            "price": pa.array(ids.astype(np.float32)),
        }
    )


def test_the_column_is_a_struct_of_the_outputs_or_the_one_output_itself() -> None:
    plan = column_plan(SPEC, COLUMNS)
    both = return_type(prediction_schema(pa.schema([]), plan, SPEC))
    assert both == pa.struct([("click", pa.float32()), ("topics", pa.list_(pa.float32()))])
    renamed = column_plan(SPEC, COLUMNS, outputs={"topics": "topic_probs", "click": "p"})
    assert return_type(prediction_schema(pa.schema([]), renamed, SPEC)) == pa.struct(
        [("topic_probs", pa.list_(pa.float32())), ("p", pa.float32())]
    )
    one = column_plan(SPEC, COLUMNS, outputs={"topics": "topics"})
    assert return_type(prediction_schema(pa.schema([]), one, SPEC)) == pa.list_(pa.float32())
    single = ModelSpec(inputs=SPEC.inputs, outputs=(TensorSpec("click", (1,), "float32"),))
    assert return_type(prediction_schema(pa.schema([]), column_plan(single, COLUMNS), single)) == pa.float32()


def test_the_plan_reads_the_inputs_from_the_columns_in_order_and_names_rows_by_partition_and_place() -> None:
    plan = column_plan(SPEC, ("t", "h", "row"))
    assert [(b.input, b.column, b.shape, b.dtype) for b in plan.bindings] == [
        ("title", "t", (3,), "int32"),
        ("hours", "h", (2, 2), "float32"),
        ("price", "row", (), "float32"),
    ]
    assert plan.keep_columns == () and plan.carried_columns == ()
    assert plan.key_columns == (ROW_KEYS[0], "_row")  # a column named 'row' keeps its name


def test_a_call_with_other_columns_than_the_models_inputs_is_refused_in_one_line() -> None:
    with pytest.raises(InputError) as caught:
        column_plan(SPEC, ("title", "hours"))
    assert (
        str(caught.value) == "rayscore.udf: the model takes 3 input columns, in this order: title, hours, price; got 2"
    )
    with pytest.raises(ConfigError, match=r"^model.inputs: 'titel' is not an input of the model \(inputs: title, "):
        column_plan(SPEC, COLUMNS, inputs={"titel": "t"})
    with pytest.raises(ConfigError, match=r"^model.outputs: 'clicks' is not an output of the model"):
        column_plan(SPEC, COLUMNS, outputs={"clicks": "c"})
    plan = column_plan(SPEC, COLUMNS)
    with pytest.raises(InputError, match=r"the model takes 3 input columns, in this order: title, hours, price; got 2"):
        list(input_batches(plan, [spark_hands_over(features(3))[:2]], 0))


def test_pandas_series_go_back_to_the_arrow_columns_spark_read() -> None:
    table = features(4)
    back = [to_arrow(s) for s in spark_hands_over(table)]
    assert [a.type for a in back] == [pa.list_(pa.int32()), pa.list_(pa.float32()), pa.float32()]
    assert [a.to_pylist() for a in back] == [table.column(c).to_pylist() for c in COLUMNS]
    nested = pa.array([[[1.0, 2.0], [3.0, 4.0]], None], pa.list_(pa.list_(pa.float64())))
    assert to_arrow(nested.to_pandas()).to_pylist() == nested.to_pylist()


def test_a_null_array_stays_null_and_a_null_number_is_null_again_by_its_flag() -> None:
    """Spark hands a pandas UDF a null number as NaN: only its null flag (the column form sends it) tells them apart."""
    arrays = pa.array([[1, 2, 3], None, [4, 5, 6]], pa.list_(pa.int32()))
    assert to_arrow(arrays.to_pandas()).to_pylist() == [[1, 2, 3], None, [4, 5, 6]]
    numbers = to_arrow(pa.array([1.5, None], pa.float32()).to_pandas())
    assert numbers.null_count == 0 and np.isnan(numbers.to_numpy()[1])
    import pandas as pd

    flagged = to_arrow(pa.array([1.5, None, np.nan], pa.float32()).to_pandas(), pd.Series([False, True, False]))
    assert flagged.is_null().to_pylist() == [False, True, False]  # the column form's flags: null again
    assert np.isnan(flagged.to_numpy(zero_copy_only=False)[2])  # a real NaN stays NaN


def fake_model() -> LoadedModel:
    """The SPEC model as a plain function: click = price / 10, topics = the title's first value, five times."""

    def predict(feeds):
        rows = len(feeds["price"])
        return {
            "click": (feeds["price"] / 10).reshape(rows, 1),
            "topics": np.repeat(feeds["title"][:, :1].astype(np.float32), 5, axis=1),
        }

    return LoadedModel(SPEC, predict)


def scored(plan, tables: list[pa.Table], partition: int = 0, batch_rows: int = 4) -> list:
    batches = input_batches(plan, [spark_hands_over(t) for t in tables], partition)
    return [to_pandas(predict_table(fake_model(), plan, t).to_batches()[0]) for t in rebatch(batches, batch_rows)]


def test_rows_rebuilt_from_pandas_are_scored_as_predict_scores_them() -> None:
    plan = column_plan(SPEC, COLUMNS)
    frames = scored(plan, [features(3), features(3, start=3)])
    assert [len(f) for f in frames] == [4, 2]
    assert list(frames[0].columns) == ["click", "topics"]  # a struct, field by field
    click = np.concatenate([f["click"].to_numpy() for f in frames])
    np.testing.assert_allclose(click, np.arange(6) / 10, rtol=1e-6)
    assert [t[0] for f in frames for t in f["topics"]] == [0, 1, 2, 3, 4, 5]
    (one,) = scored(column_plan(SPEC, COLUMNS, outputs={"click": "click"}), [features(2)])
    assert one.dtype == np.float32 and one.name == "click"  # one output: the output itself, a Series


def test_the_first_bad_row_is_named_by_its_column_its_partition_and_its_place_in_it() -> None:
    plan = column_plan(SPEC, COLUMNS)
    bad = features(3, start=3)
    hours = bad.column("hours").to_pylist()
    hours[1] = [1.0, 2.0]  # the fifth row of the partition: too short
    bad = bad.set_column(1, "hours", pa.array(hours, pa.list_(pa.float32())))
    with pytest.raises(InputError) as caught:
        scored(plan, [features(3), bad], partition=7, batch_rows=100)
    assert str(caught.value) == (
        "column 'hours' is ragged: rows hold 2 to 4 values, model input 'hours' expects 4 (shape [2, 2]) "
        "(first bad row: spark_partition=7, row=4: column 'hours': 2 values, model input 'hours' expects 4)"
    )
    text = features(2).set_column(2, "price", pa.array(["a", "b"]))
    with pytest.raises(InputError, match=r"^column 'price' has type string, but model input 'price' expects numbers"):
        scored(plan, [text])
