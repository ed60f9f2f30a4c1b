"""rayscore.predict on a Ray Dataset against Ray Data's own map_batches with a Keras actor class, one invocation each.

    python bench/bench_datasets.py --model small --rows 1000000   # the example's model, 1M rows
    python bench/bench_datasets.py --model big --gb 1 --rows 200000  # one 1 GB embedding table
    python bench/bench_datasets.py --hand-off --rows 200000      # RayDP's from_spark / to_spark, what each costs

**Speed mode** writes the rows as parquet and the model as ``.keras``, then
runs each way in a process of its own, on a fresh local Ray of the
machine's cores, one after the other:

1. **map_batches**: ``ray.data.read_parquet`` → ``map_batches(KerasPredictor,
   compute=ActorPoolStrategy(size=--actors), num_cpus=1, batch_format="pyarrow")``
   whose constructor calls ``keras.saving.load_model`` (what Ray Data's docs
   show) and whose call runs ``predict_on_batch`` → ``write_parquet``;
2. **rayscore.predict(ds)**: the same read → ``rayscore.predict(ds, …,
   actors=--actors)`` → ``write_parquet``.

Each is timed from the read's creation to the last file written (the
model's load included, as a job pays it), and its actors' memory is
sampled every 0.2 s: the peak of their summed PSS (shared pages, such as
a mapped table, counted once). The two outputs are compared by ``id``.

**Hand-off mode** times, in one RayDP session (``fault_tolerant_mode``),
with the pool loaded first (both ways reuse it): ``rayscore.predict(df)``
written by Spark, against ``ray.data.from_spark(df)`` (it materialises the
DataFrame in Ray's object store), ``rayscore.predict(ds)`` consumed by
``ds.to_spark(spark)``, and that written by Spark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

ACTOR_NAMES = {"map_batches": "MapWorker", "rayscore": "Predictor"}


def make_inputs(args: argparse.Namespace, work: Path) -> dict:
    """The model file and the rows, and how to read the model's inputs and outputs."""
    import pyarrow.parquet as pq

    data = work / "rows.parquet"
    if args.model == "small" or args.hand_off:
        from make_example import build_model, make_table

        model = work / "ctr.keras"
        build_model().save(model)
        pq.write_table(make_table(args.rows), data, row_group_size=50_000)
        return {"model": str(model), "data": str(data), "kind": "small", "outputs": ["click", "topics"]}
    from make_big_model import vocab_for, write_keras, write_tokens

    vocab = vocab_for(args.gb)
    model = write_keras(work / "big.keras", vocab)
    write_tokens(data, args.rows, vocab)
    return {"model": str(model), "data": str(data), "kind": "big", "outputs": ["score"]}


class PeakPss:
    """The peak, over 0.2 s samples, of the summed PSS of this process tree's processes whose name has ``tag``."""

    def __init__(self, tag: str) -> None:
        self.tag, self.peak, self._stop = tag, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for proc in me.children(recursive=True):
                try:
                    if self.tag in " ".join(proc.cmdline()[:1]):
                        total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def one_way(way: str, inputs: dict, out: str, actors: int, batch_size: int) -> dict:
    """Child process: ``way`` on a fresh local Ray; its seconds and its actors' peak summed PSS."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ray

    paths = os.pathsep.join([str(ROOT / "examples"), str(ROOT)])  # the workers import make_example's features_of
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": paths}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    pss = PeakPss(ACTOR_NAMES[way])
    began = time.perf_counter()
    ds = ray.data.read_parquet(inputs["data"])
    if way == "rayscore":
        import rayscore

        scored = rayscore.predict(ds, model=inputs["model"], keep_columns=["id"], batch_size=batch_size, actors=actors)
        call = time.perf_counter() - began
    else:
        call = 0.0
        scored = ds.map_batches(
            KerasPredictor,
            fn_constructor_args=(inputs["model"], inputs["kind"]),
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            batch_size=batch_size,
            batch_format="pyarrow",
        )
    scored.write_parquet(out)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "call": call, "peak_pss": pss.stop()}


class KerasPredictor:
    """Ray Data's documented shape: the model loaded by Keras in each actor, ``predict_on_batch`` per batch."""

    def __init__(self, path: str, kind: str) -> None:
        import keras

        self.model, self.kind = keras.saving.load_model(path, compile=False), kind

    def __call__(self, batch):  # pyarrow.Table -> pyarrow.Table
        import numpy as np
        import pyarrow as pa

        if self.kind == "small":
            from make_example import features_of

            out = self.model.predict_on_batch(features_of(batch))
            topics = np.asarray(out["topics"], dtype=np.float32)
            return pa.table(
                {
                    "id": batch.column("id"),
                    "click": np.asarray(out["click"], dtype=np.float32)[:, 0],
                    "topics": pa.FixedSizeListArray.from_arrays(topics.reshape(-1), topics.shape[1]),
                }
            )
        tokens = np.stack(batch.column("tokens").to_numpy(zero_copy_only=False)).astype(np.int32)
        out = self.model.predict_on_batch({"tokens": tokens})
        score = out["score"] if isinstance(out, dict) else out
        return pa.table({"id": batch.column("id"), "score": np.asarray(score, dtype=np.float32).reshape(len(tokens))})


def compare(a: str, b: str, outputs: list[str]) -> tuple[int, float]:
    """Rows of ``a`` and the max abs difference of the outputs against ``b``, by id."""
    import numpy as np
    import pyarrow.parquet as pq

    x, y = pq.read_table(a).sort_by("id"), pq.read_table(b).sort_by("id")
    assert x.column("id").to_pylist() == y.column("id").to_pylist(), "the two ways scored different rows"
    worst = 0.0
    for name in outputs:
        u = np.stack(x.column(name).to_numpy(zero_copy_only=False)).astype(np.float64)
        v = np.stack(y.column(name).to_numpy(zero_copy_only=False)).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(u - v))))
    return x.num_rows, worst


def hand_off(inputs: dict, work: Path, actors: int, batch_size: int) -> dict:
    """Child process: one RayDP session, the DataFrame to a dataset and back, against predict(df)."""
    import ray

    import rayscore

    times: dict[str, float] = {}
    with rayscore.session(spark={"fault_tolerant_mode": True}, max_actors=actors) as s:
        df = s.spark.read.parquet(inputs["data"])
        score = {"model": inputs["model"], "keep_columns": ["id"], "batch_size": batch_size, "actors": actors}
        rayscore.predict(df.limit(10), **score).count()  # the pool made and loaded: both ways below reuse it
        began = time.perf_counter()
        rayscore.predict(df, **score).write.parquet(str(work / "via-df"))
        times["predict(df), written by Spark"] = time.perf_counter() - began
        began = time.perf_counter()
        ds = ray.data.from_spark(df)
        times["ray.data.from_spark(df)"] = time.perf_counter() - began
        began = time.perf_counter()
        back = rayscore.predict(ds, **score).to_spark(s.spark)
        times["predict(ds) + ds.to_spark(spark)"] = time.perf_counter() - began
        began = time.perf_counter()
        back.write.parquet(str(work / "via-ds"))
        times["written by Spark"] = time.perf_counter() - began
    return times


def child(args: argparse.Namespace) -> None:
    inputs = json.loads(args.inputs)
    if args.child == "hand-off":
        result = hand_off(inputs, Path(args.out), args.actors, args.batch_size)
    else:
        result = one_way(args.child, inputs, args.out, args.actors, args.batch_size)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(way: str, inputs: dict, out: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", way, "--inputs", json.dumps(inputs), "--out", out]
    argv += ["--actors", str(args.actors), "--batch-size", str(args.batch_size)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{way} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["small", "big"], default="small")
    parser.add_argument("--gb", type=float, default=1.0, help="--model big: the embedding table's GB")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actors", type=int, default=1, help="each way's actors (rayscore leaves a CPU to the reads)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--hand-off", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="rayscore-bench-ds-") as tmp:
        work = Path(tmp)
        inputs = make_inputs(args, work)
        size = os.path.getsize(inputs["model"])
        print(f"{args.rows:,} rows; model {Path(inputs['model']).name} {size / 2**30:.2f} GiB; {os.cpu_count()} cores")
        if args.hand_off:
            times = run_child("hand-off", inputs, str(work), args)
            for what, seconds in times.items():
                print(f"  {what:<36} {seconds:6.1f} s  ({args.rows / seconds:,.0f} rows/s)")
            return
        seen = {way: run_child(way, inputs, str(work / way), args) for way in ("map_batches", "rayscore")}
        for way, r in seen.items():
            print(
                f"  {way:<12} {r['seconds']:6.1f} s  {args.rows / r['seconds']:9,.0f} rows/s  "
                f"actors' peak summed PSS {r['peak_pss'] / 2**30:5.2f} GiB"
                + (f"  (the predict() call: {r['call']:.1f} s)" if r["call"] else "")
            )
        rows, worst = compare(str(work / "rayscore"), str(work / "map_batches"), inputs["outputs"])
        ratio = seen["map_batches"]["seconds"] / seen["rayscore"]["seconds"]
        memory = seen["rayscore"]["peak_pss"] / max(seen["map_batches"]["peak_pss"], 1)
        print(
            f"  rayscore / map_batches: {ratio:.2f}x rows/s, {memory:.2f}x memory; "
            f"{rows:,} rows, max abs diff {worst:.1e}"
        )


if __name__ == "__main__":
    main()
