"""Streaming Keras weights from disk into the variables, against Keras's own loader."""

from __future__ import annotations

import textwrap
import zipfile

import numpy as np
import pytest
from conftest import example_module

from rayscore import ModelError, _weights
from rayscore._model import H5Loader, KerasLoader


def _never(*args, **kwargs):
    raise AssertionError("keras.saving.load_model was called: the weights were not streamed")


@pytest.fixture
def no_keras_loader(monkeypatch):
    import keras

    monkeypatch.setattr(keras.saving, "load_model", _never)


@pytest.fixture(scope="module")
def layered_model():
    """A functional model with a nested Sequential, BatchNormalization (non-trainable state) and two outputs."""
    import keras

    rng = np.random.default_rng(7)
    inp = keras.Input((6,), name="x")
    tokens = keras.Input((3,), dtype="int32", name="tokens")
    block = keras.Sequential(
        [keras.layers.Dense(5, activation="relu"), keras.layers.BatchNormalization()], name="block"
    )
    emb = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 4, name="emb")(tokens))
    h = keras.layers.Concatenate()([block(inp), emb])
    model = keras.Model(
        [inp, tokens], {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(2, name="b")(h)}
    )
    model.set_weights(
        [rng.normal(size=w.shape).astype(w.dtype) + (2.0 if "variance" in w.path else 0.0) for w in model.weights]
    )  # BN's moving stats too, not just its defaults
    return model


def _feeds(n: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(n, 6)).astype("float32"), "tokens": rng.integers(0, 40, (n, 3)).astype("int32")}


@pytest.mark.parametrize("suffix, loader", [(".keras", KerasLoader()), (".h5", H5Loader())])
def test_streamed_weights_predict_like_keras_in_small_chunks(
    layered_model, tmp_path, monkeypatch, no_keras_loader, suffix, loader
):
    path = tmp_path / f"m{suffix}"
    layered_model.save(path)
    monkeypatch.setattr(_weights, "CHUNK_BYTES", 24)  # a few rows per chunk: every slice boundary is crossed
    got = loader.load(str(path)).predict(_feeds())
    want = layered_model.predict(_feeds(), verbose=0)
    for name in ("a", "b"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)


def test_the_example_model_streams_from_its_archive_in_place(model_files, example_model, no_keras_loader):
    assert _weights.can_stream_archive(str(model_files["keras"]))
    make_example = example_module()
    feeds = make_example.features_of(make_example.make_table(5, vocab=50, seed=4))
    got = KerasLoader().load(str(model_files["keras"])).predict(feeds)
    np.testing.assert_allclose(got["topics"], example_model.predict(feeds, verbose=0)["topics"], atol=1e-6)


def test_a_compressed_archive_falls_back_to_keras_and_still_predicts_the_same(layered_model, tmp_path):
    stored = tmp_path / "m.keras"
    layered_model.save(stored)
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(stored) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert not _weights.can_stream_archive(str(deflated))
    got = KerasLoader().load(str(deflated)).predict(_feeds())
    np.testing.assert_allclose(got["b"], layered_model.predict(_feeds(), verbose=0)["b"], atol=1e-5)


CUSTOM = textwrap.dedent("""
    import keras

    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w

    CUSTOM_OBJECTS = {"Scale": Scale}
""")


@pytest.mark.parametrize("suffix, loader", [(".keras", KerasLoader()), (".h5", H5Loader())])
def test_custom_layers_need_model_custom_objects(tmp_path, monkeypatch, suffix, loader):
    import keras

    (tmp_path / "my_layers.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_layers  # noqa: PLC0415

    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, my_layers.Scale(name="scale")(inp))
    model.layers[-1].w.assign(np.array([1.0, -2.0, 0.5], "float32"))
    path = tmp_path / f"custom{suffix}"
    model.save(path)
    with pytest.raises(
        ModelError,
        match=r"uses a class Keras does not know: class 'Scale' \(name a dict of your "
        r"classes in model.custom_objects\)$",
    ):
        loader.load(str(path))
    loaded = loader.load(str(path), custom_objects="my_layers:CUSTOM_OBJECTS")
    x = np.array([[1.0, 1.0, 2.0]], "float32")
    np.testing.assert_allclose(loaded.predict({"x": x})[loaded.spec.output_names[0]], [[1.0, -2.0, 1.0]])


def test_a_custom_objects_path_that_does_not_import_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"^model.custom_objects: cannot import 'no_such_module:X': No module named"):
        KerasLoader().load(str(tmp_path / "m.keras"), custom_objects="no_such_module:X")


@pytest.mark.parametrize("suffix, loader", [(".keras", KerasLoader()), (".h5", H5Loader())])
def test_a_truncated_model_file_is_one_clear_line(layered_model, tmp_path, suffix, loader):
    path = tmp_path / f"m{suffix}"
    layered_model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as caught:
        loader.load(str(path))
    text = str(caught.value)
    assert "\n" not in text and str(path) in text and "cannot be loaded as" in text
