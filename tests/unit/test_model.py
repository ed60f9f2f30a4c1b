"""Model loaders: inspect without weights, load and predict, format resolution, registry."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import example_module

from rayscore import ModelError, ModelSpec, TensorSpec, _model, register_loader
from rayscore._model import (
    H5Loader,
    KerasLoader,
    LoadedModel,
    loaders,
    local_model_path,
    resolve_loader,
)

EXPECTED_INPUTS = (
    TensorSpec("title_0", (20,), "int32"),
    TensorSpec("title_1", (20,), "int32"),
    TensorSpec("title_2", (20,), "int32"),
    TensorSpec("title_3", (20,), "int32"),
    TensorSpec("hour_of_week", (24, 7), "float32"),
    TensorSpec("price", (), "float32"),
)


# --------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("fmt, loader_cls", [("keras", KerasLoader), ("h5", H5Loader)])
def test_inspect_example_model(model_files, fmt: str, loader_cls) -> None:
    spec = loader_cls().inspect(str(model_files[fmt]))
    assert isinstance(spec, ModelSpec)
    assert spec.format == fmt
    assert spec.inputs == EXPECTED_INPUTS
    assert spec.input_names == ("title_0", "title_1", "title_2", "title_3", "hour_of_week", "price")
    assert spec.output_names == ("click", "topics")
    assert spec.input("hour_of_week") == TensorSpec("hour_of_week", (24, 7), "float32")
    assert [t.size for t in spec.inputs] == [20, 20, 20, 20, 168, 1]
    assert spec.lookup_row_bytes == 4 * 20 * 4 * 4  # 4 titles of 20 ids through the shared 4-wide table


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_inspect_counts_each_embedding_call_from_the_config(tmp_path: Path, suffix: str) -> None:
    import warnings

    import keras

    a, b = keras.Input((7,), dtype="int32", name="a"), keras.Input((3, 2), dtype="int32", name="b")
    shared, other = keras.layers.Embedding(10, 8), keras.layers.Embedding(5, 16, dtype="float16")
    open_seq = keras.Input((None,), dtype="int32", name="open")
    pooled = [keras.layers.Flatten()(shared(a)), keras.layers.Flatten()(shared(b)), keras.layers.Flatten()(other(b))]
    pooled.append(keras.layers.GlobalAveragePooling1D()(shared(open_seq)))  # an open sequence: not counted
    model = keras.Model([a, b, open_seq], keras.layers.Dense(1, name="p")(keras.layers.Concatenate()(pooled)))
    sequential = keras.Sequential([keras.Input((7,), dtype="int32"), keras.layers.Embedding(10, 8)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        model.save(tmp_path / f"m{suffix}")
        sequential.save(tmp_path / f"s{suffix}")
    loader = KerasLoader() if suffix == ".keras" else H5Loader()
    assert loader.inspect(str(tmp_path / f"m{suffix}")).lookup_row_bytes == 7 * 8 * 4 + 6 * 8 * 4 + 6 * 16 * 2
    assert loader.inspect(str(tmp_path / f"s{suffix}")).lookup_row_bytes == 7 * 8 * 4


def test_inspect_does_not_need_keras_weights(model_files, tmp_path: Path) -> None:
    # Only config.json is read: an archive holding just that inspects the same.
    with zipfile.ZipFile(model_files["keras"]) as src:
        config = src.read("config.json")
    slim = tmp_path / "slim.keras"
    with zipfile.ZipFile(slim, "w") as dst:
        dst.writestr("config.json", config)
    assert KerasLoader().inspect(str(slim)).inputs == EXPECTED_INPUTS


def test_inspect_sequential_model(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="dense_out")])
    path = tmp_path / "seq.keras"
    model.save(path)
    spec = KerasLoader().inspect(str(path))
    assert spec.inputs == (TensorSpec("x", (3,), "float32"),)
    assert spec.output_names == ("dense_out",)
    assert spec.format == "keras"


def test_sequential_model_inspect_and_load_agree_on_names(tmp_path: Path) -> None:
    # The plan is made from inspect() on the driver; actors look the outputs up
    # by those names in what load().predict returns, so the two must agree.
    import keras

    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="dense_out")])
    path = tmp_path / "seq.keras"
    model.save(path)
    inspected = KerasLoader().inspect(str(path))
    loaded = KerasLoader().load(str(path))
    assert loaded.spec.input_names == inspected.input_names
    assert loaded.spec.output_names == inspected.output_names


def test_inspect_built_sequential_without_input_layer(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.layers.Dense(2, name="d")])
    model.build((None, 4))
    path = tmp_path / "seq2.keras"
    model.save(path)
    spec = KerasLoader().inspect(str(path))
    assert len(spec.inputs) == 1
    assert spec.inputs[0].shape == (4,)
    assert spec.inputs[0].dtype == "float32"
    assert spec.output_names == ("d",)


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("fmt, loader_cls", [("keras", KerasLoader), ("h5", H5Loader)])
def test_loaded_model_predicts_like_keras(model_files, example_model, fmt: str, loader_cls) -> None:
    make_example = example_module()
    table = make_example.make_table(6, vocab=50, seed=3)
    feeds = make_example.features_of(table)
    loaded = loader_cls().load(str(model_files[fmt]))
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec.format == fmt
    assert loaded.spec.input_names == tuple(t.name for t in EXPECTED_INPUTS)
    assert loaded.spec.output_names == ("click", "topics")
    assert {t.name: t.shape for t in loaded.spec.outputs} == {"click": (1,), "topics": (5,)}
    got = loaded.predict(feeds)
    want = example_model.predict(feeds, verbose=0)
    assert set(got) == {"click", "topics"}
    assert got["click"].shape == (6, 1)
    assert got["topics"].shape == (6, 5)
    for name in ("click", "topics"):
        assert isinstance(got[name], np.ndarray)
        np.testing.assert_allclose(got[name], np.asarray(want[name]), rtol=0, atol=1e-6)


def test_load_refuses_lambda_in_safe_mode(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((2,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    model = keras.Model(inp, out)
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelError) as info:
        KerasLoader().load(str(path), safe_mode=True)
    assert str(info.value) == (
        f"model {path} needs arbitrary code to load (a Lambda layer); set model.safe_mode: false only if you trust it"
    )


# --------------------------------------------------------------------------- bad files


def test_keras_file_that_is_hdf5(model_files, tmp_path: Path) -> None:
    fake = tmp_path / "really_h5.keras"
    shutil.copy(model_files["h5"], fake)
    path, loader = resolve_loader(str(fake))
    assert loader.name == "keras"
    with pytest.raises(ModelError) as info:
        loader.inspect(path)
    msg = str(info.value)
    assert "HDF5" in msg
    assert msg == (f"model {fake} is not a .keras archive (it is an HDF5 file: use format: h5 or the .h5 suffix)")
    # and it inspects fine when told its real format
    assert resolve_loader(str(fake), "h5")[1].inspect(str(fake)).inputs == EXPECTED_INPUTS


def test_empty_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.keras"
    path.write_bytes(b"")
    with pytest.raises(ModelError) as info:
        KerasLoader().inspect(str(path))
    assert str(info.value) == f"model {path} is not a .keras archive"
    with pytest.raises(ModelError, match=r"cannot be loaded as keras"):
        KerasLoader().load(str(path))


def test_garbage_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.keras"
    path.write_bytes(b"this is not a zip archive at all\x00\x01" * 20)
    with pytest.raises(ModelError) as info:
        KerasLoader().inspect(str(path))
    assert str(info.value) == f"model {path} is not a .keras archive"


def test_zip_without_config_json(tmp_path: Path) -> None:
    path = tmp_path / "noconfig.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.weights.h5", b"weights")
    with pytest.raises(ModelError) as info:
        KerasLoader().inspect(str(path))
    assert str(info.value) == f"model {path} is a zip without config.json, not a .keras archive"
    with pytest.raises(ModelError, match=r"^model .* cannot be loaded as keras: "):
        KerasLoader().load(str(path))


def test_zip_with_broken_config_json(tmp_path: Path) -> None:
    path = tmp_path / "brokenconfig.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", b"{not json")
    with pytest.raises(ModelError, match=r"^model .*brokenconfig.keras cannot be read: "):
        KerasLoader().inspect(str(path))


def test_h5_loader_on_non_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "fake.h5"
    path.write_bytes(b"nope")
    with pytest.raises(ModelError) as info:
        H5Loader().inspect(str(path))
    assert str(info.value) == f"model {path} is not an HDF5 file"


def test_h5_without_model_config(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "weights_only.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("w", data=np.zeros(3))
    with pytest.raises(ModelError) as info:
        H5Loader().inspect(str(path))
    assert str(info.value) == f"model {path} is an HDF5 file without a model config (weights only?)"


# --------------------------------------------------------------------------- resolve_loader


def test_resolve_loader_auto_by_suffix(model_files, tmp_path: Path) -> None:
    path, loader = resolve_loader(str(model_files["keras"]))
    assert path == str(model_files["keras"])
    assert isinstance(loader, KerasLoader) and loader.name == "keras"
    path, loader = resolve_loader(str(model_files["h5"]))
    assert path == str(model_files["h5"])
    assert isinstance(loader, H5Loader) and loader.name == "h5"
    hdf5 = tmp_path / "ctr.hdf5"
    shutil.copy(model_files["h5"], hdf5)
    assert resolve_loader(str(hdf5))[1].name == "h5"


def test_resolve_loader_explicit_format_wins(model_files, tmp_path: Path) -> None:
    odd = tmp_path / "model.bin"
    shutil.copy(model_files["keras"], odd)
    path, loader = resolve_loader(str(odd), "keras")
    assert path == str(odd)
    assert loader.name == "keras"
    assert loader.inspect(path).inputs == EXPECTED_INPUTS


def test_resolve_loader_file_uri(model_files) -> None:
    path, loader = resolve_loader(f"file://{model_files['keras']}")
    assert path == str(model_files["keras"])
    assert loader.name == "keras"


def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "m.keras"
    with pytest.raises(ModelError) as info:
        resolve_loader(str(missing))
    assert "no model at" in str(info.value)
    assert str(info.value) == f"model.uri: no model at {missing}"


def test_missing_model_file_points_at_make_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "make_example.py").write_text("")
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as info:
        resolve_loader(str(tmp_path / "models" / "ctr.keras"))
    assert str(info.value) == (
        f"model.uri: no model at {tmp_path / 'models' / 'ctr.keras'} "
        "(make the example's model and data with: python make_example.py)"
    )


def test_unknown_suffix(model_files, tmp_path: Path) -> None:
    odd = tmp_path / "model.onnx"
    shutil.copy(model_files["keras"], odd)
    with pytest.raises(ModelError) as info:
        resolve_loader(str(odd))
    assert str(info.value) == (
        f"model.format: cannot tell the format of {odd} from its name; "
        "set model.format to one of ['h5', 'keras', 'savedmodel']"
    )


def test_unknown_explicit_format(model_files) -> None:
    with pytest.raises(ModelError) as info:
        resolve_loader(str(model_files["keras"]), "onnx")
    assert str(info.value) == "model.format must be auto or one of ['h5', 'keras', 'savedmodel'], got 'onnx'"


def test_unsupported_scheme() -> None:
    with pytest.raises(ModelError) as info:
        resolve_loader("s3://bucket/models/ctr.keras")
    assert str(info.value) == "model.uri: scheme s3:// is not supported yet, got 's3://bucket/models/ctr.keras'"


def test_local_model_path() -> None:
    assert local_model_path("/a/b.keras") == "/a/b.keras"
    assert local_model_path("file:///a/b.keras") == "/a/b.keras"
    assert local_model_path("rel/b.keras") == "rel/b.keras"
    with pytest.raises(ModelError, match=r"scheme gs://"):
        local_model_path("gs://b/m.keras")


def test_model_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "garbage.keras"
    path.write_bytes(b"garbage")
    for call in (
        lambda: resolve_loader(str(tmp_path / "missing.keras")),
        lambda: KerasLoader().inspect(str(path)),
        lambda: KerasLoader().load(str(path)),
    ):
        with pytest.raises(ModelError) as info:
            call()
        assert "\n" not in str(info.value)
        assert info.value.user_error is True


# --------------------------------------------------------------------------- registry


class _DummyLoader:
    name = "dummy"

    def matches(self, path: str) -> bool:
        return path.endswith(".dummy")

    def inspect(self, path: str) -> ModelSpec:
        return ModelSpec((TensorSpec("x", (1,), "float32"),), (TensorSpec("y", (1,), "float32"),), "dummy")

    def load(self, path: str, *, safe_mode: bool = True) -> LoadedModel:
        return LoadedModel(self.inspect(path), lambda feeds: {"y": np.asarray(feeds["x"])})


@pytest.fixture
def restore_registry():
    saved = dict(_model._LOADERS)
    yield
    _model._LOADERS.clear()
    _model._LOADERS.update(saved)


def test_builtin_loaders() -> None:
    assert sorted(loaders) == ["h5", "keras", "savedmodel"]
    assert isinstance(loaders["keras"], KerasLoader)
    assert isinstance(loaders["h5"], H5Loader)


def test_register_loader_refuses_duplicates(restore_registry) -> None:
    original = loaders["keras"]
    with pytest.raises(ValueError) as info:
        register_loader("keras", _DummyLoader())
    assert str(info.value) == "a loader named 'keras' is registered already (pass clobber=True)"
    assert loaders["keras"] is original


def test_register_loader_clobber(restore_registry) -> None:
    dummy = _DummyLoader()
    register_loader("keras", dummy, clobber=True)
    assert loaders["keras"] is dummy


def test_register_new_loader_is_used_by_resolve(restore_registry, tmp_path: Path) -> None:
    dummy = _DummyLoader()
    register_loader("dummy", dummy)
    assert loaders["dummy"] is dummy
    path = tmp_path / "m.dummy"
    path.write_text("x")
    assert resolve_loader(str(path))[1] is dummy
    assert resolve_loader(str(path), "dummy")[1] is dummy
    with pytest.raises(ValueError, match=r"'dummy' is registered already"):
        register_loader("dummy", _DummyLoader())


def test_loaders_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        loaders["x"] = _DummyLoader()  # type: ignore[index]
    with pytest.raises(TypeError):
        del loaders["keras"]  # type: ignore[attr-defined]
    assert not hasattr(loaders, "pop")
    assert not hasattr(loaders, "update")
    assert "x" not in loaders


# --------------------------------------------------------------------------- specs


def test_tensor_spec_size() -> None:
    assert TensorSpec("a", (24, 7), "float32").size == 168
    assert TensorSpec("a", (), "float32").size == 1
    assert TensorSpec("a", None, None).size is None
    assert TensorSpec("a", (None, 3), "float32").size is None


def test_specs_are_frozen() -> None:
    spec = TensorSpec("a", (2,), "float32")
    with pytest.raises(AttributeError):
        spec.name = "b"  # type: ignore[misc]
    model = ModelSpec((spec,), (spec,))
    with pytest.raises(AttributeError):
        model.format = "x"  # type: ignore[misc]


LEAN_ACTOR = """
import sys
import numpy as np
from rayscore._model import KERAS_EXTRAS, KerasLoader
loader = KerasLoader()
loader.prepare()  # what a predictor actor does first
assert "keras" in sys.modules and "tensorflow" in sys.modules
print("held:", sorted(n for n in KERAS_EXTRAS if n in sys.modules))
feeds = dict(np.load(sys.argv[2]))
got = loader.load(sys.argv[1]).predict(feeds)
np.savez(sys.argv[3], **got)
import pandas, sklearn  # the model's own code may use them: they import as usual afterwards
print("after:", pandas.__name__, sklearn.__name__)
"""


def test_an_actor_imports_keras_without_its_extras_and_predicts_the_same(model_files, example_model, tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    make_example = example_module()
    feeds = make_example.features_of(make_example.make_table(32, vocab=50, seed=4))
    np.savez(tmp_path / "feeds.npz", **feeds)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LEAN_ACTOR,
            str(model_files["keras"]),
            str(tmp_path / "feeds.npz"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["held: []", "after: pandas sklearn"]
    got, want = np.load(tmp_path / "out.npz"), example_model.predict(feeds, verbose=0)
    for name in ("click", "topics"):
        np.testing.assert_allclose(got[name].reshape(want[name].shape), want[name], atol=1e-6, rtol=0)


def test_a_process_that_has_keras_already_is_left_as_it_is():
    import sys  # noqa: PLC0415

    import keras  # noqa: PLC0415

    assert _model.import_keras_lean() is keras
    assert all(sys.modules.get(name, 0) is not None for name in _model.KERAS_EXTRAS)  # nothing left held


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"config": {"layers": "not a list"}},
        {"config": {"layers": [None, "x", {"class_name": "Embedding"}]}},
        {"config": {"layers": [{"class_name": "Embedding", "config": {"output_dim": "64"}, "inbound_nodes": [{}]}]}},
        {"config": {"layers": [{"class_name": "Embedding", "config": {"output_dim": 8}, "inbound_nodes": {"a": 1}}]}},
        {"config": {"layers": [{"class_name": "Embedding", "config": {"output_dim": 8}, "inbound_nodes": [[[[]]]]}]}},
    ],
)
def test_a_config_whose_lookups_cannot_be_told_counts_none(config) -> None:
    from rayscore._tables import lookup_row_bytes  # noqa: PLC0415

    assert lookup_row_bytes(config) == 0
