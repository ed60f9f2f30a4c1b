"""A user's driver script on a plain SparkSession, run by ``test_deployments.py`` in a process of its own.

Spark allows one SparkContext per process and the test process holds
RayDP's, so each deployment is tried from a fresh interpreter, as a user's
``spark-submit``/``python job.py`` would run it: started by its absolute
path with the virtualenv *not* activated (its ``bin/`` is not on ``PATH``).

    python deploy_driver.py '<json args>'

It prints one JSON line (the last line of stdout) with what it saw from
outside rayscore: the Ray processes before and after, its own SparkSession
still working, and ``RAY_ADDRESS`` before and after.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil

RAY_DAEMONS = ("raylet", "gcs_server")


def ray_daemons(names: tuple[str, ...] = RAY_DAEMONS) -> set[int]:
    """Pids of Ray's node daemons of ``names`` on this machine (any cluster's)."""
    found = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        program = os.path.basename(text.split(" ", 1)[0])
        if program in names:
            found.add(proc.pid)
    return found


def wait_gone(pids: set[int], timeout: float = 60.0) -> set[int]:
    """The pids of ``pids`` still alive after waiting up to ``timeout`` for them to end."""
    _, alive = psutil.wait_procs([p for p in (_proc(pid) for pid in pids) if p is not None], timeout=timeout)
    return {p.pid for p in alive}


def _names(pids: set[int]) -> list[str]:
    return sorted(os.path.basename(p.cmdline()[0]) for p in (_proc(pid) for pid in pids) if p is not None)


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _job(session, job: dict) -> dict:
    """``rayscore.validate`` or ``rayscore.run`` of ``job["config"]`` on ``session``: what it returned, or its error."""
    import rayscore

    try:
        if job["kind"] == "validate":
            found = rayscore.validate(job["config"], session=session)
            return {"ok": found.ok, "checks": list(found.checks), "problems": list(found.problems)}
        result = rayscore.run(job["config"], session=session, progress=False)
        return {"ok": True, "result": json.loads(result.to_json())}
    except rayscore.RayscoreError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def interrupted(args: dict, spark, seen: dict) -> None:
    """A user's Ray on Spark and a job of theirs on the same SparkSession, then Ctrl-C in ``rayscore.run``.

    The user starts Ray on Spark themselves (with rayscore's start hook, for
    ``PATH`` and Ray's token) and a Spark job of their own that waits for a
    release file. pyspark's own SIGINT handler cancels every job of the
    context, so the driver puts Python's default back, as a scheduler's
    wrapper would: what is seen is what rayscore does on the interrupt.
    """
    import signal
    import threading

    # Before Ray is imported, as a user exports them: Ray reads its authentication mode once.
    os.environ["RAY_ON_SPARK_START_HOOK"] = "rayscore._deploy.start_hook.RayscoreStartHook"
    os.environ["RAY_AUTH_MODE"] = "token"
    import keras
    import ray
    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    import rayscore
    from tests.integration import probes

    address, _ = setup_ray_cluster(
        max_worker_nodes=1,
        num_cpus_worker_node=2,
        num_gpus_worker_node=0,
        num_cpus_head_node=0,
        head_node_options={"include_dashboard": False},
    )
    ray.init(address=address, log_to_driver=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model = Path(args["out"]).parent / "interrupting.keras"
    probes.with_layer(
        keras.saving.load_model(args["model"]),
        "click",
        probes.InterruptOnFirstCall,
        pid=os.getpid(),
        marker=str(Path(args["out"]).parent / "interrupted"),
    ).save(model)
    release = Path(args["out"]).parent / "release"

    def wait_for_release(rows):
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the user's task runs until the test releases it
        yield sum(rows)

    users: dict = {}

    def users_job() -> None:
        try:
            users["sum"] = spark.sparkContext.parallelize(range(100), 1).mapPartitions(wait_for_release).sum()
        except Exception as exc:  # noqa: BLE001 - reported
            users["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    thread = threading.Thread(target=users_job)
    thread.start()
    cfg = {
        "input": {"format": "parquet", "path": args["data"]},
        "model": {"uri": str(model), "custom_objects": args["custom_objects"]},
        "predict": {"actors": 1, "batch_size": 200},
        "output": {"path": args["out"], "keep_columns": ["id"]},
    }
    with rayscore.session(spark=spark) as s:
        seen["deployment"] = s.deployment.facts()
        try:
            rayscore.run(cfg, session=s, progress=False)
            seen["interrupted"] = False
        except KeyboardInterrupt:
            seen["interrupted"] = True
    release.touch()
    thread.join(timeout=300)
    seen["users_job"] = users
    seen["users_ray_connected"] = ray.is_initialized()
    seen["users_ray_cpus"] = ray.cluster_resources().get("CPU")
    seen["leftovers"] = sorted(p.name for p in Path(args["out"]).parent.iterdir())
    ray.shutdown()
    shutdown_ray_cluster()


def main(args: dict) -> dict:
    from pyspark.sql import SparkSession

    import rayscore
    from rayscore._session import JAVA_OPTIONS

    seen: dict = {"path_has_venv_bin": os.path.dirname(sys.executable) in os.environ.get("PATH", "").split(os.pathsep)}
    seen["ray_address_before"] = os.environ.get("RAY_ADDRESS")
    before = ray_daemons()
    if args.get("ray_address"):  # the user's own cluster, as they would export it
        os.environ["RAY_ADDRESS"] = args["ray_address"]
    if args.get("pyspark_python", True):  # as the deployment page says: the workers run this interpreter
        os.environ["PYSPARK_PYTHON"] = sys.executable
    java = " ".join(JAVA_OPTIONS)
    spark = (
        SparkSession.builder.master(args["master"])
        .appName("a user's job")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.extraJavaOptions", java)
        .config("spark.executor.extraJavaOptions", java)
        .config("spark.executor.memory", "2g")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(args["data"]).where("id % 3 != 0")
    model = {"uri": args.get("model", ""), "custom_objects": args.get("custom_objects")}
    began = time.perf_counter()
    if args.get("interrupt"):
        interrupted(args, spark, seen)
        spark.stop()
        return seen
    if args.get("ray_on_spark") is not None:
        with rayscore.session(spark=spark, ray_on_spark=args["ray_on_spark"]) as s:
            seen["deployment"] = s.deployment.facts()
            from ray._raylet import AuthenticationTokenLoader

            token = AuthenticationTokenLoader.instance().get_raw_token()
            settings = " ".join(f"{k}={v}" for k, v in spark.sparkContext.getConf().getAll())
            seen["token_in_spark_settings"] = bool(token) and token in settings
            if args.get("jobs"):  # whole jobs on the session: validate, run (resume, quarantine)
                seen["jobs"] = [_job(s, job) for job in args["jobs"]]
            else:
                scored = rayscore.predict(df, model=model, keep_columns=["id"], actors=args["actors"], progress=False)
                scored.write.parquet(args["out"])
            during = ray_daemons() - before
            seen["ray_daemons_during"] = _names(during)
    else:  # no session block: the first predict finds the Ray (RAY_ADDRESS) and keeps it until exit
        scored = rayscore.predict(df, model=model, keep_columns=["id"], actors=args["actors"], progress=False)
        scored.write.parquet(args["out"])
        from rayscore._deploy import attached

        seen["deployment"] = attached(spark).facts()
        during = ray_daemons() - before
        seen["ray_daemons_during"] = _names(during)
    seen["seconds"] = round(time.perf_counter() - began, 1)
    import ray

    seen["ray_connected_after"] = ray.is_initialized()
    # The daemons that appeared while rayscore ran (not those another program starts meanwhile) are gone.
    seen["ray_daemons_left"] = sorted(wait_gone(during))
    seen["ray_address_after"] = os.environ.get("RAY_ADDRESS")
    # The user's session and jobs are theirs: still running, nothing cancelled.
    seen["users_count_after"] = spark.range(1000).where("id % 2 = 0").count()
    seen["spark_stopped"] = spark.sparkContext._jsc is None
    spark.stop()
    return seen


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    Path(json.loads(sys.argv[1])["out"]).parent.joinpath("driver.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
