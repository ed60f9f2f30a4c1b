"""What the sink counts before it commits, where it stages, how a commit loses a race, and how a commit
interrupted at any point is finished by the next run, without a cluster."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayscore import OutputError
from rayscore._config import OutputConfig
from rayscore._sink import _commit, _recover, count_written, staging_path


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


class LocalFS:
    """A local directory with the calls of :class:`rayscore._hadoop.HadoopFS` and Hadoop's rename rule
    (onto an existing directory: moved inside it)."""

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
        if Path(p).is_dir():
            shutil.rmtree(p)
        elif Path(p).exists():
            os.remove(p)

    def rename(self, src: str, dst: str) -> bool:
        target = Path(dst) / Path(src).name if Path(dst).is_dir() else Path(dst)
        os.rename(src, target)
        return True

    def list_names(self, p: str) -> list[str]:
        return os.listdir(p)

    def read_text(self, p: str) -> str:
        return Path(p).read_text()

    def write_text(self, p: str, text: str) -> None:
        Path(p).write_text(text)


class RacingFS(LocalFS):
    """Just before the rename onto the output, another job's commit lands there."""

    def rename(self, src: str, dst: str) -> bool:
        if dst == str(self.root / "out") and "staging" in src:
            other = self.root / "other-job"
            other.mkdir()
            (other / "part-other.parquet").write_text("the other job's rows")
            os.rename(other, dst)
        return super().rename(src, dst)


class Killed(BaseException):
    """The driver's SIGKILL: nothing after it runs, no handler sees it."""


class KilledAt(LocalFS):
    """Dies just before its ``n``-th change to the store (a write, rename or delete)."""

    def __init__(self, root: Path, n: int) -> None:
        super().__init__(root)
        self.n, self.changes = n, 0

    def _change(self) -> None:
        self.changes += 1
        if self.changes == self.n:
            raise Killed

    def write_text(self, p: str, text: str) -> None:
        self._change()
        super().write_text(p, text)

    def rename(self, src: str, dst: str) -> bool:
        self._change()
        return super().rename(src, dst)

    def delete(self, p: str) -> None:
        self._change()
        super().delete(p)


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


def old_and_new(root: Path) -> tuple[Path, Path]:
    out = root / "out"
    out.mkdir()
    (out / "part-old.parquet").write_text("the previous run's rows")
    staging = Path(staging_path(str(out)))
    staging.mkdir()
    (staging / "part-new.parquet").write_text("this run's rows")
    (staging / "_rayscore_report.json").write_text("{}")
    return out, staging


def test_an_overwrite_commit_makes_five_changes_and_leaves_only_the_new_output(tmp_path: Path) -> None:
    out, staging = old_and_new(tmp_path)
    fs = KilledAt(tmp_path, n=0)
    _commit(fs, str(staging), str(out), "overwrite")
    assert fs.changes == 5  # journal, old aside, new in, old removed, journal removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["_rayscore_report.json", "part-new.parquet"]
    assert _recover(LocalFS(tmp_path), str(out)) == []  # nothing half done


@pytest.mark.parametrize(
    "killed_before, done",
    [
        (1, None),  # the journal not yet written: the old output untouched, a hidden staging left
        (2, "rolled forward: the new output is in place"),  # journal written, old output not yet aside
        (3, "rolled forward: the new output is in place"),  # old output aside, nothing at out/: neither
        (4, "rolled forward: the new output was already in place"),  # new in, old output not yet removed
        (5, "rolled forward: the new output was already in place"),  # only the journal left
    ],
)
def test_an_overwrite_commit_killed_at_any_change_is_finished_by_the_next_run(tmp_path: Path, killed_before, done):
    out, staging = old_and_new(tmp_path)
    with pytest.raises(Killed):
        _commit(KilledAt(tmp_path, n=killed_before), str(staging), str(out), "overwrite")
    said = _recover(LocalFS(tmp_path), str(out))
    if done is None:
        assert said == []
        assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
        return
    assert said == [f"output.path: {out}: a killed run left its commit half done; {done}"]
    assert sorted(p.name for p in out.iterdir()) == ["_rayscore_report.json", "part-new.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no old output, no journal, no staging


def test_a_commit_whose_new_output_is_gone_is_rolled_back_to_the_old(tmp_path: Path) -> None:
    out, staging = old_and_new(tmp_path)
    with pytest.raises(Killed):
        _commit(KilledAt(tmp_path, n=3), str(staging), str(out), "overwrite")
    shutil.rmtree(staging)  # e.g. removed by hand
    said = _recover(LocalFS(tmp_path), str(out))
    back = "rolled back: the old output is back (the new one is gone)"
    assert said == [f"output.path: {out}: a killed run left its commit half done; {back}"]
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
