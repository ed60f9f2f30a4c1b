"""Which inputs rayscore can plan from their parquet footers before Spark is up, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayscore._config import InputConfig
from rayscore._source import footer_input, may_read_footers


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
    assert may_read_footers(InputConfig(path=str(features)))


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
    # The guess made before any file is read: only a file that is not parquet gets past it.
    assert may_read_footers(InputConfig(**cfg)) == ("not_parquet" in change)


def test_reading_a_piece_holds_about_one_batch_not_all_it_has_read(tmp_path: Path) -> None:
    """An actor reads row groups one after another; what it keeps must not grow with them (compare.py --memory)."""
    import numpy as np

    from rayscore._source import Piece, read_piece

    rows_per_group, groups, width = 2000, 40, 256
    values = np.random.default_rng(0).random((rows_per_group * groups, width), dtype=np.float32)
    table = pa.table({"id": pa.array(np.arange(len(values)), pa.int64()),
                      "x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width).cast(
                          pa.list_(pa.float32()))})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path, row_group_size=rows_per_group)
    del table, values
    group_bytes = rows_per_group * width * 4
    before = pa.total_allocated_bytes()
    batches = rows = held = 0
    for group in range(groups):  # an actor's pieces, one after another
        for batch in read_piece(Piece(str(path), group, 0, rows_per_group), ["id", "x"], batch_rows=512):
            assert batch.num_rows <= 512 and batch.column_names == ["id", "x"]
            batches += 1
            rows += batch.num_rows
            del batch
            held = max(held, pa.total_allocated_bytes() - before)  # what the reader keeps between batches
    assert (rows, batches) == (rows_per_group * groups, 4 * groups)  # 512 + 512 + 512 + 464 per row group
    # Over all 40 row groups in one iter_batches, pyarrow's reader kept what it had read until
    # the file was closed: 111 MB here (80 MB decoded), 1.6 GB of 2M rows of the example.
    assert held < 4 * group_bytes


def test_a_piece_is_its_share_of_a_row_group_in_whole_batches(tmp_path: Path) -> None:
    from rayscore._source import Piece, read_piece

    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"id": pa.array(range(1000), pa.int64())}), path)
    shares = [Piece(str(path), 0, 0, 384), Piece(str(path), 0, 384, 384), Piece(str(path), 0, 768, 232)]
    got = [[b.column("id").to_pylist() for b in read_piece(p, ["id"], batch_rows=128)] for p in shares]
    assert [len(b) for b in got[0]] == [128, 128, 128] and [len(b) for b in got[2]] == [128, 104]
    assert [i for share in got for b in share for i in b] == list(range(1000))
