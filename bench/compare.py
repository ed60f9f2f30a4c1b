"""rayscore against the limit and against Spark's ``predict_batch_udf``, on one machine, in one invocation.

    python bench/compare.py --rows 1000000                 # speed: three ways, same rows, same answers
    python bench/compare.py --memory --rows 1000000 4000000 # memory: rayscore's peak at each size
    python bench/compare.py --memory --rows 1000000 4000000 --reader spark --writer spark  # ... Spark's way

**Speed mode** makes the workload of ``bench_e2e.py`` (the example's
multi-input model, ``--rows`` rows in parquet), then runs one after another:

1. **limit**: one process, no Ray, no Spark: pyarrow reads the parquet,
   ``features_of`` makes numpy arrays, ``model.predict(batch_size=4096)``
   scores them on every core;
2. **predict_batch_udf**: plain PySpark ``local[N]`` (N = cores) reads the
   parquet, ``pyspark.ml.functions.predict_batch_udf`` (each Python worker loads
   the model once, batch 4096) scores it, and Spark writes parquet; timed after
   the session is up;
3. **rayscore**: ``rayscore.run`` on the embedded default (local Ray + RayDP
   Spark), parquet in, parquet out, timed after start-up (``total -
   startup``: Ray and Spark up until the output is committed; the whole
   job is printed beside it). The input is a plain parquet scan and the
   output a local parquet path, so the pool's actors read the files and
   write the predictions' part files themselves (``input_reader`` and
   ``output_writer``: ``parquet``); Spark commits them;
4. **rayscore, output.writer: spark**: the same job with Spark's writer
   writing the predictions (RayDP hands them from Ray to Spark);
5. **rayscore, input.reader: spark**: Spark reads the input too (RayDP hands
   it to Ray), the way any other DataFrame goes.

The rayscore ways start Spark's JVMs from this machine's class-data archive
(``rayscore._cds``), as every run after a machine's first does: if there is
none yet, a 20,000-row job records the JVMs' classes first and its
background build is waited for.

It checks that all three give the same predictions (by ``id``, max abs
difference <= 1e-5) and prints rows/s, seconds, the peak memory of each way's
process tree, and the two ratios the targets are about: rayscore / limit
(target >= 0.5) and rayscore / predict_batch_udf (target >= 3).

**Memory mode** runs only rayscore, once per ``--rows`` value, and prints the
peak of the summed proportional set size (PSS: shared pages such as Ray's
object store counted once) of every process of the run (the driver, Ray's
daemons and workers, Spark's JVMs), and the ratio of each peak to the first.
``--reader spark`` / ``--writer spark`` measure the job with Spark reading the
input (RayDP hands it to Ray) and writing the predictions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e  # noqa: E402

UDF_BATCH_SIZE = 4096


@dataclass
class UdfResult:
    rows: int
    seconds: float
    startup_seconds: float
    output_path: str
    peak_rss_bytes: int = 0


def run_udf(workload: e2e.Workload, workdir: str, cores: int) -> UdfResult:
    """Child process: plain PySpark local[cores] + predict_batch_udf, parquet in, parquet out."""
    import numpy as np  # noqa: PLC0415
    from pyspark.ml.functions import predict_batch_udf  # noqa: PLC0415
    from pyspark.sql import SparkSession  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType  # noqa: PLC0415

    from rayscore._session import JAVA_OPTIONS  # noqa: PLC0415

    os.environ["PYSPARK_PYTHON"] = sys.executable
    t0 = time.perf_counter()
    java = " ".join(JAVA_OPTIONS)
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("udf-bench")
             .config("spark.driver.extraJavaOptions", java).config("spark.executor.extraJavaOptions", java)
             .config("spark.driver.memory", "8g").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    model_path = workload.model_path

    def make_predict_fn():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras  # noqa: PLC0415

        model = keras.saving.load_model(model_path, compile=False)

        def predict(t0, t1, t2, t3, hours, price):
            out = model.predict_on_batch({"title_0": t0, "title_1": t1, "title_2": t2, "title_3": t3,
                                          "hour_of_week": hours.reshape(-1, 24, 7), "price": price})
            return {"click": np.asarray(out["click"]).reshape(-1), "topics": np.asarray(out["topics"])}

        return predict

    schema = StructType([StructField("click", FloatType()), StructField("topics", ArrayType(FloatType()))])
    score = predict_batch_udf(make_predict_fn, return_type=schema, batch_size=UDF_BATCH_SIZE,
                              input_tensor_shapes=[[20], [20], [20], [20], [168], None])
    out = os.path.join(workdir, "udf_scores.parquet")
    t0 = time.perf_counter()
    df = spark.read.parquet(workload.data_path)
    scored = df.select("id", score("title_0", "title_1", "title_2", "title_3", "hour_of_week", "price")
                       .alias("p")).select("id", F.col("p.click").alias("click"), F.col("p.topics").alias("topics"))
    scored.write.mode("overwrite").parquet(out)
    seconds = time.perf_counter() - t0
    rows = spark.read.parquet(out).count()
    spark.stop()
    return UdfResult(rows, seconds, startup, out)


def check_udf(limit: e2e.LimitResult, udf: UdfResult) -> e2e.Check:
    return e2e.check_predictions(limit, e2e.RayscoreRun(udf.rows, udf.rows, {}, 0.0, udf.output_path, 0))


def speed(args: argparse.Namespace, workdir: str) -> int:
    rows = args.rows[0]
    print(f"making the workload ({rows:,} rows) in {workdir} ...", flush=True)
    workload = e2e._in_child(e2e.make_workload, workdir, rows)
    cores = os.cpu_count() or 1

    print("1/5 the limit (one process, model.predict) ...", flush=True)
    with e2e.PeakMemory() as mem:
        limit = e2e._in_child(e2e.run_limit, workload, workdir)
    limit.peak_rss_bytes = max(limit.peak_rss_bytes, mem.peak_bytes)

    print(f"2/5 Spark local[{cores}] + predict_batch_udf ...", flush=True)
    with e2e.PeakMemory() as mem:
        udf = e2e._in_child(run_udf, workload, workdir, cores)
    udf.peak_rss_bytes = mem.peak_bytes

    warm_class_data(args, workdir)
    runs = {}
    for step, (reader, writer) in enumerate((("auto", "auto"), ("auto", "spark"), ("spark", "auto")), start=3):
        print(f"{step}/5 rayscore.run (local Ray + RayDP Spark), input.reader: {reader}, output.writer: {writer} ...",
              flush=True)
        config = e2e.rayscore_config(workload, os.path.join(workdir, f"scores-{reader}-{writer}.parquet"),
                                     args.actors, args.batch_size, spark=_spark(args))
        config["input"]["reader"] = reader
        config["output"]["writer"] = writer
        with e2e.PeakMemory() as mem:
            run = e2e._in_child(e2e.run_rayscore, config)
        run.peak_rss_bytes = mem.peak_bytes
        runs[f"rayscore ({run.result['input_reader']} → {run.result['output_writer']})"] = run
    scored = next(iter(runs.values()))

    checks = {"predict_batch_udf": check_udf(limit, udf),
              **{name: e2e.check_predictions(limit, run) for name, run in runs.items()}}
    r_limit = rows / limit.seconds
    r_udf = rows / udf.seconds
    r_rs = rows / scored.after_startup_seconds
    print()
    print(f"# {rows:,} rows, {cores} cores; rayscore: {args.actors} actor(s), batch {args.batch_size}, "
          f"Spark executor cores {args.executor_cores or 'default'}")
    print(f"{'way':<30}{'rows/s':>10}{'seconds':>9}{'peak GiB':>10}  detail")
    print(f"{'limit (model.predict)':<30}{r_limit:>10,.0f}{limit.seconds:>9.1f}{limit.peak_rss_bytes / 2**30:>10.2f}"
          f"  read {limit.read_seconds:.1f} s, predict {limit.predict_seconds:.1f} s")
    print(f"{'predict_batch_udf':<30}{r_udf:>10,.0f}{udf.seconds:>9.1f}{udf.peak_rss_bytes / 2**30:>10.2f}"
          f"  after a {udf.startup_seconds:.1f} s Spark start; read, score, write")
    for name, run in runs.items():
        s = run.seconds
        print(f"{name:<30}{rows / run.after_startup_seconds:>10,.0f}{run.after_startup_seconds:>9.1f}"
              f"{run.peak_rss_bytes / 2**30:>10.2f}"
              f"  startup {s.get('startup', 0):.1f} s; read_convert {s.get('read_convert', 0):.1f}, "
              f"predict {s.get('predict', 0):.1f} (load {s.get('load', 0):.1f}), write {s.get('write', 0):.1f}")
    first = next(iter(runs))
    print(f"{first} / limit: {r_rs / r_limit:.2f} (target >= 0.5); "
          f"{first} / predict_batch_udf: {r_rs / r_udf:.2f} (target >= 3)")
    for name, run in runs.items():
        s = run.seconds
        print(f"{name}: first prediction {s.get('first_prediction', 0):.1f} s after "
              f"run() began (target <= 15), Ray + Spark up at {s.get('startup', 0):.1f} s; whole job "
              f"{run.job_seconds:.1f} s = {rows / run.job_seconds:,.0f} rows/s with start-up"
              + (", scored while Spark started" if run.result.get("scored_ahead") else ""))
    print(f"with start-up: limit {rows / (limit.seconds + limit.load_seconds):,.0f} rows/s (model load "
          f"{limit.load_seconds:.1f} s), predict_batch_udf {rows / (udf.seconds + udf.startup_seconds):,.0f} rows/s")
    for name, check in checks.items():
        print(f"{name} vs limit: {check.rows_compared:,} rows compared, missing {check.missing_ids}, "
              f"extra {check.extra_ids}, max abs diff "
              + ", ".join(f"{k} {v:.1e}" for k, v in check.max_abs_diff.items()) + (" OK" if check.ok else " FAIL"))
    return 0 if all(c.ok for c in checks.values()) else 1


def _spark(args: argparse.Namespace) -> dict:
    return {"executor_cores": args.executor_cores} if args.executor_cores else {}


def warm_class_data(args: argparse.Namespace, workdir: str) -> None:
    """Make sure Spark's JVMs start from this machine's class-data archive, as every run after the first does.

    Without one, a small job (Spark reading the input, so that the executor's
    classes are recorded too) records the classes; its build runs in the
    background and is waited for here, not beside the timed ways.
    """
    from rayscore._cds import cds_root  # noqa: PLC0415

    root = cds_root()
    if list(root.glob("*.jsa")) and not list(root.glob("*.lock")):
        print(f"class-data archive: {', '.join(p.name for p in root.glob('*.jsa'))} in {root}", flush=True)
        return
    sub = os.path.join(workdir, "warm")
    os.makedirs(sub, exist_ok=True)
    print(f"class-data archive: none in {root}; a 20,000-row job records the JVMs' classes ...", flush=True)
    workload = e2e._in_child(e2e.make_workload, sub, 20_000)
    config = e2e.rayscore_config(workload, os.path.join(sub, "scores.parquet"), 1, args.batch_size, spark=_spark(args))
    config["input"]["reader"] = "spark"
    e2e._in_child(e2e.run_rayscore, config)
    t0 = time.perf_counter()
    while list(root.glob("*.lock")) and time.perf_counter() - t0 < 900:  # the build, a detached process
        time.sleep(0.5)
    built = [p.name for p in root.glob("*.jsa")]
    print(f"class-data archive: {', '.join(built) or 'NOT built (see *.failed, *.log)'} after "
          f"{time.perf_counter() - t0:.0f} s of building", flush=True)


def memory(args: argparse.Namespace, workdir: str) -> int:
    warm_class_data(args, workdir)
    peaks: list[tuple[int, int, float]] = []
    for rows in args.rows:
        sub = os.path.join(workdir, f"rows-{rows}")
        os.makedirs(sub, exist_ok=True)
        print(f"making the workload ({rows:,} rows) ...", flush=True)
        workload = e2e._in_child(e2e.make_workload, sub, rows)
        config = e2e.rayscore_config(workload, os.path.join(sub, "scores.parquet"), args.actors, args.batch_size,
                                     spark=_spark(args))
        config["input"]["reader"], config["output"]["writer"] = args.reader, args.writer
        print(f"rayscore.run over {rows:,} rows (input.reader: {args.reader}, output.writer: {args.writer}) ...",
              flush=True)
        with e2e.PeakMemory(0.5, pss=True) as mem:
            scored = e2e._in_child(e2e.run_rayscore, config)
        peaks.append((rows, mem.peak_bytes, scored.after_startup_seconds))
        os.remove(workload.data_path)
    print()
    print(f"{'rows':>12}{'peak PSS GiB':>14}{'x first':>9}{'rows/s':>10}")
    for rows, peak, seconds in peaks:
        print(f"{rows:>12,}{peak / 2**30:>14.2f}{peak / peaks[0][1]:>9.2f}{rows / seconds:>10,.0f}")
    print("target: the peak grows by <= 1.3x from 1M to 4M rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--memory", action="store_true", help="rayscore's peak memory at each --rows")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--executor-cores", type=int, default=None,
                        help="spark.executor_cores (default: rayscore's, the machine's cores on a local Ray)")
    parser.add_argument("--reader", choices=("auto", "spark"), default="auto",
                        help="--memory: input.reader (spark: Spark reads the input, RayDP hands it to Ray)")
    parser.add_argument("--writer", choices=("auto", "spark"), default="auto",
                        help="--memory: output.writer (spark: Spark writes the predictions)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    args.json = False
    with e2e.workdir_of(args) as workdir:
        return memory(args, workdir) if args.memory else speed(args, workdir)


if __name__ == "__main__":
    sys.exit(main())
