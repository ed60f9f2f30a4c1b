"""Make the example's model and data: ``python examples/make_example.py``.

The model has the shape rayscore was built for, scaled down: four tokenised
title columns sharing one embedding table, an hour-of-week matrix (24 x 7)
fed from a flat ``array<float>`` of 168 values, a scalar price, and two named
outputs (``click``, one value per row, and ``topics``, five values per row).

Writes ``examples/models/ctr.keras`` and ``examples/data/features.parquet``,
the files ``configs/example.yaml`` points at. The tests and benchmarks build
their own copies with the same functions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TITLES = 4
SEQ_LEN = 20
HOURS = (24, 7)
HERE = Path(__file__).resolve().parent


def build_model(vocab: int = 5000, dim: int = 16, seed: int = 7):  # -> keras.Model
    """A small multi-input, multi-output functional Keras model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    titles = [keras.Input((SEQ_LEN,), dtype="int32", name=f"title_{i}") for i in range(TITLES)]
    hour_of_week = keras.Input(HOURS, dtype="float32", name="hour_of_week")
    price = keras.Input((), dtype="float32", name="price")
    embed = keras.layers.Embedding(vocab, dim, name="title_embedding")
    pool = keras.layers.GlobalAveragePooling1D()
    features = [pool(embed(t)) for t in titles]
    features.append(keras.layers.Flatten()(hour_of_week))
    features.append(keras.layers.Reshape((1,))(price))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()(features))
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(hidden)
    topics = keras.layers.Dense(5, activation="softmax", name="topics")(hidden)
    return keras.Model([*titles, hour_of_week, price], {"click": click, "topics": topics}, name="ctr")


def make_table(rows: int, vocab: int = 5000, seed: int = 0) -> pa.Table:
    """Feature rows for :func:`build_model`: list columns built from flat buffers."""
    rng = np.random.default_rng(seed)

    def lists(values: np.ndarray, width: int) -> pa.Array:
        offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))

    columns: dict[str, pa.Array] = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for i in range(TITLES):
        columns[f"title_{i}"] = lists(rng.integers(0, vocab, rows * SEQ_LEN, dtype=np.int32), SEQ_LEN)
    width = HOURS[0] * HOURS[1]
    columns["hour_of_week"] = lists(rng.random(rows * width, dtype=np.float32), width)
    columns["price"] = pa.array(rng.random(rows, dtype=np.float32) * 100)
    return pa.table(columns)


def features_of(table: pa.Table) -> dict[str, np.ndarray]:
    """The model's input arrays for ``table``, built independently of rayscore."""
    rows = table.num_rows
    feeds = {}
    for i in range(TITLES):
        col = table.column(f"title_{i}").combine_chunks()
        feeds[f"title_{i}"] = col.flatten().to_numpy().reshape(rows, SEQ_LEN)
    how = table.column("hour_of_week").combine_chunks()
    feeds["hour_of_week"] = how.flatten().to_numpy().reshape(rows, *HOURS)
    feeds["price"] = table.column("price").to_numpy()
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    model_path = args.out / "models" / "ctr.keras"
    build_model().save(model_path)
    data_path = args.out / "data" / "features.parquet"
    pq.write_table(make_table(args.rows), data_path, row_group_size=10_000)
    print(f"wrote {model_path} and {data_path} ({args.rows} rows)")


if __name__ == "__main__":
    main()
