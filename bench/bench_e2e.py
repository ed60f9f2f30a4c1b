"""End-to-end benchmark: rayscore against the single-process limit, on one machine.

What it measures, one after another in one invocation:

1. **workload** (not timed as a way): the example model of
   ``examples/make_example.py`` (``build_model()``) saved as ``.keras``, and
   ``make_table(rows)`` written to parquet in row groups of ~50k rows.
2. **limit**: one process, no Ray, no Spark: the parquet read with pyarrow,
   turned into numpy arrays by ``features_of`` and scored by
   ``model.predict(..., batch_size=4096)`` using every core TensorFlow sees.
   The predict is timed after a warm-up call. This is what the hardware can do
   with this model and no distribution at all.
3. **rayscore**: ``rayscore.run(config)`` with the default session (a local Ray
   plus RayDP's Spark), parquet in, parquet out (``mode: overwrite``,
   ``keep_columns: [id]``). The seconds per stage come from the
   :class:`rayscore.RunResult` it returns; "end to end after start-up" is
   ``total - startup``, from Ray and Spark being up until the output is
   committed (the stages overlap: ``load`` overlaps start-up).

Then it checks that rayscore's predictions equal the limit's on the same rows
(joined by ``id``; max abs difference <= 1e-5 for ``click`` and ``topics``)
and prints a table: rows, seconds and rows/s for each way, the peak memory of
the process tree during each way (sum of RSS sampled every 0.2 s; shared pages
such as Ray's object store count once per process that touches them, so it
over-states), and the ratio rayscore rows/s / limit rows/s.

The workload and the limit run in child processes (``spawn``), so that no
TensorFlow thread pool or model lives on in this process while rayscore runs.

Run it from the repository root::

    python bench/bench_e2e.py --rows 200000
    python bench/bench_e2e.py --rows 20000 --actors 2 --batch-size auto --json

Exit status: 0 when the predictions match, 1 when they do not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

LIMIT_BATCH_SIZE = 4096
ROW_GROUP_SIZE = 50_000
TOLERANCE = 1e-5
OUTPUTS = ("click", "topics")


# --------------------------------------------------------------------------- helpers


def _make_example() -> Any:
    """The ``examples/make_example.py`` module (build_model, make_table, features_of)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import make_example  # noqa: PLC0415

    return make_example


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process; return its result or raise its error."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


class PeakMemory:
    """Samples the summed RSS (or, with ``pss=True``, PSS: shared pages counted once) of this
    process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.2, *, pss: bool = False) -> None:
        self.interval = interval
        self.pss = pss
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> int:
        import psutil  # noqa: PLC0415

        me = psutil.Process()
        total = 0
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        for proc in procs:
            try:
                total += proc.memory_full_info().pss if self.pss else proc.memory_info().rss
            except psutil.Error:  # gone between listing and reading
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


@dataclass
class Workload:
    model_path: str
    data_path: str
    rows: int
    seconds: float


@dataclass
class LimitResult:
    rows: int
    read_seconds: float  # pyarrow read + features_of
    predict_seconds: float  # model.predict over every row, after the warm-up
    load_seconds: float
    warmup_seconds: float
    predictions_path: str
    cpus: int
    peak_rss_bytes: int = 0

    @property
    def seconds(self) -> float:
        return self.read_seconds + self.predict_seconds


@dataclass
class RayscoreRun:
    rows_in: int
    rows_out: int
    seconds: dict[str, float]
    wall_seconds: float  # the whole rayscore.run() call: start-up, job, stop
    output_path: str
    model_loads: int
    peak_rss_bytes: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def after_startup_seconds(self) -> float:
        """From Ray and Spark being up until the output is committed (:attr:`job_seconds`: the whole job)."""
        if "total" in self.seconds:
            return self.seconds["total"] - self.seconds.get("startup", 0.0)
        return sum(self.seconds.get(s, 0.0) for s in ("read_convert", "predict", "write"))

    @property
    def job_seconds(self) -> float:
        """From run() being called until the output is committed: start-up included, stopping not."""
        return self.seconds.get("total", self.seconds.get("startup", 0.0) + self.after_startup_seconds)

    @property
    def unstaged_seconds(self) -> float:
        """run() time outside the job: stopping Ray and Spark (and, before ``total`` existed, the checks)."""
        return self.wall_seconds - self.job_seconds


@dataclass
class Check:
    rows_compared: int
    missing_ids: int
    extra_ids: int
    max_abs_diff: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.missing_ids == 0 and self.extra_ids == 0 and all(d <= TOLERANCE for d in self.max_abs_diff.values())


# --------------------------------------------------------------------------- the ways


def make_workload(workdir: str, rows: int) -> Workload:
    """Child process: the example model as .keras and ``rows`` feature rows as parquet.

    Beside the model's features the rows hold a ``country`` column (never
    ``'xx'``), for the filtered DataFrame that ``compare.py`` scores.
    """
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    ex = _make_example()
    t0 = time.perf_counter()
    model_path = os.path.join(workdir, "ctr.keras")
    data_path = os.path.join(workdir, "features.parquet")
    ex.build_model().save(model_path)
    table = ex.make_table(rows)
    countries = pa.array(["de", "fr", "us", "jp"] * (rows // 4) + ["de"] * (rows % 4))
    pq.write_table(table.append_column("country", countries), data_path, row_group_size=ROW_GROUP_SIZE)
    return Workload(model_path, data_path, rows, time.perf_counter() - t0)


def run_limit(workload: Workload, workdir: str) -> LimitResult:
    """Child process: the parquet read with pyarrow and scored by one model.predict."""
    import resource  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415

    ex = _make_example()
    t0 = time.perf_counter()
    model = keras.saving.load_model(workload.model_path, compile=False)
    load_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = pq.read_table(workload.data_path)
    feeds = ex.features_of(table)
    read_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.predict({k: v[:LIMIT_BATCH_SIZE] for k, v in feeds.items()}, batch_size=LIMIT_BATCH_SIZE, verbose=0)
    warmup_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = model.predict(feeds, batch_size=LIMIT_BATCH_SIZE, verbose=0)
    predict_seconds = time.perf_counter() - t0

    path = os.path.join(workdir, "limit_predictions.npz")
    np.savez(
        path,
        id=table.column("id").to_numpy(),
        **{name: np.asarray(out[name]).reshape(table.num_rows, -1) for name in OUTPUTS},
    )
    return LimitResult(
        rows=table.num_rows,
        read_seconds=read_seconds,
        predict_seconds=predict_seconds,
        load_seconds=load_seconds,
        warmup_seconds=warmup_seconds,
        predictions_path=path,
        cpus=os.cpu_count() or 1,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def batch_arg(value: str) -> int | str:
    """``--batch-size``: rayscore's ``predict.batch_size``, a whole number or ``auto``."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or auto, got {value!r}") from None


def batch_label(model_path: str, batch_size: int | str) -> str:
    """``batch_size`` as the benchmark's header shows it: ``auto`` with the rows rayscore makes of it for this model."""
    if batch_size != "auto":
        return f"{batch_size:,}"
    from rayscore._config import PredictConfig  # noqa: PLC0415
    from rayscore._model import resolve_loader  # noqa: PLC0415
    from rayscore._plan import sized  # noqa: PLC0415

    _, loader = resolve_loader(model_path)
    return f"auto ({sized(PredictConfig(), loader.inspect(model_path)).batch_size:,} rows)"


def rayscore_config(
    workload: Workload, output_path: str, actors: int, batch_size: int, spark: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The job config: the embedded defaults (local Ray + RayDP Spark) plus our files."""
    return {
        "spark": dict(spark or {}),
        "input": {"format": "parquet", "path": workload.data_path},
        "model": {"uri": workload.model_path, "outputs": {name: name for name in OUTPUTS}},
        "predict": {"batch_size": batch_size, "actors": actors},
        "output": {"path": output_path, "format": "parquet", "mode": "overwrite", "keep_columns": ["id"]},
    }


def run_rayscore(config: dict[str, Any]) -> RayscoreRun:
    import rayscore  # noqa: PLC0415

    t0 = time.perf_counter()
    result = rayscore.run(config)
    wall = time.perf_counter() - t0
    return RayscoreRun(
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        seconds=dict(result.seconds),
        wall_seconds=wall,
        output_path=config["output"]["path"],
        model_loads=result.model_loads,
        result=result.to_dict(),
    )


def check_predictions(limit: LimitResult, scored: RayscoreRun) -> Check:
    """Join rayscore's output with the limit's predictions by id and compare."""
    import numpy as np  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    ref = np.load(limit.predictions_path)
    ref_ids = ref["id"]
    got = pq.read_table(scored.output_path, columns=["id", *OUTPUTS])
    got_ids = got.column("id").to_numpy()

    common, ref_at, got_at = np.intersect1d(ref_ids, got_ids, assume_unique=False, return_indices=True)
    missing = len(np.setdiff1d(ref_ids, got_ids)) + (len(ref_ids) - len(np.unique(ref_ids)))
    extra = len(np.setdiff1d(got_ids, ref_ids)) + (len(got_ids) - len(np.unique(got_ids)))

    diffs: dict[str, float] = {}
    for name in OUTPUTS:
        col = got.column(name).combine_chunks()
        if hasattr(col.type, "value_type"):  # array<float>: every row must hold the same count
            width = ref[name].shape[1]
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != width).any():
                diffs[name] = float("inf")
                continue
            values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
        else:
            values = col.to_numpy(zero_copy_only=False).reshape(len(col), 1)
        delta = np.abs(values[got_at].astype(np.float64) - ref[name][ref_at].astype(np.float64))
        diffs[name] = float(delta.max()) if delta.size else float("inf")
    return Check(len(common), missing, extra, diffs)


# --------------------------------------------------------------------------- report


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n else ""


def render(args: argparse.Namespace, workload: Workload, limit: LimitResult, scored: RayscoreRun, check: Check) -> str:
    s = scored.seconds
    rows_l, rows_r = limit.rows, scored.rows_out
    lines: list[tuple[str, str, str, str, str]] = [
        ("way", "rows", "seconds", "rows/s", "peak RSS"),
        (
            "limit: read + features_of (pyarrow)",
            f"{rows_l:,}",
            f"{limit.read_seconds:.2f}",
            f"{_rate(rows_l, limit.read_seconds):,.0f}",
            "",
        ),
        (
            f"limit: model.predict (bs {LIMIT_BATCH_SIZE}, {limit.cpus} cores)",
            f"{rows_l:,}",
            f"{limit.predict_seconds:.2f}",
            f"{_rate(rows_l, limit.predict_seconds):,.0f}",
            "",
        ),
        (
            "limit: read + predict",
            f"{rows_l:,}",
            f"{limit.seconds:.2f}",
            f"{_rate(rows_l, limit.seconds):,.0f}",
            _gib(limit.peak_rss_bytes),
        ),
        ("rayscore: startup (Ray + Spark)", "", f"{s.get('startup', 0.0):.2f}", "", ""),
        (
            "rayscore:   read_convert",
            f"{scored.rows_in:,}",
            f"{s.get('read_convert', 0.0):.2f}",
            f"{_rate(scored.rows_in, s.get('read_convert', 0.0)):,.0f}",
            "",
        ),
        ("rayscore:   load (slowest actor, in predict)", "", f"{s.get('load', 0.0):.2f}", "", ""),
        (
            "rayscore:   predict",
            f"{rows_r:,}",
            f"{s.get('predict', 0.0):.2f}",
            f"{_rate(rows_r, s.get('predict', 0.0)):,.0f}",
            "",
        ),
        (
            "rayscore:   write",
            f"{rows_r:,}",
            f"{s.get('write', 0.0):.2f}",
            f"{_rate(rows_r, s.get('write', 0.0)):,.0f}",
            "",
        ),
        (
            "rayscore: end to end after start-up",
            f"{rows_r:,}",
            f"{scored.after_startup_seconds:.2f}",
            f"{_rate(rows_r, scored.after_startup_seconds):,.0f}",
            _gib(scored.peak_rss_bytes),
        ),
        (
            "rayscore: run() wall (start-up .. stop)",
            f"{rows_r:,}",
            f"{scored.wall_seconds:.2f}",
            f"{_rate(rows_r, scored.wall_seconds):,.0f}",
            "",
        ),
        ("rayscore:   of which in no stage (checks, stop)", "", f"{scored.unstaged_seconds:.2f}", "", ""),
    ]
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    out = [
        f"rayscore end-to-end benchmark: {args.rows:,} rows, {args.actors} actors, "
        f"batch size {batch_label(workload.model_path, args.batch_size)}, {os.cpu_count()} CPUs",
        f"workdir: {args.workdir}  (workload made in {workload.seconds:.1f} s; limit model load "
        f"{limit.load_seconds:.2f} s, warm-up {limit.warmup_seconds:.2f} s, not counted)",
        "",
    ]
    for i, row in enumerate(lines):
        out.append(
            "  ".join(
                row[0].ljust(widths[0]) if j == 0 else cell.rjust(widths[j]) for j, cell in enumerate(row)
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in check.max_abs_diff.items())
    out.append(
        f"check: {'OK' if check.ok else 'FAILED'}: {check.rows_compared:,} rows joined by id, "
        f"{check.missing_ids} missing, {check.extra_ids} extra; max abs diff {diffs} (tolerance {TOLERANCE:g})"
    )
    r = ratios(limit, scored)
    out.append(
        f"ratio rayscore / limit rows/s: end to end after start-up vs read + predict "
        f"{r['e2e']:.3f}; predict stage vs model.predict {r['predict']:.3f}"
    )
    out.append("peak RSS: summed over the process tree, sampled; shared pages (object store) count per process")
    return "\n".join(out)


def ratios(limit: LimitResult, scored: RayscoreRun) -> dict[str, float]:
    return {
        "e2e": _rate(scored.rows_out, scored.after_startup_seconds) / _rate(limit.rows, limit.seconds),
        "predict": _rate(scored.rows_out, scored.seconds.get("predict", 0.0))
        / _rate(limit.rows, limit.predict_seconds),
    }


def summary(args: argparse.Namespace, limit: LimitResult, scored: RayscoreRun, check: Check) -> dict[str, Any]:
    return {
        "rows": args.rows,
        "actors": args.actors,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "limit": {
            **asdict(limit),
            "seconds": limit.seconds,
            "rows_per_second": _rate(limit.rows, limit.seconds),
            "predict_rows_per_second": _rate(limit.rows, limit.predict_seconds),
        },
        "rayscore": {
            "rows_in": scored.rows_in,
            "rows_out": scored.rows_out,
            "seconds": scored.seconds,
            "after_startup_seconds": scored.after_startup_seconds,
            "rows_per_second": _rate(scored.rows_out, scored.after_startup_seconds),
            "predict_rows_per_second": _rate(scored.rows_out, scored.seconds.get("predict", 0.0)),
            "wall_seconds": scored.wall_seconds,
            "unstaged_seconds": scored.unstaged_seconds,
            "model_loads": scored.model_loads,
            "peak_rss_bytes": scored.peak_rss_bytes,
        },
        "check": {**asdict(check), "ok": check.ok, "tolerance": TOLERANCE},
        "ratio": ratios(limit, scored),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="feature rows to score (default 200000)")
    parser.add_argument("--actors", type=int, default=2, help="rayscore predictor actors (default 2)")
    parser.add_argument(
        "--batch-size", type=batch_arg, default="auto", help="rayscore's rows per model call (default auto)"
    )
    parser.add_argument(
        "--workdir", default=None, help="where the model, data and outputs go (default: a temp dir, removed afterwards)"
    )
    parser.add_argument("--json", action="store_true", help="also print a one-line JSON summary at the end")
    args = parser.parse_args(argv)
    for name in ("rows", "actors", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


@contextmanager
def workdir_of(args: argparse.Namespace) -> Iterator[str]:
    """The given --workdir (kept), or a temp dir removed at the end."""
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        args.workdir = os.path.abspath(args.workdir)
        yield args.workdir
        return
    path = tempfile.mkdtemp(prefix="rayscore-bench-")
    args.workdir = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with workdir_of(args) as workdir:
        print(f"making the workload ({args.rows:,} rows) in {workdir} ...", flush=True)
        workload = _in_child(make_workload, workdir, args.rows)

        print("running the limit (one process, model.predict) ...", flush=True)
        with PeakMemory() as mem:
            limit = _in_child(run_limit, workload, workdir)
        limit.peak_rss_bytes = max(limit.peak_rss_bytes, mem.peak_bytes)

        print("running rayscore.run (local Ray + RayDP Spark) ...", flush=True)
        config = rayscore_config(workload, os.path.join(workdir, "scores.parquet"), args.actors, args.batch_size)
        with PeakMemory() as mem:
            scored = run_rayscore(config)
        scored.peak_rss_bytes = mem.peak_bytes

        check = check_predictions(limit, scored)
        print()
        print(render(args, workload, limit, scored, check), flush=True)
        if args.json:
            print(json.dumps(summary(args, limit, scored, check), sort_keys=True))
    return 0 if check.ok and scored.rows_out == args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
