"""rayscore against the strongest in-Spark code and the limit, on one machine, in one invocation.

    python bench/compare.py --rows 1000000                  # speed: every way, same rows, same answers
    python bench/compare.py --memory --rows 1000000 4000000  # memory: rayscore's peak at each size
    python bench/compare.py --memory --rows 1000000 --batch-size 1024 auto  # and at each batch size
    python bench/compare.py --progress-cost 716c07a --rows 1000000  # live progress: rows/s before and after
    python bench/compare.py --rows 1000000 --repeat 5       # the hop's targets: 5 interleaved rounds
    python bench/compare.py --rows 1000000 --repeat 3 \
        --lever "tf 1 thread:TF_NUM_INTRAOP_THREADS=1,TF_NUM_INTEROP_THREADS=1"  # and a lever, interleaved

**Speed mode** makes the workload of ``bench_e2e.py`` (the example's
multi-input model, ``--rows`` rows in parquet, plus a ``country`` column
that is never ``'xx'``), then runs one after another, each in its own
process, on the same rows:

1. **limit**: one process, no Ray, no Spark: pyarrow reads the parquet,
   ``features_of`` makes numpy arrays, ``model.predict(batch_size=4096)``
   scores them on every core;
2. **spark, no model**: plain PySpark ``local[N]`` (N = cores) reads
   ``spark.read.parquet(p).where("country != 'xx'")`` (a filter: no
   shortcut applies), a ``mapInArrow`` returns zeros of the predictions'
   shape, and Spark writes parquet: the ceiling of any design in which
   Spark reads and writes;
3. **spark, mapInArrow UDF**: the same DataFrame, a hand-written Arrow UDF:
   the model loaded once per Python worker, ``predict_on_batch`` on
   whole-batch reshapes, Arrow out (the strongest in-Spark code; one model
   copy per Python worker);
4. **predict_batch_udf**: the same DataFrame through
   ``pyspark.ml.functions.predict_batch_udf``;
5. **rayscore run, SQL**: ``rayscore.run`` on the embedded default with
   ``input.format: sql`` selecting the same filtered rows;
6. **rayscore.predict**: in a ``rayscore.session()``, the same filtered
   DataFrame, ``rayscore.predict(df, ...)`` written by Spark;
7. **rayscore.udf**: the same, as a column: ``df.select("id",
   rayscore.udf(...)(*features))`` written by Spark (Spark's pandas UDF
   machinery converts the array columns through pandas, both ways);
8. **rayscore run, parquet**: ``input.format: parquet`` on the same files.

Spark's ways are timed after their session is up (reading, scoring and
writing; the UDFs load their model inside that time, as rayscore's pool
does for ``rayscore.predict``), then timed again on a second write of the
same DataFrame in the same session (``again``: the models loaded, what a
long job runs at); ``rayscore run`` after start-up (``total -
startup``). It checks that every way that predicts gives the limit's
predictions (by ``id``, max abs difference <= 1e-5) and prints rows/s, the
peak memory of each way's process tree, and the ratios the targets are
about.

**Repeated mode** (``--repeat N``, N > 1, no other mode) runs only the ways
the hop's targets are about, interleaved, N rounds: Spark with no model, the
mapInArrow UDF, ``rayscore run`` with the SQL input and ``rayscore.predict``
(each write and its second write in the session). It prints each way's
median rows/s with the min-max, and each target's ratio as the median of
the rounds' ratios (a round's ways run minutes apart, so drift on a shared
VM cancels) with the min-max; every round's predictions are checked.

**Progress mode** (``--progress-cost REV``) measures what live progress
costs: the SQL job of step 5 run ``--repeat`` times each, alternating, by
the code at git revision ``REV`` (a git worktree, imported by a Python whose
only other path is this environment's packages, so Ray's and Spark's
workers import it too; each child checks which rayscore it ran) and by this tree with its
default progress (plain lines: the children's stderr is not a terminal),
and prints each run's rows/s after start-up and the ratio of the medians.

**Memory mode** runs ``rayscore run`` with the SQL input once per
``--rows`` value and prints the peak of the summed proportional set size
(PSS: shared pages such as Ray's object store counted once) of every
process of the run (the driver, Ray's daemons and workers, Spark's JVMs),
and the ratio of each peak to the first.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e  # noqa: E402

UDF_BATCH_SIZE = 4096
FILTER = "country != 'xx'"
WAYS = ("zeros", "arrow_udf", "predict_batch_udf")
FEATURES = ("title_0", "title_1", "title_2", "title_3", "hour_of_week", "price")


@dataclass
class UdfResult:
    rows: int
    seconds: float
    startup_seconds: float
    output_path: str
    peak_rss_bytes: int = 0
    again_seconds: float = 0.0  # the same action run a second time in the session (its model loaded)


def spark_session(cores: int, way: str, batch_rows: int = UDF_BATCH_SIZE) -> tuple[Any, float]:
    """Plain PySpark local[cores] with the UDFs' settings (``batch_rows`` per Arrow batch), and its start's seconds."""
    from pyspark.sql import SparkSession  # noqa: PLC0415

    from rayscore._session import JAVA_OPTIONS  # noqa: PLC0415

    os.environ["PYSPARK_PYTHON"] = sys.executable
    t0 = time.perf_counter()
    java = " ".join(JAVA_OPTIONS)
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(f"bench-{way}")
        .config("spark.driver.extraJavaOptions", java)
        .config("spark.executor.extraJavaOptions", java)
        .config("spark.driver.memory", "8g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.parquet.enableNestedColumnVectorizedReader", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark, time.perf_counter() - t0


def spark_scored(spark: Any, workload: e2e.Workload, way: str) -> Any:
    """The filtered DataFrame scored by one of :data:`WAYS`, lazily (nothing runs until an action)."""
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType  # noqa: PLC0415

    model_path = workload.model_path
    df = spark.read.parquet(workload.data_path).where(FILTER)
    schema = StructType(
        [
            StructField("id", LongType()),
            StructField("click", FloatType()),
            StructField("topics", ArrayType(FloatType())),
        ]
    )
    if way == "predict_batch_udf":
        from pyspark.ml.functions import predict_batch_udf  # noqa: PLC0415

        def make_predict_fn():
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import keras  # noqa: PLC0415

            model = keras.saving.load_model(model_path, compile=False)

            def predict(t0, t1, t2, t3, hours, price):
                out = model.predict_on_batch(
                    {
                        "title_0": t0,
                        "title_1": t1,
                        "title_2": t2,
                        "title_3": t3,
                        "hour_of_week": hours.reshape(-1, 24, 7),
                        "price": price,
                    }
                )
                return {"click": np.asarray(out["click"]).reshape(-1), "topics": np.asarray(out["topics"])}

            return predict

        returns = StructType(schema.fields[1:])
        score = predict_batch_udf(
            make_predict_fn,
            return_type=returns,
            batch_size=UDF_BATCH_SIZE,
            input_tensor_shapes=[[20], [20], [20], [20], [168], None],
        )
        scored = df.select(
            "id", score("title_0", "title_1", "title_2", "title_3", "hour_of_week", "price").alias("p")
        ).select("id", F.col("p.click").alias("click"), F.col("p.topics").alias("topics"))
    else:
        zeros = way == "zeros"

        def arrow_udf(batches):
            model = None
            if not zeros:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                import keras  # noqa: PLC0415

                # Once per Python worker, not per task (Spark reuses its workers; the function is
                # unpickled per task, so the model is kept on a module the worker has imported).
                models = keras.__dict__.setdefault("_compare_models", {})
                if model_path not in models:
                    models[model_path] = keras.saving.load_model(model_path, compile=False)
                model = models[model_path]
            for batch in batches:
                n = batch.num_rows
                if zeros:
                    click, topics = np.zeros(n, np.float32), np.zeros((n, 5), np.float32)
                else:

                    def tensor(name, *shape, dtype=np.float32):
                        values = batch.column(name).flatten().to_numpy(zero_copy_only=False)
                        return values.astype(dtype, copy=False).reshape(n, *shape)

                    feeds = {f"title_{i}": tensor(f"title_{i}", 20, dtype=np.int32) for i in range(4)}
                    feeds["hour_of_week"] = tensor("hour_of_week", 24, 7)
                    feeds["price"] = batch.column("price").to_numpy(zero_copy_only=False).astype(np.float32)
                    predicted = model.predict_on_batch(feeds)
                    click = np.asarray(predicted["click"]).reshape(n)
                    topics = np.asarray(predicted["topics"], np.float32).reshape(n, 5)
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column("id"),
                        pa.array(click),
                        pa.ListArray.from_arrays(
                            pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32)), pa.array(topics.reshape(-1))
                        ),
                    ],
                    names=["id", "click", "topics"],
                )

        scored = df.select("id", *FEATURES).mapInArrow(arrow_udf, schema)
    return scored


def run_spark(workload: e2e.Workload, workdir: str, cores: int, way: str) -> UdfResult:
    """Child process: plain PySpark local[cores] on the filtered DataFrame, one of :data:`WAYS`, parquet out."""
    spark, startup = spark_session(cores, way)
    out = os.path.join(workdir, f"spark_{way}.parquet")
    t0 = time.perf_counter()
    scored = spark_scored(spark, workload, way)
    scored.write.mode("overwrite").parquet(out)
    seconds = time.perf_counter() - t0
    again = _again(scored, out)
    rows = spark.read.parquet(out).count()
    spark.stop()
    return UdfResult(rows, seconds, startup, out, again_seconds=again)


def _again(scored, out: str) -> float:
    """Seconds to write ``scored`` a second time (beside ``out``), its model already loaded in the session."""
    t0 = time.perf_counter()
    scored.write.mode("overwrite").parquet(f"{out}-again")
    return time.perf_counter() - t0


def run_predict_api(
    workload: e2e.Workload, workdir: str, actors: int, batch_size: int, spark_cfg: dict, column: bool = False
) -> UdfResult:
    """Child process: ``rayscore.predict`` (``column``: ``rayscore.udf``'s column) on the filtered DataFrame in a
    session, written by Spark."""
    import rayscore  # noqa: PLC0415

    t0 = time.perf_counter()
    out = os.path.join(workdir, "rayscore_udf.parquet" if column else "rayscore_predict.parquet")
    with rayscore.session(spark=spark_cfg, max_actors=actors) as s:
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        df = s.spark.read.parquet(workload.data_path).where(FILTER)
        if column:
            ctr = rayscore.udf(model=workload.model_path, batch_size=batch_size, actors=actors)
            scored = df.select("id", ctr(*FEATURES).alias("p")).select("id", "p.click", "p.topics")
        else:
            scored = rayscore.predict(
                df, model=workload.model_path, keep_columns=["id"], batch_size=batch_size, actors=actors
            )
        scored.write.mode("overwrite").parquet(out)
        seconds = time.perf_counter() - t0
        again = _again(scored, out)
        rows = s.spark.read.parquet(out).count()
    return UdfResult(rows, seconds, startup, out, again_seconds=again)


def run_predict_with_env(env: dict[str, str], *args: Any) -> UdfResult:
    """Child process: :func:`run_predict_api` with ``env`` set first, so that the Ray it starts (its actors) has it."""
    os.environ.update(env)
    return run_predict_api(*args)


def lever_arg(value: str) -> tuple[str, dict[str, str]]:
    """``--lever NAME:KEY=VALUE[,KEY=VALUE]``: a rayscore.predict run whose local Ray has these variables."""
    name, sep, pairs = value.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    if not sep or not name or not env:
        raise argparse.ArgumentTypeError(f"NAME:KEY=VALUE[,KEY=VALUE], got {value!r}")
    return name, env


def sql_config(
    workload: e2e.Workload, output_path: str, args: argparse.Namespace, batch_size: int | str | None = None
) -> dict:
    """``rayscore run``'s job on the filtered rows as an SQL input; ``batch_size``: else ``--batch-size``'s first."""
    batch = args.batch_size if batch_size is None else batch_size
    config = e2e.rayscore_config(workload, output_path, args.actors, batch, spark=_spark(args))
    config["input"] = {"format": "sql", "query": f"SELECT * FROM parquet.`{workload.data_path}` WHERE {FILTER}"}
    return config


def check_udf(limit: e2e.LimitResult, udf: UdfResult) -> e2e.Check:
    return e2e.check_predictions(limit, e2e.RayscoreRun(udf.rows, udf.rows, {}, 0.0, udf.output_path, 0))


def speed(args: argparse.Namespace, workdir: str) -> int:
    rows = args.rows[0]
    print(f"making the workload ({rows:,} rows) in {workdir} ...", flush=True)
    workload = e2e._in_child(e2e.make_workload, workdir, rows)
    cores = os.cpu_count() or 1

    print("1/8 the limit (one process, model.predict) ...", flush=True)
    with e2e.PeakMemory() as mem:
        limit = e2e._in_child(e2e.run_limit, workload, workdir)
    limit.peak_rss_bytes = max(limit.peak_rss_bytes, mem.peak_bytes)

    spark_ways: dict[str, UdfResult] = {}
    names = {"zeros": "spark, no model", "arrow_udf": "spark mapInArrow UDF", "predict_batch_udf": "predict_batch_udf"}
    for step, way in enumerate(WAYS, start=2):
        print(f"{step}/8 Spark local[{cores}], {names[way]}, on the filtered DataFrame ...", flush=True)
        with e2e.PeakMemory() as mem:
            result = e2e._in_child(run_spark, workload, workdir, cores, way)
        result.peak_rss_bytes = mem.peak_bytes
        spark_ways[names[way]] = result

    runs: dict[str, e2e.RayscoreRun] = {}
    print("5/8 rayscore run, SQL input (the filtered rows) ...", flush=True)
    with e2e.PeakMemory() as mem:
        runs["rayscore run, SQL"] = e2e._in_child(
            e2e.run_rayscore, sql_config(workload, os.path.join(workdir, "scores-sql.parquet"), args)
        )
    runs["rayscore run, SQL"].peak_rss_bytes = mem.peak_bytes
    print("6/8 rayscore.predict on the filtered DataFrame, written by Spark ...", flush=True)
    with e2e.PeakMemory() as mem:
        api = e2e._in_child(run_predict_api, workload, workdir, args.actors, args.batch_size, _spark(args))
    api.peak_rss_bytes = mem.peak_bytes
    spark_ways["rayscore.predict"] = api
    print("7/8 rayscore.udf's column on the filtered DataFrame, written by Spark ...", flush=True)
    with e2e.PeakMemory() as mem:
        column = e2e._in_child(run_predict_api, workload, workdir, args.actors, args.batch_size, _spark(args), True)
    column.peak_rss_bytes = mem.peak_bytes
    spark_ways["rayscore.udf"] = column
    print("8/8 rayscore run, parquet input ...", flush=True)
    config = e2e.rayscore_config(
        workload, os.path.join(workdir, "scores-parquet.parquet"), args.actors, args.batch_size, spark=_spark(args)
    )
    with e2e.PeakMemory() as mem:
        runs["rayscore run, parquet"] = e2e._in_child(e2e.run_rayscore, config)
    runs["rayscore run, parquet"].peak_rss_bytes = mem.peak_bytes

    checks = {name: check_udf(limit, r) for name, r in spark_ways.items() if name != "spark, no model"}
    checks.update({name: e2e.check_predictions(limit, run) for name, run in runs.items()})
    rate = {"limit": rows / limit.seconds}
    rate.update({name: r.rows / r.seconds for name, r in spark_ways.items()})
    rate.update({name: rows / run.after_startup_seconds for name, run in runs.items()})
    print()
    print(
        f"# {rows:,} rows, {cores} cores; filter {FILTER!r}; rayscore: {args.actors} actor(s), "
        f"batch {e2e.batch_label(workload.model_path, args.batch_size)} (the UDFs: {UDF_BATCH_SIZE:,}), "
        f"Spark executor cores {args.executor_cores or 'default'}"
    )
    print(f"{'way':<26}{'rows/s':>10}{'seconds':>9}{'peak GiB':>10}  detail")
    print(
        f"{'limit (model.predict)':<26}{rate['limit']:>10,.0f}{limit.seconds:>9.1f}"
        f"{limit.peak_rss_bytes / 2**30:>10.2f}  read {limit.read_seconds:.1f} s, predict {limit.predict_seconds:.1f} s"
    )
    for name, r in spark_ways.items():
        print(
            f"{name:<26}{rate[name]:>10,.0f}{r.seconds:>9.1f}{r.peak_rss_bytes / 2**30:>10.2f}"
            f"  after a {r.startup_seconds:.1f} s start; read, score, write {r.rows:,} rows; "
            f"again: {r.again_seconds:.1f} s"
        )
    for name, run in runs.items():
        s = run.seconds
        print(
            f"{name:<26}{rate[name]:>10,.0f}{run.after_startup_seconds:>9.1f}{run.peak_rss_bytes / 2**30:>10.2f}"
            f"  after a {s.get('startup', 0):.1f} s start; read_convert {s.get('read_convert', 0):.1f}, "
            f"predict {s.get('predict', 0):.1f} (load {s.get('load', 0):.1f}), write {s.get('write', 0):.1f}; "
            f"first prediction {s.get('first_prediction', 0):.1f} s after run() began"
        )
    for name in ("rayscore run, SQL", "rayscore.predict"):
        print(
            f"{name}: {rate[name] / rate['spark mapInArrow UDF']:.2f}x the mapInArrow UDF (target >= 1.0), "
            f"{rate[name] / rate['predict_batch_udf']:.2f}x predict_batch_udf (target >= 3), "
            f"{rate[name] / rate['limit']:.2f}x the limit (aim >= 0.5), "
            f"{rate[name] / rate['spark, no model']:.2f}x Spark with no model (the ceiling)"
        )
    print(
        f"rayscore.udf (the column form): {rate['rayscore.udf'] / rate['rayscore.predict']:.2f}x rayscore.predict, "
        f"{rate['rayscore.udf'] / rate['predict_batch_udf']:.2f}x predict_batch_udf"
    )
    udf, api = spark_ways["spark mapInArrow UDF"], spark_ways["rayscore.predict"]
    print(
        f"the second action in the session (model loaded): rayscore.predict {rows / api.again_seconds:,.0f} rows/s, "
        f"{udf.again_seconds / api.again_seconds:.2f}x the mapInArrow UDF's {rows / udf.again_seconds:,.0f}"
    )
    for name, check in checks.items():
        print(
            f"{name} vs limit: {check.rows_compared:,} rows compared, missing {check.missing_ids}, "
            f"extra {check.extra_ids}, max abs diff "
            + ", ".join(f"{k} {v:.1e}" for k, v in check.max_abs_diff.items())
            + (" OK" if check.ok else " FAIL")
        )
    return 0 if all(c.ok for c in checks.values()) else 1


def repeated(args: argparse.Namespace, workdir: str) -> int:
    """``--repeat`` rounds of the ways the hop's targets are about, interleaved; medians and ranges."""
    rows, cores = args.rows[0], os.cpu_count() or 1
    print(f"making the workload ({rows:,} rows) in {workdir} ...", flush=True)
    workload = e2e._in_child(e2e.make_workload, workdir, rows)
    limit = e2e._in_child(e2e.run_limit, workload, workdir)
    rates: dict[str, list[float]] = {}
    ok = True
    for round_ in range(1, args.repeat + 1):
        got: dict[str, float] = {}
        for way in ("zeros", "arrow_udf"):
            print(f"round {round_}/{args.repeat}: Spark local[{cores}], {way} ...", flush=True)
            r = e2e._in_child(run_spark, workload, workdir, cores, way)
            got[way], got[f"{way} again"] = r.rows / r.seconds, r.rows / r.again_seconds
            ok &= way == "zeros" or check_udf(limit, r).ok
        print(f"round {round_}/{args.repeat}: rayscore run, SQL ...", flush=True)
        run = e2e._in_child(e2e.run_rayscore, sql_config(workload, os.path.join(workdir, "scores-sql.parquet"), args))
        got["rayscore run, SQL"] = rows / run.after_startup_seconds
        ok &= e2e.check_predictions(limit, run).ok
        print(f"round {round_}/{args.repeat}: rayscore.predict ...", flush=True)
        api = e2e._in_child(run_predict_api, workload, workdir, args.actors, args.batch_size, _spark(args))
        got["rayscore.predict"], got["rayscore.predict again"] = api.rows / api.seconds, api.rows / api.again_seconds
        ok &= check_udf(limit, api).ok
        for name, env in args.levers:
            print(f"round {round_}/{args.repeat}: rayscore.predict [{name}] ...", flush=True)
            api = e2e._in_child(
                run_predict_with_env, env, workload, workdir, args.actors, args.batch_size, _spark(args)
            )
            got[f"predict [{name}]"], got[f"predict [{name}] again"] = (
                api.rows / api.seconds,
                api.rows / api.again_seconds,
            )
            ok &= check_udf(limit, api).ok
        print("  " + ", ".join(f"{k} {v:,.0f}" for k, v in got.items()), flush=True)
        for k, v in got.items():
            rates.setdefault(k, []).append(v)
    print()
    print(
        f"# {rows:,} rows, {cores} cores; filter {FILTER!r}; rayscore: {args.actors} actor(s), batch "
        f"{e2e.batch_label(workload.model_path, args.batch_size)} (the UDFs: {UDF_BATCH_SIZE:,}); "
        f"{args.repeat} interleaved rounds; rows/s after start-up"
    )
    print(f"{'way':<28}{'median':>10}{'min':>10}{'max':>10}")
    for k, v in rates.items():
        print(f"{k:<28}{statistics.median(v):>10,.0f}{min(v):>10,.0f}{max(v):>10,.0f}")
    targets = (
        ("rayscore run, SQL", "arrow_udf", 1.0),
        ("rayscore.predict", "arrow_udf", 1.0),
        ("rayscore.predict again", "arrow_udf again", 0.9),
        ("rayscore run, SQL", "zeros", None),
        ("rayscore.predict", "zeros", None),
        ("rayscore.predict again", "zeros again", None),
        ("arrow_udf", "zeros", None),
        *(
            (f"predict [{name}]{again}", f"rayscore.predict{again}", None)
            for name, _ in args.levers
            for again in ("", " again")
        ),
    )
    for top, bottom, target in targets:
        ratios = [a / b for a, b in zip(rates[top], rates[bottom])]
        aim = f" (target >= {target})" if target else " (the ceiling)" if bottom.startswith("zeros") else ""
        print(
            f"{top} / {bottom}: median {statistics.median(ratios):.2f}x, "
            f"min {min(ratios):.2f}x, max {max(ratios):.2f}x{aim}"
        )
    print("predictions: " + ("every round's equal the limit's (max abs diff <= 1e-5)" if ok else "FAIL"))
    return 0 if ok else 1


def _spark(args: argparse.Namespace) -> dict:
    return {"executor_cores": args.executor_cores} if args.executor_cores else {}


class PeakDisk:
    """The largest growth of the used bytes on ``path``'s filesystem while the block runs (sampled every 0.5 s)."""

    def __init__(self, path: str) -> None:
        self.path, self.peak_bytes = path, 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_bytes = max(self.peak_bytes, shutil.disk_usage(self.path).used - self._base)

    def __enter__(self) -> PeakDisk:
        self._base = shutil.disk_usage(self.path).used
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names)


def memory(args: argparse.Namespace, workdir: str) -> int:
    """rayscore run's peak memory at each of ``--rows``, and at each of ``--batch-size``, one after another."""
    peaks: list[tuple[int, str, int, int, float, float, float, int]] = []
    for rows in args.rows:
        sub = os.path.join(workdir, f"rows-{rows}")
        os.makedirs(sub, exist_ok=True)
        print(f"making the workload ({rows:,} rows) ...", flush=True)
        workload = e2e._in_child(e2e.make_workload, sub, rows)
        for batch in args.batch_sizes:
            label = e2e.batch_label(workload.model_path, batch)
            config = sql_config(workload, os.path.join(sub, "scores.parquet"), args, batch)
            print(f"rayscore.run over {rows:,} rows (SQL input: {FILTER}), batch {label} ...", flush=True)
            with e2e.PeakMemory(0.5, pss=True) as mem, PeakDisk(tempfile.gettempdir()) as disk:
                scored = e2e._in_child(e2e.run_rayscore, config)
            first = scored.seconds.get("first_prediction", 0.0) - scored.seconds.get("startup", 0.0)
            scratch = disk.peak_bytes - _tree_bytes(config["output"]["path"])  # what is not the output
            checks = scored.seconds.get("read_convert", 0.0)
            actor = int(scored.result.get("actor_peak_rss", 0))
            peaks.append((rows, label, mem.peak_bytes, actor, scored.after_startup_seconds, first, checks, scratch))
        os.remove(workload.data_path)
    print()
    print(
        f"{'rows':>12}  {'batch':<20}{'peak PSS GiB':>14}{'x first':>9}{'actor RSS GiB':>15}{'rows/s':>10}"
        f"{'1st pred. s':>13}{'of it checks':>14}{'scratch disk GiB':>18}"
    )
    for rows, label, peak, actor, seconds, first, checks, scratch in peaks:
        print(
            f"{rows:>12,}  {label:<20}{peak / 2**30:>14.2f}{peak / peaks[0][2]:>9.2f}{actor / 2**30:>15.2f}"
            f"{rows / seconds:>10,.0f}{first:>13.1f}{checks:>14.1f}{scratch / 2**30:>18.2f}"
        )
    print(
        "peak PSS: of every process of the run; actor RSS: the largest peak of one predictor actor (its run "
        "report's actor_peak_rss); 1st pred. s: the first prediction, seconds after Ray and Spark are up (of it "
        "checks: read_convert, the input's schema and the sample check); scratch disk: the peak growth of the temp "
        "filesystem's use, less the output"
    )
    print("target: the peak grows by <= 1.3x from 1M to 4M rows")
    return 0


def run_from(tree: str, config: dict, cwd: str) -> tuple[e2e.RayscoreRun, str]:
    """Child process: ``rayscore run`` as in step 5, and the file of the rayscore it ran (from ``tree``).

    It runs in ``cwd``: Ray puts the driver's working directory on its workers' path, and this
    repository's root would give them this tree's rayscore.
    """
    os.chdir(cwd)
    import rayscore  # noqa: PLC0415

    if not rayscore.__file__.startswith(tree):
        raise RuntimeError(f"imported rayscore from {rayscore.__file__}, not from {tree}")
    return e2e.run_rayscore(config), rayscore.__file__


def python_for(tree: str, workdir: str) -> str:
    """A Python that imports rayscore from ``tree`` and every other package from this environment.

    A venv whose one ``.pth`` lists ``tree``, then this environment's
    site-packages as a plain path (so its editable rayscore finder is not
    installed).
    """
    import sysconfig

    venv = os.path.join(workdir, "before-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "rayscore-before.pth").write_text(f"{tree}\n{sysconfig.get_paths()['purelib']}\n")
    return os.path.join(venv, "bin", "python")


def progress_cost(args: argparse.Namespace, workdir: str) -> int:
    rows = args.rows[0]
    print(f"making the workload ({rows:,} rows) in {workdir} ...", flush=True)
    workload = e2e._in_child(e2e.make_workload, workdir, rows)
    repo = str(Path(__file__).resolve().parent.parent)
    trees = {"before": os.path.join(workdir, "before"), "after": repo}
    subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", trees["before"], args.progress_cost], check=True)
    pythons = {"before": python_for(trees["before"], workdir), "after": sys.executable}
    rates: dict[str, list[float]] = {"before": [], "after": []}
    try:
        for i in range(args.repeat):
            for side, tree in trees.items():
                multiprocessing.set_executable(pythons[side])  # the child, and so Ray's and Spark's workers
                if side == "before":  # a spawned child takes its parent's sys.path
                    sys.path.insert(0, tree)
                elif trees["before"] in sys.path:
                    sys.path.remove(trees["before"])
                config = sql_config(workload, os.path.join(workdir, f"scores-{side}-{i}.parquet"), args)
                print(
                    f"{side} ({args.progress_cost if side == 'before' else 'this tree'}), run {i + 1} ...", flush=True
                )
                run, where = e2e._in_child(run_from, tree, config, workdir)
                rates[side].append(rows / run.after_startup_seconds)
                print(f"  {rates[side][-1]:,.0f} rows/s after a {run.seconds.get('startup', 0):.1f} s start ({where})")
    finally:
        multiprocessing.set_executable(sys.executable)
        subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", trees["before"]], check=False)
    med = {side: statistics.median(r) for side, r in rates.items()}
    print()
    print(f"# {rows:,} rows, rayscore run with the SQL input, {args.actors} actor(s), batch {args.batch_size}")
    for side, r in rates.items():
        print(f"{side:<7} rows/s: " + ", ".join(f"{x:,.0f}" for x in r) + f"; median {med[side]:,.0f}")
    print(f"with progress: {med['after'] / med['before']:.3f}x the rows/s of {args.progress_cost} (medians)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--memory", action="store_true", help="rayscore's peak memory at each --rows")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument(
        "--batch-size",
        dest="batch_sizes",
        type=e2e.batch_arg,
        nargs="+",
        default=["auto"],
        help="rayscore's rows per model call (default auto); --memory takes several, measured one after another",
    )
    parser.add_argument(
        "--executor-cores",
        type=int,
        default=None,
        help="spark.executor_cores (default: rayscore's, the machine's cores on a local Ray)",
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--lever",
        dest="levers",
        type=lever_arg,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="--repeat: also rayscore.predict with these environment variables in its Ray (TensorFlow's threads)",
    )
    parser.add_argument("--progress-cost", metavar="REV", help="rows/s with progress against git revision REV")
    parser.add_argument(
        "--repeat", type=int, default=None, help="--progress-cost: runs of each side (2); speed: interleaved rounds"
    )
    args = parser.parse_args(argv)
    args.json = False
    if len(args.batch_sizes) > 1 and not args.memory:
        parser.error("several --batch-size values go with --memory only")
    args.batch_size = args.batch_sizes[0]
    with e2e.workdir_of(args) as workdir:
        if args.progress_cost:
            args.repeat = args.repeat or 2
            return progress_cost(args, workdir)
        if args.repeat and args.repeat > 1 and not args.memory:
            return repeated(args, workdir)
        return memory(args, workdir) if args.memory else speed(args, workdir)


if __name__ == "__main__":
    sys.exit(main())
