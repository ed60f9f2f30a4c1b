"""The ``rayscore`` command end to end, each run in its own process with its own Ray.

These start what a user's ``rayscore run`` starts: a local Ray and RayDP's
Spark (the embedded default) or a connection to a running cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from .conftest import assert_matches_model, read_parquet_dir

pytestmark = pytest.mark.integration

RAY_DAEMONS = ("raylet", "gcs_server")


def ray_daemons() -> int:
    """Ray daemon processes on this machine (the test session's own Ray included)."""
    count = 0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and any(proc.info["name"].startswith(d) for d in RAY_DAEMONS):
            count += 1
    return count


def rayscore_cli(config: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "rayscore", "run", str(path), *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


def config_for(workload: dict, out: Path, **sections) -> dict:
    cfg = {
        "input": {"path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"batch_size": 1000, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }
    cfg.update(sections)
    return cfg


def native_library_copies() -> set[str]:
    """Ray's Java runtime's copies of its native library (``/tmp/ray/<epoch ms>/``), by name."""
    root = Path("/tmp/ray")
    return {p.name for p in root.iterdir() if p.name.isdigit()} if root.is_dir() else set()


def test_cli_runs_the_embedded_default_and_stops_what_it_started(workload, tmp_path):
    before = ray_daemons()
    copies = native_library_copies()
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out), tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # Ray's, Spark's and TF's logs go to the log file
    report = json.loads(done.stdout)
    assert report["rows_in"] == report["rows_out"] == 6000
    assert report["model_loads"] == 2
    # A plain local parquet path: the pool scored it from the footers' plan while Spark started.
    assert (report["input_reader"], report["scored_ahead"]) == ("parquet", True)
    assert (report["output_writer"], report["write_jobs"]) == ("parquet", 0)  # the actors wrote the part files
    assert 0 < report["seconds"]["first_prediction"] < report["seconds"]["total"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "scores.parquet"]
    assert json.loads((out / "_rayscore_report.json").read_text())["rows_out"] == 6000
    assert_matches_model(read_parquet_dir(out), workload)
    assert ray_daemons() == before  # its local Ray is gone again
    assert native_library_copies() <= copies  # nor left 40 MB per JVM in /tmp/ray


def test_cli_scores_anew_through_spark_when_spark_reads_the_files_otherwise(workload, tmp_path):
    """Footers with ``uint32`` ids, which Spark reads as ``bigint``: the job scored ahead is cancelled.

    The plan made from the footers no longer holds once Spark has the
    DataFrame, so its pool is stopped and the input is scored the usual way.
    """
    before = ray_daemons()
    table = workload["table"]
    data = tmp_path / "features.parquet"
    pq.write_table(table.set_column(0, "id", table.column("id").cast(pa.uint32())), data)
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out, input={"path": str(data)}), tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["input_reader"], report["scored_ahead"], report["output_writer"]) == ("spark", False, "spark")
    assert report["rows_in"] == report["rows_out"] == 6000
    # What the cancelled pool's actors had written went with it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet", "job.yaml", "scores.parquet"]
    assert report["model_loads"] == 2  # the cancelled pool's loads are not this job's
    scored = read_parquet_dir(out)
    assert scored.schema.field("id").type == pa.int64()  # as Spark reads it
    assert_matches_model(scored, workload)
    assert ray_daemons() == before


def test_cli_a_bad_row_scored_ahead_of_spark_fails_the_run_in_one_line(workload, tmp_path):
    """The error of the pool that scores while Spark starts reaches the user as any other: exit 2, nothing left."""
    before = ray_daemons()
    table = workload["table"]
    how = table.column("hour_of_week").combine_chunks()
    lengths = np.full(len(table), 168, dtype=np.int32)
    lengths[5000] = 167  # far past the sample of the first rows
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ragged = pa.ListArray.from_arrays(pa.array(offsets), how.flatten().slice(0, int(offsets[-1])))
    data = tmp_path / "ragged.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("hour_of_week"), "hour_of_week", ragged), data)
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out, input={"path": str(data)}), tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "column 'hour_of_week' is ragged: rows hold 167 to 168 values" in done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "ragged.parquet"]
    assert ray_daemons() == before


def test_cli_starts_spark_when_rays_session_latest_link_dangles(workload, tmp_path):
    """After /tmp/ray's sessions are cleaned away, ``session_latest`` points nowhere.

    Ray does not replace such a link, and RayDP's agent in Spark's driver JVM
    writes its log there unless told the session's own logs directory: the
    JVM died at start ("Error create log dir") before rayscore passed it.
    """
    link = Path("/tmp/ray/session_latest")  # the agent's default; Ray's default temp dir
    link.parent.mkdir(parents=True, exist_ok=True)
    assert link.is_symlink() or not link.exists(), f"{link} is not a link"
    before = os.readlink(link) if link.is_symlink() else None
    gone = tmp_path / "a-session-cleaned-away"
    link.unlink(missing_ok=True)
    link.symlink_to(gone)
    try:
        out = tmp_path / "scores.parquet"
        done = rayscore_cli(config_for(workload, out), tmp_path)
        assert done.returncode == 0, done.stderr
        assert_matches_model(read_parquet_dir(out), workload)
        assert os.readlink(link) == str(gone)  # Ray left it dangling
    finally:
        link.unlink(missing_ok=True)
        if before is not None:
            link.symlink_to(before)


def test_cli_bad_input_after_start_is_one_line_exit_2_and_nothing_written(workload, tmp_path):
    before = ray_daemons()
    out = tmp_path / "scores.parquet"
    cfg = config_for(workload, out, model={"uri": workload["keras"], "inputs": {"title_0": "missing"}})
    done = rayscore_cli(cfg, tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        "rayscore: error: model input 'title_0' needs column 'missing', which the input does not have")
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
    assert ray_daemons() == before


@pytest.fixture(scope="module")
def running_cluster():
    """A Ray cluster started apart from rayscore, as `ray start --head` would."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 4, "include_dashboard": False})
    yield cluster
    cluster.shutdown()


def cluster_probe(address: str) -> dict:
    """Resources of the cluster, seen from a fresh driver process."""
    code = (
        "import json, ray; ray.init(address=%r, logging_level='ERROR');"
        "print(json.dumps({'total': ray.cluster_resources().get('CPU', 0),"
        " 'free': ray.available_resources().get('CPU', 0), 'nodes': len(ray.nodes())}))" % address
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_joins_a_running_cluster_and_leaves_it_running_and_clean(workload, tmp_path, running_cluster):
    address = running_cluster.address
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out, ray={"address": address}), tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_out"] == 6000
    assert_matches_model(read_parquet_dir(out), workload)
    # The cluster is still up, and once the job's driver is gone every CPU it used is free again.
    deadline = time.monotonic() + 60
    probe = cluster_probe(address)
    while probe["free"] < probe["total"] and time.monotonic() < deadline:
        probe = cluster_probe(address)
    assert probe["nodes"] == 1
    assert probe["free"] == probe["total"] == 4


ON_DEMAND = """
import json, sys, threading
import pyspark.context
import rayscore
import rayscore._session
from rayscore._config import SparkConfig

launched_by = []
launch = pyspark.context.launch_gateway
def recorded(conf=None, popen_kwargs=None):
    launched_by.append(threading.current_thread().name)
    return launch(conf, popen_kwargs)
pyspark.context.launch_gateway = recorded

s = rayscore.Session(spark_config=SparkConfig(configs={"spark.driver.extraJavaOptions": "-Drayscore.marker=1",
                                                      "spark.driver.memory": "1200m"}), max_actors=1)
s.start_ray()
s.start_spark(executors_on_demand=True)
try:
    sc = s.spark.sparkContext
    jvm = s.spark._jvm
    ray_in_driver = [jvm.io.ray.api.Ray.isInitialized()]  # RayDP's connection: only once a conversion needs it
    rayscore._session.connect_driver_to_ray()
    ray_in_driver.append(jvm.io.ray.api.Ray.isInitialized())
    log_level = str(jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel())  # Ray's runtime resets it
    before = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # less the driver
    rows = s.spark.range(1000).selectExpr("sum(id) AS total").collect()[0].total
    after = sc._jsc.sc().getExecutorMemoryStatus().size() - 1
    import ray
    print(json.dumps({"before": before, "after": after, "total": rows, "cpus": s.spark_cpus,
                      "launched_by": launched_by, "master": sc.master, "ray_in_driver": ray_in_driver,
                      "log_level": log_level,
                      "args": list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()),
                      "class_path": jvm.java.lang.System.getProperty("java.class.path"),
                      "logs": ray._private.worker._global_node.get_logs_dir_path()}))
finally:
    s.stop()
"""


def test_executors_on_demand_start_only_when_a_spark_job_needs_one(tmp_path):
    """A job whose actors read and write the files starts Spark without executors; a Spark job still gets one.

    In a fresh process, Spark's driver JVM is launched by rayscore's thread while RayDP starts its app master,
    with the options RayDP gives it: its Java agent and class path, our Java options and the user's, the memory.
    It joins Ray (RayDP's exchange through Ray's object store) only when asked to, before a conversion.
    """
    before = ray_daemons()
    done = subprocess.run([sys.executable, "-c", ON_DEMAND], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: seen[k] for k in ("before", "after", "total", "launched_by", "ray_in_driver")} == {
        "before": 0, "after": 1, "total": sum(range(1000)), "launched_by": ["rayscore-spark-driver"],
        "ray_in_driver": [False, True]}
    assert seen["cpus"] >= 1  # the executors' CPUs are still kept for them
    assert seen["master"].startswith("ray://")
    assert seen["log_level"] == "ERROR"  # else Spark's INFO logs flood the terminal once the driver joins Ray
    args = seen["args"]
    assert any(a.startswith("-javaagent:") and "raydp-agent" in a for a in args), args
    for expected in ("--add-opens=java.base/java.nio=ALL-UNNAMED", "-XX:TieredStopAtLevel=1",
                     "-Drayscore.marker=1", "-Xmx1200m", f"-Dray.logging.dir={seen['logs']}"):
        assert expected in args, (expected, args)
    assert "raydp-1.6" in seen["class_path"] and "/ray/jars/" in seen["class_path"]
    assert ray_daemons() == before
