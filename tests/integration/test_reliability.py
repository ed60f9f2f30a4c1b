"""Nothing lost, nothing doubled: actor deaths, failing batches, bad rows, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import rayscore

from . import probes
from .conftest import ROWS, assert_matches_model, probed_model, processes_of_session, read_parquet_dir
from .test_pipeline import job, leftovers

pytestmark = pytest.mark.integration


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def predictor_processes() -> list[psutil.Process]:
    """The pool's actors of this test session's Ray: Ray titles them ``ray::Predictor`` (``.score`` while scoring)."""
    return [p for p in psutil.Process().children(recursive=True) if "ray::Predictor" in _name(p)]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name() + " " + " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def test_an_actor_killed_mid_job_is_replaced_and_every_row_comes_out_once(rs, workload, tmp_path):
    """The replacement is seen by the model itself: a third process loads it, the victim's pid is gone."""
    out, log, models = tmp_path / "scores.parquet", tmp_path / "loads", tmp_path / "models"
    log.mkdir(), models.mkdir()
    model = probed_model(workload, models, "click", "LoadProbe", log_dir=str(log))
    for built in log.iterdir():  # building it here constructed the probe once too
        built.unlink()
    cfg = job(
        workload,
        out,
        model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH},
        predict={"batch_size": 40, "actors": 2},
    )
    outcome: dict = {}

    def score() -> None:
        try:
            outcome["result"] = rayscore.run(cfg, session=rs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=score)
    worker.start()
    # Ray titles an actor's process with the method it runs: ".score" is a batch being scored.
    victim = wait_for(
        lambda: [p for p in predictor_processes() if "Predictor.score" in _name(p)],
        180,
        "a predictor actor scoring a batch",
    )[0]
    victim.kill()  # SIGKILL, as the OOM killer would
    replacement = wait_for(
        lambda: [p for p in predictor_processes() if p.pid != victim.pid and p.create_time() > victim.create_time()],
        120,
        "a restarted predictor",
    )
    worker.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert replacement
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    loaded_in = probes.loads_logged(log)
    assert len(loaded_in) == len(set(loaded_in)) == 3  # the two actors, then the victim's replacement
    assert victim.pid in loaded_in and replacement[0].pid in loaded_in
    assert result.model_loads == 3
    assert not victim.is_running()
    assert_matches_model(read_parquet_dir(out), workload)


def test_a_batch_too_big_for_memory_is_split_until_it_fits_and_the_size_is_reported(rs, workload, tmp_path):
    """TensorFlow's allocator refuses a model op's memory above 100 rows: the actor halves its batches.

    500 rows fail, then 250 and 125; 62 fit and stay the size for the rest of the job.
    """
    model = probed_model(workload, tmp_path, "topics", "OomAbove", max_rows=100)
    out = tmp_path / "scores.parquet"
    cfg = job(workload, out, model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH})
    result = rayscore.run(cfg, session=rs)
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    assert result.batch_size == 500
    assert result.working_batch_size == 62
    assert result.model_loads == 2  # split in the actor, not by restarting it
    assert_matches_model(read_parquet_dir(out), workload)


@pytest.fixture(scope="module")
def poisoned(workload, tmp_path_factory) -> str:
    """The features in three files (three Spark tasks); rows 5000..5004, in the last, hold a token id
    outside the embedding (the model raises)."""
    table = workload["table"]
    titles = table.column("title_1").combine_chunks()
    values = titles.flatten().to_numpy().copy()
    values[5000 * 20 : 5005 * 20] = 99_999
    offsets = pa.array(np.arange(0, (ROWS + 1) * 20, 20, dtype=np.int32))
    bad = table.set_column(
        table.schema.get_field_index("title_1"), "title_1", pa.ListArray.from_arrays(offsets, pa.array(values))
    )
    path = tmp_path_factory.mktemp("poisoned") / "features.parquet"
    path.mkdir()
    for i, start in enumerate(range(0, ROWS, ROWS // 3)):
        pq.write_table(bad.slice(start, ROWS // 3), path / f"part-{i}.parquet")
    return str(path)


def test_a_batch_that_keeps_failing_stops_the_job_naming_it_and_keeps_the_old_output(rs, workload, poisoned, tmp_path):
    """The good files' tasks write their rows into staging before the poisoned one fails: nothing is committed."""
    out = tmp_path / "scores.parquet"
    out.mkdir()
    (out / "part-old.parquet").write_text("the previous run's output")
    cfg = job(
        workload,
        out,
        input={"path": poisoned},
        output={"mode": "overwrite"},
        predict={"batch_size": 500, "actors": 1, "max_retries": 1},
    )
    sc = rs.spark.sparkContext
    tracker = sc.statusTracker()
    sc.setJobGroup("before-the-run", "the newest job before the run (rayscore's jobs run in a group of their own)")
    rs.spark.range(1).count()
    sc.setLocalProperty("spark.jobGroup.id", None)
    sc.setLocalProperty("spark.job.description", None)
    newest = max(tracker.getJobIdsForGroup("before-the-run"))
    with pytest.raises(rayscore.PredictError) as caught:
        rayscore.run(cfg, session=rs)
    message = str(caught.value)
    assert "a batch of 500 rows (first row: id=5000)" in message
    assert "failed 2 time(s) (predict.max_retries: 1)" in message
    assert "99999" in message and "\n" not in message
    # Spark's write job (Spark packs the three files into its tasks): every task but the poisoned one had
    # finished, its part file written into staging, when the job failed.
    new_jobs = [info for j in range(newest + 1, newest + 100) if (info := tracker.getJobInfo(j)) is not None]
    [failed] = [j for j in new_jobs if j.status == "FAILED"]
    [stage] = [tracker.getStageInfo(s) for s in failed.stageIds]
    assert stage.numTasks >= 2 and stage.numCompletedTasks == stage.numTasks - 1
    assert sorted(os.listdir(out)) == ["part-old.parquet"]  # a failed overwrite leaves the old output
    assert leftovers(tmp_path) == ["scores.parquet"]


def test_bad_rows_fail_by_default_naming_column_problem_and_row_key(rs, workload, dirty, tmp_path):
    out = tmp_path / "scores.parquet"
    with pytest.raises(rayscore.InputError) as caught:
        rayscore.run(job(workload, out, input={"path": dirty["path"]}), session=rs)
    assert str(caught.value) == (
        "column 'hour_of_week' is ragged: rows hold 100 to 168 values, model input 'hour_of_week' expects 168 "
        "(shape [24, 7]) (first bad row: id=20: column 'price': null)"
    )
    assert leftovers(tmp_path) == []


def test_quarantine_writes_bad_rows_apart_and_scores_the_rest(rs, workload, dirty, tmp_path):
    out, errors = tmp_path / "scores.parquet", tmp_path / "errors.parquet"
    result = rayscore.run(
        job(
            workload,
            out,
            input={"path": dirty["path"]},
            predict={"on_bad_rows": "quarantine", "reject_nan": True},
            output={"errors_path": str(errors)},
        ),
        session=rs,
    )
    assert rs.spark.read.parquet(str(errors)).dtypes == [("id", "bigint"), ("reason", "string")]
    assert leftovers(tmp_path) == ["errors.parquet", "scores.parquet"]
    assert result.rows_in == ROWS
    assert result.rows_quarantined == 5
    assert result.rows_out == ROWS - 5
    bad = pq.read_table(errors).sort_by("id").to_pydict()
    assert bad["id"] == [10, 20, 30, 4000, 5000]
    assert bad["reason"] == [
        "column 'price': value nan is not a valid float32",
        "column 'price': null",
        "column 'hour_of_week': 100 values, model input 'hour_of_week' expects 168",
        "column 'price': null",
        "column 'hour_of_week': 100 values, model input 'hour_of_week' expects 168",
    ]
    good = read_parquet_dir(out)
    assert good.column_names == ["id", "click", "topics"]
    ids = good.column("id").to_numpy()
    assert len(ids) == len(set(ids)) == ROWS - 5
    keep = np.setdiff1d(np.arange(ROWS), [10, 20, 30, 4000, 5000])
    assert np.array_equal(np.sort(ids), keep)
    order = np.argsort(ids)
    np.testing.assert_allclose(good.column("click").to_numpy()[order], workload["click"][keep], atol=1e-5, rtol=0)
    # The report's counts against what is in the files, counted apart from rayscore's counters.
    report = json.loads((out / "_rayscore_report.json").read_text())
    assert report["rows_in"] == pq.read_metadata(dirty["path"]).num_rows
    assert (report["rows_out"], report["rows_quarantined"]) == (good.num_rows, len(bad["id"]))
    # The scored rows were kept on disk for the two writes (DISK_ONLY): nothing stays persisted after.
    assert rs.spark.sparkContext._jsc.getPersistentRDDs().isEmpty()


def test_a_rows_shard_is_fixed_by_its_keys_in_any_dataframe_and_any_run(rs, workload):
    """Spark's seeded xxhash64: pinned here, so a new Spark (or a changed expression) that moved rows between
    shards, and so made resume mix two runs' rows, fails this test."""
    from rayscore._resume import shard_of

    rows = [(i, f"day-{i % 3}") for i in range(12)]
    df = rs.spark.createDataFrame(rows, "id long, day string")
    assert [r[0] for r in df.select(shard_of(["id"], 4)).collect()] == [0, 2, 1, 3, 3, 1, 2, 1, 3, 0, 1, 3]
    assert [r[0] for r in df.select(shard_of(["id", "day"], 4)).collect()] == [2, 1, 2, 3, 0, 2, 0, 1, 2, 3, 2, 0]
    # The same keys read another way, in other partitions and order: the same shards.
    other = rs.spark.read.parquet(workload["data"]).repartition(5).where("id < 12")
    by_id = {r["id"]: r["shard"] for r in other.select("id", shard_of(["id"], 4).alias("shard")).collect()}
    assert [by_id[i] for i in range(12)] == [0, 2, 1, 3, 3, 1, 2, 1, 3, 0, 1, 3]


def run_to_its_failpoint(script: str, *args: str) -> None:
    """Run a driver ``script`` (``python -c``) until its failpoint SIGKILLs it; then kill what it left running."""
    driver = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert driver.wait(timeout=600) == -signal.SIGKILL
    finally:
        for proc in processes_of_session(driver.pid, timeout=0):  # its local Ray and Spark outlive it
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


# A driver with a failpoint: it SIGKILLs itself at the n-th shard commit (the rename that makes a
# written shard visible), just before or just after it. Everything else is the real ``rayscore run``.
KILL_AT_A_COMMIT = """
import os, signal, sys
from rayscore import _hadoop
from rayscore._cli import main

when, nth, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rename, commits = _hadoop.HadoopFS.rename, []

def failpoint(self, src, dst):
    if "rayscore_shard=" not in dst:
        return rename(self, src, dst)
    commits.append(dst)
    if len(commits) == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    done = rename(self, src, dst)
    if len(commits) == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return done

_hadoop.HadoopFS.rename = failpoint
sys.exit(main(["run", config]))
"""


@pytest.mark.parametrize(
    "when, nth, committed",
    [
        ("before", 2, 1),  # mid-commit: the second shard's files and marker written, not yet renamed
        ("after", 4, 4),  # every shard committed; the run report and _SUCCESS not yet written
    ],
)
def test_resume_after_the_driver_is_killed_at_a_commit_finishes_with_every_row_once(
    rs, workload, tmp_path, when, nth, committed
):
    out = tmp_path / "scores.parquet"
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(resume_job(workload, out)))
    run_to_its_failpoint(KILL_AT_A_COMMIT, when, str(nth), str(cfg_path))
    assert len(shard_dirs(out)) == committed
    assert not (out / "_SUCCESS").exists() and not (out / "_rayscore_report.json").exists()
    staged = [p for p in out.iterdir() if ".rayscore-staging-" in p.name]
    if when == "before":  # killed with a whole shard written but hidden: it is scored again, not reused
        [half_done] = staged
        assert (half_done / "_rayscore_shard.json").exists()
    result = rayscore.run(resume_job(workload, out), session=rs)
    assert result.shards == {"total": 4, "reused": committed, "scored": 4 - committed}
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    assert shard_dirs(out) == [f"rayscore_shard={i}" for i in range(4)]
    assert not [p for p in out.iterdir() if ".rayscore-" in p.name]  # no staging left behind
    assert (out / "_SUCCESS").exists()
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)


# A driver with a failpoint: SIGKILLed at the rename that puts the new output in place, after
# ``mode: overwrite`` moved the old one aside: nothing is at output.path.
KILL_BETWEEN_THE_RENAMES = """
import os, signal, sys
from rayscore import _hadoop
from rayscore._cli import main

config, out = sys.argv[1], sys.argv[2]
rename = _hadoop.HadoopFS.rename

def failpoint(self, src, dst):
    if ".rayscore-staging-" in src and dst == out:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, src, dst)

_hadoop.HadoopFS.rename = failpoint
sys.exit(main(["run", config]))
"""


def test_an_overwrite_killed_between_its_renames_is_rolled_forward_by_the_next_run(rs, workload, tmp_path, caplog):
    out = tmp_path / "scores.parquet"
    out.mkdir()
    pq.write_table(pa.table({"id": [-1]}), out / "part-old.parquet")
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job(workload, out, output={"mode": "overwrite"}, predict={"actors": 1})))
    run_to_its_failpoint(KILL_BETWEEN_THE_RENAMES, str(cfg_path), str(out))
    # Killed where no store makes two renames one: the old output aside, the new one staged, neither at out.
    assert not out.exists()
    hidden = sorted(p.name.split(".rayscore-")[1].split("-")[0] for p in tmp_path.iterdir() if ".rayscore-" in p.name)
    assert hidden == ["commit", "old", "staging"]
    # The next run on that output rolls the commit forward before anything else: here it then fails
    # on its (missing) input, so what is at out is the killed run's whole output, nothing of its own.
    with pytest.raises(rayscore.InputError, match="input.path"):
        rayscore.run(job(workload, out, input={"path": str(tmp_path / "missing")}), session=rs)
    said = [r.getMessage() for r in caplog.records if "half done" in r.getMessage()]
    assert said == [
        f"output.path: {out}: a killed run left its commit half done; rolled forward: the new output is in place"
    ]
    assert not [p for p in tmp_path.iterdir() if ".rayscore-" in p.name]
    assert json.loads((out / "_rayscore_report.json").read_text())["rows_out"] == ROWS
    assert_matches_model(read_parquet_dir(out), workload)  # the new rows, and not the old one's id -1


def resume_job(workload: dict, out: Path, **sections) -> dict:
    cfg = job(
        workload,
        out,
        predict={"batch_size": 200, "actors": 1},
        output={"mode": "resume", "key_columns": ["id"], "shards": 4},
    )
    for section, values in sections.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def shard_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("rayscore_shard=*") if (p / "_rayscore_shard.json").exists())


def test_resume_scores_each_shard_once_and_refuses_a_changed_model(rs, workload, tmp_path):
    out = tmp_path / "scores.parquet"
    first = rayscore.run(resume_job(workload, out), session=rs)
    assert first.shards == {"total": 4, "reused": 0, "scored": 4}
    assert first.rows_out == ROWS
    again = rayscore.run(resume_job(workload, out), session=rs)
    assert again.shards == {"total": 4, "reused": 4, "scored": 0}
    assert again.model_loads == 0 and again.rows_out == ROWS
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)
    with pytest.raises(rayscore.OutputError, match=r"output.mode: resume: the model changed since the run"):
        rayscore.run(resume_job(workload, out, model={"uri": workload["h5"]}), session=rs)
    other = tmp_path / "other.parquet"
    pq.write_table(workload["table"].slice(0, 1000), other)
    with pytest.raises(
        rayscore.OutputError,
        match=r"output.mode: resume: the input changed \(its files, schema or config\) since the run",
    ):
        rayscore.run(resume_job(workload, out, input={"path": str(other)}), session=rs)
    assert again.rows_out == len(pq.read_table(out, columns=["id"]))  # the refused runs wrote nothing


def test_resume_after_the_driver_is_killed_finishes_with_every_row_once(rs, workload, tmp_path):
    out = tmp_path / "scores.parquet"
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(resume_job(workload, out)))
    driver = subprocess.Popen(
        [sys.executable, "-m", "rayscore", "run", str(cfg_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: shard_dirs(out) or driver.poll() is not None, 300, "a committed shard")
        assert driver.poll() is None, "the driver finished before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    committed = shard_dirs(out)
    assert 1 <= len(committed) < 4
    # The killed driver's local Ray and Spark outlive it: what the next run must cope with.
    # Clear them away (they would only slow this machine down): they are in the driver's session.
    for proc in processes_of_session(driver.pid, timeout=0):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    result = rayscore.run(resume_job(workload, out), session=rs)
    assert result.shards == {"total": 4, "reused": len(committed), "scored": 4 - len(committed)}
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    assert shard_dirs(out) == [f"rayscore_shard={i}" for i in range(4)]
    assert not [p for p in out.iterdir() if ".rayscore-" in p.name]  # no staging left behind
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)
