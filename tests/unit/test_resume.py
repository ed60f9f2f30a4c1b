"""Resume's manifest, without a cluster: what identifies a job's input, and what a changed job is refused for."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayscore import OutputError
from rayscore._config import load_config
from rayscore._convert import Binding, Plan
from rayscore._resume import _check_manifest, _manifest
from rayscore._source import InputFiles


class FakeFrame:
    """The one thing the manifest reads of a DataFrame: its schema's JSON."""

    def __init__(self, schema: str) -> None:
        self.schema = type("Schema", (), {"json": lambda _self: schema})()


FILES = InputFiles((("file:/data/part-0.parquet", 1024, 1_700_000_000_000),))


PLAN = Plan(bindings=(Binding("x", "x", (3,), "float32"),), outputs=(("click", "click"),), keep_columns=("id",))


def config(tmp_path: Path, **output):
    return load_config(
        {
            "input": {"path": str(tmp_path / "in")},
            "model": {"uri": "m.keras"},
            "output": {"path": str(tmp_path / "out"), "mode": "resume", "key_columns": ["id"], **output},
        }
    )


def test_the_same_job_gives_the_same_manifest_and_is_accepted(tmp_path: Path) -> None:
    frame = FakeFrame('{"fields": []}')
    first = _manifest(config(tmp_path), frame, FILES, "sha256:aa", PLAN)
    assert first == _manifest(config(tmp_path), frame, FILES, "sha256:aa", PLAN)
    _check_manifest(first, _manifest(config(tmp_path), frame, FILES, "sha256:aa", PLAN), "out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("model", "the model changed since the run that wrote out ('sha256:aa' then, 'sha256:bb' now)"),
        ("file", "the input changed (its files, schema or config) since the run that wrote out"),
        ("schema", "the input changed (its files, schema or config) since the run that wrote out"),
        ("shards", "output.shards changed since the run that wrote out (8 then, 4 now)"),
    ],
)
def test_a_changed_model_input_or_shard_count_is_refused_naming_what_changed(tmp_path: Path, change, message) -> None:
    frame = FakeFrame('{"fields": []}')
    old = _manifest(config(tmp_path), frame, FILES, "sha256:aa", PLAN)
    fingerprint, cfg, files = "sha256:aa", config(tmp_path), FILES
    if change == "model":
        fingerprint = "sha256:bb"
    elif change == "file":
        files = InputFiles((("file:/data/part-0.parquet", 2048, 1_700_000_000_001),))  # rewritten
    elif change == "schema":
        frame = FakeFrame('{"fields": [{"name": "id"}]}')
    else:
        cfg = config(tmp_path, shards=4)
    with pytest.raises(OutputError) as caught:
        _check_manifest(old, _manifest(cfg, frame, files, fingerprint, PLAN), "out")
    assert str(caught.value).startswith(f"output.mode: resume: {message}")
    assert str(caught.value).endswith("; use mode: overwrite to start again")
