"""A big model: rayscore.predict against the best hand-written Spark UDF that fits, speed, memory and answers.

    python bench/compare_big.py --gb 2 --rows 200000                 # UDF local[1] against 2 actors
    python bench/compare_big.py --gb 2 --rows 200000 --udf-cores 2   # two model copies in Spark (if they fit)
    python bench/compare_big.py --gb 2 --rows 200000 --repeat 3      # three interleaved rounds: median, min-max
    python bench/compare_big.py --model seed --gb 2 --rows 200000 --repeat 3   # the example's shape, a 2 GB table
    python bench/compare_big.py --model seed --rayscore-batch-size 1024 4096 16384 --repeat 2   # one way per size
    python bench/compare_big.py --model seed --actors 1 2 --repeat 3   # one way per actor count
    python bench/compare_big.py --model seed --actors 1 --forget-outputs --repeat 3   # kept outputs or not

The issue's target: ``rayscore.predict`` at >= 3x the rows/s of the best
in-Spark UDF that fits in memory, at <= 0.3x its memory, with equal
predictions. It builds one of two models as ``.keras``, each with a
``--gb`` GB embedding table written slice by slice:

* ``--model big`` (the default): ``examples/make_big_model.py``'s model, one
  ``tokens`` column, one output ``score`` (``bench_datasets.py``'s
  ``--model big`` inputs);
* ``--model seed``: the shape rayscore was built for, the example's model
  (``examples/make_example.py``: four title columns sharing the table, an
  hour-of-week matrix, a price, outputs ``click`` and ``topics``) with its
  table grown (``make_big_model.write_seed_keras``, 64 wide), and
  ``make_example.make_table``'s rows over the whole table; more work per row
  for the model and for Spark's reader.

The ``--rows`` rows are written as parquet with a ``country`` column that
is never ``'xx'``, so that both ways read
``spark.read.parquet(p).where("country != 'xx'")`` (a filter: no shortcut).
Then, each in a process of its own, one after the other:

1. **UDF**: plain PySpark ``local[--udf-cores]`` (``compare.py``'s Spark
   settings), a ``mapInArrow`` whose function loads the model once per Python
   worker (kept on the ``keras`` module) and runs ``predict_on_batch`` on each
   Arrow batch, written as parquet. One core by default: Keras's
   ``load_model`` peaks near 6x the file's bytes, so on a 24 GB machine two
   2 GB copies are killed for memory;
2. **rayscore.predict**: in a ``rayscore.session()``, the same filtered
   DataFrame through the pool's actors, written by Spark; one way for each
   of ``--actors``'s counts (default 2) and ``--rayscore-batch-size``'s
   sizes (default ``auto``).

With ``--repeat N`` the ways run in turn N times (UDF, rayscore, UDF, ...),
each in a fresh process, and the table gives each way's median rows/s with
the min-max and the ratio's median and min-max over the rounds (a run of
one way varies by about 20 % here). Each is timed from the read to the last
file written, once its session is up (the model's load included, as a job
pays it). The timed rounds sample no memory: reading the PSS of processes
that map GBs costs about a fifth of a core here (measured: rayscore's 2
actors 13.7-14.5 s without the samplers, 15.2-15.4 s with them; the UDF
33.7 s and 35.4 s), which a way that keeps both cores busy pays in time.
rayscore's first round also reads the freshly made model
for its sha256, and waits for its actor's load to learn the ``.keras``
model's output shapes; both are then kept on the node (as for a job run
again), and the later rounds find them kept, so that their call returns
while the actor loads. ``--forget-outputs`` adds, for each rayscore way, one
whose child first drops the kept outputs: its call waits for the load in
every round, as a model's first call on a node does. Then one more round of each way samples
memory: the peak, over 0.2 s
samples, of the summed PSS (proportional set size: shared pages, such as a
mapped table, counted once) of the processes that hold the model: the
UDF's Spark Python workers (the child's descendants whose executable is
``python``, under Spark's JVM) and rayscore's actors (``ray::Predictor``);
and, for reference, of the whole process tree (0.5 s samples). Each rayscore way's
output is compared with the UDF's by ``id``, and each against the model's formula
(``expected_scores``, ``seed_expected``: float64, without Keras) on
``--check-rows`` rows; exit status 1 when any differs by more than 1e-5.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_datasets as datasets  # noqa: E402  (puts examples/ on the path)
import bench_e2e as e2e  # noqa: E402
import compare  # noqa: E402
from compare import FILTER, UDF_BATCH_SIZE  # noqa: E402


def make_workload(workdir: str, shape: str, gb: float, rows: int) -> dict:
    """Child process: the model as .keras and ``rows`` rows of its inputs, ``id`` and ``country`` as parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shape == "seed":
        from make_big_model import vocab_for, write_seed_keras
        from make_example import make_table

        vocab = vocab_for(gb)
        model = os.path.join(workdir, "seed.keras")
        np.savez(os.path.join(workdir, "seed_dense.npz"), **write_seed_keras(model, vocab))
        inputs = {"model": model, "kind": "seed", "outputs": ["click", "topics"]}
        table = make_table(rows, vocab)
    else:
        spec = argparse.Namespace(model="big", hand_off=False, gb=gb, rows=rows)
        inputs = datasets.make_inputs(spec, Path(workdir))
        table = pq.read_table(inputs["data"])
        os.remove(inputs["data"])
    country = pa.array(np.array(["us", "de", "fr", "jp"])[np.arange(rows) % 4])
    inputs["data"] = os.path.join(workdir, "rows.parquet")  # row groups: local[N] gets N splits
    pq.write_table(table.append_column("country", country), inputs["data"], row_group_size=e2e.ROW_GROUP_SIZE)
    return inputs


def run_udf(inputs: dict, workdir: str, cores: int, batch_size: int, memory: bool = False) -> dict:
    """Child process: plain PySpark local[cores], the model loaded once per Python worker, parquet out.

    ``memory``: sample the Python workers' PSS meanwhile (a timed round does not: the sampling costs CPU).
    """
    import numpy as np
    import pyarrow as pa
    from make_big_model import SEQ_LEN

    spark, startup = compare.spark_session(cores, "big-udf", batch_size)
    model_path, seq_len, seed = inputs["model"], SEQ_LEN, inputs["kind"] == "seed"
    columns = ["id", "tokens"] if not seed else None
    schema = "id long, click float, topics array<float>" if seed else "id long, score float"
    out = os.path.join(workdir, "udf.parquet")
    features_of = None
    if seed:
        import make_example
        from pyspark import cloudpickle

        # The Python workers have no examples/ on their path: the example's own converter travels by value.
        cloudpickle.register_pickle_by_value(make_example)
        features_of = make_example.features_of

    def score(batches):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        # Once per Python worker: Spark reuses its workers but unpickles this function per task.
        loaded = keras.__dict__.setdefault("_compare_big_models", {})
        if model_path not in loaded:
            loaded[model_path] = keras.saving.load_model(model_path, compile=False)
        model = loaded[model_path]
        for batch in batches:
            n = batch.num_rows
            if seed:
                predicted = model.predict_on_batch(features_of(pa.Table.from_batches([batch])))
                topics = np.asarray(predicted["topics"], np.float32)
                offsets = pa.array(np.arange(0, (n + 1) * topics.shape[1], topics.shape[1], dtype=np.int32))
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column("id"),
                        pa.array(np.asarray(predicted["click"], np.float32).reshape(n)),
                        pa.ListArray.from_arrays(offsets, pa.array(topics.reshape(-1))),
                    ],
                    names=["id", "click", "topics"],
                )
                continue
            tokens = batch.column("tokens").flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            predicted = model.predict_on_batch(tokens.reshape(n, seq_len))
            value = predicted["score"] if isinstance(predicted, dict) else predicted
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), pa.array(np.asarray(value, np.float32).reshape(n))], names=["id", "score"]
            )

    # The Spark Python workers: this process's only python descendants.
    holders = datasets.PeakPss("python") if memory else None
    t0 = time.perf_counter()
    df = spark.read.parquet(inputs["data"]).where(FILTER)
    df = df.select(*columns) if columns else df.drop("country")
    df.mapInArrow(score, schema).write.mode("overwrite").parquet(out)
    seconds = time.perf_counter() - t0
    peak = holders.stop() if holders else None
    rows = spark.read.parquet(out).count()
    spark.stop()
    return {"rows": rows, "seconds": seconds, "startup": startup, "holders_pss": peak, "out": out}


def run_rayscore(
    inputs: dict, workdir: str, actors: int, batch_size: int | str, memory: bool = False, forget: bool = False
) -> dict:
    """Child process: ``rayscore.predict`` on the filtered DataFrame in a session, written by Spark.

    ``memory``: sample the actors' PSS meanwhile (a timed round does not: the sampling costs CPU).
    ``forget``: first drop the model's outputs kept on this node, so that the call waits for an actor's
    load, as a model's first call on a node does.
    """
    import rayscore
    from rayscore._model import _memo_dir

    if forget:
        for kept in Path(_memo_dir()).glob("*.json"):
            if '"outputs_of"' in kept.read_text():
                kept.unlink()
    from rayscore._pool import _pools  # the session's pools: their actors' load times

    out = os.path.join(workdir, f"rayscore-{actors}-{batch_size}.parquet")
    t0 = time.perf_counter()
    with rayscore.session(max_actors=actors) as s:
        startup = time.perf_counter() - t0
        holders = datasets.PeakPss("Predictor") if memory else None  # ray::Predictor, rayscore's actors
        t0 = time.perf_counter()
        df = s.spark.read.parquet(inputs["data"]).where(FILTER)
        scored = rayscore.predict(df, model=inputs["model"], keep_columns=["id"], batch_size=batch_size, actors=actors)
        called = time.perf_counter() - t0
        scored.write.mode("overwrite").parquet(out)
        seconds = time.perf_counter() - t0
        peak = holders.stop() if holders else None
        rows = s.spark.read.parquet(out).count()
        loads = [a["load_seconds"] for pool in _pools.values() for a in pool.loads()["actor_loads"]]
    detail = (
        f"the call {called:.1f} s (loads {', '.join(f'{x:.1f}' for x in loads)} s), the write {seconds - called:.1f} s"
    )
    return {"rows": rows, "seconds": seconds, "startup": startup, "holders_pss": peak, "out": out, "detail": detail}


def check(inputs: dict, results: dict[str, dict], sample: int) -> tuple[float, list[str]]:
    """The worst difference found, and one line per comparison: the ways by ``id``, each against the formula."""
    import numpy as np
    import pyarrow.parquet as pq
    from make_big_model import SEQ_LEN, expected_scores, seed_expected
    from make_example import features_of

    (first, a), *others = results.items()
    worst, lines = 0.0, []
    for second, b in others:
        rows, diff = datasets.compare(a["out"], b["out"], inputs["outputs"])
        lines.append(f"{first} vs {second}: {rows:,} rows compared by id, max abs diff {diff:.1e}")
        worst = max(worst, diff)
    table = pq.read_table(inputs["data"]).sort_by("id").slice(0, sample)
    ids = table.column("id").to_numpy()
    if inputs["kind"] == "seed":
        dense = dict(np.load(os.path.join(os.path.dirname(inputs["model"]), "seed_dense.npz")))
        expected = seed_expected(features_of(table), dense)
    else:
        tokens = table.column("tokens").combine_chunks().flatten().to_numpy()
        expected = {"score": expected_scores(tokens.reshape(-1, SEQ_LEN))}
    for name, r in results.items():
        got = pq.read_table(r["out"]).sort_by("id").slice(0, sample)
        if not np.array_equal(got.column("id").to_numpy(), ids):
            lines.append(f"{name} vs the formula: the first {sample:,} ids differ")
            worst = float("inf")
            continue
        diff = 0.0
        for output, want in expected.items():
            values = np.stack(got.column(output).to_numpy(zero_copy_only=False)).astype(np.float64)
            diff = max(diff, float(np.max(np.abs(values.reshape(want.shape) - want))))
        lines.append(f"{name} vs the formula: {len(ids):,} rows compared, max abs diff {diff:.1e}")
        worst = max(worst, diff)
    return worst, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=["big", "seed"], default="big", help="big: tokens → score; seed: the example's shape"
    )
    parser.add_argument("--gb", type=float, default=2.0, help="the embedding table's size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--actors", type=int, nargs="+", default=[2], help="rayscore's actors, one way for each (default 2)"
    )
    parser.add_argument("--udf-cores", type=int, default=1, help="the UDF's local[N]: N model copies (default 1)")
    parser.add_argument(
        "--batch-size", type=int, default=UDF_BATCH_SIZE, help="the UDF's rows per Arrow batch and model call"
    )
    parser.add_argument(
        "--rayscore-batch-size",
        type=e2e.batch_arg,
        nargs="+",
        default=["auto"],
        help="rayscore's predict.batch_size, one way for each (default auto)",
    )
    parser.add_argument(
        "--forget-outputs",
        action="store_true",
        help="one more way per rayscore way: its outputs not kept on the node, so its call waits for a load",
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed interleaved rounds of the ways (default 1)")
    parser.add_argument("--check-rows", type=int, default=2000, help="rows checked against the formula")
    parser.add_argument("--workdir", default=None, help="where the model, rows and outputs go (default: temp, removed)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be 1 or more (timed rounds), got {args.repeat}")
    udf = f"UDF local[{args.udf_cores}]"
    steps: dict[str, tuple] = {udf: (run_udf, args.udf_cores, args.batch_size, False)}
    for actors in args.actors:  # rayscore's ways: one per actor count and batch size
        for batch in args.rayscore_batch_size:
            name = f"rayscore.predict ({actors} actor{'s' if actors > 1 else ''})"
            if len(args.rayscore_batch_size) > 1:
                name += ", auto" if batch == "auto" else f", batch {batch:,}"
            steps[name] = (run_rayscore, actors, batch, False)
            if args.forget_outputs:
                steps[f"{name}, outputs not kept"] = (run_rayscore, actors, batch, True)
    apis = [name for name in steps if name != udf]
    with e2e.workdir_of(args) as workdir:
        print(f"making the {args.model} model ({args.gb} GB table) and {args.rows:,} rows in {workdir} ...", flush=True)
        inputs = e2e._in_child(make_workload, workdir, args.model, args.gb, args.rows)
        rounds: dict[str, list[dict]] = {name: [] for name in steps}
        memory: dict[str, dict] = {}
        # The timed rounds sample no memory: reading the PSS of processes that map GBs costs CPU
        # (about 0.2 of a core here), which a way that keeps both cores busy pays in time and one
        # that leaves a core idle does not. One more round of each way samples it.
        for round_ in range(1, args.repeat + 2):
            sampled = round_ > args.repeat
            for step, (name, (fn, n, batch, forget)) in enumerate(steps.items(), start=1):
                where = "memory round" if sampled else f"round {round_}/{args.repeat}"
                print(
                    f"{where}, {step}/{len(steps)} {name} on spark.read.parquet(...).where({FILTER!r}) ...", flush=True
                )
                try:
                    with e2e.PeakMemory(0.5, pss=True) if sampled else contextlib.nullcontext() as tree:
                        got = e2e._in_child(fn, inputs, workdir, n, batch, sampled, *([forget] if forget else []))
                except Exception as exc:  # a child killed for memory: BrokenProcessPool
                    print(f"{name} failed: {type(exc).__name__}: {exc}")  # BrokenProcessPool: try fewer --udf-cores
                    return 1
                print(f"  {got['rows'] / got['seconds']:,.0f} rows/s, {got['seconds']:.1f} s", flush=True)
                if sampled:
                    memory[name] = {**got, "tree_pss": tree.peak_bytes}
                else:
                    rounds[name].append(got)
        results = {name: runs[-1] for name, runs in rounds.items()}  # its files: the memory round's outputs
        worst, lines = check(inputs, results, args.check_rows)
        size = os.path.getsize(inputs["model"])
        rayscore_batch = ", ".join(e2e.batch_label(inputs["model"], b) for b in args.rayscore_batch_size)
    print()
    print(
        f"# {args.rows:,} rows, filter {FILTER!r}; model {Path(inputs['model']).name} {size / 2**30:.2f} GiB; "
        f"{os.cpu_count()} cores; batch: the UDF {args.batch_size:,}, rayscore {rayscore_batch}"
    )
    width = max(30, *(len(name) + 2 for name in steps))
    print(
        f"{'way':<{width}}{'rows/s':>10}{'min':>9}{'max':>9}{'seconds':>9}{'start s':>9}"
        f"{'sampled s':>11}{'holders PSS GiB':>17}{'tree PSS GiB':>14}"
    )
    rates = {name: [r["rows"] / r["seconds"] for r in runs] for name, runs in rounds.items()}
    for name, runs in rounds.items():
        seconds = statistics.median(x["seconds"] for x in runs)
        start = statistics.median(x["startup"] for x in runs)
        m = memory[name]
        print(
            f"{name:<{width}}{statistics.median(rates[name]):>10,.0f}{min(rates[name]):>9,.0f}"
            f"{max(rates[name]):>9,.0f}{seconds:>9.1f}{start:>9.1f}{m['seconds']:>11.1f}"
            f"{m['holders_pss'] / 2**30:>17.2f}{m['tree_pss'] / 2**30:>14.2f}"
        )
    print(
        f"rows/s and seconds: the median of {args.repeat} timed round(s), timed from the read to the last file "
        "written once the session is up (the model's load included), with no memory sampled; sampled s: the "
        "memory round's seconds; holders: that round's peak summed PSS of the processes holding the model (the "
        "UDF's Spark Python workers, rayscore's ray::Predictor actors, 0.2 s samples); tree: of every process of "
        "the run (this script, the child, Spark's JVMs, Ray; 0.5 s samples)"
    )
    for name in apis:
        ratios = [a / b for a, b in zip(rates[name], rates[udf])]
        ratio_memory = memory[name]["holders_pss"] / max(memory[udf]["holders_pss"], 1)
        print(
            f"{name} / {udf}: {statistics.median(ratios):.2f}x rows/s (min {min(ratios):.2f}x, max "
            f"{max(ratios):.2f}x; target >= 3), {ratio_memory:.2f}x memory (target <= 0.3)"
        )
    for name in apis:
        for got in rounds[name]:
            print(f"{name}: {got['detail']}")
    print("\n".join(lines))
    runs_all = [*(r for runs in rounds.values() for r in runs), *memory.values()]
    complete = all(r["rows"] == args.rows for r in runs_all)
    if not complete:
        counts = ", ".join(name + " " + "/".join(f"{r['rows']:,}" for r in runs) for name, runs in rounds.items())
        print(f"rows out: {counts} of {args.rows:,}")
    ok = worst <= e2e.TOLERANCE and complete
    print("predictions: " + ("OK" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
