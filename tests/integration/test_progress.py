"""Progress while a job runs, and the run report's page, on real jobs.

Off a terminal ``rayscore run`` prints plain progress lines on stderr; on one
(a pseudo-terminal here) a live ``rich`` display; from Python a function
gets the same figures. The page committed beside the JSON report is opened
in a real headless Chromium: it must draw (a screenshot that is not blank)
and hold the job's figures in its DOM.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rayscore

from .conftest import PROGRESS_LINE, ROWS, assert_matches_model, read_parquet_dir
from .test_cli_e2e import config_for, rayscore_cli

pytestmark = pytest.mark.integration

# What a plain line can say the job waits for, in the order a job goes through them
HEADS = ["starting Ray and Spark", "starting Spark", "checking the input", "loading the model", "scoring", "committing"]
HEADS += ["done"]
ZERO = re.compile(r"(?<![\d,./])0 (rows?|rows/s|restarts?|quarantined|batch|batches|retry|retries|actors?)\b")


def seconds(clock: str) -> int:
    hours, minutes, secs = map(int, clock.split(":"))
    return hours * 3600 + minutes * 60 + secs


def chromium() -> str:
    """The headless browser; CI installs it (``.ci/run``), elsewhere a missing one skips the page's check."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium on PATH to open the report's page (apt-get install chromium)")
    return found


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", *args]
    return subprocess.run([*cmd, page.as_uri()], capture_output=True, text=True, timeout=120)


def assert_page_draws(page: Path, report: dict, folder: Path) -> None:
    """The page, opened offline in Chromium, draws a chart and shows the job's figures and one lane per actor."""
    from PIL import Image

    dom = browse(page, "--dump-dom").stdout
    assert 'class="main-svg"' in dom  # plotly drew the chart (its script ran, from the page itself)
    assert f"<td>{report['rows_in']:,}</td>" in dom
    for actor in {a["name"].rsplit("-", 1)[-1] for a in report["timeline"]["actors"]}:
        assert f"actor {actor} · node" in dom
    shot = folder / "page.png"
    browse(page, f"--screenshot={shot}", "--window-size=1200,1000")
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"


def test_off_a_terminal_progress_is_short_plain_lines_that_say_what_the_job_waits_for_and_the_page_draws(
    workload, tmp_path
):
    out = tmp_path / "scores.parquet"
    done = rayscore_cli(config_for(workload, out), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert all(PROGRESS_LINE.match(line) for line in lines), lines  # nothing else: Ray's lines are in the log
    assert all(len(line) <= 120 and "?" not in line and not ZERO.search(line) for line in lines), lines
    heads = [next(h for h in HEADS if line.split(" ", 2)[2].startswith(h)) for line in lines]
    order = [head for head, _ in itertools.groupby(heads)]
    assert order == sorted(set(order), key=HEADS.index), lines  # each phase once, in the job's order
    assert {"checking the input", "scoring", "committing", "done"} <= set(order), lines
    starting = [line for line, head in zip(lines, heads) if head.startswith("starting")]
    assert any("; model load" in line for line in starting), lines  # the pool loads while Spark starts
    stamped = [line.split(" ", 2)[1:] for line in lines]  # [clock, what it says]
    for (at, text), (then, again) in zip(stamped, stamped[1:]):
        assert text != again or seconds(then) - seconds(at) >= 60, lines  # the same at most once a minute
    rows = [int(m.group(1).replace(",", "")) for m in map(PROGRESS_LINE.match, lines) if m.group(1)]
    assert rows == sorted(rows) and rows[-1] == ROWS  # monotone, ending at the rows in
    assert lines[-1].split(" ", 2)[2] == f"done: {ROWS:,} rows", lines
    assert done.stdout.startswith(f"rayscore: scored {ROWS} rows -> {ROWS} rows")

    report = json.loads((out / "_rayscore_report.json").read_text())
    timeline = report["timeline"]
    assert sum(sum(r) for r in timeline["rows"].values()) == ROWS  # every row in some actor's buckets
    assert {s["name"] for s in timeline["stages"]} >= {"startup", "read_convert", "predict"}  # written at "write"
    assert len(timeline["actors"]) == report["model_loads"] == 2
    assert all(a["started"] < a["loaded"] for a in timeline["actors"])
    assert_page_draws(out / "_rayscore_report.html", report, tmp_path)
    assert_matches_model(read_parquet_dir(out), workload)


def test_on_a_terminal_progress_is_a_live_display(workload, tmp_path):
    """Under a pseudo-terminal, as a user's shell runs it: a rich display redrawn in place, then the summary."""
    import pexpect

    out = tmp_path / "scores.parquet"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config_for(workload, out)))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "rayscore", "run", "job.yaml"],
        cwd=str(tmp_path),
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"},
        dimensions=(40, 160),
        encoding="utf-8",
        timeout=600,
    )
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0, screen
    assert "\x1b[?25l" in screen  # the display hid the cursor: drawn live, in place
    assert "━" in screen and "rows/s" in screen and "scoring" in screen  # the bar and its figures
    assert f"{ROWS:,} rows of {ROWS:,}" in screen
    assert not any(PROGRESS_LINE.match(line) for line in screen.splitlines())  # no plain lines on a terminal
    assert f"rayscore: scored {ROWS} rows -> {ROWS} rows" in screen
    assert_matches_model(read_parquet_dir(out), workload)


def test_the_python_api_gives_a_function_the_same_figures(rs, workload, tmp_path):
    seen: list[rayscore.Progress] = []
    out = tmp_path / "scores.parquet"
    result = rayscore.run(config_for(workload, out), session=rs, progress=seen.append)
    assert result.rows_out == ROWS
    assert [p.phase for p in seen][-1] == "done" and seen[-1].done
    assert [p for p in dict.fromkeys(p.phase for p in seen)][-3:] == ["predict", "write", "done"]
    rows = [p.rows_scored for p in seen]
    assert rows == sorted(rows) and rows[-1] == seen[-1].rows_total == ROWS
    assert max(p.actors_loaded for p in seen) == 2 and all(p.actors == 2 for p in seen if p.phase == "predict")
    assert seen[-1].batches_retried == 0 and seen[-1].rows_quarantined == 0
    assert_matches_model(read_parquet_dir(out), workload)


def test_ctrl_c_on_a_terminal_stops_everything_under_the_live_display(workload, tmp_path):
    """Ctrl-C typed at the terminal (the pty's interrupt character, to its foreground group) while the display
    shows the scoring: exit 130 within the bound the CLI has without a display, nothing written, nothing left."""
    import pexpect

    from .conftest import processes_of_session

    out = tmp_path / "scores.parquet"
    cfg = config_for(workload, out, predict={"batch_size": 50, "actors": 2})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    child = pexpect.spawn(
        sys.executable,
        ["-m", "rayscore", "run", "job.yaml"],
        cwd=str(tmp_path),
        env={**os.environ, "TERM": "xterm-256color"},
        dimensions=(40, 160),
        encoding="utf-8",
        timeout=300,
    )
    try:
        child.expect("scoring")
        child.sendintr()
        child.expect(pexpect.EOF, timeout=60)  # the bound of the CLI's signal tests
        child.close()
        assert child.exitstatus == 130, child.before
        assert "rayscore: interrupted; stopped the actors, Spark and Ray it had started" in child.before
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
        assert processes_of_session(child.pid, timeout=60) == []
    finally:
        for left in processes_of_session(child.pid, timeout=0):
            left.kill()
