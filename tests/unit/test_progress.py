"""Progress, the timeline and the HTML report, without a cluster: the figures they compute and print."""

from __future__ import annotations

import io
import json
import re

import pytest

from rayscore._cli import main
from rayscore._html import HTML_NAME, lanes, render, summary_rows, throughput
from rayscore._progress import Lines, Progress, Tracker, describe, estimate, sinks_for
from rayscore._report import StageClock
from rayscore._sink import REPORT_NAME
from rayscore._timeline import Timeline


def test_the_estimate_uses_a_known_total_else_spark_s_finished_tasks():
    assert estimate(250, 50.0, 1000, 0, 0, 0) == (0.25, 15.0)
    assert estimate(250, 50.0, None, 0, 0, 8) == (None, None)  # no task finished: no estimate
    share, eta = estimate(300, 100.0, None, 200, 2, 8)  # 100 rows a task, 8 tasks: 800 rows in
    assert (share, eta) == (300 / 800, 5.0)
    assert estimate(900, 0.0, None, 200, 2, 8) == (1.0, None)  # more scored than estimated: never past 100 %
    assert estimate(0, 0.0, 0, 0, 0, 0) == (1.0, 0.0)


def test_a_progress_line_names_the_figures():
    p = Progress(
        phase="predict",
        seconds=75.0,
        rows_scored=12345,
        rows_total=50000,
        rows_per_second=2100.0,
        fraction=0.2469,
        eta_seconds=17.6,
        tasks_done=1,
        tasks_total=4,
        actors=2,
        actors_loaded=2,
        actors_restarted=1,
        rows_quarantined=3,
        batches_retried=2,
    )
    assert describe(p) == (
        "12,345 rows of 50,000 (25%); 2.1k rows/s; ETA 0:00:17; Spark tasks 1/4; "
        "actors 2 loaded, 0 loading, 1 restarted (of 2); quarantined 3, batches retried 2"
    )


def test_plain_lines_come_on_each_phase_then_every_10_s_or_5_percent():
    out = io.StringIO()
    lines = Lines(out)
    looks = [
        Progress("starting", 0.0),
        Progress("starting", 5.0),  # same phase, 5 s later: no line
        Progress("predict", 6.0, rows_scored=10, fraction=0.01),  # a new phase
        Progress("predict", 7.0, rows_scored=20, fraction=0.03),  # +2 %, 1 s: no line
        Progress("predict", 8.0, rows_scored=70, fraction=0.07),  # +6 %
        Progress("predict", 18.5, rows_scored=80, fraction=0.08),  # 10.5 s
        Progress("predict", 19.0, rows_scored=90, fraction=0.09),
        Progress("done", 19.5, rows_scored=100, rows_total=100, fraction=1.0, done=True),
    ]
    for p in looks:
        lines(p)
    printed = out.getvalue().splitlines()
    assert [line.split(": ")[2].split(" rows")[0] for line in printed] == ["0", "10", "70", "80", "100"]
    assert printed[0].startswith("rayscore: 0:00:00 starting Ray and Spark: 0 rows")
    assert printed[-1].startswith("rayscore: 0:00:19 done: 100 rows of 100 (100%)")


def test_progress_off_or_a_function_and_not_a_terminal_gives_lines():
    seen = []
    assert sinks_for(False) == []
    assert sinks_for(seen.append) == [seen.append]
    [sink] = sinks_for(True, io.StringIO())
    assert isinstance(sink, Lines)


def test_the_tracker_drops_a_sink_that_raises_and_sends_a_last_look_with_the_rows_in():
    seen: list[Progress] = []

    def broken(p: Progress) -> None:
        raise RuntimeError("the caller's bug")

    tracker = Tracker([broken, seen.append], poll_s=3600)
    tracker.phase("read_convert")
    tracker.finish(500, 7)
    assert [p.phase for p in seen][-1] == "done"
    assert (seen[-1].rows_scored, seen[-1].rows_total, seen[-1].rows_quarantined, seen[-1].done) == (500, 500, 7, True)
    assert tracker.sinks == []


def test_the_timeline_splits_busy_seconds_over_buckets_and_widens_to_stay_bounded():
    t = Timeline(origin=100.0, width=1.0, max_buckets=8)
    t.add("a", 100.5, 102.5, 30)  # busy 0.5 + 1 + 0.5, rows at the end
    assert t.series("a") == ([0, 0, 30], [0.5, 1.0, 0.5])
    t.add("b", 106.0, 107.0, 10)
    t.add("a", 109.0, 110.0, 5)  # past 8 buckets: the width doubles, neighbours merge
    assert t.width == 2.0
    rows, busy = t.series("a")
    assert rows == [0, 30, 0, 0, 0, 5] and busy == [1.5, 0.5, 0.0, 0.0, 1.0, 0.0]  # it ended at 110: bucket 5
    assert sum(t.series("b")[0]) == 10 and sum(t.series("b")[1]) == pytest.approx(1.0)


def test_the_stage_clock_keeps_spans_and_tells_each_stage():
    heard = []
    clock = StageClock(on_stage=heard.append)
    with clock.stage("read_convert"):
        pass
    clock.add("startup", 2.0, 0.0)
    assert heard == ["read_convert"]
    assert [s["name"] for s in clock.spans] == ["read_convert", "startup"]
    assert clock.spans[1] == {"name": "startup", "start": 0.0, "end": 2.0}


def report_with_timeline() -> dict:
    """A report as a two-actor job writes it: actor 1 restarted once, loaded late, idled at the end."""
    busy0 = [0.0, 0.0, 1.0, 1.0, 1.0, 0.9, 1.0, 0.2]
    busy1 = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    return {
        "rows_in": 6000,
        "rows_out": 6000,
        "rows_quarantined": 0,
        "rows_per_second": 1234.5,
        "output": "/data/scores.parquet",
        "model_uri": "/m/ctr.keras",
        "model_format": "keras",
        "model_bytes": 1000,
        "model_loads": 3,
        "nodes": 1,
        "actors": {"min": 2, "max": 2},
        "actor_loads": [{"peak_rss": 2**30}],
        "seconds": {"startup": 1.0, "predict": 5.0, "load": 2.0, "first_prediction": 3.0, "total": 9.0},
        "timeline": {
            "job_began": 1000.0,
            "origin": 1000.5,
            "bucket_s": 1.0,
            "rows": {"11": [0, 0, 1000, 1000, 1000, 900, 1000, 100], "12": [0] * 5 + [500, 500, 0]},
            "busy": {"11": busy0, "12": busy1},
            "actors": [
                {
                    "name": "rayscore-x-0",
                    "restart": 0,
                    "pid": 11,
                    "node": "abcdef0123",
                    "started": 1000.5,
                    "loaded": 1002.5,
                },
                {
                    "name": "rayscore-x-1",
                    "restart": 0,
                    "pid": 10,
                    "node": "abcdef0123",
                    "started": 1000.5,
                    "loaded": None,
                },
                {
                    "name": "rayscore-x-1",
                    "restart": 1,
                    "pid": 12,
                    "node": "abcdef0123",
                    "started": 1003.5,
                    "loaded": 1005.5,
                },
            ],
            "stages": [{"name": "startup", "start": 0.0, "end": 1.0}, {"name": "predict", "start": 2.0, "end": 8.5}],
        },
    }


def test_the_lanes_show_loads_restarts_scoring_and_idle_in_seconds_from_the_job_s_start():
    bars = lanes(report_with_timeline())
    spark = [(b["kind"], b["start"], b["end"]) for b in bars if b["lane"] == "Spark"]
    assert spark == [("startup", 0.0, 1.0), ("predict", 2.0, 8.5)]
    zero = [(b["kind"], b["start"], b["end"]) for b in bars if b["lane"].startswith("actor 0")]
    assert zero == [("load", 0.5, 2.5), ("scoring", 2.5, 7.5), ("partly busy", 7.5, 8.5)]
    one = [(b["kind"], b["start"], b["end"]) for b in bars if b["lane"].startswith("actor 1")]
    assert one[:2] == [("load", 0.5, 0.5), ("restart", 3.5, 3.5)]  # the first process died loading
    assert ("scoring", 5.5, 7.5) in one and one[-1] == ("idle", 7.5, 8.5)
    x, y = throughput(report_with_timeline())
    assert x[:3] == [0.5, 1.5, 2.5] and y[2] == 1000.0 and y[5] == 1400.0


def test_the_page_is_self_contained_and_holds_the_figures():
    page = render(report_with_timeline())
    assert "<script" in page and "<script src" not in page  # plotly.js inlined: opens offline
    assert "6,000" in page and "1,234.5" in page and "rayscore-timeline" in page
    assert ("rows/s (predict stage)", "1,234.5") in summary_rows(report_with_timeline())


def test_rayscore_report_prints_the_figures_of_a_finished_output(tmp_path, capsys):
    (tmp_path / REPORT_NAME).write_text(json.dumps(report_with_timeline()))
    (tmp_path / HTML_NAME).write_text("<html></html>")
    assert main(["report", str(tmp_path), "--no-browser"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^rows in +6,000$", out, re.M)
    assert re.search(rf"^page +{re.escape((tmp_path / HTML_NAME).as_uri())}$", out, re.M)


def test_rayscore_report_on_a_folder_without_a_report_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"rayscore: error: {tmp_path} holds no {REPORT_NAME} (not a finished rayscore job's output)\n"


def test_spark_without_executors_for_30_s_is_gone_and_an_executor_back_resets_it():
    from rayscore._watch import Gone

    gone = Gone(after_s=30)
    assert [gone.seen(0, t) for t in (0.0, 29.0)] == [False, False]
    assert gone.seen(1, 29.5) is False  # one came back: the wait starts again
    assert [gone.seen(0, t) for t in (40.0, 69.0, 70.0)] == [False, False, True]


def test_the_lost_executors_line_names_the_nodes_lost_since_the_job_began():
    from rayscore._watch import lost_text

    nodes = [
        {"NodeID": "aa" * 28, "Alive": True, "NodeManagerAddress": "10.0.0.1"},
        {"NodeID": "bb" * 28, "Alive": False, "NodeManagerAddress": "10.0.0.7"},
        {"NodeID": "cc" * 28, "Alive": False, "NodeManagerAddress": "10.0.0.9"},  # dead before the job
    ]
    text = lost_text({"aa" * 28, "bb" * 28}, nodes)
    assert text.startswith("spark: Ray lost node 10.0.0.7 (Ray node bbbbbbbb) and with it every Spark executor; ")
    assert "none came back in 30 s" in text and "output.mode: resume" in text
    assert lost_text({"aa" * 28}, nodes).startswith("spark: Spark lost every executor (no Ray node was lost); ")


def test_the_ledger_counts_batches_per_actor_process_and_its_restarts():
    from rayscore._predict import LoadLedger

    ledger = LoadLedger()
    t0 = ledger._timeline.origin
    ledger.loading("pool-0", 11, "node-aaaaaaaa", t0)
    ledger.loading("pool-1", 12, "node-bbbbbbbb", t0)
    ledger.record({"name": "pool-0", "pid": 11, "node": "node-aaaaaaaa", "loaded": t0 + 2.0})
    ledger.batch("11@node-aaa", t0 + 2.0, t0 + 2.5, 500, 4096, 3, 1)
    ledger.batch("11@node-aaa", t0 + 2.5, t0 + 3.5, 500, 4096, 0, 0)
    ledger.loading("pool-1", 13, "node-bbbbbbbb", t0 + 4.0)  # pool-1's first process died loading
    snap = ledger.snapshot()
    assert {k: snap[k] for k in ("rows", "bytes", "batches", "quarantined", "retries")} == {
        "rows": 1000,
        "bytes": 8192,
        "batches": 2,
        "quarantined": 3,
        "retries": 1,
    }
    assert (snap["loaded"], snap["loading"], snap["restarted"]) == (1, 1, 1)
    timeline = ledger.timeline()
    assert [a["key"] for a in timeline["actors"]] == ["11@node-aaa", "12@node-bbb", "13@node-bbb"]
    assert sum(timeline["rows"]["11@node-aaa"]) == 1000 and sum(timeline["busy"]["11@node-aaa"]) == 1.5
    assert sum(timeline["rows"]["13@node-bbb"]) == 0
