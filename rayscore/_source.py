"""Stage 3, source: the Spark DataFrame to score, from any source Spark reads.

Reading is lazy: this builds the DataFrame and its schema (a metadata read for
parquet/orc, a schema-inference pass for csv/json), nothing more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from ._config import InputConfig
from ._errors import InputError, translate_errors

__all__ = ["read_input", "arrow_schema", "to_ray"]


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
        options = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in cfg.options.items()}
        if cfg.format == "csv":
            options.setdefault("header", "true")
            options.setdefault("inferSchema", "true")
        reader = spark.read.format(cfg.format).options(**options)
        return reader.load(cfg.path)


def has_data_files(path: str) -> bool:
    """Whether a local file or directory holds a file Spark would read (it skips names starting with _ or .)."""
    if not os.path.isdir(path):
        return True
    for _root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_")) or (d.startswith("_") and "=" in d)]
        if any(not f.startswith((".", "_")) for f in files):
            return True
    return False


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


# --------------------------------------------------------------------------- into Ray


class _SparkPartitions:
    """A Ray Data datasource over a DataFrame that RayDP cached in Spark as Arrow bytes.

    Each read task fetches one partition from the Spark executor that holds it
    (a cross-language call into the JVM; RayDP's own fetch function), so Ray
    Data pulls partitions as the actor pool consumes them, with its usual
    backpressure, instead of copying the whole input into the object store
    first. A lost block is fetched again from Spark's cache (lineage).
    """

    def __init__(self, rdd_id: int, partitions: int, schema_json: str, agent_url: str,
                 locations: list[str]) -> None:
        self._args = (rdd_id, schema_json, agent_url)
        self._partitions = partitions
        self._locations = locations

    def __call__(self) -> Any:
        """The ``ray.data.Datasource`` (built lazily: Ray Data is imported only where it runs)."""
        from ray.data import Datasource, ReadTask  # noqa: PLC0415
        from ray.data.block import BlockMetadata  # noqa: PLC0415

        outer = self

        class Source(Datasource):
            def get_name(self) -> str:
                return "SparkPartitions"

            def estimate_inmemory_data_size(self) -> int | None:
                return None

            def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                               data_context: Any = None) -> list[Any]:
                rdd_id, schema_json, agent_url = outer._args
                return [ReadTask(_partition_reader(f"raydp-executor-{outer._locations[i]}", rdd_id, i,
                                                   schema_json, agent_url),
                                 BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None),
                                 per_task_row_limit=per_task_row_limit)
                        for i in range(outer._partitions)]

        return Source()


def _partition_reader(executor: str, rdd_id: int, index: int, schema_json: str, agent_url: str) -> Any:
    def read() -> list[pa.Table]:
        from raydp.spark.dataset import _fetch_arrow_table_from_executor  # noqa: PLC0415

        return [_fetch_arrow_table_from_executor._function(executor, rdd_id, index, schema_json, agent_url)]

    return read


def to_ray(df: Any) -> tuple[Any, Any]:
    """``df`` as a lazily read Ray Dataset, and the callable that releases Spark's copy.

    Spark computes the DataFrame once and keeps it as Arrow bytes on its
    executors' disks (``DISK_ONLY``: memory stays flat however large the
    input); Ray Data then fetches one partition per read task as the pool
    needs it. Cost: one pass of Spark over the input, one disk copy, one
    Arrow copy per partition into Ray's object store while it is in flight.
    """
    import ray  # noqa: PLC0415
    from pyspark import StorageLevel  # noqa: PLC0415

    sc = df.sparkSession.sparkContext
    writer = sc._jvm.org.apache.spark.sql.raydp.ObjectStoreWriter
    info = writer.prepareRecoverableRDD(df._jdf, sc._getJavaStorageLevel(StorageLevel.DISK_ONLY))
    rdd_id = info.rddId()
    source = _SparkPartitions(rdd_id, info.numPartitions(), info.schemaJson(), info.driverAgentUrl(),
                              list(info.locations()))
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            writer.releaseRecoverableRDD(rdd_id)

    return ray.data.read_datasource(source(), override_num_blocks=info.numPartitions()), release
