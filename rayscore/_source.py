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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from ._config import InputConfig, spark_options
from ._errors import InputError, translate_errors

log = logging.getLogger("rayscore")

__all__ = ["read_input", "arrow_schema", "data_files", "spark_reason"]


def read_input(spark: Any, cfg: InputConfig) -> Any:
    """Build the input DataFrame described by ``cfg`` (``input.*`` keys)."""
    if cfg.path is not None and "://" not in cfg.path and not os.path.exists(cfg.path):
        raise InputError(f"input.path: {cfg.path} does not exist")
    if cfg.path is not None and "://" not in cfg.path and not has_data_files(cfg.path):
        raise InputError(f"input.path: {cfg.path} has no files")
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
