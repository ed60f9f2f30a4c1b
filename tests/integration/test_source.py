"""Which DataFrames Ray reads from their parquet files itself, and which go through Spark."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from rayscore import InputError
from rayscore._source import ParquetFiles, first_rows, parquet_files

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


@pytest.mark.parametrize(
    ("build", "read_by_ray"),
    [
        (lambda s, w, p: s.read.parquet(w), True),
        (lambda s, w, p: s.read.parquet(w).select("id", "price", "title_0"), True),
        (lambda s, w, p: s.read.format("parquet").load(w).select("hour_of_week"), True),
        (lambda s, w, p: s.read.parquet(w).filter("id > 10"), False),
        (lambda s, w, p: s.read.parquet(w).limit(10), False),
        (lambda s, w, p: s.read.parquet(w).withColumn("price", F.col("price") * 2), False),
        (lambda s, w, p: s.read.parquet(w).select(F.col("id").alias("key")), False),
        (lambda s, w, p: s.read.parquet(w).union(s.read.parquet(w)), False),
        (lambda s, w, p: s.read.schema("id BIGINT, price DOUBLE").parquet(w), False),  # a schema that casts
        (lambda s, w, p: s.read.parquet(p).select("id", "price"), True),
        (lambda s, w, p: s.read.parquet(p).select("id", "day"), False),  # a partition column
    ],
    ids=["plain", "columns", "load", "filter", "limit", "expression", "rename", "union", "cast-schema",
         "partitioned-data-columns", "partition-column"],
)
def test_only_a_plain_parquet_scan_is_read_by_ray(rs, workload, partitioned, build, read_by_ray):
    df = build(rs.spark, workload["data"], partitioned)
    files = parquet_files(df)
    if not read_by_ray:
        assert files is None
        return
    assert files is not None and len(files) in (2, 3)
    assert all(f.endswith(".parquet") and not f.startswith("file:") for f in files)
    assert parquet_files(df, reader="spark") is None


def test_a_csv_or_sql_source_is_read_by_spark(rs, workload, tmp_path):
    rs.spark.read.parquet(workload["data"]).select("id", "price").write.csv(str(tmp_path / "c"), header=True)
    assert parquet_files(rs.spark.read.csv(str(tmp_path / "c"), header=True, inferSchema=True)) is None
    rs.spark.read.parquet(workload["data"]).createOrReplaceTempView("source_test_view")
    assert parquet_files(rs.spark.sql("SELECT id, price FROM source_test_view WHERE price > 0")) is None


def test_parquet_files_reads_every_row_once_over_row_groups(rs, workload, tmp_path):
    path = tmp_path / "groups.parquet"
    pq.write_table(workload["table"], path, row_group_size=700)  # 6000 rows: 9 row groups, 4 readers
    files = parquet_files(rs.spark.read.parquet(str(path)))
    assert files == [str(path)]
    source = ParquetFiles(files, pa.schema([("id", pa.int64()), ("price", pa.float32())]), readers=4,
                          block_rows=lambda rows: 500)
    assert source.rows == workload["table"].num_rows
    import ray

    table = pa.concat_tables(ray.get(source.dataset.to_arrow_refs())).sort_by("id")
    assert table.column_names == ["id", "price"]
    assert table.column("id").to_pylist() == list(range(workload["table"].num_rows))
    assert table.column("price").combine_chunks().equals(workload["table"].column("price").combine_chunks())
    assert first_rows(files, ["id"], 10).column("id").to_pylist() == list(range(10))


def test_a_file_whose_column_differs_from_the_schema_is_one_line_naming_column_and_file(rs, workload, tmp_path):
    table = workload["table"].select(["id", "price"])
    data = tmp_path / "mixed"
    data.mkdir()
    pq.write_table(table.slice(0, 100), data / "part-0.parquet")
    doubles = table.column("price").slice(100, 100).cast("float64")
    pq.write_table(table.slice(100, 100).set_column(1, "price", doubles), data / "part-1.parquet")
    files = [str(data / "part-0.parquet"), str(data / "part-1.parquet")]
    schema = pa.schema([("id", pa.int64()), ("price", pa.float32())])
    with pytest.raises(InputError) as caught:
        ParquetFiles(files, schema, readers=2, block_rows=lambda rows: 100)
    assert str(caught.value) == \
        f"input: column 'price' is double in {data}/part-1.parquet, but float in the input's schema"
    with pytest.raises(InputError, match=r"^input: column 'size' is missing in .*part-0.parquet, but int32 in the"):
        ParquetFiles(files, schema.append(pa.field("size", pa.int32())), readers=2, block_rows=lambda rows: 100)
