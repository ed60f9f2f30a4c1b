"""Every input and output format ``rayscore run`` takes, scored end to end and read back by Spark.

csv and json cannot hold the example's array inputs, so this module scores
a model fed by scalar columns only (``price`` float32, ``qty`` int32 in the
model; the files hold doubles and longs where their readers infer them).
Each input format is read by Spark and its predictions compared with
``model.predict``; each output format is written by Spark, counted and
committed (with the run report beside a path output, the table's rows
counted through the catalog), then read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayscore

pytestmark = pytest.mark.integration

ROWS = 1500


@pytest.fixture(scope="module")
def scalar(rs, tmp_path_factory) -> dict:
    """A two-input, one-output model of scalars, its rows in parquet, csv, json, orc and a table."""
    import keras

    root = tmp_path_factory.mktemp("formats")
    keras.utils.set_random_seed(3)
    price = keras.Input((), dtype="float32", name="price")
    qty = keras.Input((), dtype="int32", name="qty")
    both = keras.layers.Concatenate()(
        [keras.layers.Reshape((1,))(price), keras.layers.Reshape((1,))(keras.ops.cast(qty, "float32"))]
    )
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(keras.layers.Dense(8, activation="relu")(both))
    model = keras.Model({"price": price, "qty": qty}, {"score": score})
    model.save(root / "scalar.keras")
    rng = np.random.default_rng(5)
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "price": rng.uniform(0, 50, ROWS).round(3),  # doubles, as a csv or json reader infers them
            "qty": rng.integers(0, 20, ROWS).astype(np.int64),
        }
    )
    pq.write_table(table, root / "in.parquet")
    df = rs.spark.read.parquet(str(root / "in.parquet")).repartition(3)
    paths = {"parquet": str(root / "in.parquet")}
    for fmt in ("csv", "json", "orc"):
        paths[fmt] = str(root / f"in.{fmt}")
        df.write.format(fmt).options(**({"header": "true"} if fmt == "csv" else {})).save(paths[fmt])
    df.write.saveAsTable("rayscore_formats_in")
    expected = model.predict(
        {
            "price": table.column("price").to_numpy().astype(np.float32),
            "qty": table.column("qty").to_numpy().astype(np.int32),
        },
        batch_size=512,
        verbose=0,
    )
    yield {
        "root": root,
        "model": str(root / "scalar.keras"),
        "paths": paths,
        "score": np.asarray(expected["score"])[:, 0],
    }
    for name in ("rayscore_formats_in", "rayscore_formats_out"):
        rs.spark.sql(f"DROP TABLE IF EXISTS {name}")


def run_job(rs, scalar: dict, input: dict, output: dict) -> rayscore.RunResult:
    return rayscore.run(
        {
            "input": input,
            "model": {"uri": scalar["model"]},
            "predict": {"batch_size": 400, "actors": 1},
            "output": {"keep_columns": ["id"], **output},
        },
        session=rs,
    )


def assert_scored(rows: list, scalar: dict) -> None:
    """Every id once, its score model.predict's within 1e-5."""
    got = sorted((int(r["id"]), float(r["score"])) for r in rows)
    assert [i for i, _ in got] == list(range(ROWS))
    np.testing.assert_allclose([s for _, s in got], scalar["score"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["csv", "json", "orc", "table"])
def test_each_input_format_is_read_by_spark_and_scored(rs, scalar, tmp_path, fmt):
    source = (
        {"format": "table", "table": "rayscore_formats_in"}
        if fmt == "table"
        else {"format": fmt, "path": scalar["paths"][fmt]}
    )
    out = tmp_path / "scores.parquet"
    result = run_job(rs, scalar, source, {"path": str(out)})
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    assert_scored(rs.spark.read.parquet(str(out)).collect(), scalar)
    assert json.loads((out / "_rayscore_report.json").read_text())["rows_out"] == ROWS


@pytest.mark.parametrize("fmt", ["json", "orc", "csv"])
def test_each_path_output_format_is_written_counted_and_committed(rs, scalar, tmp_path, fmt):
    out = tmp_path / f"scores.{fmt}"
    result = run_job(rs, scalar, {"path": scalar["paths"]["parquet"]}, {"format": fmt, "path": str(out)})
    assert result.rows_out == ROWS
    report = json.loads((out / "_rayscore_report.json").read_text())  # committed with the report beside it
    assert report["rows_out"] == ROWS and report["output"] == str(out)
    assert not [p for p in Path(tmp_path).iterdir() if ".rayscore-" in p.name]  # no staging left
    back = rs.spark.read.format(fmt).options(**({"header": "true", "inferSchema": "true"} if fmt == "csv" else {}))
    assert_scored(back.load(str(out)).collect(), scalar)


def test_a_table_output_is_written_counted_through_the_catalog_and_refused_when_it_exists(rs, scalar):
    rs.spark.sql("DROP TABLE IF EXISTS rayscore_formats_out")
    result = run_job(
        rs, scalar, {"path": scalar["paths"]["parquet"]}, {"format": "table", "table": "rayscore_formats_out"}
    )
    assert result.rows_out == ROWS
    table = rs.spark.table("rayscore_formats_out")
    assert table.columns == ["id", "score"]
    assert table.schema["score"].metadata["rayscore"]["model_uri"] == scalar["model"]  # the catalog keeps it
    assert_scored(table.collect(), scalar)
    with pytest.raises(
        rayscore.OutputError, match=r"^output.table: table 'rayscore_formats_out' exists \(set output.mode"
    ):
        run_job(rs, scalar, {"path": scalar["paths"]["parquet"]}, {"format": "table", "table": "rayscore_formats_out"})
    again = run_job(
        rs,
        scalar,
        {"path": scalar["paths"]["parquet"]},
        {"format": "table", "table": "rayscore_formats_out", "mode": "overwrite"},
    )
    assert again.rows_out == rs.spark.table("rayscore_formats_out").count() == ROWS  # replaced, not appended
