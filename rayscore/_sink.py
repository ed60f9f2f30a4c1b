"""Stage 6, sink: predictions written by Spark's writer, counted, then committed.

For path outputs Spark writes into a staging directory beside the target;
only when the written rows are counted and match the rows scored does
rayscore put the run report in it and rename it onto the target (through
Hadoop's FileSystem, so local paths, HDFS and object stores go the same
way). A failed job therefore leaves nothing that looks complete, and
``mode: overwrite`` replaces the old output only at that commit.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from ._config import OutputConfig, spark_options
from ._convert import Plan
from ._errors import OutputError, translate_errors
from ._hadoop import HadoopFS
from ._html import HTML_NAME
from ._html import render as render_html
from ._predict import REASON
from ._report import StageClock
from ._source import data_files
from ._storage import local_dir
from ._stream import Scoring
from ._watch import watch_spark

__all__ = [
    "check_output_free",
    "count_written",
    "staging_path",
    "REPORT_NAME",
    "StagedWrite",
    "split_quarantined",
    "write_scored",
    "write_report",
    "run_to_the_end",
    "recover_commit",
]

log = logging.getLogger("rayscore")

REPORT_NAME = "_rayscore_report.json"

T = TypeVar("T")


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
    options = spark_options(cfg.options)
    if cfg.format == "csv":
        options.setdefault("header", "true")
    return sdf.write.options(**options)


def staging_path(path: str) -> str:
    """A hidden sibling of ``path`` (Spark and Hive skip names starting with '.')."""
    parent, name = os.path.split(path.rstrip("/"))
    hidden = f".{name}.rayscore-staging-{uuid.uuid4().hex[:12]}"
    return f"{parent}/{hidden}" if parent else hidden


class StagedWrite:
    """One output written by Spark jobs, then committed at once.

    A path output goes into a hidden staging directory: :meth:`append` adds a
    DataFrame's rows (one Spark write job, its own part files); :meth:`commit`
    counts what was written, stores the run report beside it and renames
    the directory onto ``cfg.path``; :meth:`discard` removes whatever was not
    committed. Until the commit, nothing is at the target: a failed job
    leaves nothing looking complete. A table is written by Spark's
    ``saveAsTable`` at :meth:`append` (the catalog has no staging), and
    :meth:`commit` checks its rows.
    """

    def __init__(self, spark: Any, cfg: OutputConfig) -> None:
        self.spark, self.cfg = spark, cfg
        self.path = cfg.path or ""
        self.staging = staging_path(self.path) if cfg.format != "table" else ""
        if cfg.format != "table":
            with translate_errors("output.path", OutputError):
                self.fs = HadoopFS(spark, self.path)

    def append(self, sdf: Any) -> None:
        if self.cfg.format == "table":
            with translate_errors("output.table", OutputError):
                mode = "overwrite" if self.cfg.mode == "overwrite" else "errorifexists"
                writer = _writer(sdf, self.cfg).mode(mode)
                run_to_the_end(self.spark, lambda: writer.saveAsTable(self.cfg.table))
            return
        with translate_errors(f"output.path: {self.path}", OutputError):
            writer = _writer(sdf, self.cfg).format(self.cfg.format).mode("append")
            run_to_the_end(self.spark, lambda: writer.save(self.staging))

    def commit(self, expected_rows: int, report: Any, report_name: str = REPORT_NAME, page: bool = True) -> int:
        """Check the written rows are ``expected_rows``; store ``report(written)`` as ``report_name``; commit.

        The run report (``REPORT_NAME``) gets its page beside it unless ``page`` is false.
        """
        if self.cfg.format == "table":
            with translate_errors("output.table", OutputError):
                written = int(self.spark.table(self.cfg.table).count())
            if written != expected_rows:
                raise OutputError(f"output.table: {self.cfg.table} holds {written} rows for {expected_rows} input rows")
            return written
        with translate_errors(f"output.path: {self.path}", OutputError):
            written = count_written(self.spark, self.cfg, self.staging)
            if written != expected_rows:
                raise OutputError(f"output: wrote {written} rows for {expected_rows} input rows; nothing committed")
            text = report(written)
            if report_name == REPORT_NAME:
                write_report(self.fs, self.staging, text, page)
            else:
                self.fs.write_text(f"{self.staging}/{report_name}", text)
            _commit(self.fs, self.staging, self.path, self.cfg.mode)
        return written

    def discard(self) -> None:
        """Remove the staging directory if it is still there (not committed); safe to call twice."""
        if self.cfg.format == "table":
            return
        with translate_errors("output.path", OutputError):
            if self.fs.exists(self.staging):
                self.fs.delete(self.staging)


def write_report(fs: HadoopFS, folder: str, text: str, page: bool = True) -> None:
    """The run report (JSON ``text``) into ``folder`` as ``_rayscore_report.json``, and (``page``) its page beside it.

    A page that cannot be drawn or written is left out with a warning: it never costs the job its output.
    """
    fs.write_text(f"{folder}/{REPORT_NAME}", text)
    if not page:
        return
    try:
        fs.write_text(f"{folder}/{HTML_NAME}", render_html(json.loads(text)))
    except Exception as exc:  # noqa: BLE001 - the JSON report is the record; the page only shows it
        log.warning("the HTML run report was not written (%s: %s); the JSON report is", type(exc).__name__, exc)


def split_quarantined(sdf: Any, plan: Plan) -> tuple[Any, Any]:
    """(scored rows, error rows) of ``sdf`` as Spark DataFrames: outputs beside keep_columns; keys beside a reason."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not plan.quarantine:
        return sdf, None
    good = sdf.filter(F.col(REASON).isNull()).select(*plan.keep_columns, *plan.output_columns)
    bad = sdf.filter(F.col(REASON).isNotNull()).select(*plan.key_columns, F.col(REASON).alias("reason"))
    return good, bad


def write_scored(
    spark: Any,
    scoring: Scoring,
    plan: Plan,
    output: OutputConfig,
    errors: OutputConfig | None,
    report: Callable[[int, int], str],
    clock: StageClock,
    report_name: str = REPORT_NAME,
    check: Callable[[], None] = lambda: None,
) -> tuple[int, int]:
    """Write ``scoring``'s rows to ``output`` (and quarantined ones to ``errors``), count them, commit both.

    The Spark job that writes is the one that reads the input and streams
    it through the pool (``predict`` in ``clock``); the count and commit
    are ``write``. In quarantine mode the scored rows are kept on Spark's
    executors' disks (``DISK_ONLY``) for the two writes, so the model scores
    each row once. ``report(rows scored, rows quarantined)`` gives the text
    committed as ``report_name`` with each output; ``check()`` runs just
    before the commits and may refuse them (the input changed). Returns the
    same two counts. A Spark left without executors (their node lost) fails
    the write instead of waiting (:func:`watch_spark`).
    """
    from pyspark import StorageLevel  # noqa: PLC0415

    frame = scoring.frame.persist(StorageLevel.DISK_ONLY) if plan.quarantine else scoring.frame
    good, bad = split_quarantined(frame, plan)
    writes = [StagedWrite(spark, output)]
    if bad is not None:
        assert errors is not None
        writes.append(StagedWrite(spark, errors))
    try:
        with clock.stage("predict"), watch_spark(spark):
            for write, sdf in zip(writes, (good, bad)):
                write.append(sdf)
        rows, quarantined = int(scoring.counters.rows.value), int(scoring.counters.quarantined.value)
        text = lambda _written: report(rows, quarantined)  # noqa: E731
        with clock.stage("write"):
            check()
            if bad is not None:
                writes[1].commit(quarantined, text, report_name, page=False)  # the errors: no page
            writes[0].commit(rows - quarantined, text, report_name)
        return rows, quarantined
    finally:
        for write in writes:
            write.discard()
        if plan.quarantine:
            frame.unpersist()


def run_to_the_end(spark: Any, action: Callable[[], T], wait_s: float = 60.0) -> T:
    """``action()`` (a Spark action, such as a write), which has ended in Spark too when this returns or raises.

    An interrupt stops Python's wait for a Spark call, not the call: Spark's
    driver goes on planning it, setting up its output (a write creates its
    staging directory then) and running its job, and the job's tasks go on
    writing part files. So the action runs in a thread of this thread's job
    group; on an interrupt this one cancels the group's jobs until the action
    has returned and no job or task of them is running (at most ``wait_s``), then
    raises the interrupt. What the caller does next (removing the staging
    directory) comes after Spark's last write. Costs one thread per action.
    """
    from pyspark import InheritableThread  # noqa: PLC0415 - a thread with this one's job group

    outcome: list[tuple[bool, Any]] = []
    # Not Thread.join: on Python 3.11 a join that a signal handler interrupts marks the thread stopped.
    ended = threading.Event()

    def call() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((False, exc))
        finally:
            ended.set()

    sc = spark.sparkContext
    group = sc.getLocalProperty("spark.jobGroup.id")
    if group is None:  # a group of its own, so that an interrupt cancels this action's jobs and no one else's
        group = f"rayscore-action-{uuid.uuid4().hex[:8]}"
        sc.setJobGroup(group, "rayscore", interruptOnCancel=False)
        try:
            InheritableThread(target=call, name="rayscore-spark-action", daemon=True).start()
        finally:
            for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
                sc.setLocalProperty(key, None)
    else:
        InheritableThread(target=call, name="rayscore-spark-action", daemon=True).start()
    try:
        ended.wait()
    except BaseException:
        _cancel_until_ended(spark, group, ended, wait_s)
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _cancel_until_ended(spark: Any, group: str, ended: threading.Event, wait_s: float) -> None:
    """Cancel ``group``'s jobs until the action has ``ended`` and none of them or their tasks runs.

    Cancelling again each time: a job the action submits after a cancel is not cancelled by it.
    Best effort: Spark may be gone.
    """
    deadline = time.monotonic() + wait_s
    try:
        sc = spark.sparkContext
        tracker = sc.statusTracker()
        while time.monotonic() < deadline:
            sc.cancelJobGroup(group)
            jobs = tracker.getJobIdsForGroup(group)
            infos = [i for i in (tracker.getJobInfo(j) for j in jobs) if i is not None]
            # A cancelled job fails before its tasks have ended: wait for those too.
            stages = [tracker.getStageInfo(s) for i in infos for s in i.stageIds]
            running = any(i.status == "RUNNING" for i in infos) or any(s and s.numActiveTasks for s in stages)
            if ended.is_set() and not running:
                return
            time.sleep(0.1)
    except Exception as exc:  # noqa: BLE001 - the interrupt is what the user sees
        log.debug("stopping Spark's jobs: %s", exc)


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
    """Rename ``staging`` onto ``path`` (the old output moved aside first for ``mode: overwrite``).

    Hadoop's rename moves a directory *into* a destination that exists, so a
    job that lost a race to another job's commit would nest its rows inside
    the other's output: that is undone and refused, leaving the other job's
    output whole. An overwrite is two renames, which no store makes atomic
    together: a journal beside the output names both directories first, so
    that a driver killed between them leaves what :func:`recover_commit`
    finishes on the next run.
    """
    old = journal = None
    if fs.exists(path):
        if mode != "overwrite":
            raise OutputError(f"output.path: {path} appeared while the job ran; nothing committed")
        old = staging.replace(".rayscore-staging-", ".rayscore-old-")
        journal = staging.replace(".rayscore-staging-", JOURNAL_INFIX) + ".json"
        fs.write_text(journal, json.dumps({"path": path, "old": old, "new": staging}))
        if not fs.rename(path, old):
            fs.delete(journal)
            raise OutputError(f"output.path: could not move the old output {path} aside")
    else:
        parent = os.path.dirname(path.rstrip("/"))
        if parent:
            fs.fs.mkdirs(fs.path(parent))
    try:
        _swap_in(fs, staging, path, old)
    except OutputError:  # undone: the journal has nothing left to finish (any other failure keeps it)
        if journal is not None:
            fs.delete(journal)
        raise
    if journal is not None:
        fs.delete(journal)


def _swap_in(fs: HadoopFS, staging: str, path: str, old: str | None) -> None:
    moved = fs.rename(staging, path)
    nested = f"{path.rstrip('/')}/{posixpath.basename(staging)}"
    if moved and not fs.exists(nested):
        if old is not None:
            fs.delete(old)
        return
    if moved:  # another job committed the path a moment before this rename
        fs.delete(nested)
    if old is not None:
        if fs.exists(path):  # that other job's whole output replaced the old one
            fs.delete(old)
        else:
            fs.rename(old, path)
    if moved:
        raise OutputError(f"output.path: another job committed {path} at the same moment; nothing committed")
    raise OutputError(f"output.path: could not rename the new output onto {path}")


JOURNAL_INFIX = ".rayscore-commit-"


def recover_commit(spark: Any, cfg: OutputConfig) -> list[str]:
    """Finish an overwrite commit that a killed driver left half done at ``cfg.path``; say so in one line each.

    Run before a job touches its output. The journal names the new output
    (complete: counted, its report written, before the journal was) and
    the old one moved aside. Whatever point the kill came at, the new
    output is renamed in and the old one removed (rolled forward); only
    when the new one is gone without reaching ``output.path`` is the old
    one put back (rolled back). Either way one whole output is then at
    ``output.path``, never neither and never a mix. Returns the lines said.
    Cost: one listing of the output's parent directory.
    """
    if cfg.format == "table" or not cfg.path:
        return []
    with translate_errors(f"output.path: {cfg.path}", OutputError):
        return _recover(HadoopFS(spark, cfg.path), cfg.path)


def _recover(fs: HadoopFS, path: str) -> list[str]:
    parent, name = os.path.split(path.rstrip("/"))
    said = []
    for entry in sorted(fs.list_names(parent or ".")):
        if not (entry.startswith(f".{name}{JOURNAL_INFIX}") and entry.endswith(".json")):
            continue
        journal = f"{parent}/{entry}" if parent else entry
        record = json.loads(fs.read_text(journal))
        old, new = record["old"], record["new"]
        if fs.exists(new):
            if fs.exists(path) and fs.exists(old):
                raise OutputError(
                    f"output.path: {path}, {old} and {new} all exist beside the commit journal {journal}: "
                    "which output to keep is yours to say; remove the other two and the journal"
                )
            if fs.exists(path):  # killed before the old output was moved aside
                fs.rename(path, old)
            _swap_in(fs, new, path, old)
            done = "rolled forward: the new output is in place"
        elif fs.exists(path):  # killed after the new output was renamed in
            if fs.exists(old):
                fs.delete(old)
            done = "rolled forward: the new output was already in place"
        elif fs.exists(old):
            fs.rename(old, path)
            done = "rolled back: the old output is back (the new one is gone)"
        else:
            raise OutputError(f"output.path: {path}: the commit journal {journal} names outputs that are all gone")
        fs.delete(journal)
        line = f"output.path: {path}: a killed run left its commit half done; {done}"
        log.warning("%s", line)
        said.append(line)
    return said
