"""Each deployment on the same filtered DataFrame, in one invocation: start-up, first prediction, rows/s.

    python bench/bench_deployments.py                 # 1,000,000 rows, 2 actors, batch 1024
    python bench/bench_deployments.py --rows 200000

Makes ``bench_e2e.py``'s workload (the example's multi-input model and
``--rows`` rows with a ``country`` column that is never ``'xx'``), scores it
once with ``model.predict`` in one process (the reference answers), then runs
``rayscore run`` with an SQL input selecting ``country != 'xx'`` (the filtered
DataFrame of ``compare.py``) on each deployment, each in its own process:

1. **raydp**: the embedded default (a local Ray, RayDP's Spark on it);
2. **ray-on-spark**: a Spark standalone cluster on loopback (a Master and a
   Worker of 4 cores started from pyspark's own ``bin/spark-class``, as the
   tests start it), ``spark.master: spark://…``, Ray on Spark started by
   rayscore with one worker node of 2 CPUs (2 of Spark's 4 task slots left
   for the scoring tasks);
3. **ray-cluster, local**: ``spark.master: local[2]`` with a local Ray that
   rayscore starts beside it.

For each it prints the run report's ``startup`` (Ray and Spark up, the pool
loading meanwhile), ``first_prediction`` (from the job's start), the rows/s
after start-up (rows / (total - startup)) and of the ``predict`` stage, the
model loads, and whether every row's predictions equal ``model.predict``'s
(max abs difference <= 1e-5). Run it alone: two heavy jobs at once on 2 cores
skew every figure.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e  # noqa: E402

FILTER = "country != 'xx'"
WORKER_CORES = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Standalone:
    """A Spark standalone Master and Worker on loopback, stopped on exit."""

    def __init__(self, workdir: str) -> None:
        import pyspark  # noqa: PLC0415

        self.home = Path(pyspark.__file__).parent
        self.workdir = Path(workdir)
        self.procs: list[subprocess.Popen] = []
        self.url = ""

    def __enter__(self) -> Standalone:
        port = _free_port()
        env = {**os.environ, "SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1"}
        env["SPARK_WORKER_DIR"] = str(self.workdir / "spark-work")
        cls = str(self.home / "bin" / "spark-class")
        master_log, worker_log = self.workdir / "master.log", self.workdir / "worker.log"
        self.procs.append(
            subprocess.Popen(
                [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
                + ["--webui-port", "0"],
                env=env,
                stdout=master_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait(lambda: _listening(port), "the Spark master", 120)
        self.url = f"spark://127.0.0.1:{port}"
        self.procs.append(
            subprocess.Popen(
                [cls, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1"]
                + ["--cores", str(WORKER_CORES), "--memory", "8g", "--webui-port", "0"],
                env=env,
                stdout=worker_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait(lambda: "Successfully registered" in worker_log.read_text(), "the Spark worker", 120)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(timeout=60)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.2)


def config(workload: e2e.Workload, out: str, args: argparse.Namespace, spark: dict) -> dict:
    cfg = e2e.rayscore_config(workload, out, args.actors, args.batch_size, spark=spark)
    cfg["input"] = {"format": "sql", "query": f"SELECT * FROM parquet.`{workload.data_path}` WHERE {FILTER}"}
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the plain Sparks' Python workers run this interpreter
    with tempfile.TemporaryDirectory(prefix="rayscore-deploy-") as tmp:
        workdir = args.dir or tmp
        os.makedirs(workdir, exist_ok=True)
        print(f"making the workload ({args.rows:,} rows) in {workdir} ...", flush=True)
        workload = e2e._in_child(e2e.make_workload, workdir, args.rows)
        print("the reference: model.predict in one process ...", flush=True)
        limit = e2e._in_child(e2e.run_limit, workload, workdir)
        rows: list[tuple[str, e2e.RayscoreRun, e2e.Check]] = []
        ways = [
            ("raydp", {}),
            ("ray-on-spark", None),  # the standalone cluster's url, once it is up
            ("ray-cluster, local", {"master": "local[2]"}),
        ]
        with Standalone(workdir) as standalone:
            for name, spark in ways:
                if spark is None:
                    spark = {"master": standalone.url, "ray_on_spark": {"worker_nodes": 1, "cpus_per_node": 2}}
                out = os.path.join(workdir, f"out-{len(rows)}.parquet")
                print(f"{len(rows) + 1}/{len(ways)} rayscore run on {name} ...", flush=True)
                run = e2e._in_child(e2e.run_rayscore, config(workload, out, args, spark))
                rows.append((name, run, e2e.check_predictions(limit, run)))
        print()
        print(
            f"# {args.rows:,} rows in, {rows[0][1].rows_in:,} after the filter {FILTER!r}; "
            f"{args.actors} actor(s), batch {args.batch_size}; {os.cpu_count()} cores"
        )
        print(
            f"{'deployment':<20} {'startup s':>9} {'first pred s':>12} {'rows/s after start':>18} "
            f"{'predict-stage rows/s':>20} {'loads':>5}  check"
        )
        failed = 0
        for name, run, check in rows:
            s = run.seconds
            after = run.rows_in / max(s["total"] - s["startup"], 1e-9)
            stage = run.rows_in / max(s["predict"], 1e-9)
            verdict = "OK" if check.ok else f"FAIL {check}"
            failed += not check.ok
            print(
                f"{name:<20} {s['startup']:>9.1f} {s.get('first_prediction', 0):>12.1f} {after:>18,.0f} "
                f"{stage:>20,.0f} {run.model_loads:>5}  {verdict} (max abs diff "
                + ", ".join(f"{k} {v:.1e}" for k, v in check.max_abs_diff.items())
                + ")"
            )
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
