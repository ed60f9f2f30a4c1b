"""What the sink counts before it commits, where it stages, and how a commit loses a race, without a cluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayscore import OutputError
from rayscore._config import OutputConfig
from rayscore._sink import _commit, count_written, staging_path


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


def test_a_bare_relative_output_gets_a_staging_directory_beside_it_not_at_the_root() -> None:
    assert staging_path("scores.parquet").startswith(".scores.parquet.rayscore-staging-")
    assert staging_path("/data/out/scores/").startswith("/data/out/.scores.rayscore-staging-")


class RacingFS:
    """A local directory with Hadoop's rename rule (onto an existing directory: moved inside it).

    Just before the rename onto the output, another job's commit lands there.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fs = self  # _commit calls fs.fs.mkdirs

    def path(self, p: str) -> Path:
        return Path(p)

    def mkdirs(self, p: Path) -> None:
        p.mkdir(parents=True, exist_ok=True)

    def exists(self, p: str) -> bool:
        return Path(p).exists()

    def delete(self, p: str) -> None:
        shutil.rmtree(p)

    def rename(self, src: str, dst: str) -> bool:
        if dst == str(self.root / "out") and "staging" in src:
            other = self.root / "other-job"
            other.mkdir()
            (other / "part-other.parquet").write_text("the other job's rows")
            os.rename(other, dst)
        target = Path(dst) / Path(src).name if Path(dst).is_dir() else Path(dst)
        os.rename(src, target)
        return True


@pytest.mark.parametrize("mode", ["error", "overwrite"])
def test_a_commit_that_loses_a_race_to_another_job_leaves_the_other_output_whole(tmp_path: Path, mode) -> None:
    out = tmp_path / "out"
    if mode == "overwrite":
        out.mkdir()
        (out / "part-previous.parquet").write_text("the previous run's rows")
    staging = Path(staging_path(str(out)))
    staging.mkdir()
    (staging / "part-ours.parquet").write_text("our rows")
    with pytest.raises(OutputError, match=rf"^output.path: another job committed {out} at the same moment; nothing"):
        _commit(RacingFS(tmp_path), str(staging), str(out), mode)
    assert sorted(p.name for p in out.iterdir()) == ["part-other.parquet"]  # never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no old output left
