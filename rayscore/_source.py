"""Stage 3, source: the Spark DataFrame to score, from any source Spark reads.

Reading is lazy: :func:`read_input` builds the DataFrame and its schema (one
footer read on the driver for a plain local parquet path, Spark's metadata
read for other parquet and orc, a schema-inference pass for csv/json),
nothing more. Two ways into Ray Data: :func:`parquet_files` finds a
DataFrame that is a plain scan of parquet files, which :class:`ParquetFiles`
lets the pool's actors read themselves; any other DataFrame goes through
:class:`SparkInput`, which Spark prepares in the background while the actor
pool starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from ._config import InputConfig
from ._errors import InputError, translate_errors
from ._session import connect_driver_to_ray
from ._storage import local_dir

log = logging.getLogger("rayscore")

__all__ = ["read_input", "footer_schema", "arrow_schema", "data_files", "SparkInput", "Prepared", "ParquetFiles",
           "Piece", "read_piece", "parquet_files", "footer_input", "may_read_footers", "first_rows"]


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
        schema = footer_schema(spark, cfg)
        return (reader if schema is None else reader.schema(schema)).load(cfg.path)


def footer_schema(spark: Any, cfg: InputConfig) -> Any | None:
    """Spark's schema of a plain local parquet input, read on the driver; None where only Spark's inference can say.

    It is what ``spark.read.parquet`` infers when it does not merge schemas
    (Spark's own footer-to-schema conversion, with the session's settings,
    of one data file's footer: here the first in sorted order), without
    the Spark job that inference runs: that job waits for an executor to
    start, and on 2 cores it held the example's first write back 10-15 s.
    For ``input.format: parquet`` with no ``input.options`` on a local path
    (no glob) without partition directories or summary files, and with
    ``spark.sql.parquet.mergeSchema`` off; else None. Cost: one footer read.
    """
    path = _plain_parquet_path(cfg)
    if path is None or any(os.path.exists(os.path.join(path, n)) for n in ("_metadata", "_common_metadata")):
        return None
    files = sorted(data_files(path))
    if not files or any("=" in part for f in files for part in os.path.relpath(f, path).split(os.sep)[:-1]):
        return None
    try:
        if str(spark.conf.get("spark.sql.parquet.mergeSchema", "false")).lower() != "false":
            return None
        from pyspark.sql.types import StructType  # noqa: PLC0415

        jvm, session = spark._jvm, spark._jsparkSession
        parquet = jvm.org.apache.spark.sql.execution.datasources.parquet
        first = jvm.org.apache.hadoop.fs.Path(Path(os.path.abspath(files[0])).as_uri())
        footer = jvm.org.apache.parquet.hadoop.ParquetFileReader.readFooter(
            session.sessionState().newHadoopConf(), first)
        converter = parquet.ParquetToSparkSchemaConverter(session.sessionState().conf())
        schema = parquet.ParquetFileFormat.readSchemaFromFooter(jvm.org.apache.parquet.hadoop.Footer(first, footer),
                                                                converter)
        return StructType.fromJson(json.loads(schema.json()))
    except Exception as exc:  # noqa: BLE001 - Spark infers it, or says what is wrong
        log.debug("Spark infers the input's schema (%s)", exc)
        return None


def _plain_parquet_path(cfg: InputConfig) -> str | None:
    """The local path of ``input.format: parquet`` with no ``input.options`` and no glob, if it exists; else None."""
    if cfg.format != "parquet" or cfg.options or cfg.path is None:
        return None
    path = local_dir(cfg.path)
    if path is None or any(c in path for c in "*?[{") or not os.path.exists(path):
        return None
    return path


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


# --------------------------------------------------------------------------- into Ray


@dataclass(frozen=True)
class Prepared:
    """Where Spark keeps the prepared input: what a read task needs to fetch its partitions."""

    rdd_id: int
    partitions: int
    schema_json: str
    agent_url: str
    locations: tuple[str, ...]
    block_rows: int  # rows per block handed to the pool


class _Handoff:
    """A tiny async actor: read tasks wait on it until Spark has prepared the input (or failed)."""

    def __init__(self) -> None:
        self._done = asyncio.Event()
        self._value: Prepared | None = None
        self._error: str | None = None

    async def wait(self) -> Prepared:
        await self._done.wait()
        if self._value is None:
            raise _SparkSideFailed(self._error or "the input was not prepared")
        return self._value

    def ready(self, value: Prepared) -> None:
        self._value = value
        self._done.set()

    def fail(self, message: str) -> None:
        if not self._done.is_set():
            self._error = message
            self._done.set()


class _SparkSideFailed(RuntimeError):
    """Raised in read tasks when Spark's side failed; the driver raises Spark's own error instead."""


def _reader(handoff: Any, first: int, stride: int) -> Any:
    """Read task ``first``: partitions first, first + stride, ... sliced into blocks, as each arrives."""

    def read() -> Iterator[pa.Table]:
        import ray  # noqa: PLC0415
        from raydp.spark.dataset import _fetch_arrow_table_from_executor  # noqa: PLC0415

        info: Prepared = ray.get(handoff.wait.remote())
        fetch = _fetch_arrow_table_from_executor._function
        for index in range(first, info.partitions, stride):
            table = fetch(f"raydp-executor-{info.locations[index]}", info.rdd_id, index,
                          info.schema_json, info.agent_url)
            for offset in range(0, table.num_rows, info.block_rows):
                yield table.slice(offset, info.block_rows)

    return read


def _datasource(name: str, readers: list[tuple[Callable[[], Iterator[pa.Table]], int | None]]) -> Any:
    """A Ray Data datasource of one read task per ``(read function, rows or None)`` in ``readers``."""
    from ray.data import Datasource, ReadTask  # noqa: PLC0415
    from ray.data.block import BlockMetadata  # noqa: PLC0415

    class Source(Datasource):
        def get_name(self) -> str:
            return name

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            return [ReadTask(read, BlockMetadata(num_rows=rows, size_bytes=None, input_files=None, exec_stats=None),
                             per_task_row_limit=per_task_row_limit) for read, rows in readers]

    return Source()


class SparkInput:
    """A Spark DataFrame handed to Ray Data while Spark is still preparing it.

    ``dataset`` is a lazy Ray Dataset. :meth:`start` runs Spark's side in a
    background thread: a count, then one pass of Spark over the input that
    keeps it as Arrow bytes on the executors' disks (``DISK_ONLY``: memory
    stays flat however large the input is). The caller starts the actor pool
    meanwhile, so models load while Spark reads; read tasks wait until Spark
    is done, then fetch one partition at a time from the executor that holds
    it (RayDP's fetch function) and hand it on ``block_rows(rows)`` rows at a
    time (Ray Data joins small ones up to its target block size), with Ray
    Data's backpressure. A lost block is fetched again from Spark's copy
    (lineage). Cost: one disk copy and, per partition in flight, one Arrow
    copy in Ray's object store.
    """

    def __init__(self, df: Any, *, readers: int, block_rows: Callable[[int], int]) -> None:
        import ray  # noqa: PLC0415

        self._df = df
        self._block_rows = block_rows
        self._group = f"rayscore-prepare-{uuid.uuid4().hex[:12]}"
        self._handoff = ray.remote(num_cpus=0)(_Handoff).remote()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._rdd_id: int | None = None
        self.rows = 0
        self.prepared_at = 0.0  # time.perf_counter() when the first partition could be read
        # Read task i takes partitions i, i + readers, ... (their number is known only once
        # Spark has prepared them); one with none yields nothing.
        tasks = [(_reader(self._handoff, i, readers), None) for i in range(readers)]
        self.dataset = ray.data.read_datasource(_datasource("SparkPartitions", tasks), override_num_blocks=readers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._prepare, name="rayscore-prepare", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        import ray  # noqa: PLC0415
        from pyspark import StorageLevel  # noqa: PLC0415

        sc = self._df.sparkSession.sparkContext
        try:
            sc.setJobGroup(self._group, "rayscore: preparing the input for Ray", True)
            with translate_errors("reading the input into Ray", InputError):
                rows = self._df.count()
                if rows == 0:
                    raise InputError("the input has no rows; nothing to score")
                if self._cancelled:  # a job started after cancelJobGroup would run to its end
                    return
                connect_driver_to_ray()
                writer = sc._jvm.org.apache.spark.sql.raydp.ObjectStoreWriter
                info = writer.prepareRecoverableRDD(self._df._jdf, sc._getJavaStorageLevel(StorageLevel.DISK_ONLY))
                self._rdd_id = info.rddId()
                prepared = Prepared(self._rdd_id, info.numPartitions(), info.schemaJson(), info.driverAgentUrl(),
                                    tuple(info.locations()), self._block_rows(rows))
            self.rows = rows
            self.prepared_at = time.perf_counter()
            ray.get(self._handoff.ready.remote(prepared))
        except BaseException as exc:  # noqa: BLE001 - kept for the driver's thread, which raises it
            if not self._cancelled:  # not the error our own cancel caused
                self._error = exc
            self._handoff.fail.remote(f"{type(exc).__name__}: {exc}")

    def wait(self) -> int:
        """Wait for Spark's side; raise its error if it failed. Returns the input's row count."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.rows

    def cancel(self) -> BaseException | None:
        """Stop Spark's side (the pool failed); return the error Spark's side had first, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._cancelled = True
            self._handoff.fail.remote("cancelled")
            self._df.sparkSession.sparkContext.cancelJobGroup(self._group)
            self._thread.join()
        return self._error

    def release(self) -> None:
        """Drop Spark's copy of the input and the hand-over actor (once the blocks are scored)."""
        import ray  # noqa: PLC0415

        if self._rdd_id is not None:
            writer = self._df.sparkSession.sparkContext._jvm.org.apache.spark.sql.raydp.ObjectStoreWriter
            writer.releaseRecoverableRDD(self._rdd_id)
            self._rdd_id = None
        ray.kill(self._handoff)


# --------------------------------------------------------------------------- plain parquet scans


def parquet_files(df: Any, reader: str = "auto") -> list[str] | None:
    """The local paths of the parquet files ``df`` reads, if Ray can read them in Spark's stead.

    That is when ``df``'s optimized plan is a parquet scan with at most a
    selection of its columns on top (no filter, limit, join, expression or
    rename; no partition column among those selected), its files are on a
    filesystem every node mounts (``file:``, as Spark's executors need it
    too), and the first file's Arrow types are those Spark gives the
    columns (no user schema that casts). Anything else, and everything with
    ``reader="spark"`` (``input.reader``), returns None: Spark reads it.
    Cost: a walk of the plan and one footer read.
    """
    if reader == "spark":
        return None
    try:
        node = df._jdf.queryExecution().optimizedPlan()
        if _simple_name(node) == "Project":
            items = node.projectList()
            if any(_simple_name(items.apply(i)) != "AttributeReference" for i in range(items.size())):
                return None
            node = node.child()
        if _simple_name(node) != "LogicalRelation":
            return None
        relation = node.relation()
        if _simple_name(relation) != "HadoopFsRelation" or _simple_name(relation.fileFormat()) != "ParquetFileFormat":
            return None
        partition_columns = set(relation.partitionSchema().fieldNames())
        if partition_columns & set(df.columns):
            return None
        uris = list(df._jdf.inputFiles())
    except Exception as exc:  # noqa: BLE001 - a plan we do not know: Spark reads it
        log.debug("not a plain parquet scan (%s); Spark reads the input", exc)
        return None
    local = [_local_path(uri) for uri in uris]
    if not local or None in local:
        return None
    paths = sorted(p for p in local if p is not None)
    try:
        on_disk = pq.read_schema(paths[0])
    except Exception:  # noqa: BLE001 - Spark reads what pyarrow cannot
        return None
    return None if _type_mismatch(on_disk, arrow_schema(df)) else paths


def footer_input(cfg: InputConfig) -> tuple[list[str], pa.Schema] | None:
    """The input's parquet files and the first one's schema, found without Spark; None if only Spark can say.

    For a plain local parquet path (``input.format: parquet``, no
    ``input.options``, ``input.reader: auto``, no glob), listed as Spark lists
    it (:func:`data_files`), so that scoring can start before Spark is up. It
    is a guess: once Spark has the DataFrame, :func:`parquet_files` must give
    the same files and types, else Spark's view wins. Cost: a directory walk
    and one footer read.
    """
    path = _footer_path(cfg)
    if path is None:
        return None
    files = sorted(os.path.abspath(f) for f in data_files(path))
    try:
        return (files, pq.read_schema(files[0])) if files else None
    except Exception:  # noqa: BLE001 - not parquet to pyarrow: Spark reads it, or says what is wrong
        return None


def may_read_footers(cfg: InputConfig) -> bool:
    """Whether :func:`footer_input` may find the input's files (it then reads them); reads nothing."""
    return _footer_path(cfg) is not None


def _footer_path(cfg: InputConfig) -> str | None:
    """The local path whose files :func:`footer_input` lists: a plain parquet path Ray may read itself."""
    return _plain_parquet_path(cfg) if cfg.reader == "auto" else None


def _simple_name(obj: Any) -> str:
    return str(obj.getClass().getSimpleName())


def _local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not parsed.netloc:
        return unquote(parsed.path)
    return None


def _type_mismatch(on_disk: pa.Schema, wanted: pa.Schema) -> tuple[str, pa.DataType | None, pa.DataType] | None:
    """The first column of ``wanted`` that ``on_disk`` lacks or has with another type: (name, its type there or
    None, the wanted type); None if every column matches."""
    for want in wanted:
        got = on_disk.field(want.name).type if want.name in on_disk.names else None
        if got is None or not _same_type(got, want.type):
            return want.name, got, want.type
    return None


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal Arrow types, whatever their list fields are named ("element" in parquet, "item" in Arrow)."""
    if pa.types.is_list(a) or pa.types.is_large_list(a):
        return type(a) is type(b) and _same_type(a.value_type, b.value_type)
    if pa.types.is_struct(a):
        return (pa.types.is_struct(b) and a.num_fields == b.num_fields
                and all(x.name == y.name and _same_type(x.type, y.type) for x, y in zip(a, b)))
    return a.equals(b)


def first_rows(files: list[str], columns: list[str], rows: int) -> pa.Table | None:
    """The first ``rows`` rows of the first of ``files`` that has any (``columns`` only)."""
    for path in files:
        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=rows, columns=columns):
                if batch.num_rows:
                    return pa.Table.from_batches([batch])
    return None


@dataclass(frozen=True)
class Piece:
    """Rows ``skip`` to ``skip + rows`` of row group ``row_group`` of the parquet file ``path``: one task's input."""

    path: str
    row_group: int
    skip: int
    rows: int
    part: int = 0  # its place among the input's pieces: names its output file when the actors write


def read_piece(piece: Piece, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """``piece``'s rows (``columns`` only), ``batch_rows`` at a time, decoded one batch at a time.

    One row group per ``iter_batches``: over many, pyarrow's reader keeps what it has
    read until the file is closed (1.6 GB after 2M rows of the example). Rows
    before ``skip`` are decoded and dropped: a piece of a row group split between
    actors (:class:`ParquetFiles`) starts on a whole batch.
    """
    with pq.ParquetFile(piece.path) as f:
        seen, end = 0, piece.skip + piece.rows
        for batch in f.iter_batches(batch_size=batch_rows, row_groups=[piece.row_group], columns=columns):
            start, stop = max(piece.skip - seen, 0), min(end - seen, batch.num_rows)
            seen += batch.num_rows
            if stop > start:
                yield pa.Table.from_batches([batch.slice(start, stop - start)])
            if seen >= end:
                return


class ParquetFiles:
    """A plain parquet scan read by the pool's actors themselves, with pyarrow.

    What Spark would do for such a DataFrame (decode the files, turn rows into
    Arrow, keep a copy on disk) is done by pyarrow in the actor that scores the
    rows: ``dataset`` holds only :class:`Piece` s (file, row group, rows), and
    each actor reads its piece ``batch_rows`` rows at a time
    (:func:`read_piece`) and scores each batch as it is decoded. No read task,
    no worker process for one, no copy of the input in Ray's object store;
    the first batch is scored as soon as an actor has loaded the model. A
    piece is a whole row group, or a share of one (in whole batches) when the
    files have fewer row groups than two per actor, so that every actor gets
    work. The row count comes from the files' footers, read once here; they
    must hold ``schema``'s columns with its types. Cost: a piece's decoded
    batch at a time in each actor. Same interface as :class:`SparkInput`.
    """

    def __init__(self, files: list[str], schema: pa.Schema, *, actors: int, batch_rows: int) -> None:
        import ray  # noqa: PLC0415

        self.columns = schema.names
        self.batch_rows = batch_rows

        def groups(path: str) -> list[tuple[str, int, int]]:
            meta = pq.read_metadata(path)
            bad = _type_mismatch(meta.schema.to_arrow_schema(), schema) if meta.num_rows else None
            if bad:
                name, got, want = bad
                raise InputError(f"input: column {name!r} is {got or 'missing'} in {path}, "
                                 f"but {want} in the input's schema")
            return [(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]

        with translate_errors("input.path", InputError), ThreadPoolExecutor(max_workers=8) as pool:  # footers only
            found = [g for listed in pool.map(groups, files) for g in listed if g[2]]
        self.rows = sum(n for _, _, n in found)
        if self.rows == 0:
            raise InputError("the input has no rows; nothing to score")
        shares = math.ceil(2 * max(actors, 1) / len(found))  # per row group: 1 unless they are few
        self.pieces = []
        for path, group, rows in found:
            step = max(batch_rows, math.ceil(rows / shares / batch_rows) * batch_rows)
            self.pieces += [Piece(path, group, skip, min(step, rows - skip), len(self.pieces) + i)
                            for i, skip in enumerate(range(0, rows, step))]
        self.prepared_at = 0.0
        self.dataset = ray.data.from_items([vars(p) for p in self.pieces], override_num_blocks=len(self.pieces))

    def start(self) -> None:
        self.prepared_at = time.perf_counter()

    def wait(self) -> int:
        return self.rows

    def cancel(self) -> BaseException | None:
        return None

    def release(self) -> None:
        pass
