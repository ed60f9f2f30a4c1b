"""Progress, the timeline and the HTML report, without a cluster: the figures they compute and print."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace

import pytest

from rayscore._cli import main
from rayscore._html import HTML_NAME, lanes, render, summary_rows, throughput
from rayscore._progress import Display, Lines, Progress, Tracker, describe, estimate, line, sinks_for
from rayscore._report import StageClock
from rayscore._sink import REPORT_NAME
from rayscore._timeline import Timeline
from tests.conftest import PROGRESS_LINE


def test_the_estimate_uses_a_known_total_else_spark_s_finished_tasks():
    assert estimate(250, 50.0, 1000, 0, 0, 0) == (0.25, 15.0)
    assert estimate(250, 50.0, None, 0, 0, 8) == (None, None)  # no task finished: no estimate
    share, eta = estimate(300, 100.0, None, 200, 2, 8)  # 100 rows a task, 8 tasks: 800 rows in
    assert (share, eta) == (300 / 800, 5.0)
    assert estimate(900, 0.0, None, 200, 2, 8) == (1.0, None)  # more scored than estimated: never past 100 %
    assert estimate(0, 0.0, 0, 0, 0, 0) == (1.0, 0.0)


LOADING = {"actors": 2, "actors_loading": 2}
SCORING = {"actors": 2, "actors_loaded": 2, "tasks_total": 8}


@pytest.mark.parametrize(
    ("look", "said"),
    [
        (Progress("starting", 4.0), "rayscore: 0:00:04 starting Ray and Spark"),
        (Progress("starting", 9.0, **LOADING), "rayscore: 0:00:09 starting Spark; model loading on 2 actors"),
        (
            Progress("starting", 12.0, actors=2, actors_loaded=1, actors_loading=1),
            "rayscore: 0:00:12 starting Spark; model loaded on 1 of 2 actors",
        ),
        (Progress("starting", 15.0, actors=2, actors_loaded=2), "rayscore: 0:00:15 starting Spark"),
        (Progress("read_convert", 16.0, **LOADING), "rayscore: 0:00:16 checking the input; model loading on 2 actors"),
        (Progress("read_convert", 21.0, actors=2, actors_loaded=2), "rayscore: 0:00:21 checking the input"),
        (Progress("loading", 22.0, **LOADING), "rayscore: 0:00:22 loading the model on 2 actors"),
        (Progress("loading", 22.0, actors=1, actors_loading=1), "rayscore: 0:00:22 loading the model on 1 actor"),
        (
            Progress("loading", 25.0, actors=2, actors_loaded=1, actors_restarted=1),
            "rayscore: 0:00:25 loading the model: 1 of 2 actors loaded; 1 restart",
        ),
        # the pool loaded while Spark started: the job waits for the scoring job, not for the model
        (Progress("loading", 22.0, actors=2, actors_loaded=2), "rayscore: 0:00:22 scoring; actors 2"),
        (Progress("predict", 23.0, tasks_done=0, **SCORING), "rayscore: 0:00:23 scoring; tasks 0/8; actors 2"),
        (
            Progress("predict", 26.0, rows_scored=1500, rows_per_second=500.0, **SCORING),
            "rayscore: 0:00:26 scoring: 1,500 rows; 500 rows/s; tasks 0/8; actors 2",
        ),
        (
            Progress(
                "predict",
                30.0,
                rows_scored=120_000,
                rows_per_second=9800.0,
                fraction=0.125,
                eta_seconds=70.4,
                tasks_done=3,
                **SCORING,
            ),
            "rayscore: 0:00:30 scoring: 120,000 rows (12%); 9.8k rows/s; ETA 0:01:10; tasks 3/8; actors 2",
        ),
        (
            Progress(
                "predict",
                75.0,
                rows_scored=12345,
                rows_total=50000,
                rows_per_second=2100.0,
                fraction=0.2469,
                eta_seconds=17.6,
                tasks_done=1,
                tasks_total=4,
                actors=2,
                actors_loaded=1,
                actors_loading=1,
                actors_restarted=3,
            ),
            "rayscore: 0:01:15 scoring: 12,345 rows of 50,000 (25%); 2.1k rows/s; ETA 0:00:17; tasks 1/4; "
            "actors 1/2; 3 restarts",
        ),
        (
            Progress("write", 121.0, rows_scored=1_000_000, batches_retried=1, **SCORING),
            "rayscore: 0:02:01 committing: 1,000,000 rows; 1 batch retried",
        ),
        (
            Progress(
                "done", 123.0, rows_scored=1_000_000, rows_total=1_000_000, fraction=1.0, eta_seconds=0.0, done=True
            ),
            "rayscore: 0:02:03 done: 1,000,000 rows",
        ),
        (
            Progress("done", 3.0, rows_scored=10, rows_total=10, fraction=1.0, rows_quarantined=2, done=True),
            "rayscore: 0:00:03 done: 10 rows; 2 quarantined",
        ),
    ],
)
def test_a_plain_line_says_what_the_job_waits_for_then_what_is_known_and_not_zero(look, said):
    assert line(look) == said
    assert describe(look) == said.split(" ", 2)[2]


BIG = [0, 1, 999, 10**4 - 1, 123_456_789, 10**12 + 1, 10**15]


@pytest.mark.parametrize("n", BIG)
@pytest.mark.parametrize("phase", ["starting", "read_convert", "loading", "predict", "write", "done"])
def test_a_plain_line_stays_within_120_characters_with_big_numbers_and_never_guesses(phase, n):
    p = Progress(
        phase,
        seconds=float(n % 10**7),
        rows_scored=n,
        rows_total=n * 3 if n % 2 else None,
        rows_per_second=n / 7,
        fraction=1 / 3 if n % 2 else None,
        eta_seconds=float(n) if n else None,
        tasks_done=n // 2,
        tasks_total=n,
        actors=n,
        actors_loaded=n // 2,
        actors_restarted=n,
        rows_quarantined=n,
        batches_retried=n,
        done=phase == "done",
    )
    text = line(p)
    assert len(text) <= 120, text
    assert "?" not in text and not re.search(r"(?<![\d./])0 (restart|quarantined|batch|rows/s)", text), text
    assert text.startswith(f"rayscore: {p.seconds // 3600:.0f}:") and PROGRESS_LINE.match(text), text
    if n:  # what goes wrong is never left out, even when the tasks and the actors are
        assert re.search(r"restarts?; \S+ quarantined; \S+ (retry|retries|batch retried|batches retried)$", text), text


def test_a_long_line_shortens_its_numbers_then_leaves_out_the_actors_the_tasks_then_the_eta():
    p = Progress(
        "predict",
        3600.0,
        rows_scored=1_345_678_901,
        rows_total=5_678_901_234,
        fraction=0.237,
        rows_per_second=123_456.0,
        eta_seconds=36000.0,
        tasks_done=2345,
        tasks_total=10000,
        actors=100,
        actors_loaded=100,
        actors_restarted=3,
        rows_quarantined=5678,
        batches_retried=12,
    )
    assert line(p) == (
        "rayscore: 1:00:00 scoring: 1.3G rows (24%); 123k rows/s; ETA 10:00:00; "
        "3 restarts; 5.7k quarantined; 12 retries"
    )
    assert line(replace(p, rows_quarantined=0, batches_retried=0)) == (
        "rayscore: 1:00:00 scoring: 1.3G rows (24%); 123k rows/s; ETA 10:00:00; tasks 2.3k/10.0k; actors 100; "
        "3 restarts"
    )


def test_plain_lines_come_on_news_at_once_new_figures_every_10_s_or_5_percent_the_same_once_a_minute():
    out = io.StringIO()
    lines = Lines(out)
    looks = [
        Progress("starting", 1.0),  # the first look
        Progress("starting", 5.0),  # the same: no line
        Progress("starting", 6.0, **LOADING),  # Ray is up: waits for Spark only, at once
        Progress("starting", 9.0, actors=2, actors_loaded=1),  # new figures, 3 s later: no line
        Progress("starting", 16.0, actors=2, actors_loaded=1),  # 10 s later
        Progress("starting", 70.0, actors=2, actors_loaded=1),  # the same, 54 s later: no line
        Progress("starting", 76.5, actors=2, actors_loaded=1),  # the same, a minute later
        Progress("read_convert", 77.0, actors=2, actors_loaded=2),  # a new phase
        Progress("loading", 80.0, actors=2, actors_loaded=2),  # the pool loaded already: "scoring", at once
        Progress("predict", 81.0, rows_scored=10, fraction=0.01, **SCORING),  # also "scoring": 1 s later, no line
        Progress("predict", 82.0, rows_scored=20, fraction=0.03, **SCORING),  # +2 %: no line
        Progress("predict", 83.0, rows_scored=70, fraction=0.07, **SCORING),  # +6 % since the last line
        Progress("predict", 93.5, rows_scored=80, fraction=0.08, **SCORING),  # 10.5 s
        Progress("predict", 94.0, rows_scored=90, fraction=0.09, **SCORING),
        Progress("write", 95.0, rows_scored=100, **SCORING),  # a new phase
        Progress("done", 95.5, rows_scored=100, rows_total=100, fraction=1.0, done=True),
    ]
    for p in looks:
        lines(p)
    assert out.getvalue().splitlines() == [
        "rayscore: 0:00:01 starting Ray and Spark",
        "rayscore: 0:00:06 starting Spark; model loading on 2 actors",
        "rayscore: 0:00:16 starting Spark; model loaded on 1 of 2 actors",
        "rayscore: 0:01:16 starting Spark; model loaded on 1 of 2 actors",
        "rayscore: 0:01:17 checking the input",
        "rayscore: 0:01:20 scoring; actors 2",
        "rayscore: 0:01:23 scoring: 70 rows (7%); tasks 0/8; actors 2",
        "rayscore: 0:01:33 scoring: 80 rows (8%); tasks 0/8; actors 2",
        "rayscore: 0:01:35 committing: 100 rows",
        "rayscore: 0:01:35 done: 100 rows",
    ]
    assert all(PROGRESS_LINE.match(text) for text in out.getvalue().splitlines())


def test_the_display_keeps_every_figure_in_place():
    from rich.console import Console

    out = io.StringIO()
    display = Display(Console(file=out, force_terminal=True, width=200))
    display(Progress("predict", 5.0, rows_scored=10, actors=2, actors_loaded=2, tasks_total=8))
    display(Progress("done", 6.0, rows_scored=10, rows_total=10, fraction=1.0, done=True, actors=2, actors_loaded=2))
    shown = out.getvalue()  # the last look stays on the terminal
    assert "done" in shown and "10 rows of 10" in shown
    assert "actors 2 loaded, 0 loading, 0 restarted (of 2); quarantined 0, batches retried 0" in shown


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


def test_the_tracker_drops_a_look_taken_before_the_phase_changed():
    seen: list[Progress] = []
    tracker = Tracker([seen.append], poll_s=None)
    tracker.phase("write")
    tracker._send(Progress("predict", 1.0, rows_scored=10))  # the poll's look, taken just before
    assert [p.phase for p in seen] == ["write"]
    tracker.close()


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
