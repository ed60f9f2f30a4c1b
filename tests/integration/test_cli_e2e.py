"""The ``rayscore`` command end to end, each run in its own process with its own Ray.

These start what a user's ``rayscore run`` starts: a local Ray and RayDP's
Spark (the embedded default) or a connection to a running cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from .conftest import PROGRESS_LINE, assert_matches_model, processes_of_session, read_parquet_dir, said

pytestmark = pytest.mark.integration


def rayscore_cli(config: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``rayscore run`` in a session of its own; once it has returned, nothing it started may still run."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayscore", "run", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        left = [p.pid for p in processes_of_session(proc.pid)]
        for pid in left:  # a failing assertion below must not leave them running
            os.kill(pid, signal.SIGKILL)
    assert not left, f"rayscore run left {len(left)} process(es) running: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def config_for(workload: dict, out: Path, **sections) -> dict:
    cfg = {
        "input": {"path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"batch_size": 1000, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }
    cfg.update(sections)
    return cfg


def test_cli_runs_the_embedded_default_and_stops_what_it_started(workload, tmp_path):
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out), tmp_path, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # Ray's, Spark's and TF's logs go to the log file; --quiet: no progress
    report = json.loads(done.stdout)
    assert report["rows_in"] == report["rows_out"] == 6000
    assert report["model_loads"] == 2
    assert 0 < report["seconds"]["first_prediction"] < report["seconds"]["total"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "scores.parquet"]
    assert json.loads((out / "_rayscore_report.json").read_text())["rows_out"] == 6000
    assert_matches_model(read_parquet_dir(out), workload)


def test_cli_a_bad_row_past_the_sample_fails_the_run_in_one_line(workload, tmp_path):
    """Raised in a Spark task by the pool's actor, the error reaches the user as any other: exit 2, nothing left."""
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
    assert said(done.stderr).count("\n") == 1
    assert "column 'hour_of_week' is ragged: rows hold 167 to 168 values" in said(done.stderr)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "ragged.parquet"]


def test_cli_bad_input_after_start_is_one_line_exit_2_and_nothing_written(workload, tmp_path):
    out = tmp_path / "scores.parquet"
    cfg = config_for(workload, out, model={"uri": workload["keras"], "inputs": {"title_0": "missing"}})
    done = rayscore_cli(cfg, tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert said(done.stderr).count("\n") == 1
    assert said(done.stderr).startswith(
        "rayscore: error: model input 'title_0' needs column 'missing', which the input does not have"
    )
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


@pytest.fixture(scope="module")
def running_cluster():
    """A Ray cluster started apart from rayscore, as `ray start --head` would."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 4, "include_dashboard": False})
    yield cluster
    cluster.shutdown()


def cluster_probe(address: str) -> dict:
    """Resources of the cluster, seen from a fresh driver process."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print(json.dumps({'total': ray.cluster_resources().get('CPU', 0),"
        " 'free': ray.available_resources().get('CPU', 0), 'nodes': len(ray.nodes())}))"
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


QUIET_SCRIPT = """
import sys
import rayscore

data, model, out = sys.argv[1:4]
with rayscore.session() as s:
    df = s.spark.read.parquet(data).where("id < 100")
    print("predict:", rayscore.predict(df, model=model, keep_columns=["id"]).count())
job = {"input": {"path": data}, "model": {"uri": model}, "output": {"path": out, "keep_columns": ["id"]}}
print("run:", rayscore.run(job).rows_out)
"""


def test_the_python_api_prints_nothing_but_the_scripts_own_lines(workload, tmp_path):
    """Ray's, Spark's and TensorFlow's lines go to the log file under $TMPDIR, not the script's terminal."""
    out = tmp_path / "scores.parquet"
    proc = subprocess.Popen(
        [sys.executable, "-c", QUIET_SCRIPT, workload["data"], workload["keras"], str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path), "RAY_TMPDIR": "/tmp"},
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        for left in processes_of_session(proc.pid):
            left.kill()
    assert proc.returncode == 0, stderr
    assert (stdout, said(stderr)) == ("predict: 100\nrun: 6000\n", "")  # stderr: run()'s progress lines only
    assert PROGRESS_LINE.match(stderr.splitlines()[-1]).group(1) == "6,000"
    [log] = (tmp_path / "rayscore-logs").iterdir()
    text = log.read_text(errors="replace")
    assert "NativeCodeLoader" in text  # Spark's JVM's lines: what the terminal was spared
    assert_matches_model(read_parquet_dir(out), workload)
