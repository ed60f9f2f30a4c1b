"""Integration fixtures: one real local Ray + RayDP Spark for the whole module set,
and the example's multi-input model and feature table built small and fresh.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from make_example import build_model, features_of, make_table

import rayscore

ROWS = 6000
VOCAB = 500


@pytest.fixture(scope="session")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The model (.keras and .h5), its features in three parquet files, and model.predict's answers."""
    root = tmp_path_factory.mktemp("workload")
    model = build_model(vocab=VOCAB, dim=8)
    keras_path = root / "ctr.keras"
    h5_path = root / "ctr.h5"
    model.save(keras_path)
    model.save(h5_path)
    table = make_table(ROWS, vocab=VOCAB, seed=1)
    data = root / "features.parquet"
    data.mkdir()
    for i, start in enumerate(range(0, ROWS, ROWS // 3)):
        pq.write_table(table.slice(start, ROWS // 3), data / f"part-{i}.parquet")
    expected = model.predict(features_of(table), batch_size=2048, verbose=0)
    return {
        "root": root,
        "keras": str(keras_path),
        "h5": str(h5_path),
        "data": str(data),
        "table": table,
        "click": np.asarray(expected["click"])[:, 0],
        "topics": np.asarray(expected["topics"]),
    }


@pytest.fixture(scope="session")
def rs():
    """One rayscore session (local Ray + one RayDP Spark executor) shared by the in-process tests."""
    s = rayscore.Session(max_actors=2)
    s.start()
    yield s
    s.stop()


def read_parquet_dir(path: str | os.PathLike[str]) -> pa.Table:
    """Read a Spark-written parquet directory with pyarrow (ignores _SUCCESS and the report)."""
    files = sorted(p for p in Path(path).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


def assert_matches_model(table: pa.Table, workload: dict, click: str = "click", topics: str = "topics") -> None:
    """Predictions equal model.predict on the same rows (by id) within 1e-5; every id once."""
    ids = table.column("id").to_numpy()
    assert len(ids) == ROWS
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    order = np.argsort(ids)
    got_click = table.column(click).to_numpy()[order]
    got_topics = np.stack(table.column(topics).to_numpy(zero_copy_only=False)[order])
    np.testing.assert_allclose(got_click, workload["click"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_topics, workload["topics"], atol=1e-5, rtol=0)


def settled_free_cpus(rs: rayscore.Session, timeout: float = 60.0) -> float:
    """Free CPUs once nothing but Spark's executors holds any (waits for actors being torn down)."""
    import ray

    expected = ray.cluster_resources()["CPU"] - rs.spark_cpus
    deadline = time.monotonic() + timeout
    free = ray.available_resources().get("CPU", 0.0)
    while free != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        free = ray.available_resources().get("CPU", 0.0)
    return free
