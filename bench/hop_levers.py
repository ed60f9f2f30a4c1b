"""The hop's levers measured apart from Spark: one process sending batches to a pool actor, as a Spark task does.

    python bench/hop_levers.py --rows 400000 --repeat 5

What a Spark Python worker does in ``rayscore._stream`` (the same
``pipelined`` loop, two batches in flight per actor), fed from memory
instead of Spark, so that each lever's effect on the hop itself shows
without Spark's read and write around it. The example's model and
``--rows`` of its rows, cut into independent Arrow tables of
``--batch-size`` rows (``auto``: rayscore's own, 16,384 rows here), as
Spark's batches arrive. Ways, each in every round (interleaved, fresh
actors each time, two warm-up batches untimed):

* ``rayscore``: as shipped: Arrow IPC out (``to_ipc``), ``Predictor.score``
  (IPC in, the features, the model, IPC out), IPC in;
* ``no IPC``: the Arrow table itself through Ray's serializer (its
  buffers out of band, pickle 5) and back: no encode or decode on
  either side;
* ``2 threads``: as shipped, with the actor's ``max_concurrency=2``, so it
  decodes and converts one batch while the model runs another;
* ``in flight 1`` and ``in flight 4``: batches in flight per actor;
* ``inline``: as shipped, in a Ray whose ``max_direct_call_object_size``
  is 64 MiB, so each batch and its answer travel inside the call (gRPC)
  instead of through the object store's shared memory (put and get);
* ``no hop``: ``predict_table`` in this process, no Ray at all: what the
  batches cost without any hop (the floor).

Prints each way's median rows/s with the min-max over ``--repeat`` rounds,
and each against ``rayscore`` (the median of the rounds' ratios); every
way's predictions are checked equal to ``no hop``'s. Nothing here is
rayscore's own counter: the clock is this process's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e  # noqa: E402

WAYS = ("rayscore", "no IPC", "2 threads", "in flight 1", "in flight 4", "inline", "no hop")
INLINE_BYTES = 64 << 20  # Ray's max_direct_call_object_size for "inline" (its default is 100 KiB)


def measure(workload: e2e.Workload, rows: int, batch: int | str, repeat: int, actors: int) -> dict[str, Any]:
    """Child process: Ray on this node, the ways of the module's docstring, ``repeat`` interleaved rounds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from rayscore._config import ModelConfig, PredictConfig
    from rayscore._convert import from_ipc, make_plan, to_ipc
    from rayscore._model import loaders
    from rayscore._plan import inspect_model, sized
    from rayscore._predict import Predictor, predict_table
    from rayscore._stream import IN_FLIGHT_PER_ACTOR, pipelined

    ref, spec = inspect_model(ModelConfig(uri=workload.model_path))
    batch_rows = sized(PredictConfig(batch_size=batch), spec).batch_size
    table = pq.read_table(workload.data_path).slice(0, rows)
    plan = make_plan(spec, table.schema, keep_columns=("id",))
    table = table.select(list(plan.read_columns))
    # Independent tables, as Spark's batches arrive (a slice would carry its parent's buffers through pickle).
    batches = [from_ipc(to_ipc(table.slice(i, batch_rows))) for i in range(0, table.num_rows, batch_rows)]

    class TablePredictor(Predictor):
        def score_table(self, plan: Any, batch: pa.Table) -> pa.Table:
            """:meth:`Predictor.score` without the IPC: the table in, the table out."""
            return predict_table(self._model, plan, batch, self._limit)

    started: list[bool] = []  # the running Ray's mode: inline or not

    def ray_for(inline: bool) -> None:
        if started and started[-1] == inline:
            return
        if started:
            ray.shutdown()
        system = {"max_direct_call_object_size": INLINE_BYTES} if inline else {}
        ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _system_config=system)
        started.append(inline)

    local = loaders[ref.loader].load(workload.model_path, safe_mode=True)
    expected = pa.concat_tables(predict_table(local, plan, b) for b in batches)

    def through_pool(way: str) -> tuple[float, pa.Table]:
        ray_for(way == "inline")
        options = {"num_cpus": 1, "max_concurrency": 2 if way == "2 threads" else 1}
        pool = [ray.remote(TablePredictor).options(**options).remote(ref) for _ in range(actors)]
        ray.get([a.__ray_ready__.remote() for a in pool])
        per_actor = {"in flight 1": 1, "in flight 4": 4}.get(way, IN_FLIGHT_PER_ACTOR)
        turn = iter(range(1 << 30))

        def submit(b: pa.Table) -> Any:
            actor = pool[next(turn) % len(pool)]
            return actor.score_table.remote(plan, b) if way == "no IPC" else actor.score.remote(plan, to_ipc(b))

        def take(call: Any) -> list[pa.Table]:
            got = ray.get(call)
            return [got if way == "no IPC" else from_ipc(got)]

        list(pipelined(batches[:2], submit, take, limit=lambda: per_actor * len(pool)))  # warm-up
        t0 = time.perf_counter()
        out = list(pipelined(batches, submit, take, limit=lambda: per_actor * len(pool)))
        seconds = time.perf_counter() - t0
        for a in pool:
            ray.kill(a)
        return seconds, pa.concat_tables(out)

    def in_process() -> tuple[float, pa.Table]:
        predict_table(local, plan, batches[0])  # warm-up
        t0 = time.perf_counter()
        out = [predict_table(local, plan, b) for b in batches]
        return time.perf_counter() - t0, pa.concat_tables(out)

    rates: dict[str, list[float]] = {w: [] for w in WAYS}
    worst = 0.0
    for round_ in range(1, repeat + 1):
        for way in WAYS:
            seconds, out = in_process() if way == "no hop" else through_pool(way)
            rates[way].append(table.num_rows / seconds)
            for name in out.column_names:
                a = np.stack(out.column(name).to_numpy(zero_copy_only=False)).astype(np.float64)
                b = np.stack(expected.column(name).to_numpy(zero_copy_only=False)).astype(np.float64)
                worst = max(worst, float(np.max(np.abs(a - b))))
            print(f"  round {round_}: {way} {rates[way][-1]:,.0f} rows/s", flush=True)
    ray.shutdown()
    return {"rates": rates, "worst": worst, "batch_rows": batch_rows, "rows": table.num_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--batch-size", type=e2e.batch_arg, default="auto", help="rows per call (default auto)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the workload goes (default: temp, removed)")
    args = parser.parse_args(argv)
    with e2e.workdir_of(args) as workdir:
        print(f"making the workload ({args.rows:,} rows) in {workdir} ...", flush=True)
        workload = e2e._in_child(e2e.make_workload, workdir, args.rows)
        got = e2e._in_child(measure, workload, args.rows, args.batch_size, args.repeat, args.actors)
    rates = got["rates"]
    print()
    print(
        f"# {got['rows']:,} rows from memory, {got['batch_rows']:,} rows a call, {args.actors} actor(s), "
        f"{args.repeat} interleaved rounds; rows/s through the hop (no Spark)"
    )
    print(f"{'way':<16}{'median':>10}{'min':>10}{'max':>10}{'/ rayscore':>12}")
    for way, v in rates.items():
        ratio = statistics.median(a / b for a, b in zip(v, rates["rayscore"]))
        print(f"{way:<16}{statistics.median(v):>10,.0f}{min(v):>10,.0f}{max(v):>10,.0f}{ratio:>11.2f}x")
    ok = got["worst"] <= e2e.TOLERANCE
    print(f"predictions: max abs diff {got['worst']:.1e} against no hop's: " + ("OK" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
