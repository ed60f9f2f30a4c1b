"""Embedding tables mapped from the model file, against Keras's own loader on the same rows."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import example_module

from rayscore import ConfigError, _tables
from rayscore._config import ModelConfig
from rayscore._model import H5Loader, KerasLoader
from rayscore._placement import TABLE_SHARE, NodeShape, plan_pool
from rayscore._plan import _scan_tables
from rayscore._predict import ModelRef

LOADERS = {"keras": KerasLoader(), "h5": H5Loader()}
GiB = 2**30


def _mapped(loaded) -> list[str]:
    return [t["layer"] for t in loaded.info["tables"] if t["mapped"]]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_the_seed_shaped_model_maps_its_shared_table_and_predicts_like_keras(example_model, model_files, fmt):
    make_example = example_module()
    feeds = make_example.features_of(make_example.make_table(64, vocab=50, seed=3))
    path = str(model_files[fmt])
    tables = _tables.scan(path, fmt, 800)  # 50 x 4 float32: 800 bytes
    assert [t for t in tables if t.mapped] == [_tables.Table("title_embedding", 800, True)]
    others = {t.reason for t in tables if not t.mapped}  # the dense layers' kernels are larger still
    assert others == {"it is not the table of a plain keras Embedding layer"}
    loaded = LOADERS[fmt].load(path, mmap_min_bytes=800)
    assert _mapped(loaded) == ["title_embedding"]
    got, want = loaded.predict(feeds), example_model.predict(feeds, verbose=0)
    for name in ("click", "topics"):
        np.testing.assert_array_equal(got[name], want[name])


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory):
    """Two shared tables (titles and queries, two inputs each) and a nested model holding a third."""
    import keras

    keras.utils.set_random_seed(11)
    titles = [keras.Input((5,), dtype="int32", name=f"title_{i}") for i in range(2)]
    queries = [keras.Input((3,), dtype="int64", name=f"query_{i}") for i in range(2)]
    words, terms = keras.layers.Embedding(300, 8, name="words"), keras.layers.Embedding(200, 6, name="terms")
    pool = keras.layers.GlobalAveragePooling1D()
    inner_in = keras.Input((2,), dtype="int32", name="inner_ids")
    inner_pool = keras.layers.GlobalAveragePooling1D()
    inner = keras.Model(inner_in, inner_pool(keras.layers.Embedding(100, 4, name="nested")(inner_in)), name="inner")
    ids = keras.Input((2,), dtype="int32", name="ids")
    parts = [pool(words(t)) for t in titles] + [pool(terms(q)) for q in queries] + [inner(ids)]
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()(parts))
    model = keras.Model(
        [*titles, *queries, ids],
        {
            "p": keras.layers.Dense(1, activation="sigmoid", name="p")(hidden),
            "q": keras.layers.Dense(3, name="q")(hidden),
        },
    )
    root = tmp_path_factory.mktemp("two_tables")
    model.save(root / "m.keras")
    model.save(root / "m.h5")
    rng = np.random.default_rng(2)
    feeds = {f"title_{i}": rng.integers(0, 300, (40, 5)).astype("int32") for i in range(2)}
    feeds |= {f"query_{i}": rng.integers(0, 200, (40, 3)).astype("int64") for i in range(2)}
    feeds["ids"] = rng.integers(0, 100, (40, 2)).astype("int32")
    feeds["title_0"][0, :] = 299  # the tables' last rows, too
    feeds["query_1"][0, :] = 199
    return model, root, feeds


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_two_shared_tables_and_a_nested_one_predict_like_keras(two_tables, fmt):
    model, root, feeds = two_tables
    loaded = LOADERS[fmt].load(str(root / f"m.{fmt}"), mmap_min_bytes=1600)  # nested: 100 x 4 x 4 = 1600
    tables = {t["layer"]: t for t in loaded.info["tables"]}
    assert tables["words"]["mapped"] and tables["terms"]["mapped"]
    # A .keras file keys a nested model's layers under its own; a legacy .h5 file flattens them.
    assert tables["nested"]["mapped"] == (fmt == "keras")
    if fmt == "h5":
        assert tables["nested"]["reason"] == "it is inside a nested model of a .h5 file"
    assert sorted(n for n in tables if "/" not in n) == ["nested", "terms", "words"]  # once each, by layer name
    others = {tables[n]["reason"] for n in tables if "/" in n}  # the 32 x 16 kernel: 2048 bytes
    assert others == {"it is not the table of a plain keras Embedding layer"}
    got, want = loaded.predict(feeds), model.predict(feeds, verbose=0)
    for name in ("p", "q"):
        np.testing.assert_array_equal(got[name], want[name])


def test_below_the_threshold_or_off_nothing_is_mapped(two_tables):
    _, root, _ = two_tables
    path = str(root / "m.keras")
    assert [t.layer for t in _tables.scan(path, "keras", 7000)] == ["words"]  # 300 x 8 x 4 = 9600
    assert _tables.scan(path, "keras", 0) == []
    assert KerasLoader().load(path).info["tables"] == []  # the loader's default: off


def test_an_id_outside_the_table_is_named(model_files):
    loaded = KerasLoader().load(str(model_files["keras"]), mmap_min_bytes=800)
    make_example = example_module()
    feeds = make_example.features_of(make_example.make_table(4, vocab=50, seed=3))
    feeds["title_2"] = feeds["title_2"].copy()
    feeds["title_2"][1, 3] = 50
    with pytest.raises(Exception, match=r"layer 'title_embedding': id 50 is not in \[0, 50\)"):
        loaded.predict(feeds)


def test_float_and_negative_ids_are_taken_as_keras_takes_them(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    ids = keras.Input((4,), name="ids")  # float32, Keras's default: the layer casts to int32
    out = keras.layers.Dense(2, name="y")(keras.layers.Flatten()(keras.layers.Embedding(40, 8, name="table")(ids)))
    model = keras.Model(ids, out)
    model.save(tmp_path / "m.keras")
    loaded = KerasLoader().load(str(tmp_path / "m.keras"), mmap_min_bytes=1024)
    assert _mapped(loaded) == ["table"]
    feeds = np.array([[0, 1, 39, -1], [-40, 7.0, 2, 3]], dtype="float32")  # -1: the last row, as Keras takes it
    np.testing.assert_array_equal(loaded.predict({"ids": feeds})["y"], model.predict(feeds, verbose=0))


def test_only_the_large_table_is_swapped_when_a_nested_model_reuses_its_name(tmp_path):
    import keras

    keras.utils.set_random_seed(4)
    inner_ids = keras.Input((2,), dtype="int32", name="inner_ids")
    small = keras.layers.Embedding(10, 2, name="emb")  # the same name, in the nested model's own namespace
    inner = keras.Model(inner_ids, keras.layers.Flatten()(small(inner_ids)), name="inner")
    ids, few = keras.Input((2,), dtype="int32", name="ids"), keras.Input((2,), dtype="int32", name="few")
    big = keras.layers.Flatten()(keras.layers.Embedding(300, 8, name="emb")(ids))
    model = keras.Model([ids, few], keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([big, inner(few)])))
    model.save(tmp_path / "m.keras")
    loaded = KerasLoader().load(str(tmp_path / "m.keras"), mmap_min_bytes=5000)  # 300 x 8 x 4 = 9600
    assert _mapped(loaded) == ["emb"]
    feeds = {"ids": np.array([[0, 9], [299, 3]], dtype="int32"), "few": np.array([[0, 9], [5, 3]], dtype="int32")}
    np.testing.assert_array_equal(loaded.predict(feeds)["y"], model.predict(feeds, verbose=0))


def test_the_table_is_read_in_place_and_its_residency_is_measured(model_files):
    loaded = KerasLoader().load(str(model_files["keras"]), mmap_min_bytes=800)
    [table] = [t for t in _tables._OPEN if t.layer == "title_embedding"][-1:]
    assert not table.rows.flags.owndata and not table.rows.flags.writeable  # a view of the file's pages
    # ... and the kernel says so: this process maps the model file itself, read-only and shared
    # (an np.frombuffer over bytes read into memory would pass the flags above, not this).
    model_path = str(Path(model_files["keras"]).resolve())
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(model_path)]
    assert maps, f"{model_path} is not mapped into this process"
    assert all(fields[1].startswith("r") and "w" not in fields[1] and fields[1].endswith("s") for fields in maps)
    loaded.predict(example_module().features_of(example_module().make_table(4, vocab=50)))
    assert table.resident_bytes() >= 4096
    assert _tables.resident() >= table.resident_bytes()


def test_the_memory_a_table_is_compared_with_is_the_containers_limit_when_it_has_one():
    """Page cache counts against a cgroup's limit: a table is advised random access against that, not the host."""
    import os
    from pathlib import Path

    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = [Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory.max")]  # v1, v2
    text = next((p.read_text().strip() for p in limits if p.exists()), "max")  # "max": v2 without a limit
    assert _tables.memory_bytes() == (min(host, int(text)) if text.isdigit() else host)


def test_a_compressed_archive_is_not_mapped_and_says_why(example_model, model_files, tmp_path, caplog):
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(model_files["keras"]) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    why = "the archive's model.weights.h5 is compressed or missing"
    assert _tables.scan(str(deflated), "keras", 800) == [_tables.Table("title_embedding", 800, False, why)]
    loaded = KerasLoader().load(str(deflated), mmap_min_bytes=800)  # Keras's own loader, the table in memory
    assert loaded.info["tables"] == [{"layer": "title_embedding", "nbytes": 800, "mapped": False, "reason": why}]
    feeds = example_module().features_of(example_module().make_table(8, vocab=50))
    np.testing.assert_array_equal(loaded.predict(feeds)["click"], example_model.predict(feeds, verbose=0)["click"])
    with caplog.at_level(logging.WARNING, logger="rayscore"):
        _scan_tables(str(deflated), "keras", 800)
    [line] = caplog.messages
    assert line == f"model: title_embedding (0.0 MiB) loads into each actor's memory, not mapped: {why}"


def test_tables_that_are_not_plain_embeddings_load_into_memory_and_say_why(tmp_path):
    import keras

    keras.utils.set_random_seed(5)
    tokens = keras.Input((3,), dtype="int32", name="tokens")
    plain, lora = keras.layers.Embedding(64, 8, name="plain"), keras.layers.Embedding(64, 8, name="lora")
    flat = [keras.layers.Flatten()(layer(tokens)) for layer in (plain, lora)]
    wide = keras.layers.Dense(64, name="wide")(keras.layers.Concatenate()(flat))  # a 48 x 64 kernel: 12 KiB
    model = keras.Model(tokens, keras.layers.Dense(1, name="y")(wide))
    lora.enable_lora(2)
    path = tmp_path / "m.keras"
    model.save(path)
    reasons = {t.layer: t.reason for t in _tables.scan(str(path), "keras", 2048)}
    assert reasons == {
        "plain": "",
        "lora": "it has LoRA weights",
        "layers/dense/vars/0": "it is not the table of a plain keras Embedding layer",
    }
    loaded = KerasLoader().load(str(path), mmap_min_bytes=2048)
    assert _mapped(loaded) == ["plain"]
    ids = np.random.default_rng(0).integers(0, 64, (16, 3)).astype("int32")
    np.testing.assert_allclose(loaded.predict({"tokens": ids})["y"], model.predict(ids, verbose=0), rtol=0, atol=1e-6)


def test_gpu_actors_keep_tables_on_the_device_unless_told_and_report_why(example_model, model_files):
    ref = ModelRef(path=str(model_files["keras"]), loader="keras", mmap_min_bytes=800, shared_bytes=5 * GiB)
    assert "mmap_refused" not in ref.options() and ref.shared_on(gpu=False) == 5 * GiB
    assert ref.shared_on(gpu=True) == 0
    loaded = KerasLoader().load(ref.path, **ref.options(gpu=True))
    assert _mapped(loaded) == []  # the table is a variable, on the device
    why = "a GPU actor keeps its tables on the device (model.mmap_on_gpu: false)"
    assert {"layer": "title_embedding", "nbytes": 800, "mapped": False, "reason": why} in loaded.info["tables"]
    feeds = example_module().features_of(example_module().make_table(16, vocab=50, seed=4))
    np.testing.assert_array_equal(loaded.predict(feeds)["click"], example_model.predict(feeds, verbose=0)["click"])
    on_gpu = ModelRef(path="m.keras", loader="keras", mmap_min_bytes=100, mmap_on_gpu=True, shared_bytes=5 * GiB)
    assert "mmap_refused" not in on_gpu.options(gpu=True) and on_gpu.shared_on(gpu=True) == 5 * GiB
    assert "mmap_min_bytes" not in ModelRef(path="m", loader="savedmodel").options()


def test_the_config_keys_default_and_refuse_bad_values():
    model = ModelConfig(uri="m.keras")
    assert (model.mmap_min_bytes, model.mmap_on_gpu) == (256 << 20, False)
    for bad in (-1, True, "1GB"):
        with pytest.raises(ValueError, match="mmap_min_bytes"):
            ModelConfig(uri="m.keras", mmap_min_bytes=bad)


def _plan(shared: int, model: int = 0, memory: int = 24 * GiB, cpus: float = 16, actors="auto"):
    return plan_pool(
        [NodeShape("a", cpus, 0, memory), NodeShape("b", cpus, 0, memory)],
        actors=actors,
        model_bytes=model,
        shared_bytes=shared,
        memory_factor=1.3,
        batch_bytes=0,
        cpus_per_actor=1,
        gpus_per_actor=0,
        process_bytes=640 * 2**20,
    )


def test_placement_counts_a_mapped_table_once_per_node():
    table = int(4.5e9)
    in_memory = _plan(0, model=table)
    mapped = _plan(table)
    assert in_memory.per_node == {"a": 3, "b": 3}  # 24 GiB / (4.5 GB x 1.3 + 640 MiB)
    assert mapped.per_node == {"a": 16, "b": 16}  # every core: the table is held once per node
    assert mapped.memory_per_actor == 640 * 2**20
    # Larger than the node's memory: TABLE_SHARE of it is the table's, the rest holds actors.
    huge = _plan(30 * 10**9, memory=8 * GiB)
    assert huge.per_node["a"] == int(8 * GiB * (1 - TABLE_SHARE) // (640 * 2**20))


def test_a_pool_that_does_not_fit_names_the_mapped_tables():
    with pytest.raises(ConfigError, match=r"mapped tables 4\.2 GiB once per node"):
        _plan(int(4.5e9), model=30 * GiB, actors="auto")


def test_the_big_benchs_grown_seed_model_predicts_its_formula_in_keras_and_mapped(tmp_path):
    """``bench/compare_big.py --model seed`` checks both ways against ``seed_expected``: that formula is Keras's."""
    import keras  # noqa: PLC0415
    from make_big_model import seed_expected, write_seed_keras  # noqa: PLC0415

    make_example = example_module()
    path = tmp_path / "seed.keras"
    vocab = 3000
    dense = write_seed_keras(path, vocab)
    table = make_example.make_table(64, vocab=vocab, seed=3)
    feeds = make_example.features_of(table)
    assert max(int(feeds[f"title_{i}"].max()) for i in range(4)) > vocab - 100  # rows from the whole table
    want = seed_expected(feeds, dense)
    loaded = LOADERS["keras"].load(str(path), mmap_min_bytes=vocab * 64 * 4)
    assert _mapped(loaded) == ["title_embedding"]
    theirs = keras.saving.load_model(path, compile=False).predict(feeds, verbose=0)
    for got in (theirs, loaded.predict(feeds)):
        for name in ("click", "topics"):
            np.testing.assert_allclose(np.asarray(got[name]).reshape(want[name].shape), want[name], atol=1e-5, rtol=0)
    assert np.ptp(want["click"]) > 0.01  # the answers vary with the rows
