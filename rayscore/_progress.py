"""Live progress of a job: what phase it is in, rows scored, rows/s, ETA, the pool's actors.

A :class:`Tracker` runs one thread on the driver that, every second, asks the
pool's ledger for its totals (one actor call) and Spark's status tracker for
the job's tasks (one call into the driver's JVM), turns them into a
:class:`Progress`, and hands it to its sinks: a ``rich`` display on a terminal
or in a notebook (:class:`Display`), plain lines for a log file
(:class:`Lines`), or the caller's function. Rows in are not known ahead of
a streaming job (nothing is counted before scoring): the share done and the
ETA come from Spark's finished tasks and the rows they held, or from the
rows counted per shard in ``output.mode: resume``.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TextIO

__all__ = [
    "Progress",
    "Tracker",
    "ActionWatch",
    "Display",
    "Lines",
    "ProgressArg",
    "sinks_for",
    "estimate",
    "describe",
    "line",
]

log = logging.getLogger("rayscore")

POLL_S = 1.0
RATE_WINDOW_S = 10.0  # rows/s over this last stretch
LINE_EVERY_S = 10.0  # plain lines: new figures at most once per this many seconds ...
LINE_EVERY_SHARE = 0.05  # ... or per this share of the job, whichever comes first
LINE_SAME_S = 60.0  # a line that says nothing new: at most once per this many seconds
LINE_MAX = 120  # characters in a plain line, at most

PHASES = {
    "starting": "starting Ray and Spark",
    "read_convert": "checking the input",
    "loading": "loading the model",
    "predict": "scoring",
    "write": "committing",
    "done": "done",
}


@dataclass(frozen=True)
class Progress:
    """One look at a running job, as the display, the log lines and a ``progress=`` callback get it.

    ``phase`` is the job's step (a key of ``PHASES``); ``phase_text`` says in
    words what the job waits for at that moment, from the phase and the
    actors (the pool loads the model while Spark starts). ``rows_scored``
    counts rows the pool has scored (a batch Spark or Ray ran again counts
    again, so it may pass the rows in before the end); it never goes down
    until the last look, ``done``, which holds the rows in. ``rows_total`` is
    known in ``output.mode: resume`` (rows counted per shard) and at the end;
    ``fraction`` and ``eta_seconds`` come from it, else from Spark's finished
    tasks and the rows they held (None until one finishes).
    """

    phase: str
    seconds: float
    rows_scored: int = 0
    rows_total: int | None = None
    bytes_scored: int = 0
    rows_per_second: float = 0.0
    fraction: float | None = None
    eta_seconds: float | None = None
    tasks_done: int = 0
    tasks_total: int = 0
    actors: int = 0
    actors_loaded: int = 0
    actors_loading: int = 0
    actors_restarted: int = 0
    rows_quarantined: int = 0
    batches_retried: int = 0
    done: bool = False

    @property
    def phase_text(self) -> str:
        """What the job waits for now, in a few words: the head of a plain line and the display's label."""
        if self.phase == "starting" and self.actors:  # the pool exists, so Ray is up
            return "starting Spark"
        if self.phase == "loading" and self.actors and self.actors_loaded >= self.actors:
            return PHASES["predict"]  # loaded while Spark started: the scoring job is next
        return PHASES.get(self.phase, self.phase)


ProgressArg = bool | Callable[[Progress], Any] | None


def estimate(
    scored: int, rate: float, total: int | None, counted: int, tasks_done: int, tasks_total: int
) -> tuple[float | None, float | None]:
    """(share done, seconds left) from the rows scored and their rate.

    With a known ``total`` it is rows over rows. Otherwise the rows in are
    estimated from Spark's finished tasks: ``counted`` rows in ``tasks_done``
    of ``tasks_total`` tasks (partitions are about equal); before a task
    finishes there is no estimate.
    """
    if total is None:
        if not tasks_done or not tasks_total or not counted:
            return None, None
        total = max(round(counted / tasks_done * tasks_total), scored)
    if total <= 0:
        return 1.0, 0.0
    share = min(scored / total, 1.0)
    left = max(total - scored, 0)
    return share, (left / rate if rate > 0 else None)


def _count(n: float) -> str:
    """A short count: ``950``, ``9.8k``, ``12.3M``, ``123G``."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _figures(p: Progress) -> str:
    """Every figure of a look, zeros and unknowns included: the live display's second line, fixed in place."""
    rows = f"{p.rows_scored:,} rows" + (f" of {p.rows_total:,}" if p.rows_total is not None else "")
    share = f" ({p.fraction:.0%})" if p.fraction is not None else ""
    parts = [
        rows + share,
        f"{_count(p.rows_per_second)} rows/s",
        f"ETA {_clock(p.eta_seconds)}" if not p.done else f"in {_clock(p.seconds)}",
    ]
    if p.tasks_total:
        parts.append(f"Spark tasks {p.tasks_done}/{p.tasks_total}")
    parts.append(
        f"actors {p.actors_loaded} loaded, {p.actors_loading} loading, {p.actors_restarted} restarted (of {p.actors})"
    )
    parts.append(f"quarantined {p.rows_quarantined:,}, batches retried {p.batches_retried}")
    return "; ".join(parts)


def _many(n: int, one: str, more: str, num: Callable[[float], str]) -> str:
    return f"{num(n)} {one if n == 1 else more}"


def _facts(p: Progress, short: bool = False) -> tuple[str, list[tuple[int, str]]]:
    """The start of ``p``'s line (what it waits for, its own figures), then its other facts, each with a rank.

    A fact is there only when it is known and not zero: no ETA before one is
    known, the actors while they load (and their count while scoring), a
    restart, a quarantined row or a retried batch once there is one. The
    facts of lowest rank are the first left out of a line too long. ``short``:
    counts as ``1.2M``, and no rows in beside the share done.
    """
    num: Callable[[float], str] = _count if short else (lambda n: f"{n:,}")
    head = p.phase_text
    facts: list[tuple[int, str]] = []
    scoring = head == PHASES["predict"] and not p.done
    if p.done or p.rows_scored:
        rows = _many(p.rows_scored, "row", "rows", num)
        if p.rows_total is not None and not p.done and not (short and p.fraction is not None):
            rows += f" of {num(p.rows_total)}"
        if p.fraction is not None and not p.done:
            rows += f" ({p.fraction:.0%})"
        head += f": {rows}"
    elif p.phase == "loading" and p.actors and p.actors_loaded < p.actors:
        head += (
            f": {p.actors_loaded} of {p.actors} actors loaded"
            if p.actors_loaded
            else f" on {_many(p.actors, 'actor', 'actors', str)}"
        )
    if scoring:
        if round(p.rows_per_second) > 0:
            facts.append((8, f"{_count(p.rows_per_second)} rows/s"))
        if p.eta_seconds is not None and p.eta_seconds >= 1:
            facts.append((5, f"ETA {_clock(p.eta_seconds)}"))
        if p.tasks_total:
            facts.append((4, f"tasks {num(p.tasks_done)}/{num(p.tasks_total)}"))
        if p.actors:
            loaded = p.actors_loaded
            facts.append((3, f"actors {p.actors}" if loaded >= p.actors else f"actors {loaded}/{p.actors}"))
    elif p.phase in ("starting", "read_convert") and p.actors and p.actors_loaded < p.actors:
        if p.actors_loaded:
            facts.append((6, f"model loaded on {p.actors_loaded} of {p.actors} actors"))
        else:
            facts.append((6, f"model loading on {_many(p.actors, 'actor', 'actors', str)}"))
    if p.actors_restarted:
        facts.append((7, _many(p.actors_restarted, "restart", "restarts", num)))
    if p.rows_quarantined:
        facts.append((7, f"{num(p.rows_quarantined)} quarantined"))
    if p.batches_retried:
        retried = _many(p.batches_retried, "retry", "retries", num)
        facts.append((7, retried if short else _many(p.batches_retried, "batch", "batches", num) + " retried"))
    return head, facts


def describe(p: Progress, width: int = LINE_MAX - len("rayscore: 0:00:00 ")) -> str:
    """A plain line's text after its clock: what the job waits for, then what is known and not zero.

    ``starting Spark; model loading on 2 actors``, ``checking the input``,
    ``scoring: 120,000 rows (12%); 9.8k rows/s; ETA 0:01:10; tasks 3/8; actors 2; 1 restart``,
    ``committing: 1,000,000 rows``, ``done: 1,000,000 rows; 12 quarantined``.
    Never over ``width`` characters: big numbers are shortened (``1.2M``), then the
    least telling facts (actors, tasks, ETA) are left out.
    """
    head, facts = _facts(p)
    text = "; ".join([head] + [f for _, f in facts])
    if len(text) <= width:
        return text
    head, facts = _facts(p, short=True)
    while len(text := "; ".join([head] + [f for _, f in facts])) > width and facts:
        facts.pop(min(range(len(facts)), key=lambda i: (facts[i][0], -i)))  # of equal rank, the last
    return text[:width]


def line(p: Progress) -> str:
    """The plain progress line for ``p``: ``rayscore: H:MM:SS`` (since the job began), then :func:`describe`."""
    stamp = f"rayscore: {_clock(p.seconds)} "
    return stamp + describe(p, LINE_MAX - len(stamp))


class Lines:
    """Plain progress lines for a log file or a pipe: a line when it says something new, and only then.

    A new phase (or a new thing waited for) gets a line at once, as does the
    last look; new figures in the same phase at most every 10 s or 5 % of the
    job; a line that would say just what the last one said at most once a
    minute (so a quiet log still shows the job alive). Timed by the looks'
    own ``seconds``.
    """

    def __init__(self, stream: TextIO, own: bool = False) -> None:
        self.stream, self._own = stream, own  # own: a copy of the descriptor, closed with this sink
        self._last: Progress | None = None
        self._said = ""

    def __call__(self, p: Progress) -> None:
        last, text = self._last, line(p)
        said = text.split(" ", 2)[2]  # what it says, without its clock
        if last is None or p.done or p.phase_text != last.phase_text:
            due = True
        elif said == self._said:
            due = p.seconds - last.seconds >= LINE_SAME_S
        else:
            due = p.seconds - last.seconds >= LINE_EVERY_S or (
                p.fraction is not None and p.fraction - (last.fraction or 0.0) >= LINE_EVERY_SHARE
            )
        if not due:
            return
        self._last, self._said = p, said
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._own and not self.stream.closed:
            self.stream.close()


class Display:
    """A live ``rich`` display on a terminal or in a notebook: the phase with a bar, then the figures.

    Drawn from the first look on (a job that fails before it leaves the terminal as it was); it leaves
    ``sys.stdout`` and ``sys.stderr`` alone (rich would send them through itself).
    """

    def __init__(self, console: Any, own: bool = False) -> None:
        from rich.progress import BarColumn, SpinnerColumn, TextColumn  # noqa: PLC0415
        from rich.progress import Progress as Bar  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        figures: list[str] = [""]

        class WithFigures(Bar):
            def get_renderables(self) -> Iterator[Any]:
                yield self.make_tasks_table(self.tasks)
                yield Text(figures[0], style="dim")

        self._figures = figures
        self._bar = WithFigures(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[head]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task("starting", total=None, head="")
        self._console, self._own, self._state = console, own, "new"

    def __call__(self, p: Progress) -> None:
        if self._state == "closed":
            return
        if self._state == "new":
            self._bar.start()
            self._state = "live"
        total = 1.0 if p.fraction is not None else None
        head = f"{p.rows_scored:,} rows" + (f" of {p.rows_total:,}" if p.rows_total is not None else "")
        head += f"  {_count(p.rows_per_second)} rows/s  " + (
            f"ETA {_clock(p.eta_seconds)}" if not p.done else f"in {_clock(p.seconds)}"
        )
        self._figures[0] = _figures(p)
        self._bar.update(self._task, description=p.phase_text, total=total, completed=p.fraction or 0.0, head=head)
        if p.done:
            self.close()

    def close(self) -> None:
        """Stop drawing (the last look stays on the terminal); safe to call twice."""
        if self._state == "live":
            self._bar.stop()
        self._state = "closed"
        if self._own and not self._console.file.closed:
            self._console.file.close()


def _close(sink: Any) -> None:
    close = getattr(sink, "close", None)
    try:
        if close is not None:
            close()
    except Exception as exc:  # noqa: BLE001 - a display that cannot close must not fail the job
        log.warning("progress: closing a progress sink: %s: %s", type(exc).__name__, exc)


def sinks_for(progress: ProgressArg, stream: TextIO | None = None) -> list[Callable[[Progress], None]]:
    """What ``progress=`` asks for: nothing (False), the caller's function, or a display fit for ``stream``.

    ``True`` (or None) gives a live display on a terminal or in a notebook,
    else plain lines. ``stream`` defaults to a copy of this process's
    standard error, so the display stays on the terminal while Ray's and
    Spark's output goes to the log.
    """
    if progress is False:
        return []
    if callable(progress):
        return [progress]
    from rich.console import Console  # noqa: PLC0415

    own = False
    if stream is None:
        stream = sys.stderr
        try:
            stream, own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1), True
        except (AttributeError, OSError, ValueError):  # a notebook's stream has no file descriptor
            pass
    console = Console(file=stream)
    if console.is_terminal or console.is_jupyter:
        return [Display(console, own)]
    return [Lines(stream, own)]


class Tracker:
    """Polls a job's pool and Spark once a second and feeds :class:`Progress` to its sinks, from its own thread.

    The job tells it its phase (:meth:`phase`), its pool (:meth:`pool`), the
    Spark job group its writes run in (:attr:`group`) and their row counter
    (:meth:`counting`); :meth:`finish` sends the last look, with the rows in.
    A sink that raises is dropped (logged), never the job.
    """

    def __init__(
        self,
        sinks: list[Callable[[Progress], None]],
        spark: Any = None,
        poll_s: float | None = POLL_S,
        base: dict[str, Any] | None = None,
        own_jobs: bool = True,
    ) -> None:
        self.sinks = list(sinks)
        # own_jobs: the job's writes run in this tracker's Spark job group; else it counts the jobs it sees run
        self.group: str | None = f"rayscore-{uuid.uuid4().hex[:12]}" if own_jobs else None
        self.rows_total: int | None = None
        self._base = base or {}  # the ledger's totals before what this tracker shows
        self._jobs: set[int] = set()
        self._spark, self._pool, self._counter = spark, None, None
        self._phase, self._began = "starting", time.time()
        self._last = Progress(phase="starting", seconds=0.0)
        self._rates: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.sinks and poll_s is not None:  # None: the owner calls tick()
            self._thread = threading.Thread(target=self._run, name="rayscore-progress", daemon=True)
            self._thread.start()

    @property
    def last(self) -> Progress:
        return self._last

    def tick(self, snapshot: dict[str, Any] | None = None) -> None:
        """Take a look now (with the ledger's ``snapshot`` when the caller has just read it) and send it."""
        self._emit(snapshot)

    def phase(self, name: str) -> None:
        """The job entered phase ``name`` (a key of :data:`PHASES`, or a stage of the run's clock)."""
        self._phase = name
        self._emit()

    def pool(self, pool: Any) -> None:
        self._pool = pool

    def spark(self, spark: Any) -> None:
        self._spark = spark

    def counting(self, counter: Any) -> None:
        """A Spark accumulator of the rows in finished tasks (the estimate of the rows in)."""
        self._counter = counter

    @contextmanager
    def jobs(self, spark: Any) -> Iterator[None]:
        """Spark jobs started in the block belong to this tracker's job group (their tasks are counted)."""
        sc = spark.sparkContext
        keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
        before = {k: sc.getLocalProperty(k) for k in keys}  # the caller's own group, if it set one
        sc.setJobGroup(self.group, "rayscore", interruptOnCancel=False)
        try:
            yield
        finally:
            for key, value in before.items():
                sc.setLocalProperty(key, value)

    def finish(self, rows_in: int, quarantined: int) -> None:
        """The job committed ``rows_in`` rows: the last look, then the sinks are closed.

        Ray and Spark may have stopped by now: the last look is the one before, with the final counts.
        """
        self.halt()
        self._send(
            replace(
                self._last,
                seconds=round(time.time() - self._began, 1),
                phase="done",
                rows_scored=rows_in,
                rows_total=rows_in,
                rows_quarantined=quarantined,
                fraction=1.0,
                eta_seconds=0.0,
                done=True,
            )
        )
        self.close()

    def close(self) -> None:
        """Stop polling and close the sinks (a failed or interrupted job: no last look)."""
        try:
            self.halt()
        finally:
            sinks, self.sinks = self.sinks, []
            for sink in sinks:
                _close(sink)

    def halt(self) -> None:
        """Stop polling (before Ray and Spark stop under it); the sinks stay open for :meth:`finish`."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        assert self._poll_s is not None
        while not self._stop.wait(self._poll_s):
            self._emit()

    def _emit(self, snapshot: dict[str, Any] | None = None) -> None:
        if not self.sinks:
            return
        try:
            p = self._look(snapshot)
        except Exception as exc:  # noqa: BLE001 - Ray or Spark stopping under us: skip this look
            log.debug("progress: %s", exc)
            return
        self._send(p)

    def _send(self, p: Progress) -> None:
        with self._lock:
            if p.phase != self._phase and not p.done:  # taken before the phase changed, sent after its first look
                return
            for sink in list(self.sinks):
                try:
                    sink(p)
                except Exception as exc:  # noqa: BLE001 - the caller's function must not fail the job
                    log.warning("progress: dropped a progress sink that raised %s: %s", type(exc).__name__, exc)
                    self.sinks.remove(sink)
                    _close(sink)

    def _look(self, snap: dict[str, Any] | None = None) -> Progress:
        import ray  # noqa: PLC0415

        now = time.time()
        actors = len(self._pool.names) if self._pool is not None else 0
        if snap is None:
            snap = {}
            if self._pool is not None and ray.is_initialized():
                snap = ray.get(self._pool.ledger.snapshot.remote(), timeout=10)
        done, total = self._tasks()
        snap = {k: v - self._base.get(k, 0) if k in self._base else v for k, v in snap.items()}
        rows = max(int(snap.get("rows", 0)), self._last.rows_scored)
        if self.rows_total is not None:
            rows = min(rows, self.rows_total)
        self._rates.append((now, rows))
        while len(self._rates) > 2 and now - self._rates[0][0] > RATE_WINDOW_S:
            self._rates.popleft()
        t0, r0 = self._rates[0]
        rate = (rows - r0) / (now - t0) if now > t0 else 0.0
        counted = int(self._counter.value) if self._counter is not None else 0
        share, eta = estimate(rows, rate, self.rows_total, counted, done, total)
        p = Progress(
            phase=self._phase,
            seconds=round(now - self._began, 1),
            rows_scored=rows,
            rows_total=self.rows_total,
            bytes_scored=int(snap.get("bytes", 0)),
            rows_per_second=round(rate, 1),
            fraction=share,
            eta_seconds=eta,
            tasks_done=done,
            tasks_total=total,
            actors=actors,
            actors_loaded=int(snap.get("loaded", 0)),
            actors_loading=int(snap.get("loading", 0)),
            actors_restarted=int(snap.get("restarted", 0)),
            rows_quarantined=int(snap.get("quarantined", 0)),
            batches_retried=int(snap.get("retries", 0)),
        )
        self._last = p
        return p

    def _tasks(self) -> tuple[int, int]:
        """(finished, all) tasks of the Spark jobs in this tracker's group."""
        if self._spark is None or self._spark.sparkContext._jsc is None:  # not started, or stopped
            return self._last.tasks_done, self._last.tasks_total
        tracker = self._spark.sparkContext.statusTracker()
        if self.group is not None:
            jobs: Iterable[int] = sorted(tracker.getJobIdsForGroup(self.group))
            if self.rows_total is None:  # the first job scores; later ones (errors output, a count) only reread
                jobs = list(jobs)[:1]
        else:  # an action the caller runs: the jobs seen running since this tracker began
            self._jobs.update(tracker.getActiveJobsIds())
            jobs = self._jobs
        done = total = 0
        for job in jobs:
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info else ():
                s = tracker.getStageInfo(stage)
                if s is not None:
                    done, total = done + s.numCompletedTasks, total + s.numTasks
        return done, total


class ActionWatch:
    """Progress for ``rayscore.predict``'s lazy DataFrames: one display per Spark action that scores.

    The DataFrame is scored by whatever action the caller runs later, so the
    watch follows the pool, not a job: once a second it asks the pool's
    ledger for its totals and Spark for its active jobs. Rows scored while
    Spark runs a job open a display (phase ``predict``, counting from that
    action's first rows); Spark going idle closes it with a last look
    (``done``) that holds the rows the action scored. Cost: one thread, one
    actor call and one call into Spark's driver a second, for the pool's life.
    """

    def __init__(self, pool: Any, spark: Any, progress: ProgressArg, poll_s: float = POLL_S) -> None:
        self.pool, self.spark, self.progress, self.poll_s = pool, spark, progress, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayscore-actions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import ray  # noqa: PLC0415

        tracker: Tracker | None = None
        try:  # the ledger's totals when the last action ended: what the pool scored before this watch
            seen: dict[str, Any] = ray.get(self.pool.ledger.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the pool is ending already
            return
        while not self._stop.wait(self.poll_s):
            if not ray.is_initialized() or self.spark.sparkContext._jsc is None:  # the session ended
                break
            try:
                active = bool(self.spark.sparkContext.statusTracker().getActiveJobsIds())
                snap = ray.get(self.pool.ledger.snapshot.remote(), timeout=10)
            except Exception as exc:  # noqa: BLE001 - Ray or Spark stopping under us: the pool is ending
                log.debug("progress: %s", exc)
                continue
            if tracker is None and snap["rows"] > seen.get("rows", 0):  # an action began scoring
                base = {k: seen.get(k, 0) for k in ("rows", "bytes", "batches", "quarantined", "retries")}
                try:
                    sinks = sinks_for(self.progress)
                except Exception as exc:  # noqa: BLE001 - no display this time; never the action
                    log.warning("progress: %s: %s", type(exc).__name__, exc)
                    seen = snap
                    continue
                tracker = Tracker(sinks, self.spark, poll_s=None, base=base, own_jobs=False)
                tracker.pool(self.pool)
                tracker.phase("predict")
            if tracker is None:
                continue
            tracker.tick(snap)  # the snapshot just read: one ledger call a second
            if not active:  # the action ended
                tracker.finish(tracker.last.rows_scored, tracker.last.rows_quarantined)
                tracker, seen = None, snap
        if tracker is not None:
            tracker.close()
