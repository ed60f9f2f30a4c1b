"""rayscore.udf, the column form, on a real local Ray + RayDP Spark: withColumn, select, SQL, filters, bad rows."""

from __future__ import annotations

import re
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

import rayscore

from . import probes
from .conftest import ROWS, assert_matches_model, probed_model, read_parquet_dir

pytestmark = pytest.mark.integration

INPUTS = ("title_0", "title_1", "title_2", "title_3", "hour_of_week", "price")
# The line a Spark task raised, as the driver's Spark error carries it among Spark's own lines.
TASK_ERROR = re.compile(r"rayscore\._errors\.(\w+Error): ([^\n]+)")


@pytest.fixture(scope="module")
def probed(rs, workload, tmp_path_factory) -> dict:
    """A column function of the workload's model with a LoadProbe layer: every model load leaves a file."""
    root = tmp_path_factory.mktemp("udf-loads")
    log, models = root / "loads", root / "models"
    log.mkdir(), models.mkdir()
    model = probed_model(workload, models, "click", "LoadProbe", log_dir=str(log))
    for built in log.iterdir():  # building it here constructed the layer once too
        built.unlink()
    ctr = rayscore.udf(
        model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}, batch_size=700, actors=2, progress=False
    )
    return {"udf": ctr, "log": log, "model": model}


def assert_one_load_per_actor(probed: dict) -> None:
    """The model's own log of its loads: one per actor of the pool, however many actions scored through it."""
    from rayscore._pool import _pools

    (pool,) = [p for p in _pools.values() if p.model.path == probed["model"]]
    loaded_in = probes.loads_logged(probed["log"])
    assert len(loaded_in) == len(set(loaded_in)) == pool.plan.max_actors == 2
    assert set(loaded_in) == {a["pid"] for a in pool.loads()["actor_loads"]}


def test_withcolumn_scores_every_row_as_model_predict_does(rs, workload, probed, tmp_path):
    ctr = probed["udf"]
    assert ctr.returnType.simpleString() == "struct<click:float,topics:array<float>>"
    df = rs.spark.read.parquet(workload["data"])
    scored = df.withColumn("s", ctr(*INPUTS)).select("id", "s.click", "s.topics")
    scored.write.parquet(str(tmp_path / "scores.parquet"))
    assert_matches_model(read_parquet_dir(tmp_path / "scores.parquet"), workload)
    assert_one_load_per_actor(probed)


def test_select_scores_beside_other_expressions(rs, workload, probed, tmp_path):
    from pyspark.sql import functions as F

    df = rs.spark.read.parquet(workload["data"])
    scored = df.select("id", (F.col("price") * 2).alias("p2"), probed["udf"](*INPUTS).alias("s"))
    assert scored.columns == ["id", "p2", "s"]
    scored.select("id", "p2", "s.click", "s.topics").write.parquet(str(tmp_path / "scores.parquet"))
    table = read_parquet_dir(tmp_path / "scores.parquet")
    assert_matches_model(table, workload)
    np.testing.assert_allclose(table.column("p2").to_numpy(), workload["table"].column("price").to_numpy() * 2)
    assert_one_load_per_actor(probed)


def test_sql_scores_through_the_registered_function(rs, workload, probed, tmp_path):
    rs.spark.udf.register("ctr", probed["udf"])
    rs.spark.read.parquet(workload["data"]).createOrReplaceTempView("features")
    scored = rs.spark.sql(f"SELECT id, ctr({', '.join(INPUTS)}) AS s FROM features").select("id", "s.click", "s.topics")
    scored.write.parquet(str(tmp_path / "scores.parquet"))
    assert_matches_model(read_parquet_dir(tmp_path / "scores.parquet"), workload)
    assert_one_load_per_actor(probed)


def test_a_filter_on_a_field_scores_each_row_once_where_spark_scores_a_deterministic_udf_twice(rs, workload, tmp_path):
    """Rows scored, counted by the model's own call log, equal rows in; Spark's own deterministic UDF over the
    same pool shows why the column is nondeterministic to Spark."""
    from pyspark.sql import functions as F
    from pyspark.sql.udf import UserDefinedFunction

    calls, models = tmp_path / "calls", tmp_path / "models"
    models.mkdir()
    model = probed_model(workload, models, "click", "CallLog", log=str(calls))
    ctr = rayscore.udf(
        model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}, batch_size=500, actors=2, progress=False
    )
    threshold = float(np.median(workload["click"]))
    kept = int((workload["click"] > threshold).sum())
    df = rs.spark.read.parquet(workload["data"])

    def scored_rows(column) -> tuple[list, int]:
        calls.unlink(missing_ok=True)
        rows = (
            df.withColumn("s", column).where(F.col("s.click") > threshold).select("id", "s.click", "s.topics").collect()
        )
        return rows, sum(int(line.split()[1]) for line in calls.read_text().splitlines())

    rows, scored = scored_rows(ctr(*INPUTS))
    assert scored == ROWS  # each row once, though the filter reads a field of the column
    assert sorted(r["id"] for r in rows) == sorted(np.flatnonzero(workload["click"] > threshold))
    got = {r["id"]: r["click"] for r in rows}
    np.testing.assert_allclose([got[i] for i in sorted(got)], workload["click"][sorted(got)], atol=1e-5, rtol=0)
    twin = UserDefinedFunction(ctr.func, ctr.returnType, "twin", ctr.evalType, deterministic=True)
    rows, scored = scored_rows(twin(*INPUTS))
    assert len(rows) == kept
    assert scored == ROWS + kept  # Spark pushed the filter below the projection: the kept rows scored twice


def test_a_bad_row_fails_the_action_in_one_line_naming_its_column_partition_and_place(rs, workload, dirty, tmp_path):
    ctr = rayscore.udf(model=workload["keras"], batch_size=500, actors=2, progress=False)
    df = rs.spark.read.parquet(dirty["path"])
    out = tmp_path / "scores.parquet"
    with pytest.raises(Exception) as caught:  # Spark's own error for the failed write, which carries the task's
        df.select("id", ctr(*INPUTS).alias("s")).write.parquet(str(out))
    [(kind, line)] = set(TASK_ERROR.findall(str(caught.value)))
    assert kind == "InputError"
    # Row 20's null price reached the UDF as NaN (Spark's pandas conversion); its null flag, beside it,
    # makes it null again: it is the first bad row, as for rayscore.predict.
    assert line == (
        "column 'hour_of_week' is ragged: rows hold 100 to 168 values, model input 'hour_of_week' expects 168 "
        "(shape [24, 7]) (first bad row: spark_partition=0, row=20: column 'price': null)"
    )
    assert not (out / "_SUCCESS").exists() and not list(out.glob("*.parquet"))  # Spark's writer committed nothing


def test_one_output_is_the_column_itself_and_a_null_number_is_refused_but_nan_in_sql(rs, workload, dirty, tmp_path):
    """Spark hands a pandas UDF a null float as NaN. The column form sends each column's null flags beside it,
    so row 20 (null price) is refused; a SQL call has only the columns written there, so there row 20 scores
    as row 10 (NaN price) does."""
    click = rayscore.udf(model=workload["keras"], outputs={"click": "click"}, batch_size=500, actors=2, progress=False)
    assert click.returnType.simpleString() == "float"
    df = rs.spark.read.parquet(dirty["path"]).where("id < 30")
    scored = df.select("id", click(*INPUTS).alias("click"))
    assert dict(scored.dtypes) == {"id": "bigint", "click": "float"}
    with pytest.raises(Exception) as caught:
        scored.collect()
    [(kind, line)] = set(TASK_ERROR.findall(str(caught.value)))
    assert (kind, line) == (
        "InputError",
        "column 'price' has 1 null rows (model input 'price') "
        "(first bad row: spark_partition=0, row=20: column 'price': null)",
    )
    assert pq.read_table(dirty["path"]).column("price").is_null().to_pylist()[20]
    rs.spark.udf.register("click", click)
    df.createOrReplaceTempView("dirty_head")
    rs.spark.sql(f"SELECT id, click({', '.join(INPUTS)}) AS click FROM dirty_head").write.parquet(
        str(tmp_path / "scores.parquet")
    )
    table = read_parquet_dir(tmp_path / "scores.parquet")
    assert table.column("id").to_pylist() == list(range(30))
    got = table.column("click").to_numpy()
    assert got[20] == got[10]  # the model's answer for a NaN price, whatever it is
    good = np.setdiff1d(np.arange(30), [10, 20])
    np.testing.assert_allclose(got[good], workload["click"][good], atol=1e-5, rtol=0)


def test_without_an_active_sparksession_the_call_fails_in_one_line(rs, workload):
    """A thread of its own has no active SparkSession (Spark keeps it per thread)."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            rayscore.udf(model=workload["keras"], actors=2, progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            raised.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    [error] = raised
    assert isinstance(error, rayscore.SessionError)
    assert str(error) == (
        "rayscore.udf: no SparkSession is active in this thread: call it inside a rayscore.session() block, "
        "or after SparkSession.builder.getOrCreate()"
    )
