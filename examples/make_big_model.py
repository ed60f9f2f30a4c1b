"""Build a model of any size in seconds, as ``.keras`` and as a SavedModel, plus its reference answers.

Big models are what rayscore is for, but building one with Keras takes
several times its size in memory (``model.save`` of a 4.35 GB model peaked at
22.6 GB). This script writes one directly instead, one slice of weights at a
time, so a 4 GB model needs a few hundred MB of memory to make:

* the model: ``tokens`` (int32[SEQ_LEN]) → ``Embedding(vocab, dim)`` →
  average over the sequence → ``Dense(1, sigmoid)`` named ``score``; its size
  is the embedding table, ``vocab × dim × 4`` bytes;
* the weights follow a formula (:func:`embedding_rows`), so the expected
  score of any row is computed from the rows of the table it uses
  (:func:`expected_scores`), without the model;
* ``.keras``: a small Keras model's ``config.json`` with the vocabulary
  patched, and a ``model.weights.h5`` written slice by slice, stored
  uncompressed in the archive exactly where Keras puts it;
* ``.h5``: the small model saved by Keras as a legacy HDF5 file, its table
  replaced in place (one copy on disk, so a 30 GB model needs 30 GB of disk);
* SavedModel: a ``tf.Module`` with the same variables (zeros, filled in
  place slice by slice) and a ``serving_default`` signature ``tokens → score``.

    python examples/make_big_model.py --gb 4.5 --out /tmp/big   # writes big.keras, big_savedmodel/, tokens.parquet
    python examples/make_big_model.py --gb 30 --formats h5 --out /tmp/huge   # larger than a 24 GB node
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

SEQ_LEN = 8
DIM = 64
SLICE_ROWS = 1 << 18  # rows written at a time: 64 MiB of float32 at dim 64
KERNEL_SCALE = 0.5


def embedding_of(ids: np.ndarray, dim: int = DIM) -> np.ndarray:
    """The table's rows for ``ids`` (any shape; float32, one more axis of ``dim``): the formula its weights follow."""
    i = np.asarray(ids, dtype=np.float64)[..., None]
    j = np.arange(dim, dtype=np.float64)
    return np.sin(i * 1e-3 + j * 0.37).astype(np.float32)


def embedding_rows(start: int, stop: int, dim: int = DIM) -> np.ndarray:
    """Rows ``start:stop`` of the embedding table (float32)."""
    return embedding_of(np.arange(start, stop), dim)


def dense_weights(dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    kernel = (np.cos(np.arange(dim, dtype=np.float64) * 0.11) * KERNEL_SCALE).astype(np.float32)[:, None]
    return kernel, np.array([0.1], dtype=np.float32)


def expected_scores(tokens: np.ndarray, dim: int = DIM) -> np.ndarray:
    """The model's ``score`` for each row of ``tokens`` (n × SEQ_LEN), from the formula."""
    kernel, bias = dense_weights(dim)
    logits = embedding_of(tokens, dim).mean(axis=1, dtype=np.float64) @ kernel.astype(np.float64) + bias
    return (1.0 / (1.0 + np.exp(-logits)))[:, 0].astype(np.float32)


def vocab_for(gigabytes: float, dim: int = DIM) -> int:
    return int(gigabytes * 1e9 / (dim * 4)) + 1


def _small_model(dim: int):  # -> keras.Model
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    tokens = keras.Input((SEQ_LEN,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(16, dim, name="embedding")(tokens))
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(pooled)
    return keras.Model(tokens, {"score": score})


def _write_table(fh, table_key: str, vocab: int, dim: int) -> None:
    """Replace the small model's table in an open HDF5 file by a ``vocab``-row one, in slices."""
    del fh[table_key]
    table = fh.create_dataset(table_key, (vocab, dim), "float32")
    for start in range(0, vocab, SLICE_ROWS):
        stop = min(vocab, start + SLICE_ROWS)
        table[start:stop] = embedding_rows(start, stop, dim)


def _write_weights(fh, table_key: str, kernel_key: str, bias_key: str, vocab: int, dim: int) -> None:
    """The table as :func:`_write_table`, and the dense layer's weights from :func:`dense_weights`."""
    _write_table(fh, table_key, vocab, dim)
    kernel, bias = dense_weights(dim)
    fh[kernel_key][...] = kernel
    fh[bias_key][...] = bias


def _keras_archive(path: str | os.PathLike[str], small, embedding: str, vocab: int, fill) -> Path:
    """``small`` saved as ``.keras`` at ``path``, its layer ``embedding`` grown to ``vocab`` rows by ``fill(fh)``."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.stem + ".small.keras")
    small.save(scratch)
    with zipfile.ZipFile(scratch) as archive:
        config = json.loads(archive.read("config.json"))
        metadata = archive.read("metadata.json")
        weights = archive.read("model.weights.h5")
    scratch.unlink()
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == embedding:
            layer["config"]["input_dim"] = vocab
    scratch = path.with_name(path.name + ".weights.h5")
    scratch.write_bytes(weights)
    with h5py.File(scratch, "a") as fh:
        fill(fh)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("metadata.json", metadata)
        archive.writestr("config.json", json.dumps(config))
        with open(scratch, "rb") as src, archive.open("model.weights.h5", "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    scratch.unlink()
    return path


def write_keras(path: str | os.PathLike[str], vocab: int, dim: int = DIM) -> Path:
    """A ``.keras`` archive of the model with a ``vocab``-row table, written slice by slice."""
    keys = "layers/embedding/vars/0", "layers/dense/vars/0", "layers/dense/vars/1"
    return _keras_archive(path, _small_model(dim), "embedding", vocab, lambda fh: _write_weights(fh, *keys, vocab, dim))


def write_seed_keras(path: str | os.PathLike[str], vocab: int, dim: int = DIM) -> dict[str, np.ndarray]:
    """The example's model, its shared table ``vocab`` rows of :func:`embedding_rows`, as ``.keras``.

    ``make_example.build_model``'s shape: four title columns sharing one
    table, an hour-of-week matrix, a price, outputs ``click`` and ``topics``.
    The table is written slice by slice; the dense layers keep the seeded
    weights Keras gave them, returned for :func:`seed_expected`.
    """
    from make_example import build_model

    small = build_model(vocab=16, dim=dim)
    hidden = next(x for x in small.layers if type(x).__name__ == "Dense" and x.name not in ("click", "topics"))
    dense = {}
    for name, layer in (("dense", hidden), ("click", small.get_layer("click")), ("topics", small.get_layer("topics"))):
        dense[f"{name}_kernel"], dense[f"{name}_bias"] = layer.get_weights()
    # Keras stores a layer's weights under its class's snake-case name, not the layer's own.
    fill = functools.partial(_write_table, table_key="layers/embedding/vars/0", vocab=vocab, dim=dim)
    _keras_archive(path, small, "title_embedding", vocab, fill)
    return dense


def seed_expected(feeds: dict[str, np.ndarray], dense: dict[str, np.ndarray], dim: int = DIM) -> dict:
    """:func:`write_seed_keras`'s ``click`` and ``topics`` for ``feeds``, in float64, without Keras.

    ``feeds`` as ``make_example.features_of`` gives them; ``dense`` as
    :func:`write_seed_keras` returned it. The table's rows come from its
    formula (:func:`embedding_of`).
    """
    from make_example import TITLES

    pooled = [embedding_of(feeds[f"title_{i}"], dim).mean(axis=1, dtype=np.float64) for i in range(TITLES)]
    n = len(feeds["price"])
    x = np.concatenate([*pooled, feeds["hour_of_week"].reshape(n, -1), feeds["price"].reshape(n, 1)], axis=1)
    hidden = np.maximum(x @ dense["dense_kernel"] + dense["dense_bias"], 0.0)
    click = 1.0 / (1.0 + np.exp(-(hidden @ dense["click_kernel"] + dense["click_bias"])))
    logits = hidden @ dense["topics_kernel"] + dense["topics_bias"]
    topics = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"click": click[:, 0], "topics": topics / topics.sum(axis=1, keepdims=True)}


def write_h5(path: str | os.PathLike[str], vocab: int, dim: int = DIM) -> Path:
    """A legacy Keras ``.h5`` file of the model, its table written in place slice by slice (no second copy on disk)."""
    import warnings

    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy; rayscore reads it as it is
        _small_model(dim).save(path)
    with h5py.File(path, "a") as fh:
        config = json.loads(fh.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "embedding":
                layer["config"]["input_dim"] = vocab
        fh.attrs["model_config"] = json.dumps(config)
        weights = "model_weights/embedding/embedding/embeddings", "model_weights/score/score/kernel"
        _write_weights(fh, *weights, "model_weights/score/score/bias", vocab, dim)
    return path


def write_savedmodel(path: str | os.PathLike[str], vocab: int, dim: int = DIM) -> Path:
    """A SavedModel directory of the same model (``serving_default``: tokens → score)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.ops import gen_array_ops

    kernel, bias = dense_weights(dim)

    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.Variable(tf.zeros((vocab, dim), tf.float32), name="embedding")
            self.kernel = tf.Variable(kernel, name="kernel")
            self.bias = tf.Variable(bias, name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, SEQ_LEN], tf.int32, name="tokens")])
        def serve(self, tokens):
            pooled = tf.reduce_mean(tf.gather(self.table, tokens), axis=1)
            return {"score": tf.sigmoid(tf.matmul(pooled, self.kernel) + self.bias)}

    module = Scorer()
    for start in range(0, vocab, SLICE_ROWS):  # fill in place: never a second copy of the table
        stop = min(vocab, start + SLICE_ROWS)
        gen_array_ops.resource_strided_slice_assign(
            ref=module.table.handle, begin=[start], end=[stop], strides=[1], value=embedding_rows(start, stop, dim)
        )
    tf.raw_ops.DisableCopyOnRead(resource=module.table.handle)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return Path(path)


def write_tokens(path: str | os.PathLike[str], rows: int, vocab: int, seed: int = 5) -> np.ndarray:
    """A parquet file of ``id`` and ``tokens`` rows spread over the whole table (its last row too)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, SEQ_LEN), dtype=np.int32)
    tokens[0, :] = vocab - 1
    tokens[1, :] = 0
    flat = pa.array(tokens.reshape(-1))
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * SEQ_LEN + 1, SEQ_LEN, dtype=np.int32)), flat)
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64), "tokens": column}), str(path))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.5, help="size of the embedding table in GB (1e9 bytes)")
    parser.add_argument("--out", default="examples/big", help="folder to write into")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of tokens.parquet")
    parser.add_argument("--formats", default="keras,savedmodel")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab_for(args.gb)
    if "keras" in args.formats:
        print("wrote", write_keras(out / "big.keras", vocab))
    if "h5" in args.formats.split(","):
        print("wrote", write_h5(out / "big.h5", vocab))
    if "savedmodel" in args.formats:
        print("wrote", write_savedmodel(out / "big_savedmodel", vocab))
    write_tokens(out / "tokens.parquet", args.rows, vocab)
    print("wrote", out / "tokens.parquet", f"({vocab} x {DIM} table)")


if __name__ == "__main__":
    main()
