"""Nothing lost, nothing doubled: pre-flight validation, one-line errors for bad
configs and inputs (nothing written, no actor left), and a clean stop on SIGTERM
and Ctrl-C in the middle of scoring.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest
import ray
import yaml

import rayscore

from .conftest import ROWS, assert_matches_model, read_parquet_dir, said, settled_free_cpus, wait_until

pytestmark = pytest.mark.integration

COLUMNS = "id, title_0, title_1, title_2, title_3, hour_of_week, price"
INTERRUPTED = "rayscore: interrupted; stopped the actors, Spark and Ray it had started\n"
# What validate checks, in order: the first word of each line it prints for a good job.
CHECKS = ["config", "model", "output.path", "session", "predict.actors", "input", "columns", "sample", "model run"]


def job(workload: dict, out: Path, **sections) -> dict:
    """A config for the workload; a section given replaces the default one."""
    cfg = {
        "input": {"format": "parquet", "path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"batch_size": 500, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }
    cfg.update(sections)
    return cfg


def listing(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden staging directories included."""
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- the in-process Ray


def actor_states() -> dict[str, str]:
    """Every actor the shared Ray has ever had, by id: ``ClassName STATE`` (no dashboard needed)."""
    return {
        actor_id: f"{info['ActorClassName']} {info['State']}" for actor_id, info in ray._private.state.actors().items()
    }


@pytest.fixture
def no_actor_left(rs):
    """Asserts after the test that it left no actor running and every CPU but Spark's free."""
    free_before = settled_free_cpus(rs)
    assert free_before == ray.cluster_resources()["CPU"] - rs.spark_cpus
    before = actor_states()
    yield
    left = {a: state for a, state in actor_states().items() if a not in before and not state.endswith(" DEAD")}
    assert left == {}
    assert settled_free_cpus(rs) == free_before


# --------------------------------------------------------------------------- validate, in process


def test_validate_a_good_job_lists_its_checks_writes_nothing_and_starts_no_actor(rs, workload, tmp_path, no_actor_left):
    actors_before = actor_states()
    out = tmp_path / "scores.parquet"
    result = rayscore.validate(job(workload, out), session=rs)
    assert result.ok, result.problems
    assert result.problems == ()
    assert [check.split(":")[0] for check in result.checks] == CHECKS
    assert result.checks[2] == f"output.path: {out} does not exist yet and can be written"
    assert result.checks[7] == "sample: the first 1000 rows convert to the model's inputs"
    assert result.checks[-1] == "model run: 8 sample rows predicted in this process (outputs click [1], topics [5])"
    assert listing(tmp_path) == []
    assert actor_states().keys() == actors_before.keys()  # not one actor was created, not even briefly
    assert rs.spark is not None  # the caller's session is left running
    assert rs.spark.range(3).count() == 3


def test_validate_lists_every_problem_not_only_the_first(rs, workload, tmp_path, no_actor_left):
    out = tmp_path / "scores.parquet"
    out.mkdir()
    (out / "old.txt").write_text("old")
    cfg = job(
        workload,
        out,
        model={"uri": workload["keras"], "inputs": {"title_0": "missing_a", "price": "missing_b"}},
        output={"path": str(out), "keep_columns": ["id", "user"]},
    )
    result = rayscore.validate(cfg, session=rs)
    assert not result.ok
    assert result.problems == (
        f"output.path: {out} exists (set output.mode: overwrite to replace it)",
        f"model input 'title_0' needs column 'missing_a', which the input does not have (columns: {COLUMNS})",
        f"model input 'price' needs column 'missing_b', which the input does not have (columns: {COLUMNS})",
        f"output.keep_columns: column 'user' is not in the input (columns: {COLUMNS})",
    )
    assert [check.split(":")[0] for check in result.checks] == ["config", "model", "session", "predict.actors", "input"]
    assert listing(tmp_path) == ["scores.parquet"]
    assert listing(out) == ["old.txt"]


def test_validate_stops_at_a_config_error(tmp_path):
    result = rayscore.validate(
        {
            "input": {"path": "x"},
            "model": {"uri": "m.keras"},
            "output": {"path": str(tmp_path / "o")},
            "predict": {"batch_size": 0},
        }
    )
    assert result.problems == ("predict.batch_size must be >= 1, got 0",)
    assert result.checks == ()
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- bad configs and inputs


@pytest.fixture(scope="module")
def empty_input(tmp_path_factory) -> Path:
    """A directory Spark would read nothing from: no files, or only hidden ones."""
    folder = tmp_path_factory.mktemp("empty") / "features.parquet"
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.parquet.crc").write_text("")
    return folder


BAD = {
    "table-does-not-exist": (
        {"input": {"format": "table", "table": "no_such_table"}},
        rayscore.InputError,
        "input.table: table 'no_such_table' does not exist",
    ),
    "sql-syntax-error": (
        {"input": {"format": "sql", "query": "SELEC id FROM features"}},
        rayscore.InputError,
        "input.query: syntax error at or near 'SELEC' (line 1, pos 0)",
    ),
    "sql-table-does-not-exist": (
        {"input": {"format": "sql", "query": "SELECT * FROM no_such_view"}},
        rayscore.InputError,
        "input.query: the table or view `no_such_view` cannot be found. "
        "Verify the spelling and correctness of the schema and catalog (line 1, pos 14)",
    ),
    "input-dir-without-files": (
        {"input": {"path": "EMPTY"}},
        rayscore.InputError,
        "input.path: EMPTY has no files",
    ),
    "keep-column-missing": (
        {"output": {"keep_columns": ["id", "user"]}},
        rayscore.InputError,
        f"output.keep_columns: column 'user' is not in the input (columns: {COLUMNS})",
    ),
    "keep-column-is-an-output": (
        {
            "input": {"format": "sql", "query": "SELECT *, 0.5 AS click FROM features"},
            "output": {"keep_columns": ["id", "click"]},
        },
        rayscore.ConfigError,
        "output.keep_columns: 'click' is also a model output column (rename it in model.outputs)",
    ),
    "keep-column-is-a-renamed-output": (
        {
            "model": {"uri": "MODEL", "outputs": {"click": "price", "topics": "topics"}},
            "output": {"keep_columns": ["id", "price"]},
        },
        rayscore.ConfigError,
        "output.keep_columns: 'price' is also a model output column (rename it in model.outputs)",
    ),
    "output-is-a-file": (
        {"output": {"keep_columns": ["id"]}},
        rayscore.OutputError,
        "output.path: OUT is a file, not a directory",
    ),
    "unknown-input-format": (
        {"input": {"format": "avro", "path": "DATA"}},
        rayscore.ConfigError,
        "input.format must be one of 'parquet', 'csv', 'json', 'orc', 'table' or 'sql', got 'avro'",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_or_input_is_one_line_nothing_written_no_actor_left(
    rs, workload, empty_input, tmp_path, no_actor_left, case
):
    change, error, message = BAD[case]
    rs.spark.read.parquet(workload["data"]).createOrReplaceTempView("features")
    out = tmp_path / "scores.parquet"
    if case == "output-is-a-file":
        out.write_text("a plain file")
    cfg = job(workload, out)
    for section, values in change.items():
        values = {
            k: {"EMPTY": str(empty_input), "DATA": workload["data"], "MODEL": workload["keras"]}.get(v, v)
            if isinstance(v, str)
            else v
            for k, v in values.items()
        }
        cfg[section] = {**values, "path": str(out)} if section == "output" else values
    message = message.replace("EMPTY", str(empty_input)).replace("OUT", str(out))

    with pytest.raises(error) as caught:
        rayscore.run(cfg, session=rs)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert caught.value.user_error  # the CLI exits 2 on it
    assert listing(tmp_path) == (["scores.parquet"] if case == "output-is-a-file" else [])
    if out.is_file():
        assert out.read_text() == "a plain file"
    # validate reports the same line, and only it
    assert rayscore.validate(cfg, session=rs).problems == (message,)
    assert listing(tmp_path) == (["scores.parquet"] if case == "output-is-a-file" else [])


# --------------------------------------------------------------------------- the CLI, each in its own process

RAY_DAEMONS = ("raylet", "gcs_server")


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


def ray_processes() -> dict[int, str]:
    """Ray daemons (raylet, gcs_server) and RayDP's java processes on this machine: pid -> name."""
    found = {}
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name.startswith(RAY_DAEMONS) or (name == "java" and "raydp" in _cmdline(proc)):
            found[proc.pid] = name
    return found


def own_ray_processes() -> dict[int, str]:
    """Those of them this test session started (the shared ``rs`` session's, if it runs)."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    return {pid: name for pid, name in ray_processes().items() if pid in mine}


def _marker(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get("RAYSCORE_TEST_MARKER")
    except (psutil.Error, OSError):
        return None


def marked(marker: str) -> list[str]:
    """Processes that inherited this run's marker: everything the CLI process started."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.environ().get("RAYSCORE_TEST_MARKER") == marker:
                found.append(f"{proc.pid}:{proc.info['name']}")
        except (psutil.Error, OSError):
            continue
    return found


class Cli:
    """``python -m rayscore ...`` in its own process group, with a marker every child inherits."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        env = {**os.environ, "RAYSCORE_TEST_MARKER": self.marker}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rayscore", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(self, timeout: float) -> tuple[int, str, str]:
        stdout, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stdout, stderr

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def cleanup(self) -> None:
        """Kill whatever this run left (only after a failed assertion): its group, then its marked processes."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=30)
        for entry in marked(self.marker):
            try:
                psutil.Process(int(entry.split(":")[0])).kill()
            except psutil.Error:
                pass

    def ray_processes(self) -> dict[int, str]:
        """This run's Ray daemons and RayDP java processes (they carry its marker)."""
        return {pid: name for pid, name in ray_processes().items() if _marker(pid) == self.marker}

    def assert_nothing_left(self, own_before: dict[int, str], started: dict[int, str] | None = None) -> None:
        """Every process the run started is gone, and this test session's own Ray is untouched.

        Others may start or stop a Ray on this machine meanwhile, so processes
        are compared one by one rather than counted: every process of the run
        carries its marker.
        """
        assert wait_until(lambda: not marked(self.marker), timeout=60), f"left by the run: {marked(self.marker)}"
        assert own_ray_processes() == own_before
        if started is not None:
            assert not set(started) & set(ray_processes())


def write_job(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_validate_a_good_job_exits_0_with_one_line_per_check(workload, tmp_path):
    own_before = own_ray_processes()
    write_job(tmp_path, job(workload, tmp_path / "scores.parquet"))
    cli = Cli(tmp_path, "validate", "job.yaml")
    try:
        code, stdout, stderr = cli.finish(timeout=600)
        assert (code, stderr) == (0, ""), stderr
        lines = stdout.splitlines()
        assert all(line.startswith("rayscore: ok: ") for line in lines), stdout
        assert [line.removeprefix("rayscore: ok: ").split(":")[0] for line in lines] == CHECKS
        assert lines[3] == "rayscore: ok: session: started a local Ray and RayDP's Spark (1 Spark executor(s))"
        assert listing(tmp_path) == ["job.yaml"]
        cli.assert_nothing_left(own_before)
    finally:
        cli.cleanup()


def test_cli_validate_a_bad_job_exits_2_with_one_line_per_problem(workload, tmp_path):
    own_before = own_ray_processes()
    out = tmp_path / "scores.parquet"
    out.mkdir()
    write_job(tmp_path, job(workload, out, model={"uri": workload["keras"], "inputs": {"title_0": "missing"}}))
    cli = Cli(tmp_path, "validate", "job.yaml")
    try:
        code, stdout, stderr = cli.finish(timeout=600)
        assert (code, stdout) == (2, ""), stderr
        assert "Traceback" not in stderr
        assert stderr.splitlines() == [
            f"rayscore: error: output.path: {out} exists (set output.mode: overwrite to replace it)",
            "rayscore: error: model input 'title_0' needs column 'missing', which the input does not have "
            f"(columns: {COLUMNS})",
        ]
        assert listing(tmp_path) == ["job.yaml", "scores.parquet"]
        assert listing(out) == []
        cli.assert_nothing_left(own_before)
    finally:
        cli.cleanup()


# --------------------------------------------------------------------------- clean shutdown


def scoring_started(cli: Cli) -> bool:
    """Whether a predictor actor of this run scores a batch (``ray::Predictor.score``), or the run ended."""
    if cli.proc.poll() is not None:
        return True
    return (
        any(_cmdline(p).startswith("ray::Predictor.score") for p in cli.descendants())
        and "java" in cli.ray_processes().values()
    )


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "Ctrl-C-to-the-process-group"],
)
def test_signal_while_scoring_stops_everything_and_commits_nothing(workload, tmp_path, signum, group):
    """SIGTERM or Ctrl-C while the actors score: exit 130, one line, no output, no process left.

    A terminal's Ctrl-C reaches the whole foreground process group (Ray's
    daemons started by the CLI included), not only the CLI process.
    """
    own_before = own_ray_processes()
    out = tmp_path / "scores.parquet"
    write_job(tmp_path, job(workload, out, predict={"batch_size": 50, "actors": 2}))
    cli = Cli(tmp_path, "run", "job.yaml")
    try:
        assert wait_until(lambda: scoring_started(cli), timeout=300, step=0.1)
        assert cli.proc.poll() is None, cli.finish(timeout=10)  # still scoring when the signal comes
        started = cli.ray_processes()
        assert {"raylet", "gcs_server", "java"} <= set(started.values()), started
        if group:
            os.killpg(cli.proc.pid, signum)
        else:
            cli.proc.send_signal(signum)
        code, stdout, stderr = cli.finish(timeout=60)  # raises if it takes longer
        assert code == 130, stderr
        assert stdout == ""
        assert said(stderr) == INTERRUPTED
        assert not out.exists()
        assert listing(tmp_path) == ["job.yaml"]  # no output, no staging directory
        cli.assert_nothing_left(own_before, started)
    finally:
        cli.cleanup()


def test_an_interrupt_before_the_write_job_is_submitted_returns_after_spark_has_cancelled_it(rs, tmp_path):
    """Ctrl-C can come while Spark's driver still plans a write, before its job exists (a cancel then finds
    nothing): the job the write submits later is cancelled too, and the interrupt comes back only when
    Spark has ended the write, so removing its staging directory afterwards is final."""
    from rayscore._sink import run_to_the_end

    sc = rs.spark.sparkContext
    main = threading.get_ident()

    def never_ends(batches):  # each task runs until Spark kills it
        threading.Event().wait()
        yield from batches

    target = tmp_path / "out"
    frame = rs.spark.range(4, numPartitions=2).mapInPandas(never_ends, "id long")

    def write():
        signal.pthread_kill(main, signal.SIGINT)  # the interrupt, before this write submits its job
        frame.write.parquet(str(target))

    sc.setJobGroup("rayscore-test-interrupt", "test")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_to_the_end(rs.spark, write)
        tracker = sc.statusTracker()
        jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup("rayscore-test-interrupt")]
        assert [j.status for j in jobs] == ["FAILED"]  # the job was submitted after the interrupt, then cancelled
        assert tracker.getActiveJobsIds() == []
        assert not list(target.rglob("part-*"))
    finally:
        sc.cancelJobGroup("rayscore-test-interrupt")  # a job left running would hold the session's executor
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)


def test_spark_failing_to_start_while_the_pool_loads_stops_everything(workload, tmp_path):
    """The pool starts loading the model once Ray is up; then Spark's driver JVM cannot start.

    The run fails in one line naming Spark, and nothing it started is left:
    no predictor, no Ray, no JVM, no output.
    """
    own_before = own_ray_processes()
    out = tmp_path / "scores.parquet"
    write_job(tmp_path, job(workload, out, spark={"configs": {"spark.driver.memory": "not-a-size"}}))
    cli = Cli(tmp_path, "run", "job.yaml")
    try:
        code, stdout, stderr = cli.finish(timeout=300)
        assert code == 1, stderr
        assert stdout == ""
        assert said(stderr).count("\n") == 1  # besides the progress lines
        assert said(stderr).startswith("rayscore: error: spark: [JAVA_GATEWAY_EXITED] Java gateway process exited"), (
            stderr
        )
        assert listing(tmp_path) == ["job.yaml"]
        cli.assert_nothing_left(own_before)
    finally:
        cli.cleanup()


def test_an_executor_killed_mid_job_is_replaced_and_every_row_comes_out_once(workload, tmp_path):
    """SIGKILL the Spark executor that streams the batches: Spark runs its tasks again on a new one.

    The executor is the JVM whose child is pyspark's Python worker daemon (the
    process that talks to the pool). Its lost tasks run again; Spark's commit
    protocol keeps each task's output once, and the accumulators count only
    the tasks that succeed, so the commit's row check holds.
    """
    out = tmp_path / "scores.parquet"
    write_job(tmp_path, job(workload, out, predict={"batch_size": 50, "actors": 1}))
    cli = Cli(tmp_path, "run", "job.yaml", "--json")

    def streaming_executor() -> psutil.Process | None:
        for proc in cli.descendants():
            if "pyspark.daemon" in _cmdline(proc) or "pyspark/daemon.py" in _cmdline(proc):
                parent = proc.parent()
                if parent is not None and parent.name() == "java":
                    return parent
        return None

    try:
        assert wait_until(lambda: scoring_started(cli), timeout=300, step=0.1)
        executor = wait_until(streaming_executor, timeout=60, step=0.1)
        assert executor is not None and cli.proc.poll() is None, "the job ended before its executor was killed"
        executor.kill()
        code, stdout, stderr = cli.finish(timeout=400)
        assert code == 0, stderr[-2000:]
        report = json.loads(stdout)
        assert report["rows_in"] == report["rows_out"] == 6000
        assert not executor.is_running()
        assert_matches_model(read_parquet_dir(out), workload)
        assert listing(tmp_path) == ["job.yaml", "scores.parquet"]
    finally:
        cli.cleanup()


SESSION_BLOCK = """
import json, sys, psutil, rayscore
from pyspark import SparkContext
with rayscore.session(max_actors=1) as s:
    scored = rayscore.predict(s.spark.read.parquet(sys.argv[1]), model=sys.argv[2], keep_columns=["id"], progress=False)
    rows = scored.count()
    inside = [p.pid for p in psutil.Process().children(recursive=True)]
import ray
gone, alive = psutil.wait_procs([psutil.Process(p) for p in inside if psutil.pid_exists(p)], timeout=60)

def running(procs):
    out = []
    for p in procs:
        try:
            out.append(" ".join(p.cmdline()))
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # ended (a zombie only waits to be reaped)
            pass
    return out

print(json.dumps({
    "rows": rows,
    "children_inside": len(inside),
    "alive_after": running(alive),
    "children_after": running(psutil.Process().children(recursive=True)),
    "ray_connected": ray.is_initialized(),
    "spark_context": SparkContext._active_spark_context is not None,
}))
"""


def test_nothing_outlives_a_session_block_seen_from_inside_the_interpreter_right_after_it(workload, tmp_path):
    """docs/operations.md: what a rayscore.session() block started ends with it, looked at in the same process."""
    done = subprocess.run(
        [sys.executable, "-c", SESSION_BLOCK, workload["data"], workload["keras"]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["rows"] == ROWS
    assert seen["children_inside"] >= 4  # Ray's daemons, its workers and the actor, Spark's JVMs
    # What is left is pyspark's own gateway: Spark's driver JVM, which pyspark keeps for the interpreter's
    # life once started (a later SparkSession reuses it) and which holds no executor, actor or Ray process.
    [gateway] = seen["children_after"]
    assert seen["alive_after"] == [gateway]
    assert "org.apache.spark.deploy.SparkSubmit" in gateway and gateway.endswith("pyspark-shell")
    assert seen["ray_connected"] is False and seen["spark_context"] is False
