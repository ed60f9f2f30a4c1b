"""Shared fixtures for the unit tests: small Keras model files built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def example_module():
    """examples/make_example.py, imported by path (it is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import make_example  # noqa: PLC0415

    return make_example


@pytest.fixture(scope="session")
def example_model():
    """The example's multi-input functional model, scaled down."""
    return example_module().build_model(vocab=50, dim=4)


@pytest.fixture(scope="session")
def model_files(example_model, tmp_path_factory) -> dict[str, Path]:
    """The example model saved as .keras and as legacy .h5."""
    root = tmp_path_factory.mktemp("models")
    paths = {"keras": root / "ctr.keras", "h5": root / "ctr.h5"}
    example_model.save(paths["keras"])
    example_model.save(paths["h5"])
    return paths


@pytest.fixture(autouse=True)
def _fingerprint_memos_of_this_test(tmp_path, monkeypatch):
    """Each test keeps the models' digests it takes to itself: one test's kept digest is not another's read."""
    import rayscore._model

    monkeypatch.setattr(rayscore._model, "_memo_dir", lambda: str(tmp_path / "fingerprint-memos"))
