"""What the sink counts before it commits, and the part files the actors write, without a cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayscore import _sink
from rayscore._config import OutputConfig, load_config
from rayscore._sink import SPARK_ROW_METADATA, PartFiles, PartWriter, actors_can_write, count_written, staging_path


def test_local_parquet_is_counted_from_the_footers_of_the_files_spark_reads(tmp_path: Path) -> None:
    out = tmp_path / "staging"
    (out / "day=1").mkdir(parents=True)
    (out / "_temporary").mkdir()
    pq.write_table(pa.table({"id": list(range(7))}), out / "part-0.parquet")
    pq.write_table(pa.table({"id": list(range(5))}), out / "day=1" / "part-1.parquet")
    pq.write_table(pa.table({"id": list(range(100))}), out / "_temporary" / "part-9.parquet")  # skipped, as Spark does
    pq.write_table(pa.table({"id": list(range(100))}), out / ".part-0.parquet.crc")  # hidden: skipped
    (out / "_SUCCESS").write_text("")
    cfg = OutputConfig(path=str(tmp_path / "scores"), format="parquet")
    assert count_written(None, cfg, str(out)) == 12
    assert count_written(None, cfg, f"file://{out}") == 12



# --------------------------------------------------------------------------- part files written by the actors

@pytest.mark.parametrize(("changes", "reason"), [
    ({}, None),
    ({"path": "file:///tmp/scores"}, None),
    ({"writer": "spark"}, "output.writer: spark"),
    ({"format": "csv"}, "output.format: csv"),
    ({"options": {"compression": "zstd"}}, "output.options are Spark writer options"),
    ({"path": "s3a://bucket/scores"}, "output.path: s3a://bucket/scores is not a local path"),
    ({"mode": "resume", "key_columns": ("id",)}, "output.mode: resume"),
])
def test_the_actors_write_only_a_plain_local_parquet_output(changes: dict, reason: str | None) -> None:
    cfg = OutputConfig.model_validate({"path": "/tmp/scores", **changes})
    assert actors_can_write(cfg) == reason


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, True),
    ({"input": {"reader": "spark"}}, False),
    ({"input": {"format": "csv"}}, False),
    ({"output": {"writer": "spark"}}, False),
    ({"output": {"mode": "resume", "key_columns": ["id"]}}, False),
    ({"predict": {"on_bad_rows": "quarantine"}, "output": {"errors_path": "ERRORS"}}, True),
    ({"predict": {"on_bad_rows": "quarantine"}, "output": {"errors_path": "s3a://bucket/errors"}}, False),
], ids=["parquet-to-parquet", "spark-reads", "csv", "spark-writes", "resume", "quarantine", "remote-errors"])
def test_spark_starts_without_executors_only_if_the_actors_may_read_and_write_everything(
        tmp_path: Path, changes: dict, expected: bool) -> None:
    from rayscore._pipeline import _ScoreAhead

    (tmp_path / "in.parquet").mkdir()
    raw = {"input": {"path": str(tmp_path / "in.parquet")}, "model": {"uri": str(tmp_path / "m.keras")},
           "output": {"path": str(tmp_path / "out.parquet"), "keep_columns": ["id"]}}
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    if raw["output"].get("errors_path") == "ERRORS":
        raw["output"]["errors_path"] = str(tmp_path / "errors.parquet")
    assert _ScoreAhead.may_write(load_config(raw)) is expected


def test_a_bare_relative_output_gets_a_staging_directory_beside_it_not_at_the_root() -> None:
    assert staging_path("scores.parquet").startswith(".scores.parquet.rayscore-staging-")
    assert staging_path("/data/out/scores/").startswith("/data/out/.scores.rayscore-staging-")


IDENTITY = {"click": {"rayscore": {"model_uri": "/m/ctr.keras", "model_output": "click"}}}


def scored(ids: range) -> pa.Table:
    n = len(ids)
    return pa.table({"id": pa.array(list(ids), pa.int64()), "click": pa.array([i / 10 for i in ids], pa.float32()),
                     "topics": pa.array([[float(i)] * 3 for i in ids], pa.list_(pa.float32()))})


def test_a_part_file_is_hidden_until_closed_then_holds_every_row_in_big_row_groups_and_sparks_schema(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sink, "ROW_GROUP_ROWS", 250)
    parts = PartFiles.make(str(tmp_path / "scores"), pa.schema([("id", pa.int64())]), IDENTITY)
    assert os.path.basename(parts.staging).startswith(".scores.rayscore-staging-")
    writer = PartWriter(parts, 7)
    for start in range(0, 1000, 100):  # batches of 100 rows: row groups of 300 (flushed past 250) and the rest
        writer.write(scored(range(start, start + 100)))
    assert all(name.startswith(".") for name in os.listdir(parts.staging))  # nothing Spark would read yet
    assert writer.close() == 1000
    assert os.listdir(parts.staging) == [parts.name(7)]
    assert parts.name(7) == f"part-00007-{parts.job}-c000.snappy.parquet"
    f = pq.ParquetFile(writer.path)
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [300, 300, 300, 100]
    assert f.read().equals(pa.concat_tables([scored(range(0, 1000))]).cast(f.schema_arrow))
    spark = json.loads(f.schema_arrow.metadata[SPARK_ROW_METADATA.encode()])
    assert [(x["name"], x["type"], x["nullable"]) for x in spark["fields"]] == [
        ("id", "long", True), ("click", "float", True),
        ("topics", {"type": "array", "elementType": "float", "containsNull": True}, True)]
    assert spark["fields"][1]["metadata"] == IDENTITY["click"]
    assert spark["fields"][0]["metadata"] == {}


def test_a_kept_column_gets_the_inputs_type_and_an_empty_part_zero_still_holds_the_schema(tmp_path: Path) -> None:
    parts = PartFiles.make(str(tmp_path / "scores"), pa.schema([("id", pa.int64())]), {})
    empty = PartWriter(parts, 0, keep_empty=True)
    empty.write(scored(range(0)).cast(pa.schema([("id", pa.int32()), ("click", pa.float32()),
                                                 ("topics", pa.list_(pa.float32()))])))
    assert empty.close() == 0
    assert pq.read_table(empty.path).schema.field("id").type == pa.int64()
    assert pq.read_metadata(empty.path).num_rows == 0
    nothing = PartWriter(parts, 1)  # not part 0: no rows, no file
    nothing.write(scored(range(0)))
    assert nothing.close() == 0
    assert not os.path.exists(nothing.path)


def test_an_abandoned_part_leaves_nothing_and_a_retried_one_replaces_the_first(tmp_path: Path) -> None:
    parts = PartFiles.make(str(tmp_path / "scores"), pa.schema([("id", pa.int64())]), {})
    cut = PartWriter(parts, 3)
    cut.write(scored(range(5)))
    cut._flush()  # a row group on disk, in the hidden file
    cut.abandon()
    assert os.listdir(parts.staging) == []
    for rows in (4, 6):  # a piece scored twice (its first actor died after writing): the last one stays
        writer = PartWriter(parts, 3)
        writer.write(scored(range(rows)))
        writer.close()
    assert os.listdir(parts.staging) == [parts.name(3)]
    assert pq.read_metadata(os.path.join(parts.staging, parts.name(3))).num_rows == 6
    parts.discard()
    assert not os.path.exists(parts.staging)


def test_a_kept_column_spark_has_no_type_for_makes_no_part_files(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        PartFiles.make(str(tmp_path / "scores"), pa.schema([("id", pa.uint64())]), {})
    assert os.listdir(tmp_path) == []
