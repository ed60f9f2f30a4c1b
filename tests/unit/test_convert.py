"""Stage 4, convert: Arrow columns ⇄ model tensors, and binding a model to a schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayscore import ConfigError, InputError, ModelSpec, TensorSpec
from rayscore._convert import Binding, Plan, check_column_type, make_plan, to_columns, to_tensors


def lists(values: np.ndarray, width: int) -> pa.ListArray:
    rows = len(values) // width
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values))


# --------------------------------------------------------------------------- to_tensors


def test_scalar_float_column_to_shape_n() -> None:
    table = pa.table({"price": pa.array([1.5, 2.5, 3.5], pa.float64())})
    feeds = to_tensors(table, [Binding("price", "price", (), "float32")])
    assert list(feeds) == ["price"]
    out = feeds["price"]
    assert out.shape == (3,)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([1.5, 2.5, 3.5], np.float32))


def test_scalar_float_column_to_shape_n_1() -> None:
    table = pa.table({"p": pa.array([1.0, 2.0, 3.0, 4.0], pa.float32())})
    out = to_tensors(table, [Binding("price_in", "p", (1,), "float32")])["price_in"]
    assert out.shape == (4, 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[1.0], [2.0], [3.0], [4.0]], np.float32))


def test_list_int32_of_20() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 1000, 5 * 20, dtype=np.int32)
    table = pa.table({"title_0": lists(values, 20)})
    assert table.schema.field("title_0").type == pa.list_(pa.int32())
    out = to_tensors(table, [Binding("title_0", "title_0", (20,), "int32")])["title_0"]
    assert out.shape == (5, 20)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, values.reshape(5, 20))


def test_flat_list_of_168_to_24_by_7_row_major() -> None:
    values = np.arange(3 * 168, dtype=np.float32) / 7.0
    table = pa.table({"how": lists(values, 168)})
    out = to_tensors(table, [Binding("hour_of_week", "how", (24, 7), "float32")])["hour_of_week"]
    assert out.shape == (3, 24, 7)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.reshape(3, 24, 7))
    # row-major: the second hour of row 1 starts at flat index 168 + 7
    assert out[1, 1, 0] == values[168 + 7]


def test_nested_list_of_lists_to_24_by_7() -> None:
    rng = np.random.default_rng(2)
    data = rng.random((4, 24, 7), dtype=np.float32)
    column = pa.array(data.tolist(), type=pa.list_(pa.list_(pa.float32())))
    table = pa.table({"how": column})
    out = to_tensors(table, [Binding("hour_of_week", "how", (24, 7), "float32")])["hour_of_week"]
    assert out.shape == (4, 24, 7)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


def test_fixed_size_list_column() -> None:
    values = np.arange(6 * 20, dtype=np.int32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values), 20)
    table = pa.table({"t": column})
    out = to_tensors(table, [Binding("t", "t", (20,), "int32")])["t"]
    np.testing.assert_array_equal(out, values.reshape(6, 20))


def test_chunked_list_column() -> None:
    first = np.arange(2 * 168, dtype=np.float32)
    second = np.arange(2 * 168, 5 * 168, dtype=np.float32)
    column = pa.chunked_array([lists(first, 168), lists(second, 168)])
    assert column.num_chunks == 2
    table = pa.table({"how": column})
    out = to_tensors(table, [Binding("hour_of_week", "how", (24, 7), "float32")])["hour_of_week"]
    expected = np.concatenate([first, second]).reshape(5, 24, 7)
    assert out.shape == (5, 24, 7)
    np.testing.assert_array_equal(out, expected)


def test_chunked_scalar_column_three_chunks() -> None:
    column = pa.chunked_array([pa.array([1.0, 2.0]), pa.array([3.0]), pa.array([4.0, 5.0])])
    table = pa.table({"p": column})
    out = to_tensors(table, [Binding("p", "p", (), "float32")])["p"]
    np.testing.assert_array_equal(out, np.array([1, 2, 3, 4, 5], np.float32))


def test_sliced_table_gives_the_slice_values() -> None:
    rows = 10
    ints = np.arange(rows * 20, dtype=np.int32)
    floats = np.arange(rows * 168, dtype=np.float32)
    nested = floats.reshape(rows, 24, 7)
    table = pa.table(
        {
            "t": lists(ints, 20),
            "h": lists(floats, 168),
            "n": pa.array(nested.tolist(), type=pa.list_(pa.list_(pa.float32()))),
            "p": pa.array(np.arange(rows, dtype=np.float64)),
        }
    )
    part = table.slice(3, 4)
    feeds = to_tensors(
        part,
        [
            Binding("t", "t", (20,), "int32"),
            Binding("h", "h", (24, 7), "float32"),
            Binding("n", "n", (24, 7), "float32"),
            Binding("p", "p", (), "float32"),
        ],
    )
    np.testing.assert_array_equal(feeds["t"], ints.reshape(rows, 20)[3:7])
    np.testing.assert_array_equal(feeds["h"], floats.reshape(rows, 24, 7)[3:7])
    np.testing.assert_array_equal(feeds["n"], nested[3:7])
    np.testing.assert_array_equal(feeds["p"], np.arange(3, 7, dtype=np.float32))


def test_sliced_chunked_table() -> None:
    a = np.arange(0, 3 * 20, dtype=np.int32)
    b = np.arange(3 * 20, 7 * 20, dtype=np.int32)
    table = pa.table({"t": pa.chunked_array([lists(a, 20), lists(b, 20)])})
    part = table.slice(2, 3)  # crosses the chunk boundary
    out = to_tensors(part, [Binding("t", "t", (20,), "int32")])["t"]
    np.testing.assert_array_equal(out, np.concatenate([a, b]).reshape(7, 20)[2:5])


def test_int64_column_cast_to_int32() -> None:
    values = np.arange(3 * 20, dtype=np.int64)
    table = pa.table({"t": lists(values, 20)})
    assert table.schema.field("t").type == pa.list_(pa.int64())
    out = to_tensors(table, [Binding("t", "t", (20,), "int32")])["t"]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, values.reshape(3, 20).astype(np.int32))


def test_int64_scalar_column_cast_to_float32() -> None:
    table = pa.table({"p": pa.array([1, 2, 3], pa.int64())})
    out = to_tensors(table, [Binding("p", "p", (), "float32")])["p"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([1, 2, 3], np.float32))


def test_bool_and_decimal_columns_become_numbers() -> None:
    import decimal

    table = pa.table(
        {
            "b": pa.array([True, False, True]),
            "d": pa.array(
                [decimal.Decimal("1.25"), decimal.Decimal("2.50"), decimal.Decimal("3.75")], pa.decimal128(5, 2)
            ),
        }
    )
    feeds = to_tensors(table, [Binding("b", "b", (), "float32"), Binding("d", "d", (), "float32")])
    np.testing.assert_array_equal(feeds["b"], np.array([1, 0, 1], np.float32))
    np.testing.assert_array_equal(feeds["d"], np.array([1.25, 2.5, 3.75], np.float32))


def test_empty_table() -> None:
    table = pa.table({"t": pa.array([], pa.list_(pa.int32())), "p": pa.array([], pa.float32())})
    feeds = to_tensors(table, [Binding("t", "t", (20,), "int32"), Binding("p", "p", (), "float32")])
    assert feeds["t"].shape == (0, 20)
    assert feeds["p"].shape == (0,)


def test_ragged_list_column_refused() -> None:
    column = pa.array([[1, 2, 3], [1, 2], [1, 2, 3, 4, 5]], pa.list_(pa.int32()))
    table = pa.table({"tokens": column})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("title_0", "tokens", (3,), "int32")])
    msg = str(info.value)
    assert msg == ("column 'tokens' is ragged: rows hold 2 to 5 values, model input 'title_0' expects 3 (shape [3])")
    assert "\n" not in msg


def test_ragged_inner_list_refused() -> None:
    column = pa.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0]]], pa.list_(pa.list_(pa.float32())))
    with pytest.raises(InputError, match=r"column 'm' is ragged: rows hold 1 to 2 values, model input 'mat'"):
        to_tensors(pa.table({"m": column}), [Binding("mat", "m", (2, 2), "float32")])


def test_wrong_fixed_length_refused() -> None:
    table = pa.table({"tokens": lists(np.arange(4 * 10, dtype=np.int32), 10)})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("title_0", "tokens", (20,), "int32")])
    assert str(info.value) == ("column 'tokens' has 10 values per row, model input 'title_0' expects 20 (shape [20])")


def test_wrong_total_for_matrix_input_refused() -> None:
    table = pa.table({"how": lists(np.zeros(2 * 24, dtype=np.float32), 24)})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("hour_of_week", "how", (24, 7), "float32")])
    assert str(info.value) == (
        "column 'how' has 24 values per row, model input 'hour_of_week' expects 168 (shape [24, 7])"
    )


def test_null_rows_refused() -> None:
    table = pa.table({"p": pa.array([1.0, None, 3.0, None])})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("price", "p", (), "float32")])
    assert str(info.value) == "column 'p' has 2 null rows (model input 'price')"


def test_null_list_rows_refused() -> None:
    table = pa.table({"t": pa.array([[1, 2], None, [3, 4]], pa.list_(pa.int32()))})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("title_0", "t", (2,), "int32")])
    assert str(info.value) == "column 't' has 1 null rows (model input 'title_0')"


def test_nulls_inside_lists_refused() -> None:
    table = pa.table({"t": pa.array([[1, 2], [None, 4], [3, 4]], pa.list_(pa.int32()))})
    with pytest.raises(InputError) as info:
        to_tensors(table, [Binding("title_0", "t", (2,), "int32")])
    assert str(info.value) == "column 't' has null values inside its arrays (model input 'title_0')"


def test_null_inner_list_refused() -> None:
    column = pa.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], None]], pa.list_(pa.list_(pa.float32())))
    with pytest.raises(InputError, match=r"^column 'm' has null values inside its arrays \(model input 'mat'\)$"):
        to_tensors(pa.table({"m": column}), [Binding("mat", "m", (2, 2), "float32")])


def test_nulls_in_sliced_off_rows_do_not_matter() -> None:
    table = pa.table({"p": pa.array([None, 1.0, 2.0])}).slice(1)
    out = to_tensors(table, [Binding("p", "p", (), "float32")])["p"]
    np.testing.assert_array_equal(out, np.array([1.0, 2.0], np.float32))


# --------------------------------------------------------------------------- to_columns


def test_output_n_by_1_becomes_a_plain_float_column() -> None:
    preds = {"click": np.array([[0.1], [0.2], [0.3]], np.float32)}
    cols = to_columns(preds, [("click", "click_prob")], 3)
    assert list(cols) == ["click_prob"]
    col = cols["click_prob"]
    assert col.type == pa.float32()
    assert col.to_pylist() == pytest.approx([0.1, 0.2, 0.3])


def test_output_n_becomes_a_plain_column() -> None:
    cols = to_columns({"s": np.array([1.0, 2.0], np.float64)}, [("s", "s")], 2)
    assert cols["s"].type == pa.float64()
    assert cols["s"].to_pylist() == [1.0, 2.0]


def test_output_n_by_5_becomes_list_of_float() -> None:
    values = np.arange(4 * 5, dtype=np.float32).reshape(4, 5) / 10
    cols = to_columns({"topics": values}, [("topics", "topic_probs")], 4)
    col = cols["topic_probs"]
    assert pa.types.is_list(col.type)
    assert not pa.types.is_fixed_size_list(col.type)
    assert not pa.types.is_large_list(col.type)
    assert col.type.value_type == pa.float32()
    assert len(col) == 4
    assert col.null_count == 0
    np.testing.assert_array_equal(np.array(col.to_pylist(), np.float32), values)
    np.testing.assert_array_equal(col.flatten().to_numpy(), values.reshape(-1))


def test_output_n_by_2_by_3_becomes_list_of_6_row_major() -> None:
    values = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3)
    col = to_columns({"m": values}, [("m", "m")], 3)["m"]
    assert pa.types.is_list(col.type)
    assert col.type.value_type == pa.float32()
    assert [len(r) for r in col.to_pylist()] == [6, 6, 6]
    np.testing.assert_array_equal(np.array(col.to_pylist(), np.float32), values.reshape(3, 6))


def test_float16_outputs_become_float32() -> None:
    scalar = to_columns({"a": np.array([[0.5], [0.25]], np.float16)}, [("a", "a")], 2)["a"]
    assert scalar.type == pa.float32()
    assert scalar.to_pylist() == [0.5, 0.25]
    vector = to_columns({"b": np.ones((2, 3), np.float16)}, [("b", "b")], 2)["b"]
    assert vector.type == pa.list_(pa.float32())


def test_outputs_renamed_and_ordered_by_plan() -> None:
    preds = {"click": np.zeros((2, 1), np.float32), "topics": np.zeros((2, 5), np.float32)}
    cols = to_columns(preds, [("topics", "t"), ("click", "c")], 2)
    assert list(cols) == ["t", "c"]


def test_missing_output_refused() -> None:
    with pytest.raises(InputError) as info:
        to_columns({"click": np.zeros((2, 1))}, [("topics", "t")], 2)
    assert str(info.value) == "the model returned no output 'topics' (it returned: click)"


def test_output_row_count_mismatch_refused() -> None:
    with pytest.raises(InputError, match=r"^model output 'click' has \(3,\) rows for a batch of 2$"):
        to_columns({"click": np.zeros((3, 1))}, [("click", "c")], 2)


def test_outputs_round_trip_into_a_table() -> None:
    preds = {
        "click": np.random.default_rng(0).random((3, 1), dtype=np.float32),
        "topics": np.random.default_rng(1).random((3, 5), dtype=np.float32),
    }
    table = pa.table(to_columns(preds, [("click", "click_prob"), ("topics", "topic_probs")], 3))
    assert table.schema == pa.schema([("click_prob", pa.float32()), ("topic_probs", pa.list_(pa.float32()))])


# --------------------------------------------------------------------------- make_plan

SPEC = ModelSpec(
    inputs=(
        TensorSpec("title_0", (20,), "int32"),
        TensorSpec("hour_of_week", (24, 7), "float32"),
        TensorSpec("price", (), "float32"),
    ),
    outputs=(TensorSpec("click", None, None), TensorSpec("topics", None, None)),
    format="keras",
)

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("title_0", pa.list_(pa.int32())),
        ("hour_of_week", pa.list_(pa.float32())),
        ("price", pa.float32()),
        ("name", pa.string()),
        ("tokens", pa.list_(pa.int64())),
        ("cost", pa.float64()),
    ]
)


def test_plan_default_mapping_by_name() -> None:
    plan = make_plan(SPEC, SCHEMA)
    assert isinstance(plan, Plan)
    assert plan.bindings == (
        Binding("title_0", "title_0", (20,), "int32"),
        Binding("hour_of_week", "hour_of_week", (24, 7), "float32"),
        Binding("price", "price", (), "float32"),
    )
    assert plan.outputs == (("click", "click"), ("topics", "topics"))
    assert plan.output_columns == ("click", "topics")
    assert plan.keep_columns == ()
    assert plan.input_columns == ("title_0", "hour_of_week", "price")
    assert plan.read_columns == ("title_0", "hour_of_week", "price")
    assert [b.size for b in plan.bindings] == [20, 168, 1]


def test_plan_explicit_mapping() -> None:
    plan = make_plan(
        SPEC,
        SCHEMA,
        inputs={"title_0": "tokens", "hour_of_week": "hour_of_week", "price": "cost"},
        outputs={"click": "click_prob", "topics": "topic_probs"},
        keep_columns=["id"],
    )
    assert [(b.input, b.column) for b in plan.bindings] == [
        ("title_0", "tokens"),
        ("hour_of_week", "hour_of_week"),
        ("price", "cost"),
    ]
    assert plan.outputs == (("click", "click_prob"), ("topics", "topic_probs"))
    assert plan.output_columns == ("click_prob", "topic_probs")
    assert plan.keep_columns == ("id",)


def test_plan_outputs_subset() -> None:
    plan = make_plan(SPEC, SCHEMA, outputs={"topics": "t"})
    assert plan.outputs == (("topics", "t"),)


def test_plan_unknown_model_input_in_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        make_plan(
            SPEC,
            SCHEMA,
            inputs={"title_0": "title_0", "hour_of_week": "hour_of_week", "price": "price", "titel_1": "x"},
        )
    assert str(info.value) == (
        "model.inputs: 'titel_1' is not an input of the model (inputs: title_0, hour_of_week, price)"
    )


def test_plan_partial_mapping_reads_other_inputs_by_name() -> None:
    plan = make_plan(SPEC, SCHEMA, inputs={"price": "price"})
    assert [(b.input, b.column) for b in plan.bindings] == [
        ("title_0", "title_0"),
        ("hour_of_week", "hour_of_week"),
        ("price", "price"),
    ]


def test_plan_model_input_without_column() -> None:
    schema = pa.schema([f for f in SCHEMA if f.name != "hour_of_week"])
    with pytest.raises(InputError) as info:
        make_plan(SPEC, schema, inputs={"title_0": "title_0", "price": "price"})
    assert str(info.value) == (
        "model input 'hour_of_week' has no column: the input has no column 'hour_of_week' "
        f"and model.inputs does not map it (columns: {', '.join(schema.names)})"
    )


def test_plan_column_missing_from_schema() -> None:
    schema = pa.schema([("id", pa.int64()), ("title_0", pa.list_(pa.int32())), ("price", pa.float32())])
    with pytest.raises(InputError) as info:
        make_plan(SPEC, schema)
    assert str(info.value) == (
        "model input 'hour_of_week' has no column: the input has no column "
        "'hour_of_week' and model.inputs does not map it (columns: id, title_0, price)"
    )


def test_plan_mapped_column_missing_from_schema() -> None:
    with pytest.raises(InputError, match=r"model input 'price' needs column 'amount'"):
        make_plan(SPEC, SCHEMA, inputs={"title_0": "title_0", "hour_of_week": "hour_of_week", "price": "amount"})


def test_plan_string_column_refused() -> None:
    with pytest.raises(InputError) as info:
        make_plan(SPEC, SCHEMA, inputs={"title_0": "title_0", "hour_of_week": "hour_of_week", "price": "name"})
    msg = str(info.value)
    assert "'name'" in msg and "string" in msg and "'price'" in msg
    assert msg == "column 'name' has type string, but model input 'price' expects numbers (float32, shape [])"


def test_plan_list_of_strings_refused() -> None:
    schema = pa.schema(
        [("title_0", pa.list_(pa.string())), ("hour_of_week", pa.list_(pa.float32())), ("price", pa.float32())]
    )
    with pytest.raises(InputError, match=r"^column 'title_0' has type list<item: string>"):
        make_plan(SPEC, schema)


def test_plan_scalar_column_for_20_value_input() -> None:
    with pytest.raises(InputError) as info:
        make_plan(SPEC, SCHEMA, inputs={"title_0": "id", "hour_of_week": "hour_of_week", "price": "price"})
    assert str(info.value) == (
        "column 'id' holds one value per row, but model input 'title_0' expects "
        "20 values per row (shape [20]); use an array column"
    )


def test_plan_variable_dimension_refused() -> None:
    spec = ModelSpec((TensorSpec("seq", (None,), "int32"),), (TensorSpec("y", None, None),))
    schema = pa.schema([("seq", pa.list_(pa.int32()))])
    with pytest.raises(InputError, match=r"^model input 'seq' has a variable dimension \(shape \[None\]\)"):
        make_plan(spec, schema)


def test_plan_dtype_defaults_to_float32() -> None:
    spec = ModelSpec((TensorSpec("x", (3,), None),), (TensorSpec("y", None, None),))
    plan = make_plan(spec, pa.schema([("x", pa.list_(pa.float64()))]))
    assert plan.bindings[0].dtype == "float32"


def test_plan_keep_columns_missing() -> None:
    with pytest.raises(InputError) as info:
        make_plan(SPEC, SCHEMA, keep_columns=["id", "user_id"])
    assert str(info.value) == (
        "output.keep_columns: column 'user_id' is not in the input "
        "(columns: id, title_0, hour_of_week, price, name, tokens, cost)"
    )


def test_plan_keep_columns_clash_with_output_column() -> None:
    with pytest.raises(ConfigError) as info:
        make_plan(SPEC, SCHEMA, outputs={"click": "name", "topics": "topics"}, keep_columns=["id", "name"])
    assert str(info.value) == ("output.keep_columns: 'name' is also a model output column (rename it in model.outputs)")


def test_plan_keep_columns_clash_with_default_output_name() -> None:
    schema = SCHEMA.append(pa.field("click", pa.float32()))
    with pytest.raises(ConfigError, match=r"^output.keep_columns: 'click' is also a model output column"):
        make_plan(SPEC, schema, keep_columns=["click"])


def test_plan_unknown_output_name() -> None:
    with pytest.raises(ConfigError) as info:
        make_plan(SPEC, SCHEMA, outputs={"clicks": "p"})
    assert str(info.value) == "model.outputs: 'clicks' is not an output of the model (outputs: click, topics)"


def test_plan_read_columns_keep_first_deduplicated() -> None:
    spec = ModelSpec(
        (TensorSpec("a", (), "float32"), TensorSpec("b", (), "float32"), TensorSpec("c", (), "float32")),
        (TensorSpec("y", None, None),),
    )
    schema = pa.schema([("id", pa.int64()), ("x", pa.float32()), ("z", pa.float32()), ("ts", pa.int64())])
    plan = make_plan(spec, schema, inputs={"a": "x", "b": "z", "c": "x"}, keep_columns=["ts", "id", "x"])
    assert plan.input_columns == ("x", "z")
    assert plan.read_columns == ("ts", "id", "x", "z")
    assert plan.keep_columns == ("ts", "id", "x")


def test_plan_binding_feeds_to_tensors() -> None:
    rows = 3
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "title_0": lists(np.arange(rows * 20, dtype=np.int32), 20),
            "hour_of_week": lists(np.arange(rows * 168, dtype=np.float32), 168),
            "price": pa.array(np.ones(rows, np.float32)),
        }
    )
    plan = make_plan(SPEC, table.schema, keep_columns=["id"])
    feeds = to_tensors(table, plan.bindings)
    assert {k: v.shape for k, v in feeds.items()} == {"title_0": (3, 20), "hour_of_week": (3, 24, 7), "price": (3,)}
    assert {k: v.dtype for k, v in feeds.items()} == {
        "title_0": np.dtype("int32"),
        "hour_of_week": np.dtype("float32"),
        "price": np.dtype("float32"),
    }


def test_check_column_type_accepts_numbers() -> None:
    b = Binding("x", "x", (4,), "float32")
    for t in (
        pa.list_(pa.float64()),
        pa.large_list(pa.int8()),
        pa.list_(pa.int16(), 4),
        pa.list_(pa.list_(pa.float32())),
    ):
        check_column_type(b, t)
    check_column_type(Binding("s", "s", (), "float32"), pa.bool_())
    check_column_type(Binding("s", "s", (1,), "float32"), pa.int64())


def test_plan_is_picklable() -> None:
    import pickle

    plan = make_plan(SPEC, SCHEMA, keep_columns=["id"])
    assert pickle.loads(pickle.dumps(plan)) == plan


def test_values_an_int_input_cannot_hold_are_refused_and_pinpointed() -> None:
    from rayscore._convert import row_problems

    binding = Binding("tokens", "tokens", (2,), "int32")
    table = pa.table({"tokens": pa.array([[1.0, 2.0], [3.5, 4.0], [5.0, float("nan")], [1e12, 1.0]])})
    with pytest.raises(InputError) as info:
        to_tensors(table, [binding])
    assert str(info.value) == ("column 'tokens' holds 3 values that model input 'tokens' (int32) cannot take, e.g. 3.5")
    assert list(row_problems(table, [binding])) == [
        None,
        "column 'tokens': value 3.5 is not a valid int32",
        "column 'tokens': value nan is not a valid int32",
        "column 'tokens': value 1000000000000.0 is not a valid int32",
    ]


def test_nan_is_refused_only_when_asked() -> None:
    binding = Binding("price", "price", (), "float32")
    table = pa.table({"price": pa.array([1.0, float("nan")], pa.float32())})
    assert to_tensors(table, [binding])["price"].shape == (2,)
    with pytest.raises(InputError, match="cannot take, e.g. nan"):
        to_tensors(table, [binding], reject_nan=True)
