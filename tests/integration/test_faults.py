"""Faults beyond one process: inputs that break or change mid-job, two jobs on one output, a full disk.

Each ends either with every input row once and values equal to
``model.predict``, or with one line naming the cause, nothing committed and
any earlier output intact; each test says which, and why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import rayscore

from ..conftest import unavailable
from . import probes
from .conftest import ROWS, assert_matches_model, probed_model, processes_of_session, read_parquet_dir, said
from .test_pipeline import job, leftovers

pytestmark = pytest.mark.integration


def own_copy(workload: dict, folder: Path) -> Path:
    """The workload's three input files, in a folder this test may break."""
    data = folder / "features.parquet"
    shutil.copytree(workload["data"], data)
    return data


def with_old_output(folder: Path) -> Path:
    out = folder / "scores.parquet"
    out.mkdir()
    (out / "part-old.parquet").write_text("the previous run's output")
    return out


def break_file(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("id,price\n1,2.0\n")  # a CSV where parquet was expected


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "it does not end with parquet's magic bytes 'PAR1' (cut short?)"),
        ("not-parquet", "it does not start with parquet's magic bytes 'PAR1'"),
    ],
)
def test_a_broken_local_input_file_is_named_before_anything_is_scored(rs, workload, tmp_path, how, reason):
    """Refused up front: a local file's magic bytes cost two tiny reads, and Spark would only fail mid-job."""
    data = own_copy(workload, tmp_path)
    break_file(data / "part-2.parquet", how)
    out = with_old_output(tmp_path)
    cfg = job(workload, out, input={"path": str(data)}, output={"mode": "overwrite"})
    with pytest.raises(rayscore.InputError) as caught:
        rayscore.run(cfg, session=rs)
    assert str(caught.value) == f"input: {data / 'part-2.parquet'} is not a parquet file (or is truncated): {reason}"
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
    assert leftovers(tmp_path) == ["features.parquet", "scores.parquet"]


def test_a_broken_file_under_an_sql_input_is_named_when_spark_reads_it(rs, workload, tmp_path):
    """An SQL input is Spark's to read (no file check up front): its task fails on the file, named in one line."""
    data = own_copy(workload, tmp_path)
    break_file(data / "part-2.parquet", "truncated")
    out = with_old_output(tmp_path)
    query = f"SELECT * FROM parquet.`{data}` WHERE id >= 0"
    cfg = job(workload, out, input={"format": "sql", "query": query, "path": None}, output={"mode": "overwrite"})
    with pytest.raises(rayscore.InputError) as caught:
        rayscore.run(cfg, session=rs)
    assert str(caught.value) == (
        f"input: {data / 'part-2.parquet'} is not a parquet file (or is truncated): it does not end with "
        "parquet's magic bytes 'PAR1' (cut short?); nothing committed"
    )
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
    assert leftovers(tmp_path) == ["features.parquet", "scores.parquet"]


@pytest.mark.parametrize(("action", "victim"), [("delete", "part-2.parquet"), ("rewrite", "part-0.parquet")])
def test_an_input_file_changed_mid_job_fails_it_naming_the_file(rs, workload, tmp_path, action, victim):
    """Spark opens each file when its task runs, so a file changed mid-job would give a short or mixed
    output. The job compares every input file's size and time with its start just before the commit (or
    Spark fails reading a deleted one) and refuses: the old output stays."""
    data = own_copy(workload, tmp_path)
    size = (data / victim).stat().st_size
    model = probed_model(
        workload,
        tmp_path,
        "click",
        "ChangeFileOnFirstCall",
        target=str(data / victim),
        action=action,
        marker=str(tmp_path / "changed"),
    )
    out = with_old_output(tmp_path)
    cfg = job(
        workload,
        out,
        input={"path": str(data)},
        model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH},
        output={"mode": "overwrite"},
    )
    with pytest.raises(rayscore.InputError) as caught:
        rayscore.run(cfg, session=rs)
    assert (tmp_path / "changed").exists()  # the change happened while the pool scored
    message = str(caught.value)
    if action == "delete":
        assert message == f"input: {data / victim} was deleted while the job ran; nothing committed"
    else:
        now = (data / victim).stat().st_size
        assert pq.read_metadata(data / victim).num_rows == 10
        assert message == (
            f"input: {data / victim} changed while the job ran ({size} bytes then, {now} now); nothing committed"
        )
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_two_jobs_on_one_output_at_once_leave_exactly_one_jobs_rows(workload, tmp_path):
    """``mode: error`` and ``mode: overwrite``, two ``rayscore run`` processes started together.

    Each commits by one rename of its whole staging directory, so the output is
    one job's, never a mix: ``overwrite`` may replace the other's committed
    output, and ``error`` refuses an output that appeared while it ran.
    """
    out = tmp_path / "scores.parquet"
    keep = {"error": ["id"], "overwrite": ["id", "price"]}  # tells the two jobs' files apart
    procs = {}
    for mode in keep:
        folder = tmp_path / mode
        folder.mkdir()
        cfg = config_for(workload, out, output={"path": str(out), "mode": mode, "keep_columns": keep[mode]})
        (folder / "job.yaml").write_text(yaml.safe_dump(cfg))
        procs[mode] = subprocess.Popen(
            [sys.executable, "-m", "rayscore", "run", "job.yaml"],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    done = {}
    try:
        for mode, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=900)
            done[mode] = (proc.returncode, stderr)
    finally:
        for proc in procs.values():
            for left in processes_of_session(proc.pid):
                left.kill()
    assert done["overwrite"][0] == 0, done["overwrite"][1]  # nothing refuses an overwrite
    code, stderr = done["error"]
    if code != 0:  # the overwrite committed first: refused at its commit, or (slow to start) before it began,
        # or both renamed at once (the rename landed inside the other's output: taken out again)
        assert code == 2
        assert said(stderr) in (
            f"rayscore: error: output.path: {out} appeared while the job ran; nothing committed\n",
            f"rayscore: error: output.path: {out} exists (set output.mode: overwrite to replace it)\n",
            f"rayscore: error: output.path: another job committed {out} at the same moment; nothing committed\n",
        )
    # Whichever committed first, the overwrite's rows are what is left: it replaced the other's, or the
    # other refused to land on it.
    table = read_parquet_dir(out)
    assert table.column_names == [*keep["overwrite"], "click", "topics"]
    report = json.loads((out / "_rayscore_report.json").read_text())
    assert report["output_columns"] == table.column_names  # the report is the winner's too
    assert_matches_model(table, workload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error", "overwrite", "scores.parquet"]  # no staging


def config_for(workload: dict, out: Path, **sections) -> dict:
    cfg = {
        "input": {"path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"batch_size": 1000, "actors": 1},
        "output": {"path": str(out)},
    }
    cfg.update(sections)
    return cfg


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB filesystem (tmpfs) mounted for the test: room for an old output, not for the new one.

    Needs the right to mount (root, as on this project's machines and CI); where
    that is refused, the test cannot make a disk fill up and says so.
    """
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_an_output_location_that_fills_up_fails_naming_it_and_keeps_the_old_output(rs, workload, small_disk):
    """Spark's writer runs out of room in the staging directory beside the output: one line, the old
    output as it was, no staging left (its part files are removed with it)."""
    out = with_old_output(small_disk)
    cfg = job(workload, out, output={"mode": "overwrite"})
    with pytest.raises(rayscore.OutputError) as caught:
        rayscore.run(cfg, session=rs)
    assert str(caught.value) == f"output.path: {out}: no space left on the device; nothing committed"
    assert sorted(p.name for p in small_disk.iterdir()) == ["scores.parquet"]
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]


@pytest.fixture
def memory_limit(tmp_path):
    """A 512 MiB memory cgroup for the pool's actors (they join it at their first call), and its OOM-kill count.

    The kernel kills a process in it that asks for more, as a container's
    limit does. Needs the right to make cgroups (root, as on this project's
    machines and CI); where that is refused, the test says so.
    """
    v1 = Path("/sys/fs/cgroup/memory")
    group = (v1 if v1.is_dir() else Path("/sys/fs/cgroup")) / f"rayscore-test-{tmp_path.name}"
    try:
        group.mkdir()
        (group / ("memory.limit_in_bytes" if v1.is_dir() else "memory.max")).write_text(str(512 << 20))
    except OSError as exc:
        unavailable(f"cannot make a memory cgroup here: {exc}")
    events = group / ("memory.oom_control" if v1.is_dir() else "memory.events")

    def oom_kills() -> int:
        return int(dict(line.split() for line in events.read_text().splitlines())["oom_kill"])

    yield group / "cgroup.procs", oom_kills
    for pid in (group / "cgroup.procs").read_text().split():  # what is left of the job's actors
        (group.parent / "cgroup.procs").write_text(pid)
    group.rmdir()


def test_an_actor_killed_for_memory_fails_the_job_after_its_restarts_naming_the_node_and_what_to_change(
    rs, workload, tmp_path, memory_limit
):
    """Every batch needs more memory than the actor's limit: Ray restarts the actor 3 times and each
    restart is killed again; then the job fails in one line, nothing committed. Failing is right:
    the same batch on the same limit can only be killed again, and the cure is in the config."""
    procs, oom_kills = memory_limit
    model = probed_model(workload, tmp_path, "click", "KilledForMemory", procs=str(procs), fill_bytes=1 << 30)
    out = with_old_output(tmp_path)
    cfg = job(workload, out, output={"mode": "overwrite"}, predict={"actors": 1, "batch_size": 500})
    cfg["model"] = {"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}
    with pytest.raises(rayscore.PredictError) as caught:
        rayscore.run(cfg, session=rs)
    import ray

    assert oom_kills() == 4  # the first process and its 3 restarts, no more
    said = re.fullmatch(
        r"predict: actor rayscore-[0-9a-f]{12}-0 died while scoring, 4 times \(Ray restarts an actor 3 times\); "
        r"its process on node (\S+) was killed \(Ray: Worker unexpectedly exits with a connection error code 2\.\), "
        r"most likely for memory\. To fit: lower predict\.batch_size \(now 500\), raise predict\.memory_factor so "
        r"that Ray places fewer actors on a node \(each actor asks Ray for \d+\.\d [MG]iB now\), or run fewer actors "
        r"\(predict\.actors\)",
        str(caught.value),
    )
    assert said, str(caught.value)
    assert said[1] == ray.util.get_node_ip_address()
    assert sorted(p.name for p in out.iterdir()) == ["part-old.parquet"]
    assert leftovers(tmp_path) == ["ctr-KilledForMemory.keras", "scores.parquet"]


@pytest.fixture
def doomed_worker(tmp_path):
    """A two-node loopback cluster whose worker node the test kills; each node has its own model cache.

    The custom resources ``on_head`` and ``on_worker`` let a job choose the
    node of Spark's one executor (100 units each: RayDP's master takes a sliver of ``on_head`` too).
    The worker node has an address of its own (127.0.0.2), as every node of a real cluster has: on
    one shared address RayDP's JVM may register with the worker's raylet instead of its own node's,
    and then dies with that node however little it had there.
    """
    from ray.cluster_utils import Cluster

    caches = tmp_path / "caches"
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 3,
            "resources": {"on_head": 100},
            "include_dashboard": False,
            "env_vars": {"RAYSCORE_CACHE_DIR": str(caches / "head")},
        },
    )
    worker = cluster.add_node(
        num_cpus=2,
        resources={"on_worker": 100},
        node_ip_address="127.0.0.2",
        env_vars={"RAYSCORE_CACHE_DIR": str(caches / "worker")},
    )
    cluster.wait_for_nodes()
    yield cluster, worker, caches
    cluster.shutdown()


def run_cli(cfg: dict, folder: Path, name: str) -> subprocess.CompletedProcess:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "rayscore", "run", str(path), "--json"], capture_output=True, text=True, timeout=600
    )


def node_loss_job(workload: dict, folder: Path, cluster, worker, spark_on: str) -> tuple[dict, Path]:
    """A resumable job of 4 shards on 2 actors (one per node: they spread) whose model kills ``worker``
    at the first batch after a shard is committed; Spark's executor on the node with ``spark_on``."""
    import keras

    out, loads = folder / "scores.parquet", folder / "loads"
    loads.mkdir()
    model_with_kill = probes.with_layer(
        keras.saving.load_model(workload["keras"]),
        "click",
        probes.KillNodeAfterShard,
        out_dir=str(out),
        shard_marker="_rayscore_shard.json",
        raylet_pid=worker.all_processes["raylet"][0].process.pid,
        marker=str(folder / "killed"),
    )
    model = folder / "ctr-node-loss.keras"
    probes.with_layer(model_with_kill, "topics", probes.LoadProbe, log_dir=str(loads)).save(model)
    for built in loads.iterdir():  # building it here constructed the probe once too
        built.unlink()
    cfg = {
        "input": {"path": workload["data"]},
        "model": {"uri": str(model), "custom_objects": probes.CUSTOM_OBJECTS_PATH},
        "predict": {"batch_size": 500, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"], "mode": "resume", "key_columns": ["id"], "shards": 4},
        "ray": {"address": cluster.address},
        "spark": {
            "configs": {
                f"spark.ray.raydp_spark_executor.actor.resource.{spark_on}": "1",
                "spark.ray.raydp_spark_master.actor.resource.on_head": "0.001",
                "spark.ray.raydp_spark_master.actor.resource.CPU": "0",
            }
        },
    }
    return cfg, out


def test_a_worker_node_lost_mid_job_with_spark_elsewhere_costs_a_restart_and_the_job_finishes(
    workload, tmp_path, doomed_worker
):
    """Spark's executor is on the head node; the worker node, with one of the actors, is killed mid-job.
    Ray restarts that actor on the head node (its batch in flight is retried there) and the job finishes
    with every row once: nothing lost needed recomputing beyond the batch."""
    from .test_reliability import shard_dirs

    cluster, worker, caches = doomed_worker
    cfg, out = node_loss_job(workload, tmp_path, cluster, worker, "on_head")
    done = run_cli(cfg, tmp_path, "job")
    assert (tmp_path / "killed").exists()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["nodes"] == 2  # an actor had loaded on each node before the kill
    assert report["shards"] == {"total": 4, "reused": 0, "scored": 4}
    assert (report["rows_in"], report["rows_out"]) == (ROWS, ROWS)
    # The restart, counted by the model itself: three loads in three processes (the two actors, then the
    # lost one's replacement), one of them among the processes killed with the node.
    loaded_in = probes.loads_logged(tmp_path / "loads")
    killed = {int(pid) for pid in (tmp_path / "killed").read_text().split()}
    assert len(loaded_in) == len(set(loaded_in)) == 3
    assert len(killed & set(loaded_in)) == 1  # the actor on the lost node; its replacement loaded elsewhere
    assert report["model_loads"] == 3
    assert shard_dirs(out) == [f"rayscore_shard={i}" for i in range(4)]
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)


def test_a_worker_node_lost_mid_job_with_spark_on_it_fails_naming_the_node_and_resume_finishes_it(
    workload, tmp_path, doomed_worker
):
    """The worker node holds Spark's only executor and one of the two actors, and is killed mid-job.
    Ray restarts the actor on the head node, but RayDP starts no new executor, and without one Spark
    cannot recompute what was lost: the job fails naming the node, with the committed shards kept and
    nothing half-written. `mode: resume` then scores only the other shards, on the head node, from the
    head node's cached model copy."""
    from .test_reliability import shard_dirs

    cluster, worker, caches = doomed_worker
    cfg, out = node_loss_job(workload, tmp_path, cluster, worker, "on_worker")
    first = run_cli(cfg, tmp_path, "first")
    assert (tmp_path / "killed").exists()
    assert first.returncode == 1, first.stderr
    said = first.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"rayscore: error: spark: Ray lost node \S+ \(Ray node {worker.node_id[:8]}\) and with it every Spark "
        r"executor; RayDP starts no new ones, and none came back in 30 s, so the job stopped; what it was "
        r"writing is not committed\. Run it again: with output\.mode: resume the shards already committed are "
        r"kept and only the rest is scored \(logs: \S+\)",
        said,
    ), said
    committed = shard_dirs(out)
    assert 1 <= len(committed) < 4
    assert not [p for p in out.iterdir() if ".rayscore-" in p.name]  # nothing half-written left
    [head_copy] = (caches / "head").glob("*-ctr-node-loss.keras")  # the head's actor loaded it
    before = head_copy.stat()

    del cfg["spark"]  # the worker's resource is gone with it
    second = run_cli(cfg, tmp_path, "second")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["shards"] == {"total": 4, "reused": len(committed), "scored": 4 - len(committed)}
    assert (report["rows_in"], report["rows_out"]) == (ROWS, ROWS)
    assert report["nodes"] == 1 and report["model_copies"] == 0  # the head node's copy, not fetched again
    after = head_copy.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert shard_dirs(out) == [f"rayscore_shard={i}" for i in range(4)]
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)
