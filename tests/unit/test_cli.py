"""The ``rayscore`` command, run as a subprocess, on errors raised before any cluster starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

TIMEOUT = 60


def rayscore(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rayscore", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


RAY_NAMES = ("raylet", "gcs_server", "plasma_store", "dashboard", "java")


def _is_ray(proc: psutil.Process) -> bool:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False
    return any(n in name for n in RAY_NAMES) or "ray/core" in cmd or "raydp" in cmd or "pyspark" in cmd


def rayscore_watched(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the CLI and report every Ray/Spark process it started (children, or tagged by env).

    Other sessions may run Ray on this machine, so only processes that descend
    from this run, or carry its marker in their environment, count.
    """
    marker = uuid.uuid4().hex
    env = {**os.environ, "RAYSCORE_UNIT_TEST_MARKER": marker}
    seen: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "rayscore", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as popen:
        parent = psutil.Process(popen.pid)
        deadline = time.monotonic() + TIMEOUT
        while popen.poll() is None and time.monotonic() < deadline:
            try:
                children = parent.children(recursive=True)
            except psutil.Error:
                children = []
            seen.extend(f"{c.pid}:{c.name()}" for c in children if _is_ray(c))
            time.sleep(0.02)
        if popen.poll() is None:
            popen.kill()
        stdout, stderr = popen.communicate(timeout=TIMEOUT)
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAYSCORE_UNIT_TEST_MARKER") == marker:
                seen.append(f"{proc.pid}:{proc.name()}")
        except (psutil.Error, OSError):
            continue
    result = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    return result, sorted(set(seen))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def base_config(model: str | Path = "m.keras", output: str | Path = "out") -> dict[str, Any]:
    return {
        "input": {"path": "in.parquet"},
        "model": {"uri": str(model)},
        "output": {"path": str(output)},
    }


def assert_user_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout, exactly one 'rayscore: error: ' line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rayscore: error: ")
    return lines[0]


# --------------------------------------------------------------------------- basics


def test_help(tmp_path: Path) -> None:
    result = rayscore("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: rayscore")
    assert "run" in result.stdout
    assert result.stderr == ""


def test_run_help(tmp_path: Path) -> None:
    result = rayscore("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: rayscore run")
    assert "--json" in result.stdout
    assert "config" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = rayscore("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == "rayscore 0.1.0\n"


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = rayscore(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: rayscore" in result.stderr


def test_run_without_config_is_a_usage_error(tmp_path: Path) -> None:
    result = rayscore("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: rayscore run" in result.stderr


# --------------------------------------------------------------------------- user errors


def test_bad_config_value(tmp_path: Path) -> None:
    data = base_config()
    data["predict"] = {"actors": 0}
    config = write_config(tmp_path / "job.yaml", data)
    result, started_procs = rayscore_watched("run", str(config), cwd=tmp_path)
    line = assert_user_error(result)
    assert line == "rayscore: error: predict.actors must be >= 1, got 0"
    assert "predict.actors" in line
    assert started_procs == []


def test_unknown_config_key(tmp_path: Path) -> None:
    data = base_config()
    data["output"]["keep_column"] = ["id"]
    config = write_config(tmp_path / "job.yaml", data)
    line = assert_user_error(rayscore("run", str(config), cwd=tmp_path))
    assert "output.keep_column is not a known key (did you mean keep_columns?)" in line


def test_config_file_missing(tmp_path: Path) -> None:
    line = assert_user_error(rayscore("run", "nope.yaml", cwd=tmp_path))
    assert line == "rayscore: error: config file 'nope.yaml' does not exist"


def test_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("input:\n  path: x\n   bad: 1\n")
    line = assert_user_error(rayscore("run", "bad.yaml", cwd=tmp_path))
    assert line.startswith("rayscore: error: config file 'bad.yaml' is not valid YAML at line 3: ")


def test_a_key_given_twice(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("input: {path: in.parquet}\npredict:\n  actors: 2\n  actors: 4\n")
    result, started_procs = rayscore_watched("run", "job.yaml", cwd=tmp_path)
    line = assert_user_error(result)
    assert line == "rayscore: error: config file 'job.yaml': predict.actors is given twice (lines 3 and 4); say it once"
    assert started_procs == []


def test_missing_model_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "job.yaml", base_config(model="models/missing.keras", output="out"))
    result, started_procs = rayscore_watched("run", str(config), cwd=tmp_path)
    line = assert_user_error(result)
    assert "no model at" in line
    assert line == f"rayscore: error: model.uri: no model at {tmp_path.resolve() / 'models' / 'missing.keras'}"
    assert not (tmp_path / "out").exists()
    assert started_procs == []


def test_bad_model_file(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    config = write_config(tmp_path / "job.yaml", base_config(model="m.keras"))
    line = assert_user_error(rayscore("run", str(config), cwd=tmp_path))
    assert line == f"rayscore: error: model {tmp_path.resolve() / 'm.keras'} is not a .keras archive"
    assert not (tmp_path / "out").exists()


def _bad_model(kind: str, folder: Path, model_files: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    """A broken model of the given kind, and the model section that points at it."""
    if kind == "empty":
        path = folder / "m.keras"
        path.write_bytes(b"")
    elif kind in ("truncated keras", "truncated h5"):
        source = model_files["keras" if kind.endswith("keras") else "h5"]
        path = folder / source.name
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "keras that is h5":
        path = folder / "m.keras"
        path.write_bytes(model_files["h5"].read_bytes())
    elif kind == "unknown signature":
        from conftest import EXAMPLES  # noqa: PLC0415

        sys.path.insert(0, str(EXAMPLES))
        from make_big_model import write_savedmodel  # noqa: PLC0415

        path = write_savedmodel(folder / "scorer", vocab=16)
        return path, {"uri": str(path), "signature": "predict"}
    elif kind == "directory not a savedmodel":
        path = folder / "exported"
        (path / "variables").mkdir(parents=True)
        (path / "notes.txt").write_text("not a model")
        return path, {"uri": str(path), "format": "savedmodel"}
    return path, {"uri": str(path)}


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("empty", "model {path} is not a .keras archive"),
        ("truncated keras", "model {path} is not a .keras archive"),
        ("truncated h5", "model {path} cannot be read: "),
        (
            "keras that is h5",
            "model {path} is not a .keras archive (it is an HDF5 file: use format: h5 or the .h5 suffix)",
        ),
        ("directory not a savedmodel", "model {path} is a directory without saved_model.pb, not a SavedModel"),
        ("unknown signature", "model.signature: 'predict' is not a signature of {path} (signatures: serving_default)"),
    ],
)
def test_a_broken_model_is_one_line_exit_2_before_any_cluster_and_nothing_written(
    tmp_path, model_files, kind, expected
):
    path, model = _bad_model(kind, tmp_path, model_files)
    config = write_config(tmp_path / "job.yaml", {**base_config(output="out"), "model": model})
    result, started_procs = rayscore_watched("run", str(config), cwd=tmp_path)
    line = assert_user_error(result)
    assert line.startswith("rayscore: error: " + expected.format(path=path.resolve())), line
    assert not (tmp_path / "out").exists()
    assert started_procs == []


def test_output_path_is_a_file(tmp_path: Path, model_files) -> None:
    target = tmp_path / "scores.parquet"
    target.write_text("I am a plain file")
    config = write_config(tmp_path / "job.yaml", base_config(model=model_files["keras"], output="scores.parquet"))
    result, started_procs = rayscore_watched("run", str(config), cwd=tmp_path)
    line = assert_user_error(result)
    assert "is a file" in line
    assert line == f"rayscore: error: output.path: {tmp_path.resolve() / 'scores.parquet'} is a file, not a directory"
    assert target.read_text() == "I am a plain file"
    assert started_procs == []


def test_output_exists_with_mode_error(tmp_path: Path, model_files) -> None:
    (tmp_path / "scores").mkdir()
    config = write_config(tmp_path / "job.yaml", base_config(model=model_files["keras"], output="scores"))
    line = assert_user_error(rayscore("run", str(config), cwd=tmp_path))
    assert line == (
        f"rayscore: error: output.path: {tmp_path.resolve() / 'scores'} exists "
        "(set output.mode: overwrite to replace it)"
    )


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_errors_are_the_same_with_json(tmp_path: Path, flag: list[str]) -> None:
    data = base_config()
    data["predict"] = {"batch_size": 0}
    config = write_config(tmp_path / "job.yaml", data)
    line = assert_user_error(rayscore("run", str(config), *flag, cwd=tmp_path))
    assert line == "rayscore: error: predict.batch_size must be >= 1, got 0"
