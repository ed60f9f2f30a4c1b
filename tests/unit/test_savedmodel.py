"""SavedModel directories: inspect from saved_model.pb alone, predict through a signature, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import example_module

from rayscore import ModelError, ModelSpec, TensorSpec
from rayscore._convert import make_plan
from rayscore._model import LoadedModel, loaders, resolve_loader
from rayscore._predict import predict_table
from rayscore._savedmodel import SavedModelLoader

# Keras 3 export: the signature's input keys are the Keras input names, its
# output keys the names of the dict outputs; listed sorted by name.
KERAS_INPUTS = (
    TensorSpec("hour_of_week", (24, 7), "float32"),
    TensorSpec("price", (), "float32"),
    TensorSpec("title_0", (20,), "int32"),
    TensorSpec("title_1", (20,), "int32"),
    TensorSpec("title_2", (20,), "int32"),
    TensorSpec("title_3", (20,), "int32"),
)
KERAS_OUTPUTS = (TensorSpec("click", (1,), "float32"), TensorSpec("topics", (5,), "float32"))
WEIGHTS = np.array([1.0, -2.0, 0.5], dtype=np.float32)


@pytest.fixture(scope="module")
def keras_export(example_model, tmp_path_factory) -> Path:
    """The example model, exported by Keras 3 as a SavedModel directory."""
    path = tmp_path_factory.mktemp("savedmodel") / "ctr"
    example_model.export(str(path), verbose=False)
    return path


@pytest.fixture(scope="module")
def module_export(tmp_path_factory) -> Path:
    """A plain tf.Module with two signatures, each with two named outputs."""
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(WEIGHTS)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int64, name="count"),
            ]
        )
        def score(self, x, count):
            return {"total": tf.reduce_sum(x * self.w, axis=1) + tf.cast(count, tf.float32), "scaled": x * self.w * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def negate(self, x):
            return {"neg": -x * self.w, "norm": tf.reduce_sum(tf.abs(x), axis=1, keepdims=True)}

    path = tmp_path_factory.mktemp("savedmodel") / "scorer"
    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.score, "negate": scorer.negate})
    return path


def scorer_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    offsets = pa.array(np.arange(0, (rows + 1) * 3, 3, dtype=np.int32))
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "x": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1))),
            "count": pa.array(rng.integers(0, 10, rows, dtype=np.int64)),
        }
    )


def column_array(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), -1)
    return col.to_numpy()


# --------------------------------------------------------------------------- inspect


def test_inspect_keras_export(keras_export: Path) -> None:
    spec = SavedModelLoader().inspect(str(keras_export))
    assert isinstance(spec, ModelSpec)
    assert spec.format == "savedmodel"
    assert spec.inputs == KERAS_INPUTS
    assert spec.outputs == KERAS_OUTPUTS
    assert [t.size for t in spec.inputs] == [168, 1, 20, 20, 20, 20]


def test_inspect_module_signatures(module_export: Path) -> None:
    loader = SavedModelLoader()
    spec = loader.inspect(str(module_export))
    assert spec.inputs == (TensorSpec("count", (), "int64"), TensorSpec("x", (3,), "float32"))
    assert spec.outputs == (TensorSpec("scaled", (3,), "float32"), TensorSpec("total", (), "float32"))
    other = loader.inspect(str(module_export), signature="negate")
    assert other.inputs == (TensorSpec("x", (3,), "float32"),)
    assert other.outputs == (TensorSpec("neg", (3,), "float32"), TensorSpec("norm", (1,), "float32"))


def test_inspect_reads_only_saved_model_pb(keras_export: Path, tmp_path: Path) -> None:
    slim = tmp_path / "slim"
    slim.mkdir()
    shutil.copy(keras_export / "saved_model.pb", slim / "saved_model.pb")
    assert SavedModelLoader().inspect(str(slim)) == SavedModelLoader().inspect(str(keras_export))


def test_matches_only_saved_model_directories(keras_export: Path, tmp_path: Path) -> None:
    loader = SavedModelLoader()
    assert loader.matches(str(keras_export))
    assert not loader.matches(str(tmp_path))
    assert not loader.matches(str(keras_export / "saved_model.pb"))
    assert not loader.matches(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- predict


def test_keras_export_predicts_like_keras(keras_export: Path, example_model) -> None:
    make_example = example_module()
    table = make_example.make_table(12, vocab=50, seed=5)
    loaded = SavedModelLoader().load(str(keras_export))
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec == SavedModelLoader().inspect(str(keras_export))
    plan = make_plan(loaded.spec, table.schema, keep_columns=["id"])
    scored = predict_table(loaded, plan, table)
    assert scored.column_names == ["id", "click", "topics"]
    assert scored.column("id").to_pylist() == list(range(12))
    want = example_model.predict(make_example.features_of(table), verbose=0)
    for name in ("click", "topics"):
        np.testing.assert_allclose(
            column_array(scored, name).reshape(np.shape(want[name])), np.asarray(want[name]), rtol=0, atol=1e-5
        )


def test_module_predicts_through_named_signatures(module_export: Path) -> None:
    table = scorer_table(9)
    x = column_array(table, "x")
    count = column_array(table, "count")
    loader = SavedModelLoader()

    loaded = loader.load(str(module_export))
    scored = predict_table(loaded, make_plan(loaded.spec, table.schema, keep_columns=["id"]), table)
    assert scored.schema.field("total").type == pa.float32()
    assert scored.schema.field("scaled").type == pa.list_(pa.float32())
    np.testing.assert_allclose(column_array(scored, "total"), (x * WEIGHTS).sum(axis=1) + count, rtol=0, atol=1e-5)
    np.testing.assert_allclose(column_array(scored, "scaled"), x * WEIGHTS * 2, rtol=0, atol=1e-5)

    negate = loader.load(str(module_export), signature="negate")
    assert negate.info["signature"] == "negate"
    plan = make_plan(negate.spec, table.schema, outputs={"neg": "negated"})
    scored = predict_table(negate, plan, table)
    assert scored.column_names == ["negated"]
    np.testing.assert_allclose(column_array(scored, "negated"), -x * WEIGHTS, rtol=0, atol=1e-5)


def test_predict_casts_feeds_to_the_signature_dtype(module_export: Path) -> None:
    loaded = SavedModelLoader().load(str(module_export))
    got = loaded.predict({"x": np.ones((2, 3), dtype=np.float64), "count": np.array([1, 2], dtype=np.int32)})
    assert set(got) == {"scaled", "total"}
    assert all(isinstance(v, np.ndarray) for v in got.values())
    np.testing.assert_allclose(got["total"], [WEIGHTS.sum() + 1, WEIGHTS.sum() + 2], atol=1e-6)


# --------------------------------------------------------------------------- registry


def test_resolve_loader_picks_savedmodel(keras_export: Path) -> None:
    assert isinstance(loaders["savedmodel"], SavedModelLoader)
    path, loader = resolve_loader(str(keras_export), "auto")
    assert path == str(keras_export)
    assert loader.name == "savedmodel"
    assert resolve_loader(f"file://{keras_export}")[1].name == "savedmodel"
    assert resolve_loader(str(keras_export), "savedmodel")[1] is loaders["savedmodel"]


# --------------------------------------------------------------------------- errors


def raised(call) -> str:
    with pytest.raises(ModelError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    assert info.value.user_error is True
    return text


def test_directory_without_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    want = f"model {tmp_path} is a directory without saved_model.pb, not a SavedModel"
    assert raised(lambda: SavedModelLoader().inspect(str(tmp_path))) == want
    assert raised(lambda: SavedModelLoader().load(str(tmp_path))) == want
    assert raised(lambda: resolve_loader(str(tmp_path), "savedmodel")[1].inspect(str(tmp_path))) == want


def test_file_is_not_a_saved_model(keras_export: Path, tmp_path: Path) -> None:
    pb = keras_export / "saved_model.pb"
    assert raised(lambda: SavedModelLoader().inspect(str(pb))) == (
        f"model {pb} is the graph file of a SavedModel; point model.uri at its directory, {keras_export}"
    )
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    assert (
        raised(lambda: SavedModelLoader().inspect(str(other))) == f"model {other} is a file, not a SavedModel directory"
    )


def test_unknown_signature(keras_export: Path, module_export: Path) -> None:
    assert raised(lambda: SavedModelLoader().inspect(str(keras_export), signature="x")) == (
        f"model.signature: 'x' is not a signature of {keras_export} (signatures: serve, serving_default)"
    )
    assert raised(lambda: SavedModelLoader().load(str(module_export), signature="predict")) == (
        f"model.signature: 'predict' is not a signature of {module_export} (signatures: negate, serving_default)"
    )
    # the init op TensorFlow stores beside the signatures is not one
    assert raised(lambda: SavedModelLoader().inspect(str(keras_export), signature="__saved_model_init_op")) == (
        f"model.signature: '__saved_model_init_op' is not a signature of {keras_export} "
        "(signatures: serve, serving_default)"
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_saved_model_pb(keras_export: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(keras_export, broken)
    pb = broken / "saved_model.pb"
    data = pb.read_bytes()
    pb.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff\xfe not a protobuf \x00" * 8)
    prefix = f"model {broken} has a corrupt saved_model.pb (truncated or not a SavedModel): "
    assert raised(lambda: SavedModelLoader().inspect(str(broken))).startswith(prefix)
    assert raised(lambda: SavedModelLoader().load(str(broken))).startswith(prefix)


def test_empty_saved_model_pb(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert raised(lambda: SavedModelLoader().inspect(str(tmp_path))) == (
        f"model {tmp_path} has a corrupt saved_model.pb (truncated or not a SavedModel): it holds no MetaGraph"
    )


def test_missing_variables_fail_at_load(keras_export: Path, tmp_path: Path) -> None:
    slim = tmp_path / "slim"
    slim.mkdir()
    shutil.copy(keras_export / "saved_model.pb", slim / "saved_model.pb")
    assert raised(lambda: SavedModelLoader().load(str(slim))).startswith(
        f"model {slim} cannot be loaded as savedmodel: "
    )


def test_outputs_listed_with_numbers_in_order(tmp_path: Path) -> None:
    import tensorflow as tf

    class Many(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def f(self, x):
            return [x * float(i) for i in range(12)]  # outputs output_0 ... output_11

    many = Many()
    tf.saved_model.save(many, str(tmp_path), signatures=many.f)
    spec = SavedModelLoader().inspect(str(tmp_path))
    assert spec.output_names == tuple(f"output_{i}" for i in range(12))
    got = SavedModelLoader().load(str(tmp_path)).predict({"x": np.array([[2.0]], dtype=np.float32)})
    assert [float(got[n][0, 0]) for n in spec.output_names] == [2.0 * i for i in range(12)]
