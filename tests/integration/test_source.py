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
    from rayscore._source import read_piece

    path = tmp_path / "groups.parquet"
    pq.write_table(workload["table"], path, row_group_size=700)  # 6000 rows: 9 row groups
    files = parquet_files(rs.spark.read.parquet(str(path)))
    assert files == [str(path)]
    source = ParquetFiles(files, pa.schema([("id", pa.int64()), ("price", pa.float32())]), actors=2, batch_rows=500)
    assert source.rows == workload["table"].num_rows
    assert [(p.row_group, p.skip, p.rows) for p in source.pieces] == \
        [(g, 0, 700) for g in range(8)] + [(8, 0, 400)]  # whole row groups: there are more than 2 per actor
    assert source.dataset.count() == 9  # pieces, not rows: the actors read them
    table = pa.concat_tables(b for p in source.pieces for b in read_piece(p, source.columns, 500)).sort_by("id")
    assert table.column_names == ["id", "price"]
    assert table.column("id").to_pylist() == list(range(workload["table"].num_rows))
    assert table.column("price").combine_chunks().equals(workload["table"].column("price").combine_chunks())
    assert first_rows(files, ["id"], 10).column("id").to_pylist() == list(range(10))
    few = ParquetFiles(files, pa.schema([("id", pa.int64())]), actors=8, batch_rows=128)  # 9 row groups, 16 wanted
    assert [(p.skip, p.rows) for p in few.pieces if p.row_group == 0] == [(0, 384), (384, 316)]
    assert sum(p.rows for p in few.pieces) == workload["table"].num_rows


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
        ParquetFiles(files, schema, actors=2, batch_rows=100)
    assert str(caught.value) == \
        f"input: column 'price' is double in {data}/part-1.parquet, but float in the input's schema"
    with pytest.raises(InputError, match=r"^input: column 'size' is missing in .*part-0.parquet, but int32 in the"):
        ParquetFiles(files, schema.append(pa.field("size", pa.int32())), actors=2, batch_rows=100)


def _varied_types(root):
    """A parquet directory whose columns exercise Spark's footer conversion, written by pyarrow and by Spark."""
    import datetime

    table = pa.table({
        "id": pa.array([1, 2], pa.int64()),
        "small": pa.array([1, 2], pa.int8()),
        "unsigned": pa.array([1, 2], pa.uint32()),  # Spark reads a UINT_32 as bigint
        "ratio": pa.array([0.5, 1.5], pa.float64()),
        "name": pa.array(["a", None], pa.string()),
        "raw": pa.array([b"x", b"y"], pa.binary()),
        "tokens": pa.array([[1, 2], [3]], pa.list_(pa.int32())),
        "grid": pa.array([[[1.0]], [[2.0, 3.0]]], pa.list_(pa.list_(pa.float32()))),
        "when": pa.array([datetime.datetime(2026, 1, 1), None], pa.timestamp("us", tz="UTC")),
        "day": pa.array([datetime.date(2026, 1, 1), None], pa.date32()),
        "amount": pa.array([1, 2], pa.decimal128(12, 2)).cast(pa.decimal128(12, 2)),
        "point": pa.array([{"x": 1.0, "y": 2.0}, None], pa.struct([("x", pa.float64()), ("y", pa.float64())])),
    })
    root.mkdir()
    pq.write_table(table, root / "part-0.parquet")
    pq.write_table(table, root / "part-1.parquet")
    return table


def test_footer_schema_is_the_schema_spark_infers(rs, workload, tmp_path):
    from rayscore._config import InputConfig
    from rayscore._source import footer_schema, read_input

    _varied_types(tmp_path / "varied")
    spark_written = tmp_path / "by-spark"
    rs.spark.read.parquet(str(tmp_path / "varied")).write.parquet(str(spark_written))  # Spark's metadata in the footer
    for path in (str(tmp_path / "varied"), str(spark_written), workload["data"], f"file://{workload['data']}"):
        cfg = InputConfig(format="parquet", path=path)
        found = footer_schema(rs.spark, cfg)
        assert found is not None, path
        assert found == rs.spark.read.parquet(path).schema, path
        assert read_input(rs.spark, cfg).schema == found
    one_file = str(tmp_path / "varied" / "part-0.parquet")
    assert footer_schema(rs.spark, InputConfig(format="parquet", path=one_file)) == rs.spark.read.parquet(one_file).schema


def test_footer_schema_leaves_to_spark_what_its_inference_does_otherwise(rs, workload, partitioned, tmp_path):
    from rayscore._config import InputConfig
    from rayscore._source import footer_schema

    data = workload["data"]
    assert footer_schema(rs.spark, InputConfig(format="parquet", path=partitioned)) is None  # day=... directories
    assert footer_schema(rs.spark, InputConfig(format="parquet", path=data, options={"mergeSchema": True})) is None
    assert footer_schema(rs.spark, InputConfig(format="parquet", path=f"{data}/part-*.parquet")) is None
    assert footer_schema(rs.spark, InputConfig(format="orc", path=data)) is None
    with_summary = tmp_path / "summary"
    with_summary.mkdir()
    pq.write_table(workload["table"].slice(0, 10), with_summary / "part-0.parquet")
    pq.write_metadata(workload["table"].schema, with_summary / "_common_metadata")
    assert footer_schema(rs.spark, InputConfig(format="parquet", path=str(with_summary))) is None
    rs.spark.conf.set("spark.sql.parquet.mergeSchema", "true")
    try:
        assert footer_schema(rs.spark, InputConfig(format="parquet", path=data)) is None
    finally:
        rs.spark.conf.unset("spark.sql.parquet.mergeSchema")
