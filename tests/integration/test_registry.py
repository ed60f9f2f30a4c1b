"""Models from a real MLflow tracking server on loopback: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``,
``runs:/RUN_ID/PATH``, registered through MLflow's own API and scored through the same path as any model."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rayscore

from .conftest import ROWS, assert_matches_model, read_parquet_dir

pytestmark = pytest.mark.integration

NAME = "ctr-registry"


@pytest.fixture(scope="module")
def registered(mlflow_server, workload, tmp_path_factory):
    """Two versions of the workload's model (the second under the alias ``champion``), and a run whose
    only artifact is a text file."""
    import mlflow

    v1, run1 = mlflow_server.register(workload["keras"], NAME)
    v2, run2 = mlflow_server.register(workload["keras"], NAME, alias="champion")
    mlflow.set_tracking_uri(mlflow_server.uri)
    with mlflow.start_run() as notes:
        mlflow.log_text("no model here", "notes/readme.txt")
    return {"v1": v1, "run1": run1, "v2": v2, "run2": run2, "notes": notes.info.run_id}


def job(workload: dict, out: Path, uri: str, tracking_uri: str, cache: Path) -> dict:
    return {
        "input": {"path": workload["data"]},
        "model": {"uri": uri, "tracking_uri": tracking_uri, "cache_dir": str(cache)},
        "predict": {"batch_size": 1000, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }


def cached(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.exists() else []


def test_an_alias_is_pinned_to_its_version_scored_and_named_in_the_report_and_the_columns(
    rs, workload, mlflow_server, registered, tmp_path
):
    cache, out = tmp_path / "cache", tmp_path / "by-alias.parquet"
    result = rayscore.run(job(workload, out, f"models:/{NAME}@champion", mlflow_server.uri, cache), session=rs)
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    v2 = registered["v2"]
    identity = result.model_registry
    assert identity.pop("source").startswith("models:/")  # MLflow 3's logged model the version points at
    assert identity == {
        "uri": f"models:/{NAME}@champion",
        "pinned": f"models:/{NAME}/{v2}",
        "tracking_uri": mlflow_server.uri,
        "name": NAME,
        "version": v2,
        "alias": "champion",
        "run_id": registered["run2"],
    }
    assert result.model_uri == f"models:/{NAME}@champion" and result.model_format == "keras"
    assert_matches_model(read_parquet_dir(out), workload)
    column = rs.spark.read.parquet(str(out)).schema["click"].metadata["rayscore"]
    assert column["model_registry"]["version"] == v2 and column["model_uri"] == f"models:/{NAME}/{v2}"
    # The driver downloaded it once into this node's cache; both actors loaded that copy.
    assert cached(cache) == [f"mlflow-{NAME}-v{v2}", f"mlflow-{NAME}-v{v2}.ok"]
    assert result.model_copies == 1 and result.model_loads == 2
    before = (cache / f"mlflow-{NAME}-v{v2}").stat()

    again = rayscore.run(
        job(workload, tmp_path / "by-version.parquet", f"models:/{NAME}/{v2}", mlflow_server.uri, cache), session=rs
    )
    assert again.model_copies == 0  # the same version: the node's copy is reused, not downloaded again
    after = (cache / f"mlflow-{NAME}-v{v2}").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert_matches_model(read_parquet_dir(tmp_path / "by-version.parquet"), workload)


def test_a_run_s_artifact_scores_with_its_run_named(rs, workload, mlflow_server, registered, tmp_path):
    out = tmp_path / "by-run.parquet"
    uri = f"runs:/{registered['run1']}/model"
    result = rayscore.run(job(workload, out, uri, mlflow_server.uri, tmp_path / "cache"), session=rs, progress=False)
    assert result.model_registry == {
        "uri": uri,
        "pinned": uri,
        "tracking_uri": mlflow_server.uri,
        "run_id": registered["run1"],
        "source": uri,
    }
    assert_matches_model(read_parquet_dir(out), workload)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


BAD = {
    "unknown name": ("models:/no-such-model/1", None, r"models:/no-such-model/1: no registered model 'no-such-model'"),
    "unknown version": (
        f"models:/{NAME}/99",
        None,
        rf"models:/{NAME}/99: model '{NAME}' has no version 99 \(versions: ",
    ),
    "unknown alias": (f"models:/{NAME}@staging", None, rf"model '{NAME}' has no alias 'staging' \(aliases: champion\)"),
    "unreachable server": (f"models:/{NAME}/1", "closed", r"cannot reach the MLflow tracking server at http://127"),
    "unknown run": ("runs:/0123456789abcdef/model", None, r"no run '0123456789abcdef' in the MLflow registry"),
    "run without that path": ("runs:/{run1}/no-such-path", None, r"has no artifact 'no-such-path' \(it has: model"),
    "no model in the artifact": (
        "runs:/{notes}/notes",
        None,
        r"holds no Keras or TensorFlow model \(a \.keras or \.h5 file, or a SavedModel directory\); it holds: "
        r"notes/readme\.txt",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_registry_uri_is_one_line_exit_2_before_anything_starts(
    workload, mlflow_server, registered, tmp_path, case
):
    import re

    uri, server, expected = BAD[case]
    uri = uri.format(**registered)
    tracking = f"http://127.0.0.1:{closed_port()}" if server == "closed" else mlflow_server.uri
    out = tmp_path / "out"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job(workload, out, uri, tracking, tmp_path / "cache")))
    done = subprocess.run(
        [sys.executable, "-m", "rayscore", "run", "job.yaml"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path), "RAY_TMPDIR": str(tmp_path / "ray")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("rayscore: error: model.") and re.search(expected, line), line
    assert not out.exists() and not (tmp_path / "ray").exists()  # nothing written, no Ray (so no actor) started


def test_without_mlflow_a_registry_uri_names_the_extra_to_install(workload, tmp_path):
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(job(workload, tmp_path / "out", f"models:/{NAME}/1", "http://127.0.0.1:1", tmp_path / "c"))
    )
    code = (
        "import sys; sys.modules['mlflow'] = None; from rayscore._cli import main; sys.exit(main(['run', 'job.yaml']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == (
        'rayscore: error: model.uri: models:/ and runs:/ uris need MLflow: pip install "rayscore[mlflow]"\n'
    )


def test_an_alias_moved_after_the_job_started_changes_nothing_an_actor_loads(mlflow_server, registered, tmp_path):
    """The driver pins the alias to its version when the job starts; an actor that loads later (on another
    node, or restarted) downloads that version even after the alias has moved on."""
    import mlflow

    from rayscore._config import ModelConfig
    from rayscore._predict import local_copy

    v1, v2 = registered["v1"], registered["v2"]
    cfg = ModelConfig(uri=f"models:/{NAME}@champion", tracking_uri=mlflow_server.uri, cache_dir=str(tmp_path / "a"))
    ref, _ = rayscore.inspect_model(cfg)  # the job starts: champion is v2
    client = mlflow.MlflowClient(mlflow_server.uri)
    client.set_registered_model_alias(NAME, "champion", v1)
    try:
        on_another_node = dataclasses.replace(ref, cache_dir=str(tmp_path / "b"))  # its own cache: it downloads
        path, copied = local_copy(on_another_node)
        assert copied and Path(path).is_relative_to(tmp_path / "b" / f"mlflow-{NAME}-v{v2}")
        assert ref.registry.version == v2 and ref.path == f"models:/{NAME}/{v2}"
    finally:
        client.set_registered_model_alias(NAME, "champion", v2)
