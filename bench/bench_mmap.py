"""Memory-mapped embedding tables against tables loaded into every actor, through ``rayscore run``.

    python bench/bench_mmap.py --gb 4.5 --rows 1000000 --actors 2,4          # memory, speed, cold first batch
    python bench/bench_mmap.py --gb 30 --format h5 --rows 200000 --actors 2 --only mapped   # larger than memory

Builds the model of ``examples/make_big_model.py`` (one ``--gb`` GB embedding
table), then runs ``rayscore run`` once per case on the embedded default and
prints, per case:

* ``PSS GB``: the actors' proportional set sizes summed, at their peak while
  they score (sampled every 0.2 s from ``/proc/PID/smaps_rollup``; RSS would
  count each shared page once per actor). ``xmodel``: that sum less the same
  number of actors scoring a model with a tiny table (the processes' own
  base), over the model's bytes;
* rows/s of the predict stage, and the ratio of mapped to in-memory;
* ``load s``: the slowest actor's model load (the page cache warm);
* ``cold load s`` / ``cold first s``: in a fresh process, with the model's
  pages evicted from the page cache first, the model's load and then its
  first batch of ``--batch-size`` rows (a mapped table's rows are read from
  disk as that batch touches them), then the second batch (``next s``);
* ``resident GB``: the most table bytes the report found in the page cache;
* ``max err``: ``|score - formula|`` on 2,000 rows (``expected_scores``).

Cases: ``memory`` (``model.mmap_min_bytes: 0``) and ``mapped`` (the default)
at every ``--actors`` count that fits; ``memory`` is skipped where its copies
would not fit in the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from make_big_model import expected_scores, vocab_for, write_h5, write_keras, write_tokens  # noqa: E402

WRITERS = {"keras": write_keras, "h5": write_h5}


def actor_pids() -> list[int]:
    """Processes that are rayscore's predictor actors (Ray titles them ``ray::Predictor...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if fh.read(64).startswith(b"ray::Predictor"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PssPeak(threading.Thread):
    """The largest sum of the actors' PSS seen while ``count`` actors exist."""

    def __init__(self, count: int) -> None:
        super().__init__(daemon=True)
        self.count, self.peak, self.done = count, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            pids = actor_pids()
            if len(pids) >= self.count:
                self.peak = max(self.peak, sum(pss(p) for p in pids))


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (no process may map it): the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_job(
    work: Path, model: Path, data: Path, actors: int, mmap_min_bytes: int | None, batch: int
) -> tuple[dict, int, float]:
    """(the run report, the actors' peak summed PSS, wall seconds) of one ``rayscore run``."""
    out = work / "scores"
    model_cfg = {"uri": str(model)}
    if mmap_min_bytes is not None:
        model_cfg["mmap_min_bytes"] = mmap_min_bytes
    config = work / "job.json"  # JSON is YAML
    config.write_text(
        json.dumps(
            {
                "input": {"format": "parquet", "path": str(data)},
                "model": model_cfg,
                "predict": {"batch_size": batch, "actors": actors},
                "output": {"path": str(out), "keep_columns": ["id"], "mode": "overwrite"},
            }
        )
    )
    sampler = PssPeak(actors)
    sampler.start()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rayscore", "run", str(config), "--json", "--quiet"], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"rayscore run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), sampler.peak, wall


COLD_PROBE = """
import os, sys, time
import numpy as np
from rayscore._model import loaders
path, fmt, mmap, rows, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
loaders[fmt].prepare()
fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
t0 = time.perf_counter(); model = loaders[fmt].load(path, mmap_min_bytes=mmap); t1 = time.perf_counter()
rng = np.random.default_rng(1)
model.predict({"tokens": rng.integers(0, vocab, (rows, 8), dtype=np.int32)}); t2 = time.perf_counter()
model.predict({"tokens": rng.integers(0, vocab, (rows, 8), dtype=np.int32)}); t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def cold_probe(model: Path, fmt: str, mmap_min_bytes: int | None, rows: int, vocab: int) -> list[float]:
    """[load s, first batch s, second batch s] in a fresh process, the model's pages evicted first."""
    mmap = (256 << 20) if mmap_min_bytes is None else mmap_min_bytes
    done = subprocess.run(
        [sys.executable, "-c", COLD_PROBE, str(model), fmt, str(mmap), str(rows), str(vocab)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if done.returncode != 0:
        raise SystemExit(f"the cold probe failed: {done.stderr.strip()[-2000:]}")
    return [float(x) for x in done.stdout.split()[-3:]]


def _table_rows(model: Path, fmt: str) -> int:
    """Rows of the embedding table of a model file left in ``--dir`` (to reuse it)."""
    sys.path.insert(0, str(ROOT))
    from rayscore._tables import scan  # noqa: PLC0415

    return sum(t.nbytes for t in scan(str(model), fmt, 1) if t.mapped) // (4 * 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.5, help="embedding table size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actors", default="2,4", help="actor counts, comma-separated")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--format", choices=sorted(WRITERS), default="keras")
    parser.add_argument("--only", choices=["mapped", "memory"], default=None, help="run one variant only")
    parser.add_argument("--dir", default=None, help="where to write the model (default: a temp dir, removed)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="rayscore-mmap-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab = vocab_for(args.gb)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"# {platform.platform()}, {os.cpu_count()} cpus, {memory / 2**30:.1f} GiB memory")
    print(f"# {args.rows} rows, batch {args.batch_size}, table {vocab} x 64 float32, {args.format}")
    tokens = write_tokens(work / "tokens.parquet", args.rows, vocab)
    t0 = time.perf_counter()
    model = work / f"big.{args.format}"
    if args.dir and model.exists() and _table_rows(model, args.format) == vocab:
        print(f"# reusing {model}")
    else:
        WRITERS[args.format](model, vocab)
        print(f"# model written in {time.perf_counter() - t0:.0f} s")
    size = model.stat().st_size
    tiny = WRITERS[args.format](work / f"tiny.{args.format}", 16)
    write_tokens(work / "tiny_tokens.parquet", args.rows, 16)
    print(f"# model {size / 1e9:.2f} GB")
    variants = [v for v in ("memory", "mapped") if args.only in (None, v)]
    lines, speeds = [], {}
    try:
        for actors in (int(a) for a in args.actors.split(",")):
            # The processes' own PSS (TensorFlow, Ray, pyarrow), to take away from each case's.
            base = run_job(work, tiny, work / "tiny_tokens.parquet", actors, None, args.batch_size)[1]
            for variant in variants:
                if variant == "memory" and actors * size * 1.4 > 0.8 * memory:
                    lines.append(
                        f"{variant:<7} {actors:>6}  skipped: {actors} copies of {size / 1e9:.1f} GB do not fit"
                    )
                    continue
                mmap = 0 if variant == "memory" else None
                report, peak, wall = run_job(work, model, work / "tokens.parquet", actors, mmap, args.batch_size)
                sample = pq.read_table(work / "scores").sort_by("id").slice(0, 2000)
                ids = sample.column("id").to_numpy()
                err = float(np.abs(sample.column("score").to_numpy() - expected_scores(tokens[ids])).max())
                speed = speeds[(variant, actors)] = report["rows_out"] / report["seconds"]["predict"]
                mapped = [t["layer"] for t in report["tables"] if t["mapped"]]
                lines.append(
                    f"{variant:<7} {actors:>6} {peak / 1e9:7.2f} {(peak - base) / size:6.2f} {speed:9.0f} "
                    f"{report['seconds']['load']:6.1f} {report['table_bytes_resident_peak'] / 1e9:11.2f} "
                    f"{wall:6.1f} {err:8.1e}  {','.join(mapped) or '-'}"
                )
        cold = []
        for variant in variants:
            if variant == "memory" and size * 1.4 > 0.8 * memory:
                continue
            load, first, second = cold_probe(
                model, args.format, 0 if variant == "memory" else None, args.batch_size, vocab
            )
            cold.append(f"{variant:<7} {load:11.2f} {first:12.2f} {second:6.2f}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# model {size:,} bytes; xmodel = (PSS - the same actors' PSS on a 16-row table) / model bytes")
    print("variant actors  PSS GB xmodel  pred r/s load s resident GB   wall  max err  mapped")
    print("\n".join(lines))
    for actors in (int(a) for a in args.actors.split(",")):
        a, b = speeds.get(("mapped", actors)), speeds.get(("memory", actors))
        if a and b:
            print(f"mapped / memory rows/s, {actors} actors: {a / b:.2f}x")
    print(f"# cold page cache, one process, batches of {args.batch_size} rows")
    print("variant cold load s cold first s next s")
    print("\n".join(cold))


if __name__ == "__main__":
    main()
