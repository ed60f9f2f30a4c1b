"""rayscore on the Spark a team already has: standalone with Ray on Spark, and a local Spark beside `ray start`.

The Spark standalone cluster is real: a Master and a Worker on loopback,
started from pyspark's own ``bin/spark-class`` (4 task slots on this
2-core machine). Each user's driver runs in a process of its own
(:mod:`.deploy_driver`), with the virtualenv not activated, as a user's
script would; predictions are checked against ``model.predict``, model
loads counted by the model itself (:class:`.probes.LoadProbe`), and Ray's
daemons counted from ``/proc`` before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from . import probes
from .conftest import ROWS, assert_matches_model, probed_model, read_parquet_dir
from .deploy_driver import ray_daemons, wait_gone
from .test_pipeline import job
from .test_reliability import resume_job

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("deploy_driver.py")
WORKER_CORES = 4  # Spark task slots: 2 for a Ray worker node of 2 CPUs, 2 for the scoring tasks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)  # polling a port that has not opened yet, not waiting for an outcome
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f} s: {log.read_text()[-2000:]}")


def _user_env() -> dict[str, str]:
    """A user's shell: the virtualenv not activated (its bin/ off PATH), no Ray address."""
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYSPARK_", "VIRTUAL_ENV"))}
    env["PATH"] = path or "/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory):
    """A Spark standalone cluster on loopback: ``spark://127.0.0.1:PORT``, one Worker of 4 cores and 8 GB."""
    import pyspark

    home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    env = {
        **_user_env(),
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(logs / "work"),
        # What Ray on Spark reads on the executors (Ray's own tests of it set these): the memory a worker
        # node may size itself from, not the whole machine's.
        "RAY_ON_SPARK_WORKER_PHYSICAL_MEMORY_BYTES": str(8 << 30),
        "RAY_ON_SPARK_WORKER_SHARED_MEMORY_BYTES": str(2 << 30),
    }
    spark_class = str(home / "bin" / "spark-class")
    started = []
    try:
        master_log = logs / "master.log"
        master = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
            + ["--webui-port", "0"],
            env=env,
            stdout=master_log.open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(master)
        _wait_for_port(port, master, "the Spark master", master_log)
        worker_log = logs / "worker.log"
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1"]
            + ["--cores", str(WORKER_CORES), "--memory", "8g", "--webui-port", "0"],
            env=env,
            stdout=worker_log.open("w"),
            stderr=subprocess.STDOUT,
        )
        started.append(worker)
        deadline = time.monotonic() + 120
        while "Successfully registered with master" not in worker_log.read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Spark worker did not register: {worker_log.read_text()[-2000:]}")
            time.sleep(0.2)  # polling the worker's log for its registration line
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def probe_model(workload, tmp_path):
    """The workload's model with a LoadProbe on ``click``: (model path, the probe's log dir)."""
    log, models = tmp_path / "loads", tmp_path / "models"
    log.mkdir(), models.mkdir()
    model = probed_model(workload, models, "click", "LoadProbe", log_dir=str(log))
    for built in log.iterdir():  # building it here constructed the layer once too
        built.unlink()
    return model, log


def _driver(args: dict, timeout: float = 600) -> dict:
    done = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(args)],
        cwd=REPO,
        env={**_user_env(), "PYTHONPATH": str(REPO)},  # the driver's sys.path reaches Ray's workers
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    seen = json.loads(Path(args["out"]).parent.joinpath("driver.json").read_text())  # Ray's own output may follow
    seen["stderr"] = done.stderr
    return seen


def _assert_filtered_predictions(out: Path, workload: dict) -> None:
    """Every row with id % 3 != 0 exactly once, its predictions model.predict's within 1e-5."""
    table = read_parquet_dir(out).sort_by("id")
    kept = [i for i in range(len(workload["click"])) if i % 3]
    assert table.column("id").to_pylist() == kept
    np.testing.assert_allclose(table.column("click").to_numpy(), workload["click"][kept], atol=1e-5, rtol=0)
    topics = np.stack(table.column("topics").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(topics, workload["topics"][kept], atol=1e-5, rtol=0)


def test_predict_on_a_plain_standalone_session_starts_ray_on_spark_survives_a_killed_predictor_and_stops_only_it(
    standalone, workload, tmp_path
):
    """Ray on Spark started by rayscore on the user's session; the first predictor to score is SIGKILLed."""
    import keras

    log, marker = tmp_path / "loads", tmp_path / "killed"
    log.mkdir()
    model_path = tmp_path / "ctr-probed.keras"
    model = probes.with_layer(keras.saving.load_model(workload["keras"]), "click", probes.LoadProbe, log_dir=str(log))
    probes.with_layer(model, "topics", probes.KillOnFirstCall, marker=str(marker)).save(model_path)
    for built in log.iterdir():  # building it here constructed the probe once too
        built.unlink()
    out = tmp_path / "scores.parquet"
    seen = _driver(
        {
            "master": standalone,
            "data": workload["data"],
            "model": str(model_path),
            "custom_objects": probes.CUSTOM_OBJECTS_PATH,
            "out": str(out),
            "actors": 2,
            "ray_on_spark": {"worker_nodes": 1, "cpus_per_node": 2},
        }
    )
    assert seen["path_has_venv_bin"] is False  # Ray on Spark found `ray` through rayscore's start hook
    assert seen["token_in_spark_settings"] is False  # Ray's token reached the tasks, not Spark's configuration
    _assert_filtered_predictions(out, workload)  # every row once, none lost or doubled by the kill
    victim = int(marker.read_text())
    loaded_in = probes.loads_logged(log)
    assert len(loaded_in) == len(set(loaded_in)) == 3  # two actors, and the victim's replacement
    assert victim in loaded_in and not psutil.pid_exists(victim)
    deployment = seen["deployment"]
    assert deployment["kind"] == "ray-on-spark"
    assert deployment["spark"]["master"] == standalone
    assert deployment["ray_on_spark"] == {
        "cpus_per_node": 2,
        "spark_slots": WORKER_CORES,
        "ray_worker_nodes_hold": 2,
        "left_for_scoring": 2,
    }
    assert deployment["ray"]["cpus"] == 2.0  # the head on the driver holds none: the pool is sized from the worker
    assert "scoring on Ray on Spark started by rayscore on the caller's Spark" in seen["stderr"]
    assert seen["ray_daemons_during"] == ["gcs_server", "raylet", "raylet"]  # a head and a worker node
    assert seen["ray_daemons_left"] == []  # what rayscore started has stopped ...
    assert seen["ray_connected_after"] is False
    assert seen["ray_address_after"] == seen["ray_address_before"]  # ... and Ray on Spark's RAY_ADDRESS is undone
    assert seen["spark_stopped"] is False and seen["users_count_after"] == 500  # the user's Spark runs on


def test_validate_resume_and_quarantine_on_a_session_with_ray_on_spark(standalone, workload, dirty, tmp_path):
    """Whole jobs on one rayscore.session(spark=…) with Ray on Spark: validate, resume twice, quarantine."""
    out, errors, quarantined = tmp_path / "resumed.parquet", tmp_path / "errors.parquet", tmp_path / "good.parquet"
    resume = resume_job(workload, out, predict={"actors": 2})
    with_bad_rows = job(
        workload,
        quarantined,
        input={"path": dirty["path"]},
        predict={"on_bad_rows": "quarantine", "reject_nan": True, "actors": 2},
        output={"errors_path": str(errors)},
    )
    seen = _driver(
        {
            "master": standalone,
            "data": workload["data"],
            "out": str(tmp_path / "unused.parquet"),
            "ray_on_spark": {"worker_nodes": 1, "cpus_per_node": 2},
            "jobs": [
                {"kind": "validate", "config": resume},
                {"kind": "run", "config": resume},
                {"kind": "run", "config": resume},
                {"kind": "run", "config": with_bad_rows},
            ],
        }
    )
    validated, first, again, bad = seen["jobs"]
    assert validated["ok"], validated
    assert "session: using the session passed in" in validated["checks"]
    assert any(c.startswith("predict.actors: a pool of 2 actor(s)") for c in validated["checks"])
    assert first["ok"] and again["ok"], (first, again)
    assert first["result"]["shards"] == {"total": 4, "reused": 0, "scored": 4}
    assert again["result"]["shards"] == {"total": 4, "reused": 4, "scored": 0}
    assert again["result"]["model_loads"] == 0
    assert_matches_model(pq.read_table(out, columns=["id", "click", "topics"]), workload)
    assert bad["ok"], bad
    assert (bad["result"]["rows_in"], bad["result"]["rows_quarantined"]) == (ROWS, 5)
    assert bad["result"]["deployment"]["kind"] == "ray-on-spark"
    assert pq.read_table(errors).sort_by("id").column("id").to_pylist() == [10, 20, 30, 4000, 5000]
    assert len(read_parquet_dir(quarantined)) == ROWS - 5
    assert seen["ray_daemons_left"] == [] and seen["users_count_after"] == 500


def test_rayscore_run_with_a_standalone_master_and_no_room_left_for_scoring_exits_2(standalone, workload, tmp_path):
    """Two worker nodes of 2 CPUs would hold all 4 of Spark's task slots: one line, exit 2, nothing written."""
    out = tmp_path / "scores.parquet"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"format": "parquet", "path": workload["data"]},
                "model": {"uri": workload["keras"]},
                "output": {"path": str(out), "keep_columns": ["id"]},
                "spark": {"master": standalone, "ray_on_spark": {"worker_nodes": 2, "cpus_per_node": 2}},
            }
        )
    )
    rayscore_cli = shutil.which("rayscore", path=os.path.dirname(sys.executable))
    done = subprocess.run(
        [rayscore_cli, "run", str(job), "--quiet"], env=_user_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "rayscore: error: spark.ray_on_spark: 2 Ray worker node(s) of 2 CPU(s) would hold 4 of Spark's 4 task "
        "slots for as long as they live, leaving 0 for the scoring job's tasks: ask for fewer or smaller worker "
        "nodes (spark.ray_on_spark.worker_nodes, cpus_per_node) or give Spark more executor cores"
    ]
    assert not out.exists() and not list(tmp_path.glob(".*staging*"))


@pytest.fixture
def ray_head(tmp_path):
    """A Ray cluster of the user's: ``ray start --head --block`` on loopback, 2 CPUs; its address. Left running."""
    port = _free_port()
    log = tmp_path / "ray-head.log"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
        + ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env={**_user_env(), "PYTHONPATH": str(REPO)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():  # its raylet too, not only the GCS's port
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)  # polling the log for the line `ray start` prints once the node is up
        yield f"127.0.0.1:{port}", head
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)


def test_predict_on_a_local_session_joins_the_users_ray_from_ray_address_and_leaves_it_running(
    ray_head, workload, probe_model, tmp_path
):
    address, head = ray_head
    model, log = probe_model
    out = tmp_path / "scores.parquet"
    env_args = {
        "master": "local[2]",
        "data": workload["data"],
        "model": model,
        "custom_objects": probes.CUSTOM_OBJECTS_PATH,
        "out": str(out),
        "actors": 2,
        "ray_address": address,
    }
    seen = _driver(env_args)
    _assert_filtered_predictions(out, workload)
    loaded_in = probes.loads_logged(log)
    assert len(loaded_in) == len(set(loaded_in)) == 2
    assert seen["deployment"]["kind"] == "ray-cluster"
    assert seen["deployment"]["ray"] == {"nodes": 1, "cpus": 2.0, "gpus": 0.0}
    port = address.rsplit(":", 1)[1]
    assert "scoring on the caller's Spark (local[2]) with the Ray cluster at " in seen["stderr"]
    assert f":{port} (joined)" in seen["stderr"]
    assert seen["ray_daemons_during"] == []  # rayscore started no Ray of its own
    assert head.poll() is None  # the user's cluster runs on after the driver exited
    # The user's cluster is up, and its CPUs come back once the driver's actors are gone.
    check = (
        f"import ray, time; ray.init(address={address!r}, log_to_driver=False); deadline = time.monotonic() + 60\n"
        "while ray.available_resources().get('CPU', 0) < 2 and time.monotonic() < deadline: time.sleep(0.2)\n"
        "print(ray.available_resources().get('CPU', 0), len(ray.nodes()))"
    )
    status = subprocess.run(
        [sys.executable, "-c", check],
        env={**_user_env(), "RAY_AUTH_MODE": "token"},  # as a user's own script must say, with this token
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert status.returncode == 0, status.stderr[-2000:]
    assert status.stdout.split()[-2:] == ["2.0", "1"]


def test_rayscore_run_with_spark_master_starts_ray_on_spark_and_reports_what_each_side_got(
    standalone, workload, tmp_path
):
    out = tmp_path / "scores.parquet"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"format": "sql", "query": f"SELECT * FROM parquet.`{workload['data']}` WHERE id % 3 != 0"},
                "model": {"uri": workload["keras"]},
                "predict": {"actors": 2, "batch_size": 500},
                "output": {"path": str(out), "keep_columns": ["id"]},
                "spark": {"master": standalone, "ray_on_spark": {"worker_nodes": 1, "cpus_per_node": 2}},
            }
        )
    )
    rayscore_cli = shutil.which("rayscore", path=os.path.dirname(sys.executable))
    env = {**_user_env(), "PYTHONPATH": str(REPO)}
    before = ray_daemons()
    done = subprocess.run(
        [rayscore_cli, "run", str(job), "--quiet"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "rayscore: scoring on Ray on Spark started by rayscore on rayscore's Spark" in done.stderr
    _assert_filtered_predictions(out, workload)
    report = json.loads((out / "_rayscore_report.json").read_text())
    assert report["rows_in"] == report["rows_out"] == 4000
    assert report["model_loads"] == 2
    assert report["deployment"]["kind"] == "ray-on-spark"
    assert report["deployment"]["ray_on_spark"]["left_for_scoring"] == 2
    assert sorted(wait_gone(ray_daemons() - before)) == []  # Ray on Spark's nodes ended with the CLI


def test_ctrl_c_in_rayscore_leaves_the_users_ray_on_spark_and_their_other_job_running(standalone, workload, tmp_path):
    out = tmp_path / "scores.parquet"
    seen = _driver(
        {
            "master": standalone,
            "data": workload["data"],
            "model": workload["keras"],
            "custom_objects": probes.CUSTOM_OBJECTS_PATH,
            "out": str(out),
            "interrupt": True,
        }
    )
    assert seen["interrupted"] is True  # the interrupt reached the caller, after rayscore stopped its own part
    assert seen["deployment"]["kind"] == "ray-cluster"  # the user's Ray on Spark, joined as it was
    assert seen["users_job"] == {"sum": 4950}  # their job on the same SparkSession ran to its end
    assert seen["users_ray_connected"] is True and seen["users_ray_cpus"] == 2.0  # their Ray on Spark runs on
    assert seen["leftovers"] == ["interrupted", "interrupting.keras", "release"]  # nothing committed or staged


def _predictor_scoring() -> bool:
    """Whether a pool actor anywhere on this machine is scoring a batch (Ray titles it ``ray::Predictor.score``)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if (proc.info["cmdline"] or [""])[0].startswith("ray::Predictor.score"):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return False


def test_sigterm_to_rayscore_run_on_ray_on_spark_stops_the_cluster_it_started_and_commits_nothing(
    standalone, workload, tmp_path
):
    out = tmp_path / "scores.parquet"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "input": {"format": "parquet", "path": workload["data"]},
                "model": {"uri": workload["keras"]},
                "predict": {"actors": 2, "batch_size": 50},
                "output": {"path": str(out), "keep_columns": ["id"]},
                "spark": {"master": standalone, "ray_on_spark": {"worker_nodes": 1, "cpus_per_node": 2}},
            }
        )
    )
    before = ray_daemons()
    cli = subprocess.Popen(
        [shutil.which("rayscore", path=os.path.dirname(sys.executable)), "run", str(job_file), "--quiet"],
        env=_user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _predictor_scoring():
            assert cli.poll() is None and time.monotonic() < deadline, cli.communicate(timeout=30)
            time.sleep(0.1)  # polling for the moment a batch is being scored
        during = ray_daemons() - before
        cli.send_signal(signal.SIGTERM)
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "rayscore: interrupted; stopped the actors, Spark and Ray it had started"
    assert stdout == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
    assert len(during) >= 3  # Ray on Spark's head (gcs_server, raylet) and its worker node's raylet ...
    assert sorted(wait_gone(during)) == []  # ... all gone with the run


def test_predict_outside_a_session_on_a_cluster_master_starts_ray_on_spark_sized_for_the_pool_until_exit(
    standalone, workload, probe_model, tmp_path
):
    """No session block: the first rayscore.predict starts Ray on Spark for the user's session, one worker node
    of the pool's CPUs, kept for later calls and stopped when the interpreter exits."""
    model, log = probe_model
    out = tmp_path / "scores.parquet"
    before = ray_daemons()
    seen = _driver(
        {
            "master": standalone,
            "data": workload["data"],
            "model": model,
            "custom_objects": probes.CUSTOM_OBJECTS_PATH,
            "out": str(out),
            "actors": 2,
        }
    )
    _assert_filtered_predictions(out, workload)
    assert len(probes.loads_logged(log)) == 2
    deployment = seen["deployment"]
    assert deployment["kind"] == "ray-on-spark"
    assert deployment["ray_on_spark"]["cpus_per_node"] == 2  # actors=2 x 1 CPU, on the one worker node
    assert deployment["ray_on_spark"]["left_for_scoring"] == 2
    assert "scoring on Ray on Spark started by rayscore on the caller's Spark (spark://" in seen["stderr"]
    assert seen["ray_daemons_during"] == ["gcs_server", "raylet", "raylet"]
    assert seen["ray_connected_after"] is True  # kept after the action, for the next one ...
    assert sorted(wait_gone(ray_daemons() - before)) == []  # ... and stopped when the driver exited
