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
