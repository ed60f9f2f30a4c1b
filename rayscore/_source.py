"""Stage 3, source: the Spark DataFrame to score, from any source Spark reads.

Reading is lazy: :func:`read_input` builds the DataFrame and its schema
(Spark's metadata read for parquet and orc, a schema-inference pass for
csv/json), nothing more. Every input, whatever its source, is then scored
the same way: Spark reads it and streams it to the pool
(:mod:`rayscore._stream`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ._config import InputConfig, spark_options
from ._errors import InputError, deleted_mid_job, local_name, not_parquet, translate_errors
from ._hadoop import HadoopFS

log = logging.getLogger("rayscore")

__all__ = ["read_input", "arrow_schema", "head_table", "data_files", "spark_reason", "InputFiles"]


def read_input(spark: Any, cfg: InputConfig) -> Any:
    """Build the input DataFrame described by ``cfg`` (``input.*`` keys)."""
    if cfg.path is not None and "://" not in cfg.path and not os.path.exists(cfg.path):
        raise InputError(f"input.path: {cfg.path} does not exist")
    if cfg.path is not None and "://" not in cfg.path and not has_data_files(cfg.path):
        raise InputError(f"input.path: {cfg.path} has no files")
    if cfg.format == "parquet" and cfg.path is not None and "://" not in cfg.path:
        _check_parquet_files(cfg.path)
    key = {"table": "input.table", "sql": "input.query"}.get(cfg.format, "input.path")
    with translate_errors(key, InputError), _spark_errors_named(key):
        if cfg.format == "table":
            if not spark.catalog.tableExists(cfg.table):
                raise InputError(f"input.table: table {cfg.table!r} does not exist")
            return spark.table(cfg.table)
        if cfg.format == "sql":
            return spark.sql(cfg.query)
        options = spark_options(cfg.options)
        if cfg.format == "csv":
            options.setdefault("header", "true")
            options.setdefault("inferSchema", "true")
        return spark.read.format(cfg.format).options(**options).load(cfg.path)


PARQUET_MAGIC = b"PAR1"


def _check_parquet_files(path: str) -> None:
    """Refuse a local input file that is not parquet or was cut short: its first and last 4 bytes.

    Spark reads a file's footer only when its task runs, so a bad file among
    many would fail the job mid-way; locally it costs two tiny reads a file
    to say so before anything starts. (Remote files are named when read.)
    """
    for name in data_files(path):
        with open(name, "rb") as f:
            head = f.read(4)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if head != PARQUET_MAGIC:
            raise InputError(not_parquet(name, at_end=False))
        if tail != PARQUET_MAGIC or size < 12:
            raise InputError(not_parquet(name, at_end=True))


@dataclass(frozen=True)
class InputFiles:
    """The input's files, with their sizes and modification times, as the job found them at its start.

    Spark opens each file only when a task reads it, so a file deleted or
    rewritten mid-job would make a short or mixed output. :meth:`check`
    lists them again just before the commit (one listing per folder, through
    Spark's Hadoop FileSystem, so local, HDFS and object stores alike) and
    refuses any change. Inputs that are not files (a JDBC table, ...) have none.
    """

    files: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, spark: Any, df: Any) -> InputFiles:
        with translate_errors("input", InputError):
            names = sorted(df.inputFiles())
            now = _statuses(spark, names)
        return cls(tuple((name, *(now[name] or (-1, -1))) for name in names))

    def check(self, spark: Any) -> None:
        """Raise InputError naming the first input file deleted or changed since :meth:`of`."""
        with translate_errors("input", InputError):
            now = _statuses(spark, [name for name, _, _ in self.files])
        for name, size, mtime in self.files:
            seen = now[name]
            if seen is None:
                raise InputError(deleted_mid_job(name))
            if seen != (size, mtime):
                raise InputError(
                    f"input: {local_name(name)} changed while the job ran ({size} bytes then, {seen[0]} now); "
                    "nothing committed"
                )


def _statuses(spark: Any, names: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """Each file's (bytes, modification time), or None if it is gone: one listing per folder."""
    by_folder: dict[str, list[str]] = {}
    for name in names:
        by_folder.setdefault(posixpath.dirname(name), []).append(name)
    found: dict[str, tuple[int, int] | None] = {}
    for folder, members in by_folder.items():
        fs = HadoopFS(spark, folder)
        listed = fs.statuses(folder)
        found.update({name: listed.get(fs.qualified(name)) for name in members})
    return found


def has_data_files(path: str) -> bool:
    """Whether a local file or directory holds a file Spark would read."""
    return next(data_files(path), None) is not None


def data_files(path: str) -> Iterator[str]:
    """The files of a local file or directory that Spark's file listing reads.

    Like Spark's ``InMemoryFileIndex``, it skips files and directories whose
    names start with ``.``, or with ``_`` unless they hold ``=`` (partition
    directories): ``_SUCCESS``, ``_temporary``, ``.crc`` files. A path that
    is not a directory is its own one file.
    """
    if not os.path.isdir(path):
        yield path
        return
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not _spark_skips(d)]
        yield from (os.path.join(root, n) for n in names if not _spark_skips(n))


def _spark_skips(name: str) -> bool:
    return name.startswith(".") or (name.startswith("_") and "=" not in name)


_POSITION = re.compile(r"\.?\s*;?\s*\(?\bline (\d+),? pos (\d+)\)?;?")


def spark_reason(desc: str) -> str:
    """A Spark analysis/parse error in one line: no error class, SQL echo or logical plan.

    ``[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'.(line 1, pos 0) == SQL == ...``
    becomes ``syntax error at or near 'SELEC' (line 1, pos 0)``.
    """
    body = desc.strip().split("\n== SQL", 1)[0]
    body = body.split(";\n", 1)[0]  # an AnalysisException's plan follows ";\n"
    where = _POSITION.search(body)
    first = body.strip().split("\n", 1)[0]
    first = re.sub(r"^\[[A-Z0-9_.]+\]\s*", "", first)
    first = _POSITION.sub("", first).strip().rstrip(".;").strip()
    if not first:
        return " ".join(desc.split())[:400]
    if first[:1].isupper() and not first[1:2].isupper():
        first = first[0].lower() + first[1:]
    return first + (f" (line {where[1]}, pos {where[2]})" if where else "")


@contextmanager
def _spark_errors_named(key: str) -> Iterator[None]:
    """Spark's analysis and parse errors as one InputError line naming the config key."""
    try:
        yield
    except Exception as exc:
        desc = getattr(exc, "desc", None)
        if desc and (type(exc).__module__ or "").startswith("pyspark"):
            raise InputError(f"{key}: {spark_reason(str(desc))}") from exc
        raise


def head_table(df: Any, columns: Iterable[str], rows: int) -> pa.Table | None:
    """The first ``rows`` rows of ``df``'s ``columns`` as an Arrow table of the stream's types; None when none.

    For the checks made at the call, before any batch is scored. Cost: one
    job through Spark's ``take`` (``collect`` of a ``limit``), which reads
    only the partitions holding those rows: one, then more only if it holds
    too few (after a selective filter, or for an empty input). Collected as
    Arrow, the same ``limit`` would run a task on every partition and
    shuffle their first rows into one: a task per file of a large input.
    The rows come back as PySpark's Python values and go into Arrow through
    each type's own ``toInternal`` (a timestamp as its microseconds, a date
    as its days), with the Arrow types Spark's conversion gives the stream.
    """
    selected = df.select(*columns)
    taken = selected.limit(rows).collect()
    if not taken:
        return None
    schema = arrow_schema(selected)
    arrays = []
    for i, field in enumerate(selected.schema.fields):
        internal = field.dataType.toInternal if field.dataType.needConversion() else None
        values = [row[i] if internal is None or row[i] is None else internal(row[i]) for row in taken]
        arrays.append(pa.array(values, type=schema.field(i).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def arrow_schema(df: Any) -> pa.Schema:
    """The Arrow schema Spark's Arrow conversion will produce for ``df``."""
    from pyspark.sql.pandas.types import to_arrow_type  # noqa: PLC0415

    fields = []
    for f in df.schema.fields:
        try:
            fields.append(pa.field(f.name, to_arrow_type(f.dataType), f.nullable))
        except Exception:  # noqa: BLE001 - a type Arrow cannot carry; fine unless it feeds the model
            fields.append(pa.field(f.name, pa.null()))
    return pa.schema(fields)
