"""Where a batch's time goes on each side of the hop, seen from outside rayscore.

    python bench/profile_hop.py --rows 1000000 --seconds 10

Makes ``compare.py``'s workload (the example's small model, ``--rows`` rows
with a ``country`` column), then, in a child process, opens a
``rayscore.session()`` and writes ``rayscore.predict(df.where(FILTER))``
with Spark twice: the first write loads the pool and starts Spark's Python
workers, the second (both warm, what a long job runs at) is profiled.
While it runs, and for ``--seconds``:

* **py-spy** samples every Spark Python worker and every pool actor
  (wall-clock, idle frames included, ``--rate`` Hz), and each sample of
  the thread that does the work is put in one step of a batch: Spark's
  read (Arrow from the JVM), rebatching, Arrow IPC out, the submit, the
  wait for the actor, IPC in and the cast, Spark's write; on the actor,
  the wait for a batch, IPC in, the features, the model, IPC out, the
  ledger's call;
* **psutil** takes the CPU seconds of each kind of process (Spark's JVMs,
  the Python workers, the actors, Ray's daemons, the driver): who uses
  the cores;
* **Ray's timeline** gives each actor call's phases as Ray's core worker
  timed them (arguments fetched, executed, outputs stored).

With ``--udf`` it profiles ``compare.py``'s hand-written ``mapInArrow`` UDF
(its model in each Python worker) the same way, for the comparison.
Nothing here is rayscore's own counter: the samples come from py-spy, the
CPU from ``/proc``, the phases from Ray.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e  # noqa: E402

FILTER = "country != 'xx'"


def fn(names: str, where: str = "") -> str:
    """A pattern on one py-spy frame, ``[Class.]function (file:line)``: one of ``names`` (a regex), in ``where``."""
    return rf"(^|\.)({names}) \([^)]*{where}"


# (step, frame pattern): a sample is put in the first step whose pattern one of its frames matches, from the
# innermost frame out (so a model call inside the UDF's function is the model's).
WORKER_STEPS = (
    ("wait for the actor (ray.get)", fn("get_objects|get", "ray/")),
    ("IPC in, cast", fn("from_ipc|_take")),
    ("IPC out", fn("to_ipc")),
    ("submit to the actor", fn("submit|_refresh|_remote|_actor_method_call|remote")),
    ("rebatch", fn("rebatch")),
    ("read Arrow from Spark", fn("load_stream|read_next_batch|_read_with_length|read_int")),
    ("the model (UDF)", r"keras/|tensorflow/"),
    ("features (UDF)", fn("tensor|arrow_udf", "compare")),
)
ACTOR_STEPS = (
    ("the model", r"keras/|tensorflow/"),
    ("IPC in", fn("from_ipc")),
    ("IPC out", fn("to_ipc")),
    ("ledger and memory calls", fn("_report_rss|remote|_remote|_actor_method_call")),
    ("features and outputs", r"rayscore/_(convert|predict)\.py"),
)
WORK = {"python worker": fn("score_partition|arrow_udf"), "actor": fn("score", "rayscore/_predict")}
OUTSIDE = {
    "python worker": "Spark's loop: writing results to the JVM, the next task",
    "actor": "waiting for a batch (Ray's loop)",
}


@dataclass
class Profile:
    """What one profiled window saw."""

    seconds: float
    steps: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> step -> share of samples
    samples: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)  # kind -> processes that did the work
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # kind -> (frame, share)
    cpu: dict[str, float] = field(default_factory=dict)  # process kind -> cores used on average
    timeline: dict[str, tuple[int, float]] = field(default_factory=dict)  # phase -> (events, mean ms)
    rows: int = 0
    write_seconds: float = 0.0


def kind_of(proc) -> str | None:
    """Which part of the job a process is, from its command line."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return None
    if cmd.startswith("ray::Predictor"):
        return "actor"
    if "pyspark.daemon" in cmd or "pyspark/daemon.py" in cmd:
        parent = proc.parent()
        return "python worker" if parent is not None and "pyspark" in " ".join(parent.cmdline()) else "daemon"
    if "java" in cmd.split(" ")[0]:
        return "spark JVM"
    if "raylet" in cmd or "gcs_server" in cmd or "plasma" in cmd or "ray/dashboard" in cmd:
        return "ray daemons"
    if cmd.startswith("ray::"):
        return "ray workers (other)"
    return None


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds (user + system) of every process of each kind, now."""
    import psutil  # noqa: PLC0415

    total: dict[str, float] = collections.defaultdict(float)
    me = os.getpid()
    for proc in psutil.process_iter():
        kind = "driver" if proc.pid == me else kind_of(proc)
        if kind is None:
            continue
        try:
            t = proc.cpu_times()
        except Exception:  # noqa: BLE001
            continue
        total[kind] += t.user + t.system
    return dict(total)


def targets() -> dict[str, list[int]]:
    import psutil  # noqa: PLC0415

    found: dict[str, list[int]] = collections.defaultdict(list)
    for proc in psutil.process_iter():
        kind = kind_of(proc)
        if kind in ("actor", "python worker"):
            found[kind].append(proc.pid)
    return dict(found)


def sample(pids: dict[str, list[int]], seconds: float, rate: int, folder: str) -> dict[str, list[str]]:
    """py-spy ``record`` on each pid at once, raw (collapsed) stacks with thread names; the files by kind."""
    procs, files = [], collections.defaultdict(list)
    for kind, ids in pids.items():
        for pid in ids:
            out = os.path.join(folder, f"{kind.replace(' ', '_')}-{pid}.txt")
            cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
            cmd += ["--format", "raw", "--idle", "--threads", "--nonblocking", "--output", out]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            files[kind].append(out)
    for p in procs:
        p.wait()
    return files


def frames_of(line: str) -> tuple[list[str], int]:
    """One raw py-spy line: (frames outermost first, without the process and thread frames; its count)."""
    stack, _, count = line.rstrip().rpartition(" ")
    frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
    return frames, int(count)


def classify(files: list[str], steps: tuple[tuple[str, str], ...], work: str, outside: str) -> tuple:
    """Each sample of a process's working thread (the one whose stack most often holds ``work``) into a step.

    A sample of that thread outside ``work``'s frames is ``outside``. A
    process whose samples never hold ``work`` (a Python worker Spark kept
    but gave no task) is left out. Returns (shares, samples, processes, top
    innermost frames).
    """
    counts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    compiled = [(name, re.compile(p)) for name, p in steps]
    work_re = re.compile(work)
    working = 0
    for path in files:
        if not os.path.exists(path):
            continue
        threads: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
        for line in Path(path).read_text().splitlines():
            if line.strip():
                thread = next((f for f in line.split(";") if f.startswith("thread ")), "")
                threads[thread].append(frames_of(line))
        if not threads:
            continue

        def inside(samples: list[tuple[list[str], int]]) -> int:
            return sum(n for frames, n in samples if any(work_re.search(f) for f in frames))

        busiest = max(threads.values(), key=inside)
        if not inside(busiest):
            continue
        working += 1
        for frames, n in busiest:
            at = [i for i, f in enumerate(frames) if work_re.search(f)]
            if not at:
                counts[outside] += n
                continue
            inner = frames[at[0] :]
            step = next((name for f in reversed(inner) for name, r in compiled if r.search(f)), "other")
            counts[step] += n
            leaves[re.sub(r":\d+\)", ")", inner[-1])] += n
    total = sum(counts.values()) or 1
    shares = {k: v / total for k, v in counts.most_common()}
    top = [(k, v / total) for k, v in leaves.most_common(12)]
    return shares, sum(counts.values()), working, top


def timeline_phases(since: float, until: float) -> dict[str, tuple[int, float]]:
    """Ray's profile events in [since, until] (epoch s), by process kind and event: (count, mean ms).

    Ray records them with ``RAY_PROFILING=1`` (set before the session starts):
    each actor call's ``task:deserialize_arguments``, ``task:execute``,
    ``task:store_outputs``, and the callers' (Spark's Python workers are Ray
    drivers) submits and gets.
    """
    import ray  # noqa: PLC0415

    spans: dict[str, list[float]] = collections.defaultdict(list)
    for ev in ray.timeline():
        ts, dur = ev.get("ts"), ev.get("dur")
        if ts is None or dur is None or not (since * 1e6 <= float(ts) <= until * 1e6):
            continue
        spans[f"{str(ev.get('tid', '')).split(':')[0]} {ev.get('name', ev.get('cat'))}"].append(float(dur) / 1000)
    return {k: (len(v), sum(v) / len(v)) for k, v in sorted(spans.items()) if len(v) >= 5}


def wait_for_tasks(spark, timeout: float = 300) -> None:
    """Until one of Spark's stages has a task running (the profiled write has begun)."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stage in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage)
            if info is not None and info.numActiveTasks > 0:
                return
        time.sleep(0.05)
    raise TimeoutError("no Spark task began within the timeout")


def profile_window(spark, write, args: argparse.Namespace, folder: str) -> Profile:
    """Run ``write()`` in a thread; once its tasks run, sample for ``args.seconds``; wait for it."""
    began = time.perf_counter()
    thread = threading.Thread(target=write, name="profiled-write")
    thread.start()
    wait_for_tasks(spark)
    time.sleep(args.warmup)  # let every task reach its steady loop (a bench, not a synchronisation)
    cpu0, t0, wall0 = cpu_by_kind(), time.perf_counter(), time.time()
    files = sample(targets(), args.seconds, args.rate, folder)
    cpu1, t1, wall1 = cpu_by_kind(), time.perf_counter(), time.time()
    thread.join()
    prof = Profile(seconds=t1 - t0, write_seconds=time.perf_counter() - began)
    prof.cpu = {k: (cpu1.get(k, 0) - cpu0.get(k, 0)) / (t1 - t0) for k in sorted(set(cpu0) | set(cpu1))}
    for kind, kind_files in files.items():
        steps = WORKER_STEPS if kind == "python worker" else ACTOR_STEPS
        shares, n, working, top = classify(kind_files, steps, WORK[kind], OUTSIDE[kind])
        prof.steps[kind], prof.samples[kind], prof.processes[kind], prof.top[kind] = shares, n, working, top
    import ray  # noqa: PLC0415

    prof.timeline = timeline_phases(wall0, wall1) if ray.is_initialized() else {}
    return prof


def run_rayscore(workload: e2e.Workload, args: argparse.Namespace, folder: str) -> Profile:
    """Child process: a session, predict, a warm-up write, then the profiled second write."""
    os.environ["RAY_PROFILING"] = "1"  # Ray's timeline: the actor calls' phases
    import compare  # noqa: PLC0415

    import rayscore  # noqa: PLC0415

    with rayscore.session(spark=compare._spark(args), max_actors=args.actors) as s:
        df = s.spark.read.parquet(workload.data_path).where(FILTER)
        scored = rayscore.predict(
            df,
            model=workload.model_path,
            keep_columns=["id"],
            batch_size=args.batch_size,
            actors=args.actors,
            progress=False,
        )
        out = os.path.join(folder, "scores.parquet")
        scored.write.mode("overwrite").parquet(out)

        def write() -> None:
            scored.write.mode("overwrite").parquet(out)

        prof = profile_window(s.spark, write, args, folder)
        prof.rows = s.spark.read.parquet(out).count()
    return prof


def run_udf(workload: e2e.Workload, args: argparse.Namespace, folder: str) -> Profile:
    """Child process: compare.py's mapInArrow UDF (its model in each Python worker), its second write profiled."""
    import compare  # noqa: PLC0415

    spark, _ = compare.spark_session(os.cpu_count() or 1, "arrow_udf")
    scored = compare.spark_scored(spark, workload, "arrow_udf")
    out = os.path.join(folder, "udf.parquet")
    scored.write.mode("overwrite").parquet(out)

    def write() -> None:
        scored.write.mode("overwrite").parquet(out)

    prof = profile_window(spark, write, args, folder)
    prof.rows = spark.read.parquet(out).count()
    spark.stop()
    return prof


def render(name: str, prof: Profile) -> str:
    lines = [
        f"## {name}: the second write took {prof.write_seconds:.1f} s ({prof.rows:,} rows, "
        f"{prof.rows / prof.write_seconds:,.0f} rows/s); sampled {prof.seconds:.1f} s of it"
    ]
    lines.append("cores used on average in the window (CPU seconds / wall seconds, from /proc):")
    lines += [f"  {k:<22}{v:>6.2f}" for k, v in sorted(prof.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.005]
    for kind, shares in prof.steps.items():
        lines.append(
            f"{kind}: {prof.samples[kind]:,} samples of the working thread of {prof.processes[kind]} process(es) "
            "(py-spy, wall-clock)"
        )
        lines += [f"  {share:>6.1%}  {step}" for step, share in shares.items()]
        lines.append("  innermost Python frames:")
        lines += [f"    {share:>6.1%}  {frame[:110]}" for frame, share in prof.top[kind]]
    if prof.timeline:
        lines.append("Ray's timeline of the pool's calls in the window (events, mean ms):")
        lines += [f"  {k:<40}{n:>6}{ms:>9.2f}" for k, (n, ms) in prof.timeline.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument(
        "--batch-size", type=e2e.batch_arg, default="auto", help="rayscore's rows per model call (default auto)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="py-spy's window in the second write")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds into the write before sampling")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--executor-cores", type=int, default=None, help="rayscore's spark.executor_cores")
    parser.add_argument("--udf", action="store_true", help="also profile compare.py's mapInArrow UDF")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    args.json = False
    with e2e.workdir_of(args) as workdir:
        data = os.path.join(workdir, "features.parquet")
        if os.path.exists(data):
            workload = e2e.Workload(os.path.join(workdir, "ctr.keras"), data, args.rows, 0.0)
        else:
            print(f"making the workload ({args.rows:,} rows) in {workdir} ...", flush=True)
            workload = e2e._in_child(e2e.make_workload, workdir, args.rows)
        folder = tempfile.mkdtemp(prefix="profile-", dir=workdir)
        print("rayscore.predict, profiling its second write ...", flush=True)
        profiles = {"rayscore.predict": e2e._in_child(run_rayscore, workload, args, folder)}
        if args.udf:
            print("the mapInArrow UDF, profiling its second write ...", flush=True)
            profiles["mapInArrow UDF"] = e2e._in_child(run_udf, workload, args, folder)
        print(
            f"# {args.rows:,} rows, {os.cpu_count()} cores, {args.actors} actor(s), "
            f"batch {e2e.batch_label(workload.model_path, args.batch_size)}; "
            f"py-spy {args.rate} Hz"
        )
        for name, prof in profiles.items():
            print(render(name, prof))
    return 0


if __name__ == "__main__":
    sys.exit(main())
