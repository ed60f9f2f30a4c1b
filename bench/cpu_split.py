"""Where the CPU goes while ``rayscore.predict`` starts and writes: each kind of process's seconds, from /proc.

    python bench/cpu_split.py --model seed --gb 2 --rows 200000             # 2 actors, one run
    python bench/cpu_split.py --model seed --gb 2 --actors 1 --repeat 2     # 1 actor, two runs

For a time split on a machine whose cores are all busy, the question is
not where the wall clock goes but which processes use the CPU meanwhile:
on 2 cores a way is as fast as its CPU seconds allow. This reads
``/proc/<pid>/stat`` (user + system time) of every process on the machine
before and after the call (``rayscore.predict``: the sample check, the
pool's start, the model's load) and the write (Spark's job through the
actors), and sums the differences by kind of process: the driver (this
script's child, all its threads), ``ray::Predictor`` (the actors), Spark's
driver JVM and its executors' JVMs (RayDP's, Ray workers), Spark's Python
workers, Ray's own processes. A thread that starts and ends within the call
is counted in its process. Beside it, the machine's busy share in 0.25 s
steps (``/proc/stat``), to show whether any core waits.

The workload is ``compare_big.py``'s (``--model``, ``--gb``, ``--rows``),
each run a fresh session in a fresh process, as there; a ``--workdir``
that holds one made with the same arguments is used again (so a local
model's digest, kept per node, is not taken again). Nothing here is
rayscore's own count: the kernel's.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

import bench_e2e as e2e  # noqa: E402
import compare_big  # noqa: E402
from compare import FILTER  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
KINDS = (  # the first pattern a process's command line matches names its kind
    ("Spark driver JVM", r"java .*org\.apache\.spark\.deploy\.SparkSubmit"),
    ("Spark executor JVMs, RayDP master", r"java .*(raydp|io\.ray\.runtime)"),
    ("other JVMs", r"\bjava\b"),
    ("rayscore actors", r"ray::Predictor"),
    ("Spark Python workers", r"pyspark\.(daemon|worker)"),
    ("Ray (raylet, GCS, other workers)", r"raylet|gcs_server|ray::|default_worker|dashboard|log_monitor"),
)


def _processes() -> dict[int, tuple[float, str]]:
    """Every process's (CPU seconds, command line)."""
    out = {}
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{folder}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"{folder}/cmdline") as fh:
                cmd = fh.read().replace("\0", " ")
        except OSError:  # gone meanwhile
            continue
        out[int(folder[6:])] = ((int(fields[11]) + int(fields[12])) / TICK, cmd)
    return out


def _kind(pid: int, cmd: str) -> str:
    if pid == os.getpid():
        return "the driver (this process)"
    for name, pattern in KINDS:
        if re.search(pattern, cmd):
            return name
    return "other"


def _split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds used between two snapshots, by kind (a process that ended meanwhile is not seen)."""
    kinds: dict[str, float] = {}
    for pid, (cpu, cmd) in after.items():
        used = cpu - before.get(pid, (0.0, ""))[0]
        if used > 0:
            kind = _kind(pid, cmd)
            kinds[kind] = kinds.get(kind, 0.0) + used
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


class Busy:
    """The machine's busy share of each 0.25 s step, from /proc/stat, in a thread."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    def _run(self) -> None:
        last = self._read()
        while not self._stop.wait(0.25):
            now = self._read()
            total = now[0] - last[0]
            self.steps.append((time.perf_counter(), 1 - (now[1] - last[1]) / total if total else 0.0))
            last = now

    def between(self, start: float, end: float) -> list[float]:
        return [share for at, share in self.steps if start < at <= end + 0.25]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def one_run(inputs: dict, workdir: str, actors: int, writes: int = 1) -> dict:
    """Child process: a session, ``rayscore.predict``, ``writes`` writes; the CPU split of the call and each write."""
    import rayscore

    with rayscore.session(max_actors=actors) as s:
        busy = Busy()
        df = s.spark.read.parquet(inputs["data"]).where(FILTER)
        before, t0 = _processes(), time.perf_counter()
        scored = rayscore.predict(df, model=inputs["model"], keep_columns=["id"], actors=actors, progress=False)
        called, t1 = _processes(), time.perf_counter()
        got = {"call": (t1 - t0, _split(before, called), busy.between(t0, t1))}
        for n in range(1, writes + 1):
            scored.write.mode("overwrite").parquet(os.path.join(workdir, "cpu_split.parquet"))
            written, t2 = _processes(), time.perf_counter()
            got["write" if n == 1 else f"write {n}"] = (t2 - t1, _split(called, written), busy.between(t1, t2))
            called, t1 = written, t2
        busy.stop()
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["big", "seed"], default="seed")
    parser.add_argument("--gb", type=float, default=2.0, help="the embedding table's size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs, each a fresh session in a fresh process")
    parser.add_argument("--writes", type=int, default=1, help="writes of the same scored DataFrame in each session")
    parser.add_argument("--workdir", default=None, help="where the model, rows and output go (default: temp, removed)")
    args = parser.parse_args(argv)
    with e2e.workdir_of(args) as workdir:
        made = os.path.join(workdir, "inputs.json")
        wanted = {"model": args.model, "gb": args.gb, "rows": args.rows}
        kept = {}
        if os.path.exists(made):
            with open(made) as fh:
                kept = json.load(fh)
        if kept.get("wanted") == wanted:  # a --workdir made before: the same files (and the model's kept digest)
            inputs = kept["inputs"]
        else:
            print(f"making the {args.model} model ({args.gb} GB table) and {args.rows:,} rows in {workdir} ...")
            inputs = e2e._in_child(compare_big.make_workload, workdir, args.model, args.gb, args.rows)
            with open(made, "w") as fh:
                json.dump({"wanted": wanted, "inputs": inputs}, fh)
        for run in range(1, args.repeat + 1):
            got = e2e._in_child(one_run, inputs, workdir, args.actors, args.writes)
            print(f"\n# run {run}/{args.repeat}: rayscore.predict, {args.actors} actor(s), {os.cpu_count()} cores")
            for part, (seconds, kinds, busy) in got.items():
                total = sum(kinds.values())
                mean = sum(busy) / len(busy) if busy else 0.0
                print(f"{part}: {seconds:.2f} s, {total:.2f} CPU s ({total / seconds:.2f} cores), busy {mean:.0%}")
                for kind, cpu in kinds.items():
                    if cpu >= 0.05:
                        print(f"  {kind:<36}{cpu:>6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
