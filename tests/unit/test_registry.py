"""MLflow model uris without a server: what is a registry uri, the model inside an artifact, names and secrets."""

from __future__ import annotations

import pytest

from rayscore import ModelError
from rayscore._config import load_config
from rayscore._registry import RegistryModel, find_model, is_registry, without_password


def test_registry_uris_are_not_paths(tmp_path):
    assert is_registry("models:/ctr/3") and is_registry("models:/ctr@champion") and is_registry("runs:/abc/model")
    assert not is_registry("s3://bucket/models:/x") and not is_registry("models/ctr.keras")
    cfg = load_config({"input": {"path": "in"}, "model": {"uri": "models:/ctr@champion"}, "output": {"path": "out"}})
    assert cfg.model.uri == "models:/ctr@champion"  # not resolved against the working directory


def test_the_one_model_inside_an_artifact_is_found_else_named(tmp_path):
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "a" / "MLmodel").write_text("flavors: {}")
    (tmp_path / "a" / "data" / "model.keras").write_bytes(b"PK")
    assert find_model(str(tmp_path / "a"), "models:/ctr/1") == "data/model.keras"
    (tmp_path / "b" / "tfmodel" / "variables").mkdir(parents=True)
    (tmp_path / "b" / "tfmodel" / "saved_model.pb").write_bytes(b"")
    assert find_model(str(tmp_path / "b"), "models:/ctr/2") == "tfmodel"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.pkl").write_bytes(b"")
    with pytest.raises(ModelError, match=r"^model.uri: runs:/r/c holds no Keras or TensorFlow model .*: model\.pkl$"):
        find_model(str(tmp_path / "c"), "runs:/r/c")
    (tmp_path / "a" / "data" / "other.h5").write_bytes(b"")
    with pytest.raises(ModelError, match=r"holds 2 models \(data/model.keras, data/other.h5\); log one per artifact"):
        find_model(str(tmp_path / "a"), "models:/ctr/1")


def test_the_cache_name_is_one_per_version_and_the_identity_shows_no_password():
    model = RegistryModel(
        uri="models:/ctr scorer@champion",
        pinned="models:/ctr scorer/3",
        tracking_uri="https://scorer:s3cret@mlflow.example:5000",
        name="ctr scorer",
        version="3",
        alias="champion",
        download_uri="s3://artifacts/1/abc",
    )
    assert model.cache_name == "mlflow-ctr_scorer-v3"
    assert model.identity()["tracking_uri"] == "https://mlflow.example:5000"
    assert "s3cret" not in str(model.identity()) and "download_uri" not in model.identity()
    assert without_password("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
