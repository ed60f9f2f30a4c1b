"""Other programs' output goes to the log file: what starts while it is diverted keeps it, the script's own does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayscore import _logs

# Started inside the block, it writes only once the test closes its stdin, after the block.
CHILD = "import sys; sys.stdin.read(); print('child out', flush=True); sys.stderr.write('child err\\n')"


@pytest.fixture
def log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run.log"
    monkeypatch.setattr(_logs, "_path", path)
    return path


def child_inside(verbose: bool) -> None:
    with _logs.others_to_log(verbose):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
        os.write(2, b"native, inside\n")  # as Ray's C++ client writes, in this process
    print("ours, after", flush=True)
    child.communicate(b"", timeout=60)


def test_a_process_started_while_diverted_writes_to_the_log_for_good(log_file, capfd) -> None:
    child_inside(verbose=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("ours, after\n", "")
    assert log_file.read_text() == "native, inside\nchild out\nchild err\n"
    assert _logs.diverted() == log_file


def test_verbose_leaves_everything_on_the_terminal(log_file, capfd) -> None:
    child_inside(verbose=True)
    out, err = capfd.readouterr()
    assert (out, err) == ("ours, after\nchild out\n", "native, inside\nchild err\n")
    assert not log_file.exists()
