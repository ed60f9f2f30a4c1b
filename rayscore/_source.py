"""Stage 3, source: the Spark DataFrame to score, from any source Spark reads.

Reading is lazy: this builds the DataFrame and its schema (a metadata read for
parquet/orc, a schema-inference pass for csv/json), nothing more.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from ._config import InputConfig
from ._errors import InputError, translate_errors

__all__ = ["read_input", "arrow_schema"]


def read_input(spark: Any, cfg: InputConfig) -> Any:
    """Build the input DataFrame described by ``cfg`` (``input.*`` keys)."""
    if cfg.path is not None and "://" not in cfg.path and not os.path.exists(cfg.path):
        raise InputError(f"input.path: {cfg.path} does not exist")
    with translate_errors(f"input ({cfg.format})", InputError):
        if cfg.format == "table":
            if not spark.catalog.tableExists(cfg.table):
                raise InputError(f"input.table: table {cfg.table!r} does not exist")
            return spark.table(cfg.table)
        if cfg.format == "sql":
            return spark.sql(cfg.query)
        options = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in cfg.options.items()}
        if cfg.format == "csv":
            options.setdefault("header", "true")
            options.setdefault("inferSchema", "true")
        reader = spark.read.format(cfg.format).options(**options)
        return reader.load(cfg.path)


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
