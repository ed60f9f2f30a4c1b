"""Where a job's time went: rows scored and busy seconds per actor, in time buckets that widen as the job grows.

The pool's ledger keeps one :class:`Timeline` for all its actors; the run
report carries it (:meth:`Timeline.to_dict`) and the HTML report draws it.
Memory is bounded whatever the job's length: when a job outgrows
``max_buckets`` buckets, each two neighbours merge and the width doubles, so
an hour-long job and a day-long one both keep at most a few hundred buckets
per actor.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

__all__ = ["Timeline", "MAX_BUCKETS"]

MAX_BUCKETS = 300


class Timeline:
    """Per key (an actor process, pid@node): rows finished and seconds scoring, per ``width`` s from ``origin``."""

    def __init__(self, origin: float, width: float = 1.0, max_buckets: int = MAX_BUCKETS) -> None:
        self.origin, self.width, self.max_buckets = origin, width, max_buckets
        self.rows: dict[Any, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.busy: dict[Any, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.last = 0  # the highest bucket used

    def add(self, key: Any, start: float, end: float, rows: int) -> None:
        """One batch of ``rows`` scored by ``key`` from ``start`` to ``end`` (``time.time()``s)."""
        a, b = max(start - self.origin, 0.0), max(end - self.origin, 0.0)
        while b / self.width >= self.max_buckets:
            self._widen()
        busy = self.busy[key]
        first, final = int(a // self.width), int(b // self.width)
        for i in range(first, final + 1):  # the busy seconds, split over the buckets the batch spans
            lo, hi = max(a, i * self.width), min(b, (i + 1) * self.width)
            if hi > lo:
                busy[i] += hi - lo
        self.rows[key][final] += rows
        self.last = max(self.last, final)

    def _widen(self) -> None:
        self.width *= 2
        for series in (*self.rows.values(), *self.busy.values()):
            merged: dict[int, Any] = defaultdict(int)
            for i, v in series.items():
                merged[i // 2] += v
            series.clear()
            series.update(merged)
        self.last //= 2

    def series(self, key: Any, until: float | None = None) -> tuple[list[int], list[float]]:
        """``key``'s rows and busy seconds per bucket, dense, from bucket 0 to the last bucket (or ``until``)."""
        n = self.last + 1 if until is None else max(self.last + 1, math.ceil((until - self.origin) / self.width))
        rows, busy = self.rows.get(key, {}), self.busy.get(key, {})
        return [rows.get(i, 0) for i in range(n)], [round(busy.get(i, 0.0), 3) for i in range(n)]

    def to_dict(self, keys: list[Any], until: float | None = None) -> dict[str, Any]:
        """The report's form: ``{"origin", "bucket_s", "rows": {key: [...]}, "busy": {key: [...]}}``."""
        while until is not None and (until - self.origin) / self.width >= self.max_buckets:  # an idle tail
            self._widen()
        out: dict[str, Any] = {"origin": self.origin, "bucket_s": self.width, "rows": {}, "busy": {}}
        for key in keys:
            out["rows"][str(key)], out["busy"][str(key)] = self.series(key, until)
        return out
