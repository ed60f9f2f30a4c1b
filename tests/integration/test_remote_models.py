"""Models on an S3-protocol server (moto, on loopback): fetched once per node, verified, reused.

The same code path users take: ``model.uri: s3://…`` with
``model.storage_options``, through ``rayscore.run`` and the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from make_example import build_model, features_of

import rayscore

from .conftest import ROWS, VOCAB, assert_matches_model, read_parquet_dir

pytestmark = pytest.mark.integration


def job(workload: dict, out: Path, uri: str, options: dict, cache: Path) -> dict:
    return {
        "input": {"format": "parquet", "path": workload["data"]},
        "model": {"uri": uri, "storage_options": options, "cache_dir": str(cache)},
        "predict": {"batch_size": 1000, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }


def test_an_s3_model_is_copied_once_per_node_reused_and_fetched_again_when_it_changes(
    rs, workload, s3, tmp_path, monkeypatch
):
    uri = s3.upload(workload["keras"], "s3://models/ctr/ctr.keras")
    monkeypatch.setenv("RAYSCORE_TEST_S3_SECRET", s3.secret)
    options = s3.options(secret_key="${RAYSCORE_TEST_S3_SECRET}")  # the secret from the environment
    cache = tmp_path / "cache"

    first = rayscore.run(job(workload, tmp_path / "one", uri, options, cache), session=rs)
    assert_matches_model(read_parquet_dir(tmp_path / "one"), workload)
    assert (first.model_loads, first.model_copies) == (2, 1)  # 2 actors, 1 node: one copy
    assert first.model_fingerprint == rayscore._model.fingerprint(workload["keras"])
    assert first.model_uri == uri and first.model_format == "keras"
    assert first.model_bytes == Path(workload["keras"]).stat().st_size
    report = (tmp_path / "one" / "_rayscore_report.json").read_text()
    assert s3.secret not in report and s3.key not in report
    entry = f"{first.model_fingerprint[7:23]}-ctr.keras"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [entry, entry + ".ok"]

    again = rayscore.run(job(workload, tmp_path / "two", uri, options, cache), session=rs)
    assert (again.model_loads, again.model_copies) == (2, 0)  # the node's copy still matches
    assert again.model_fingerprint == first.model_fingerprint

    retrained = build_model(vocab=VOCAB, dim=8, seed=99)
    retrained.save(tmp_path / "ctr.keras")
    s3.upload(tmp_path / "ctr.keras", uri)
    changed = rayscore.run(job(workload, tmp_path / "three", uri, options, cache), session=rs)
    assert changed.model_copies == 1 and changed.model_fingerprint != first.model_fingerprint
    expected = retrained.predict(features_of(workload["table"]), batch_size=2048, verbose=0)
    assert_matches_model(
        read_parquet_dir(tmp_path / "three"),
        {**workload, "click": np.asarray(expected["click"])[:, 0], "topics": np.asarray(expected["topics"])},
    )
    assert len([p for p in cache.iterdir() if p.name.endswith("-ctr.keras")]) == 1  # the old copy is gone


def test_a_savedmodel_directory_on_s3_is_scored(rs, workload, s3, tmp_path):
    import keras

    exported = tmp_path / "exported"
    keras.saving.load_model(workload["keras"]).export(str(exported), verbose=False)
    uri = s3.upload(exported, "s3://models/ctr_saved")
    cfg = job(workload, tmp_path / "out", uri, s3.options(), tmp_path / "cache")
    result = rayscore.run(cfg, session=rs)
    assert result.model_format == "savedmodel" and result.model_copies == 1
    assert result.model_fingerprint == rayscore._model.fingerprint(str(exported))
    assert_matches_model(read_parquet_dir(tmp_path / "out"), workload)


def cli(config: dict, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``rayscore run`` with ``TMPDIR`` (where its log file goes) in ``tmp_path``; Ray's own files stay in /tmp."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "rayscore", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path), "RAY_TMPDIR": "/tmp", **env},
    )


def test_the_cli_keeps_storage_secrets_out_of_its_output_report_and_log_file(workload, s3, tmp_path):
    """The secret reaches the actors (the model is fetched with it) but no file or stream that is kept."""
    uri = s3.upload(workload["keras"], "s3://models/ctr/ctr.keras")
    options = s3.options(secret_key="${RAYSCORE_TEST_S3_SECRET}")
    out = tmp_path / "out"
    done = cli(job(workload, out, uri, options, tmp_path / "cache"), tmp_path, RAYSCORE_TEST_S3_SECRET=s3.secret)
    assert done.returncode == 0, done.stderr
    assert_matches_model(read_parquet_dir(out), workload)
    [log] = (tmp_path / "rayscore-logs").iterdir()
    text = log.read_text(errors="replace")
    assert "NativeCodeLoader" in text  # Spark's JVM's lines are there: what is scanned covers them
    kept = {"stdout": done.stdout, "stderr": done.stderr, "log": text}
    kept.update({p.name: p.read_text() for p in out.iterdir() if p.suffix in (".json", ".html")})
    assert {"_rayscore_report.json", "_rayscore_report.html"} <= set(kept)  # the report and its page are scanned
    for name, content in kept.items():
        assert s3.secret not in content, name
        assert s3.key not in content, name


def ray_sessions() -> set[str]:
    """Ray's session directories on this machine: each Ray that starts makes one (``/tmp/ray/session_<time>``)."""
    return {p.name for p in Path("/tmp/ray").glob("session_2*")}


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "unreachable",
            r"^rayscore: error: model.uri: cannot reach the storage for s3://models/ctr/ctr.keras "
            r"\(check model.storage_options.endpoint_override and the network\): .*NETWORK_CONNECTION",
        ),
        (
            "wrong_secret",
            r"^rayscore: error: model.uri: access to s3://models/ctr/ctr.keras was denied: check the credentials "
            r"\(model.storage_options or the environment\): .*ACCESS_DENIED",
        ),
        ("missing", r"^rayscore: error: model.uri: no model at s3://models/ctr/missing.keras$"),
        (
            "bad_option",
            r"^rayscore: error: model.storage_options.endpoint_overide: not an option of pyarrow.fs.S3FileSystem$",
        ),
    ],
)
def test_storage_problems_are_one_line_exit_2_before_any_cluster(workload, s3, tmp_path, case, expected):
    s3.upload(workload["keras"], "s3://models/ctr/ctr.keras")
    uri, options = "s3://models/ctr/ctr.keras", s3.options()
    if case == "unreachable":
        options = s3.options(endpoint_override="http://127.0.0.1:9")  # discard port: nothing listens
    elif case == "wrong_secret":
        options = s3.options(secret_key="not-the-secret")
    elif case == "missing":
        uri = "s3://models/ctr/missing.keras"
    elif case == "bad_option":
        options = {**s3.options(), "endpoint_overide": "typo"}
    out = tmp_path / "out"
    sessions_before = ray_sessions()
    done = cli(job(workload, out, uri, options, tmp_path / "cache"), tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, lines
    assert re.search(expected, lines[0]), lines[0]
    assert s3.secret not in done.stderr + done.stdout
    assert "not-the-secret" not in done.stderr + done.stdout
    assert not out.exists()  # nothing written
    assert ray_sessions() == sessions_before  # failed before any Ray started: Ray made no session directory


def test_the_model_identity_is_in_the_output_files_metadata(rs, workload, tmp_path):
    out = tmp_path / "scored"
    cfg = {
        "input": {"format": "parquet", "path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"actors": 1},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }
    result = rayscore.run(cfg, session=rs)
    schema = rs.spark.read.parquet(str(out)).schema
    for column in ("click", "topics"):
        identity = schema[column].metadata["rayscore"]
        assert identity == {
            "model_uri": workload["keras"],
            "model_format": "keras",
            "model_bytes": result.model_bytes,
            "model_fingerprint": result.model_fingerprint,
            "model_output": column,
        }
    assert "rayscore" not in schema["id"].metadata
    meta = json.loads(schema.json())
    assert meta["fields"][0]["name"] == "id"
    assert len(read_parquet_dir(out)) == ROWS
