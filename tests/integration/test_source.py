"""Any DataFrame Spark can make is scored the same way: partitioned files, a join, a union; a csv file that
cannot feed the model is refused."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import rayscore

from .conftest import ROWS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partitioned(workload, tmp_path_factory):
    """The workload's rows in a hive layout: day=0/..., day=1/..."""
    root = tmp_path_factory.mktemp("partitioned") / "features"
    table = workload["table"]
    half = table.num_rows // 2
    for day, part in enumerate((table.slice(0, half), table.slice(half))):
        (root / f"day={day}").mkdir(parents=True)
        pq.write_table(part, root / f"day={day}" / "part-0.parquet")
    return str(root)


def clicks(sdf) -> tuple[list[int], np.ndarray]:
    rows = sdf.orderBy("id").select("id", "click").collect()
    return [r.id for r in rows], np.array([r.click for r in rows])


@pytest.mark.parametrize(
    ("build", "ids"),
    [
        (lambda s, w, p: s.read.parquet(p).where("day = 1"), range(ROWS // 2, ROWS)),
        (
            lambda s, w, p: (
                s.read.parquet(w)
                .join(
                    s.createDataFrame(
                        [(i, "de" if i % 2 else "fr") for i in range(0, ROWS, 5)], "id long, country string"
                    ),
                    "id",
                )
                .where("country = 'de'")
            ),
            [i for i in range(0, ROWS, 5) if i % 2],
        ),
        (
            lambda s, w, p: s.read.parquet(w).where("id < 100").union(s.read.parquet(w).where("id >= 5900")),
            [*range(100), *range(5900, ROWS)],
        ),
    ],
    ids=["partition-filter", "join-and-filter", "union"],
)
def test_partitions_joins_and_unions_are_scored_row_for_row(rs, workload, partitioned, build, ids):
    df = build(rs.spark, workload["data"], partitioned)
    scored = rayscore.predict(df, model=workload["keras"], keep_columns=["id"], actors=2, batch_size=256)
    got_ids, got = clicks(scored)
    assert got_ids == list(ids)
    np.testing.assert_allclose(got, workload["click"][list(ids)], atol=1e-5, rtol=0)


def test_a_csv_input_without_the_models_array_columns_is_refused_naming_the_input(rs, workload, tmp_path):
    """A csv file cannot hold arrays, so it cannot feed the example's model: refused before anything is
    written, naming the first model input it lacks. (csv inputs are scored in test_formats.py.)"""
    columns = rs.spark.read.parquet(workload["data"]).select("id", F.col("price").cast("double").alias("price"))
    columns.write.csv(str(tmp_path / "in.csv"), header=True)
    with pytest.raises(rayscore.InputError, match=r"^model input 'title_0' has no column"):
        rayscore.run(
            {
                "input": {"format": "csv", "path": str(tmp_path / "in.csv")},
                "model": {"uri": workload["keras"]},
                "output": {"path": str(tmp_path / "out")},
            },
            session=rs,
        )
    assert not (tmp_path / "out").exists()


def test_the_sample_check_s_rows_are_the_arrow_spark_s_own_conversion_makes(rs):
    """``head_table`` (Spark's take, put into Arrow in Python) against Spark's Arrow collect of the same rows,
    over the types a model's inputs or a row's keys may have, nulls and a non-UTC session time zone included."""
    import pyarrow as pa

    from rayscore._source import head_table

    spark = rs.spark
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        df = spark.sql(
            """
            SELECT id,
                   CAST(id AS INT) AS i, CAST(id / 3 AS FLOAT) AS f, id / 7 AS d, CAST(id % 2 = 0 AS BOOLEAN) AS b,
                   IF(id % 5 = 0, NULL, CONCAT('title ', id, ' é')) AS s, CAST(CONCAT('x', id) AS BINARY) AS bin,
                   CAST(id * 1.25 AS DECIMAL(12, 3)) AS dec,
                   DATE_ADD(DATE '1970-01-01', CAST(id * 97 AS INT)) AS day,
                   TIMESTAMP_MICROS(id * 86400000123 + 1) AS ts,
                   ARRAY(CAST(id AS FLOAT), NULL, CAST(-id AS FLOAT)) AS floats,
                   ARRAY(ARRAY(id, id + 1), ARRAY()) AS nested,
                   MAP('a', id, 'b', IF(id % 3 = 0, NULL, id)) AS m,
                   NAMED_STRUCT('x', id, 'y', CONCAT('s', id)) AS st,
                   ARRAY(TIMESTAMP_MICROS(id), NULL) AS stamps
            FROM RANGE(0, 50, 1, 1)
            """
        )
        got = head_table(df, df.columns, 40)
        want = pa.Table.from_batches(df.limit(40)._collect_as_arrow())
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    assert got is not None and got.num_rows == 40
    # Spark labels its timestamps with the session's zone, rayscore's schema with UTC: the same instants.
    zoned = {"ts", "stamps"}
    assert [f for f in got.schema if f.name not in zoned] == [f for f in want.schema if f.name not in zoned]
    want = want.cast(got.schema)
    assert got.equals(want), [name for name in want.column_names if not got.column(name).equals(want.column(name))]
    assert head_table(df.where("id < 0"), df.columns, 40) is None
