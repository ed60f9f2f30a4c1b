"""Which inputs rayscore can plan from their parquet footers before Spark is up, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayscore._config import InputConfig
from rayscore._source import footer_input


@pytest.fixture()
def features(tmp_path: Path) -> Path:
    data = tmp_path / "features.parquet"
    (data / "_temporary").mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array([3, 4], pa.int64()), "x": [0.5, 1.5]}), data / "part-1.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "x": [2.5, 3.5]}), data / "part-0.parquet")
    pq.write_table(pa.table({"other": [1]}), data / "_temporary" / "part-9.parquet")  # Spark skips these
    (data / "_SUCCESS").write_text("")
    (data / ".part-0.parquet.crc").write_text("")
    return data


def test_a_local_parquet_directory_is_listed_as_spark_lists_it_with_the_first_files_schema(features: Path) -> None:
    files, schema = footer_input(InputConfig(path=str(features)))
    assert files == [str(features / "part-0.parquet"), str(features / "part-1.parquet")]
    assert schema.names == ["id", "x"]
    assert schema.field("id").type == pa.int64()
    assert footer_input(InputConfig(path=f"file://{features}"))[0] == files
    single = features / "part-1.parquet"
    assert footer_input(InputConfig(path=str(single)))[0] == [str(single)]


def test_a_relative_path_is_made_absolute_as_spark_qualifies_it(features: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(features.parent)
    files, _ = footer_input(InputConfig(path="features.parquet"))
    assert files == [str(features / "part-0.parquet"), str(features / "part-1.parquet")]


@pytest.mark.parametrize("change", [
    {"reader": "spark"},
    {"options": {"mergeSchema": True}},
    {"format": "csv"},
    {"path": "s3a://bucket/features.parquet"},
    {"path": "file:/features.parquet"},
    {"glob": "part-*.parquet"},
    {"path": "missing.parquet"},
    {"not_parquet": True},
], ids=lambda change: next(iter(change)))
def test_anything_else_is_left_to_spark(features: Path, change: dict) -> None:
    cfg = {"path": str(features)}
    if "glob" in change:
        cfg["path"] = str(features / change["glob"])
    elif "not_parquet" in change:
        (features / "part-0.parquet").write_text("id,x\n1,2.5\n")
    else:
        cfg.update(change)
    if cfg["path"] == "missing.parquet":
        cfg["path"] = str(features.parent / "missing.parquet")
    assert footer_input(InputConfig(**cfg)) is None
