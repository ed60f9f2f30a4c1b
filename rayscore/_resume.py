"""``output.mode: resume``: the job split into deterministic shards, each committed on its own.

A row's shard is ``pmod(xxhash64(key_columns), output.shards)`` — Spark's
seeded hash, so the same input gives the same shards in every run. Each shard
is scored and written in its own pass and committed by one rename into
``output.path/rayscore_shard=N`` with a marker file (``_rayscore_shard.json``)
inside. A run that dies at any point leaves committed shards complete and
everything else hidden (staging names start with '.'); the next run with
``mode: resume`` scores only the shards without a marker.

The output directory also holds ``_rayscore_manifest.json``: the model's and
the input's fingerprints, the keys and the shard count. Resuming with a
different model or input is refused, naming what changed. When every shard is
committed the run report and ``_SUCCESS`` are written at the top.

Cost: one Spark pass that counts the rows of each shard, then one Spark job
per shard scored (the job's one actor pool scores them all), so choose
``output.shards`` as the number of checkpoints worth having, not more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ._config import Config, OutputConfig
from ._convert import Plan
from ._errors import OutputError, translate_errors
from ._hadoop import HadoopFS
from ._model import ModelSpec
from ._plan import errors_output, new_result
from ._pool import Pool
from ._predict import ModelRef
from ._progress import Tracker
from ._report import RunResult, StageClock
from ._sink import REPORT_NAME, write_report, write_scored
from ._source import InputFiles
from ._stream import score

__all__ = ["run_resumable", "shard_of", "SHARD_COLUMN", "MANIFEST_NAME", "SHARD_MARKER"]

SHARD_COLUMN = "rayscore_shard"
MANIFEST_NAME = "_rayscore_manifest.json"
SHARD_MARKER = "_rayscore_shard.json"


def _input_fingerprint(cfg: Config, df: Any, files: InputFiles) -> str:
    """What the input is: its config, schema, and files with their sizes and times."""
    identity = {
        "input": cfg.input.model_dump(),
        "schema": df.schema.json(),
        "files": [list(f) for f in files.files],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _manifest(cfg: Config, df: Any, files: InputFiles, model_fingerprint: str, plan: Plan) -> dict[str, Any]:
    return {
        "version": 1,
        "model": model_fingerprint,
        "input": _input_fingerprint(cfg, df, files),
        "shards": cfg.output.shards,
        "key_columns": list(cfg.output.key_columns),
        "columns": list(plan.keep_columns) + list(plan.output_columns),
        "format": cfg.output.format,
    }


_WHAT = {
    "model": "the model changed",
    "input": "the input changed (its files, schema or config)",
    "shards": "output.shards changed",
    "key_columns": "output.key_columns changed",
    "columns": "the output columns changed",
    "format": "output.format changed",
}


def _check_manifest(old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    changed = [key for key in _WHAT if old.get(key) != new.get(key)]
    if changed:
        key = changed[0]
        raise OutputError(
            f"output.mode: resume: {_WHAT[key]} since the run that wrote {path} "
            f"({old.get(key)!r} then, {new.get(key)!r} now); use mode: overwrite to start again"
        )


def shard_of(key_columns: tuple[str, ...] | list[str], shards: int) -> Any:
    """The Spark column expression of a row's shard: the same for the same keys in every run and version."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return F.pmod(F.xxhash64(*[F.col(k) for k in key_columns]), F.lit(shards))


def run_resumable(
    cfg: Config,
    df: Any,
    files: InputFiles,
    plan: Plan,
    start_pool: Callable[[], Pool],
    model: ModelRef,
    spec: ModelSpec,
    clock: StageClock,
    tracker: Tracker,
) -> RunResult:
    """Score the shards of ``df`` that ``output.path`` does not hold yet, one Spark job per shard.

    ``start_pool`` gives the job's actor pool; it is called only if a shard needs scoring.
    """
    spark = df.sparkSession
    path = (cfg.output.path or "").rstrip("/")
    result = new_result(cfg, model, spec, plan)
    with clock.stage("read_convert"), translate_errors("output.path", OutputError):
        fs = HadoopFS(spark, path)
        manifest = _manifest(cfg, df, files, result.model_fingerprint, plan)
        if fs.exists(path):
            names = fs.list_names(path)
            if MANIFEST_NAME not in names:
                raise OutputError(
                    f"output.path: {path} exists and was not written by a resumable run "
                    "(use another path, or mode: overwrite)"
                )
            _check_manifest(json.loads(fs.read_text(f"{path}/{MANIFEST_NAME}")), manifest, path)
        else:
            fs.fs.mkdirs(fs.path(path))
            fs.write_text(f"{path}/{MANIFEST_NAME}", json.dumps(manifest, indent=2, sort_keys=True))
            names = [MANIFEST_NAME]
        done = _committed_shards(fs, path, names)
        keyed = df.withColumn(SHARD_COLUMN, shard_of(cfg.output.key_columns, cfg.output.shards))
        expected = {int(r[SHARD_COLUMN]): int(r["count"]) for r in keyed.groupBy(SHARD_COLUMN).count().collect()}

    result.rows_in = sum(expected.values())
    todo = [s for s in range(cfg.output.shards) if s not in done and expected.get(s, 0) > 0]
    result.shards = {"total": cfg.output.shards, "reused": len(done), "scored": 0}
    tracker.rows_total = sum(expected[s] for s in todo)
    pool = start_pool() if todo else None
    if pool is not None:
        tracker.phase("loading")
        pool.wait()
    with tracker.jobs(spark):
        rows_out, quarantined = _score_shards(
            cfg, keyed, todo, expected, manifest, path, plan, pool, spec, clock, files, result
        )
    rows_out += sum(done.values())
    if pool is not None:
        pool.report_into(result, clock)
    result.rows_out = rows_out
    result.rows_quarantined = quarantined + sum(_marker(fs, path, s).get("quarantined", 0) for s in done)
    if result.rows_out + result.rows_quarantined != result.rows_in:
        raise OutputError(
            f"output: the shards hold {result.rows_out} rows (+{result.rows_quarantined} quarantined) "
            f"for {result.rows_in} input rows; the job is not complete"
        )
    clock.seconds["total"] = clock.since_start()
    result.seconds = dict(clock.seconds)
    result.report_path = f"{path}/{REPORT_NAME}"
    with translate_errors("output.path", OutputError):
        write_report(fs, path, result.to_json())
        fs.write_text(f"{path}/_SUCCESS", "")
    return result


def _score_shards(
    cfg: Config,
    keyed: Any,
    todo: list[int],
    expected: dict[int, int],
    manifest: dict[str, Any],
    path: str,
    plan: Plan,
    pool: Pool | None,
    spec: ModelSpec,
    clock: StageClock,
    files: InputFiles,
    result: RunResult,
) -> tuple[int, int]:
    """Score and commit each shard in ``todo``, one Spark job each: (rows written, rows quarantined)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    spark = keyed.sparkSession
    rows_out = quarantined = 0
    for shard in todo:
        part = keyed.filter(F.col(SHARD_COLUMN) == shard).drop(SHARD_COLUMN)
        marker = lambda rows, bad, shard=shard: json.dumps(
            {  # noqa: E731
                "shard": shard,
                "rows": rows - bad,
                "quarantined": bad,
                "model": manifest["model"],
                "input": manifest["input"],
            }
        )
        shard_out = OutputConfig(
            format=cfg.output.format, path=f"{path}/{SHARD_COLUMN}={shard}", mode="error", options=cfg.output.options
        )
        errors = None
        if plan.quarantine:
            errors = errors_output(cfg)
            errors = errors.model_copy(update={"path": f"{(errors.path or '').rstrip('/')}/{SHARD_COLUMN}={shard}"})
        rows, bad = write_scored(
            spark,
            score(part, plan, pool, spec, cfg.predict.batch_size),
            plan,
            shard_out,
            errors,
            marker,
            clock,
            SHARD_MARKER,
            check=lambda: files.check(spark),
        )
        if rows != expected[shard]:
            raise OutputError(f"output: shard {shard} scored {rows} rows for its {expected[shard]} input rows")
        rows_out += rows - bad
        quarantined += bad
        result.shards["scored"] += 1
    return rows_out, quarantined


def _marker(fs: HadoopFS, path: str, shard: int) -> dict[str, Any]:
    return json.loads(fs.read_text(f"{path}/{SHARD_COLUMN}={shard}/{SHARD_MARKER}"))


def _committed_shards(fs: HadoopFS, path: str, names: list[str]) -> dict[int, int]:
    """Shards committed by earlier runs (shard -> rows); clear what a dead run left half-done."""
    done: dict[int, int] = {}
    prefix = f"{SHARD_COLUMN}="
    for name in names:
        if name.startswith(".") and ".rayscore-" in name:
            fs.delete(f"{path}/{name}")  # staging of a run that died
        elif name.startswith(prefix):
            shard = int(name[len(prefix) :])
            if SHARD_MARKER in fs.list_names(f"{path}/{name}"):
                done[shard] = int(_marker(fs, path, shard)["rows"])
            else:  # pragma: no cover - commit is one rename, so a shard dir has its marker
                fs.delete(f"{path}/{name}")
    return done
