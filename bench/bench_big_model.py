"""Score a table with a model above pickle's 4 GB limit through ``rayscore run``.

    python bench/bench_big_model.py --gb 4.5 --rows 200000 --actors 2

Builds the model of ``examples/make_big_model.py`` (one ``--gb`` GB embedding
table: what broke ``sc.broadcast``, pickle, SparkFiles and graph export) as a
``.keras`` archive and as a SavedModel, writes ``--rows`` rows of tokens, then
runs ``rayscore run --json`` once per form on the embedded default (a local
Ray with RayDP's Spark) and prints, per form: file size, load seconds and
peak RSS per actor (and as a multiple of the model's bytes), rows/s of the
predict stage and end to end after start-up, and whether every score equals
the formula's (``expected_scores``) on a sample of rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

from make_big_model import expected_scores, vocab_for, write_keras, write_savedmodel, write_tokens  # noqa: E402

from rayscore._model import model_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.5, help="embedding table size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--formats", default="keras,savedmodel")
    parser.add_argument("--dir", default=None, help="where to write the model (default: a temp dir, removed)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="rayscore-big-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab = vocab_for(args.gb)
    tokens = write_tokens(work / "tokens.parquet", args.rows, vocab)
    print(f"# {platform.platform()}, {__import__('os').cpu_count()} cpus, Python {platform.python_version()}")
    print(f"# {args.rows} rows, {args.actors} actor(s), batch {args.batch_size}, table {vocab} x 64 float32")
    lines = []
    try:
        for fmt in args.formats.split(","):
            t0 = time.perf_counter()
            path = (
                write_keras(work / "big.keras", vocab)
                if fmt == "keras"
                else write_savedmodel(work / "big_savedmodel", vocab)
            )
            built = time.perf_counter() - t0
            size = model_bytes(str(path))
            out = work / f"scores-{fmt}"
            config = work / f"job-{fmt}.json"  # JSON is YAML
            config.write_text(
                json.dumps(
                    {
                        "input": {"format": "parquet", "path": str(work / "tokens.parquet")},
                        "model": {"uri": str(path)},
                        "predict": {"batch_size": args.batch_size, "actors": args.actors},
                        "output": {"path": str(out), "keep_columns": ["id"], "mode": "overwrite"},
                    }
                )
            )
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "rayscore", "run", str(config), "--json"], capture_output=True, text=True
            )
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                lines.append(f"{fmt:<10} {size / 1e9:7.2f} rayscore run failed: {done.stderr.strip()}")
                continue
            report = json.loads(done.stdout)
            sample = pq.read_table(out).sort_by("id").slice(0, 2000)
            ids = sample.column("id").to_numpy()
            err = float(np.abs(sample.column("score").to_numpy() - expected_scores(tokens[ids])).max())
            s = report["seconds"]
            after_startup = s["total"] - s["startup"]  # stages overlap; "total" is a moment, not a stage
            for actor in report["actor_loads"]:
                lines.append(
                    f"{fmt:<10} {size / 1e9:7.2f} {built:7.1f} {actor['load_seconds']:7.1f} "
                    f"{actor['rss_before_load'] / 1e9:8.2f} {actor['peak_rss'] / 1e9:8.2f} "
                    f"{actor['peak_rss'] / size:6.2f} {report['rows_out'] / s['predict']:9.0f} "
                    f"{report['rows_out'] / after_startup:9.0f} {s['startup']:6.1f} {wall:6.1f} {err:8.1e}"
                )
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("format      file GB build s  load s base GB  peak GB  xfile pred r/s  e2e r/s startup   wall  max err")
    print("\n".join(lines))
    print(
        "per actor: load s = the actor's model load (cache, build, weights in); base GB = its RSS before the "
        "load; peak GB = its peak RSS, loading then predicting; xfile = peak / file size; e2e r/s = rows / "
        "(total - startup: Ray and Spark up until the output is committed); max err = |score - formula| on 2000 rows"
    )


if __name__ == "__main__":
    main()
