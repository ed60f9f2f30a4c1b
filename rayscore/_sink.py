"""Stage 6, sink: predictions written by Spark's writer (or the pool's actors), counted, then committed.

For path outputs Spark writes into a staging directory beside the target;
only when the written rows are counted and match the input does rayscore put
the run report in it and rename it onto the target (through Hadoop's
FileSystem, so local paths, HDFS and object stores go the same way). A failed
job therefore leaves nothing that looks complete, and ``mode: overwrite``
replaces the old output only at that commit.

A parquet output on a filesystem every node mounts, scored from an input the
actors read themselves, is written by the actors instead (:class:`PartFiles`,
:class:`PartWriter`): each writes its pieces' predictions as parquet part
files into the same staging directory, with the Spark schema Spark's writer
would store, and the commit is the same. The predictions then never pass
through Ray's object store or a JVM.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._config import OutputConfig
from ._errors import OutputError, translate_errors
from ._session import connect_driver_to_ray
from ._source import data_files
from ._storage import local_dir

__all__ = ["check_output_free", "write_output", "count_written", "staging_path", "REPORT_NAME", "HadoopFS",
           "StagedWrite", "to_spark", "blocks_to_spark", "PartFiles", "PartWriter", "ActorSink", "actors_can_write"]

REPORT_NAME = "_rayscore_report.json"
# Where Spark's parquet writer keeps the DataFrame's schema (column metadata included) in each file's footer.
SPARK_ROW_METADATA = "org.apache.spark.sql.parquet.row.metadata"
# Rows an actor gathers before writing them as one row group (Spark's writer makes ~128 MB ones; 4096-row
# batches written as they come would make files slow to read back).
ROW_GROUP_ROWS = 256 * 1024
ROW_GROUP_BYTES = 64 * 2**20


def to_spark(ds: Any, spark: Any) -> tuple[Any, list[Any]]:
    """A materialised Ray Dataset of predictions as a Spark DataFrame read by Spark's JVM, and its blocks.

    The blocks go to :func:`blocks_to_spark`, which says what it costs and
    how long the returned refs must be kept.
    """
    schema = ds.schema()
    schema = getattr(schema, "base_schema", schema)
    blocks = [ref for bundle in ds.iter_internal_ref_bundles()
              for ref, meta in zip(bundle.block_refs, bundle.metadata)
              if meta.num_rows]  # Ray Data may leave empty, column-less blocks
    return blocks_to_spark(blocks, schema, spark)


def blocks_to_spark(blocks: list[Any], schema: pa.Schema, spark: Any) -> tuple[Any, list[Any]]:
    """Ray object refs of Arrow tables (all of ``schema``) as a Spark DataFrame, and the refs Spark reads.

    Each block is written once as Arrow IPC bytes (a zero-CPU Ray task beside
    the block); Spark's executors read those objects straight from Ray's
    object store and turn them into rows (RayDP's ``RayDatasetRDD``), with no
    Python worker and no pandas in between (``Dataset.to_spark`` goes through
    ``mapInPandas``). Cost: one IPC copy of the blocks in the object store.

    Spark refers to those objects by id only: the caller keeps the returned
    refs for as long as Spark may read the DataFrame, and drops them after
    (the objects are then freed; RayDP's own ``to_spark`` pins them until
    Spark stops).
    """
    import ray  # noqa: PLC0415
    from raydp.spark.dataset import ray_dataset_to_spark_dataframe  # noqa: PLC0415

    connect_driver_to_ray()
    ipc = ray.remote(num_cpus=0)(_arrow_ipc)
    refs = [ipc.remote(block) for block in blocks]
    return ray_dataset_to_spark_dataframe(spark, schema, refs), refs


def _arrow_ipc(block: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, block.schema) as writer:
        writer.write_table(block)
    return sink.getvalue().to_pybytes()


_session_blocks: list[Any] = []


def hold_for_session(refs: list[Any]) -> None:
    """Keep prediction blocks alive until the session stops (``rayscore.predict``'s DataFrames)."""
    _session_blocks.extend(refs)


def release_session_blocks() -> None:
    _session_blocks.clear()


class HadoopFS:
    """The few Hadoop FileSystem calls rayscore needs, through Spark's JVM."""

    def __init__(self, spark: Any, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.root = jvm.org.apache.hadoop.fs.Path(path)
        self.fs = self.root.getFileSystem(self._conf)
        if str(self.fs.getUri().getScheme()) == "file":
            # No hidden .crc files beside ours. The session's local filesystem may be Hive's
            # ProxyLocalFileSystem (Hive support on), which is no LocalFileSystem to unwrap.
            self.fs = jvm.org.apache.hadoop.fs.RawLocalFileSystem()
            self.fs.initialize(jvm.java.net.URI.create("file:///"), self._conf)

    def path(self, p: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(p)

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.path(p)))

    def is_dir(self, p: str) -> bool:
        return bool(self.fs.getFileStatus(self.path(p)).isDirectory())

    def rename(self, src: str, dst: str) -> bool:
        return bool(self.fs.rename(self.path(src), self.path(dst)))

    def delete(self, p: str) -> None:
        self.fs.delete(self.path(p), True)

    def list_names(self, p: str) -> list[str]:
        if not self.exists(p):
            return []
        return [st.getPath().getName() for st in self.fs.listStatus(self.path(p))]

    def read_text(self, p: str) -> str:
        stream = self.fs.open(self.path(p))
        try:
            chunks = []
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            line = reader.readLine()
            while line is not None:
                chunks.append(line)
                line = reader.readLine()
            return "\n".join(chunks)
        finally:
            stream.close()

    def write_text(self, p: str, text: str) -> None:
        stream = self.fs.create(self.path(p), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()


def actors_can_write(cfg: OutputConfig) -> str | None:
    """Why the pool's actors cannot write ``cfg`` themselves (None: they can; see :class:`PartFiles`).

    They can for ``format: parquet`` at a path every node mounts (a local
    path, as for the input they read), without writer ``options`` or
    ``mode: resume``, unless ``output.writer: spark``.
    """
    if cfg.writer == "spark":
        return "output.writer: spark"
    if cfg.format != "parquet":
        return f"output.format: {cfg.format}"
    if cfg.mode == "resume":
        return "output.mode: resume"
    if cfg.options:
        return "output.options are Spark writer options"
    if local_dir(cfg.path or "") is None:
        return f"output.path: {cfg.path} is not a local path"
    return None


def spark_schema_json(schema: pa.Schema, metadata: Mapping[str, Mapping[str, Any]]) -> str:
    """The JSON of the Spark schema a Spark DataFrame of ``schema`` has, with ``metadata`` per column.

    Spark's Arrow → Spark type mapping, all columns nullable, as Spark's
    parquet writer stores it (:data:`SPARK_ROW_METADATA`). Raises TypeError
    for an Arrow type Spark has no type for.
    """
    from pyspark.sql.pandas.types import from_arrow_type  # noqa: PLC0415 - pure Python: no JVM
    from pyspark.sql.types import StructField, StructType  # noqa: PLC0415

    return StructType([StructField(f.name, from_arrow_type(f.type), True, dict(metadata.get(f.name, {})))
                       for f in schema]).json()


@dataclass(frozen=True)
class PartFiles:
    """An output the pool's actors write themselves: parquet part files in its staging directory.

    ``staging`` is a local directory every node mounts (made here);
    ``columns`` the Arrow types of the columns taken from the input (the
    prediction columns' come from the model, in the actor); ``metadata``
    each column's Spark metadata (the model's identity). Each footer holds
    the Spark schema as Spark's writer stores it, so Spark reads back the
    same types and column metadata as from its own files. ``job`` names the
    files. Small and picklable: it travels to every actor.
    """

    staging: str
    columns: pa.Schema
    metadata: Mapping[str, Mapping[str, Any]]
    job: str

    @classmethod
    def make(cls, path: str, columns: pa.Schema, metadata: Mapping[str, Mapping[str, Any]]) -> PartFiles:
        """Part files for the output at ``path`` (its staging directory made now); TypeError: Spark must write it."""
        spark_schema_json(columns, metadata)  # a kept column Spark has no type for fails here, not in the actors
        staging = staging_path(os.path.abspath(local_dir(path) or path))
        os.makedirs(staging)
        return cls(staging, columns, metadata, uuid.uuid4().hex)

    def name(self, part: int) -> str:
        return f"part-{part:05d}-{self.job}-c000.snappy.parquet"

    def schema_of(self, table: pa.Table) -> pa.Schema:
        """The file schema for ``table``'s columns: the input's types where known, the table's otherwise."""
        known = set(self.columns.names)
        fields = [self.columns.field(f.name) if f.name in known else f for f in table.schema]
        schema = pa.schema(fields)
        return schema.with_metadata({SPARK_ROW_METADATA: spark_schema_json(schema, self.metadata)})

    def discard(self) -> None:
        """Remove the staging directory if it is still there (not committed)."""
        shutil.rmtree(self.staging, ignore_errors=True)


@dataclass(frozen=True)
class ActorSink:
    """What the pool's actors write themselves: the output's part files, and the quarantined rows' ones."""

    output: PartFiles
    errors: PartFiles | None = None  # key columns and a ``reason``, in quarantine mode

    def discard(self) -> None:
        for parts in (self.output, self.errors):
            if parts is not None:
                parts.discard()


class PartWriter:
    """One part file of :class:`PartFiles` as an actor writes it, made complete at once.

    Every table written must have the same columns (the first one's decide
    the file's schema, even with no rows). Rows are gathered into row groups
    of about :data:`ROW_GROUP_ROWS` rows (or :data:`ROW_GROUP_BYTES`) and
    written into a hidden file of this process's own, renamed onto the
    part's name by :meth:`close`: a piece scored again (its actor died)
    replaces the part, and a piece cut short leaves only a hidden file,
    which Spark skips and the commit removes. Cost: up to one row group of
    predictions (and kept columns) in memory.
    """

    def __init__(self, parts: PartFiles, part: int, *, keep_empty: bool = False) -> None:
        self._parts = parts
        self.path = os.path.join(parts.staging, parts.name(part))
        self._tmp = os.path.join(parts.staging, f".{parts.name(part)}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        self._keep_empty = keep_empty  # one file per output holds its schema even when it has no rows
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = self._parts.schema_of(table)
        if not table.num_rows:
            return
        table = table.cast(self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            assert self._schema is not None
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="snappy")
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> int:
        """Finish the file and give it the part's name (no file for no rows, unless ``keep_empty``); its rows."""
        if self._schema is not None and (self.rows or self._keep_empty):
            self._flush()
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.path)
        return self.rows

    def abandon(self) -> None:
        """Drop the unfinished file (the piece failed)."""
        if self._writer is not None:
            self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def check_output_free(cfg: OutputConfig, spark: Any | None = None) -> None:
    """Refuse an output that exists (``mode: error``) or is a plain file, before any work."""
    if cfg.format == "table":
        if spark is not None and cfg.mode == "error" and spark.catalog.tableExists(cfg.table):
            raise OutputError(f"output.table: table {cfg.table!r} exists (set output.mode: overwrite to replace it)")
        return
    path = cfg.path or ""
    local = local_dir(path)
    if local is not None:
        if os.path.isfile(local):
            raise OutputError(f"output.path: {local} is a file, not a directory")
        if cfg.mode == "error" and os.path.exists(local):
            raise OutputError(f"output.path: {local} exists (set output.mode: overwrite to replace it)")
        parent = os.path.dirname(os.path.abspath(local))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.access(parent, os.W_OK):
            raise OutputError(f"output.path: {parent} is not writable")
        return
    if spark is not None:
        with translate_errors("output.path", OutputError):
            fs = HadoopFS(spark, path)
            if fs.exists(path) and not fs.is_dir(path):
                raise OutputError(f"output.path: {path} is a file, not a directory")
            if cfg.mode == "error" and fs.exists(path):
                raise OutputError(f"output.path: {path} exists (set output.mode: overwrite to replace it)")


def _writer(sdf: Any, cfg: OutputConfig) -> Any:
    options = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in cfg.options.items()}
    if cfg.format == "csv":
        options.setdefault("header", "true")
    return sdf.write.options(**options)


def staging_path(path: str) -> str:
    """A hidden sibling of ``path`` (Spark and Hive skip names starting with '.')."""
    parent, name = os.path.split(path.rstrip("/"))
    hidden = f".{name}.rayscore-staging-{uuid.uuid4().hex[:12]}"
    return f"{parent}/{hidden}" if parent else hidden


class StagedWrite:
    """A path output written by one or more Spark jobs into a hidden staging directory, committed at once.

    :meth:`append` adds a DataFrame's rows (one Spark write job, its own
    part files); :meth:`commit` counts what all of them wrote, stores the
    run report beside it and renames the directory onto ``cfg.path``;
    :meth:`discard` removes whatever was not committed. Until the commit,
    nothing is at the target: a failed job leaves nothing looking complete.
    """

    def __init__(self, spark: Any, cfg: OutputConfig, parts: PartFiles | None = None) -> None:
        self.spark, self.cfg, self.parts = spark, cfg, parts
        self.path = cfg.path or ""
        # With ``parts`` the pool's actors have written (or are writing) the files: no append.
        self.staging = parts.staging if parts is not None else staging_path(self.path)
        with translate_errors("output.path", OutputError):
            self.fs = HadoopFS(spark, self.path)

    def append(self, sdf: Any) -> None:
        with translate_errors("output.path", OutputError):
            _writer(sdf, self.cfg).format(self.cfg.format).mode("append").save(self.staging)

    def commit(self, expected_rows: int, report: Any, report_name: str = REPORT_NAME) -> int:
        """Check the staged rows are ``expected_rows``; store ``report(written)`` as ``report_name``; commit."""
        with translate_errors("output.path", OutputError):
            if self.parts is not None:
                _tidy_parts(self.staging)
            written = count_written(self.spark, self.cfg, self.staging)
            if written != expected_rows:
                hint = (" (the pool's actors wrote the part files on their nodes: output.path must be on storage "
                        "every node mounts, else set output.writer: spark)") if self.parts is not None else ""
                raise OutputError(
                    f"output: wrote {written} rows for {expected_rows} input rows; nothing committed{hint}"
                )
            self.fs.write_text(f"{self.staging}/{report_name}", report(written))
            _commit(self.fs, self.staging, self.path, self.cfg.mode)
        return written

    def discard(self) -> None:
        """Remove the staging directory if it is still there (not committed); safe to call twice."""
        with translate_errors("output.path", OutputError):
            if self.fs.exists(self.staging):
                self.fs.delete(self.staging)


def _tidy_parts(staging: str) -> None:
    """Make the actors' part files look like Spark's output: no hidden leftovers of cut-short pieces, a _SUCCESS."""
    for name in os.listdir(staging):
        if name.startswith("."):
            os.remove(os.path.join(staging, name))
    open(os.path.join(staging, "_SUCCESS"), "wb").close()


def write_output(spark: Any, sdf: Any, cfg: OutputConfig, expected_rows: int, report: Any,
                 report_name: str = REPORT_NAME) -> int:
    """Write ``sdf`` per ``cfg``, check it holds ``expected_rows``, commit with the report.

    ``report`` is called with the written row count and returns the JSON text
    stored as ``report_name`` in the output, committed with it. Returns the
    number of rows written.
    """
    if cfg.format == "table":
        return _write_table(spark, sdf, cfg, expected_rows)
    staged = StagedWrite(spark, cfg)
    try:
        staged.append(sdf)
        return staged.commit(expected_rows, report, report_name)
    finally:
        staged.discard()


def count_written(spark: Any, cfg: OutputConfig, staging: str) -> int:
    """Rows in the files Spark wrote to ``staging``.

    Local parquet is counted from its files' footers (no Spark job: a Spark
    count on a cold reader costs 1-2 s); anything else is read back by Spark.
    """
    local = local_dir(staging)
    if cfg.format == "parquet" and local is not None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        return sum(pq.read_metadata(f).num_rows for f in data_files(local))
    return int(spark.read.format(cfg.format).options(**_read_options(cfg)).load(staging).count())


def _read_options(cfg: OutputConfig) -> dict[str, str]:
    return {"header": "true"} if cfg.format == "csv" else {}


def _commit(fs: HadoopFS, staging: str, path: str, mode: str) -> None:
    if fs.exists(path):
        if mode != "overwrite":
            raise OutputError(f"output.path: {path} appeared while the job ran; nothing committed")
        old = staging_path(path).replace(".rayscore-staging-", ".rayscore-old-")
        if not fs.rename(path, old):
            raise OutputError(f"output.path: could not move the old output {path} aside")
        if not fs.rename(staging, path):
            fs.rename(old, path)
            raise OutputError(f"output.path: could not rename the new output onto {path}")
        fs.delete(old)
        return
    parent = os.path.dirname(path.rstrip("/"))
    if parent:
        fs.fs.mkdirs(fs.path(parent))
    if not fs.rename(staging, path):
        raise OutputError(f"output.path: could not rename the new output onto {path}")


def _write_table(spark: Any, sdf: Any, cfg: OutputConfig, expected_rows: int) -> int:
    with translate_errors("output.table", OutputError):
        mode = "overwrite" if cfg.mode == "overwrite" else "errorifexists"
        _writer(sdf, cfg).mode(mode).saveAsTable(cfg.table)
        written = spark.table(cfg.table).count()
    if written != expected_rows:
        raise OutputError(f"output.table: {cfg.table} holds {written} rows for {expected_rows} input rows")
    return written
