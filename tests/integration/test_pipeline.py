"""The whole path on a real local Ray + RayDP Spark with a real multi-input Keras model."""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayscore

from . import probes
from .conftest import ROWS, assert_matches_model, probed_model, read_parquet_dir, settled_free_cpus, wait_until

pytestmark = pytest.mark.integration


def job(workload: dict, out: Path, **overrides) -> dict:
    """A run() config for the workload; sections in ``overrides`` are merged in."""
    cfg = {
        "input": {"format": "parquet", "path": workload["data"]},
        "model": {"uri": workload["keras"]},
        "predict": {"batch_size": 500, "actors": 2},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def leftovers(parent: Path) -> list[str]:
    """Anything rayscore may have written under ``parent`` (staging dirs included)."""
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_predict_is_lazy_and_every_action_streams_through_the_sessions_one_pool(rs, workload, tmp_path):
    """predict() returns a DataFrame at once; each action scores it anew on the same actors (no new load)."""
    from rayscore import _pool

    seen: list[rayscore.Progress] = []
    ended = threading.Event()

    def watch(p: rayscore.Progress) -> None:
        seen.append(p)
        if p.done:
            ended.set()

    df = rs.spark.read.parquet(workload["data"])
    scored = rayscore.predict(
        df, model=workload["keras"], keep_columns=["id"], batch_size=700, actors=2, progress=watch
    )
    assert scored.columns == ["id", "click", "topics"]
    assert dict(scored.dtypes) == {"id": "bigint", "click": "float", "topics": "array<float>"}
    (pool,) = [p for p in _pool._pools.values() if p.model.path == workload["keras"] and p.plan.max_actors == 2]
    assert pool.loads()["first_scored"] is None  # nothing scored until an action runs
    assert scored.count() == ROWS
    assert ended.wait(60)  # the watch saw Spark go idle: the action's last look
    counted, ended = list(seen), threading.Event()
    scored.write.parquet(str(tmp_path / "scores.parquet"))
    assert ended.wait(60)
    wrote = seen[len(counted) :]
    for action in (counted, wrote):  # each action's progress counts its own rows, monotone, and ends done
        rows = [p.rows_scored for p in action]
        assert rows == sorted(rows) and rows[-1] == ROWS and action[-1].done
        assert {p.phase for p in action[:-1]} == {"predict"} and action[-1].phase == "done"
    assert_matches_model(read_parquet_dir(tmp_path / "scores.parquet"), workload)
    again = rayscore.predict(df.limit(10), model=workload["keras"], keep_columns=["id"], batch_size=700, actors=2)
    assert again.count() == 10
    assert pool.loads()["model_loads"] == 2  # one load per actor for the session, however many actions
    assert scored.schema["click"].metadata["rayscore"]["model_fingerprint"].startswith("sha256:")


def test_a_keras_models_outputs_kept_on_the_node_let_a_later_call_return_while_its_actors_load(
    rs, workload, tmp_path, monkeypatch
):
    """A .keras file does not state its outputs' shapes: the first call waits for an actor's load, and the
    outputs it reports are kept by the model's digest; a later call, whose new pool cannot finish loading
    (a layer holds its load until the test lets go), returns with the columns typed, and its write scores."""
    import rayscore._model
    from rayscore import _pool

    monkeypatch.setattr(rayscore._model, "SETTLED_S", -1.0)  # the model just written counts as settled
    gate, log, models = tmp_path / "gate", tmp_path / "loads", tmp_path / "models"
    log.mkdir(), models.mkdir(), gate.touch()
    model = probed_model(workload, models, "click", "GatedLoad", gate=str(gate), log_dir=str(log), timeout_s=90.0)
    for built in log.iterdir():  # building it here constructed the layer once too
        built.unlink()
    settings = {"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}
    df = rs.spark.read.parquet(workload["data"])

    first = rayscore.predict(df, model=settings, keep_columns=["id"], batch_size=500, progress=False)
    assert len(probes.loads_logged(log)) == 1  # the call waited for its actor's load
    assert first.count() == ROWS

    gate.unlink()  # the next pool's actor cannot finish its load
    second = rayscore.predict(df, model=settings, keep_columns=["id"], batch_size=600, progress=False)
    pools = [p for key, p in _pool._pools.items() if p.model.path == model and key[-1] == 600]
    assert len(pools) == 1 and len(probes.loads_logged(log)) == 1  # a new pool; the call returned before its load
    assert dict(second.dtypes) == {"id": "bigint", "click": "float", "topics": "array<float>"}
    gate.touch()
    second.write.parquet(str(tmp_path / "scores.parquet"))
    assert len(probes.loads_logged(log)) == 2
    assert_matches_model(read_parquet_dir(tmp_path / "scores.parquet"), workload)


def objects_held(address: str) -> int:
    """How many objects Ray's object store holds across the cluster, as ``ray memory --stats-only`` says."""
    from ray._private.internal_api import memory_summary

    store = memory_summary(address=address, stats_only=True)
    held = re.search(r"(\d+) objects", store)
    assert held, store
    return int(held.group(1))


def test_predict_runs_one_one_task_spark_job_scores_nothing_and_an_action_leaves_nothing_held(
    rs, workload, tmp_path, request
):
    """What predict() does at the call, and what an action leaves, seen by Spark's status tracker, the
    model's own call log, Spark's persisted RDDs and Ray's object store. The input is 24 files, one
    partition each: the sample check reads the one that holds its rows (Spark orders the partitions by
    size, the 1,400-row file first), where a ``limit`` collected as Arrow would run a task on all 24."""
    import ray

    from rayscore._source import head_table

    models, calls, data = tmp_path / "models", tmp_path / "calls", tmp_path / "features"
    models.mkdir()
    data.mkdir()
    model = probed_model(workload, models, "click", "CallLog", log=str(calls))
    first, rest = 1400, (ROWS - 1400) // 23
    for i, start in enumerate([0, *range(first, ROWS, rest)]):
        pq.write_table(workload["table"].slice(start, first if i == 0 else rest), data / f"part-{i:02d}.parquet")
    sc = rs.spark.sparkContext
    # Files this small would be packed into a partition or two: at most 2 MiB a partition keeps one each.
    rs.spark.conf.set("spark.sql.files.maxPartitionBytes", str(2 << 20))
    request.addfinalizer(lambda: rs.spark.conf.unset("spark.sql.files.maxPartitionBytes"))
    assert max(f.stat().st_size for f in data.iterdir()) < 2 << 20
    df = rs.spark.read.parquet(str(data))
    assert df.rdd.getNumPartitions() == 24
    address = ray.get_runtime_context().gcs_address
    held_before = objects_held(address)  # an earlier test's datasets may hold some
    sc.setJobGroup("the predict call", "jobs run by rayscore.predict itself")
    try:
        scored = rayscore.predict(
            df, model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}, keep_columns=["id"], progress=False
        )
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup("the predict call")
    stages = [tracker.getStageInfo(stage) for job in jobs for stage in tracker.getJobInfo(job).stageIds]
    assert sum(stage.numTasks for stage in stages) == 1, [(stage.name, stage.numTasks) for stage in stages]
    assert len(jobs) == 1  # the sample check's take, and nothing else
    lines, first_line = inspect.getsourcelines(head_table)
    sample_at = {f"{inspect.getsourcefile(head_table)}:{first_line + i}" for i in range(len(lines))}
    for stage in stages:
        assert stage.name.split(" at ")[1] in sample_at  # Spark names the caller
    assert not calls.exists()  # no model call yet: the actor loaded (a .keras file) and waits
    assert scored.count() == ROWS
    scored_rows = sum(int(line.split()[1]) for line in calls.read_text().splitlines())
    assert scored_rows == ROWS  # the action scored each row once
    assert sc._jsc.getPersistentRDDs().isEmpty()
    # No batch left in Ray's object store: its owners let go of each, and Ray frees them shortly after.
    left = wait_until(lambda: objects_held(address) <= held_before, timeout=30)
    assert left, f"Ray's object store holds {objects_held(address)} objects, {held_before} before the action"


def test_batch_size_auto_calls_the_model_with_the_rows_its_row_bytes_allow(rs, tmp_path):
    """``batch_size: auto`` seen by the model's own call log: a row of 1,000 floats (4,004 bytes with its
    output) makes calls of 4,096 rows (the largest power of two within 16 MiB), a partition's last the rest."""
    import keras

    from rayscore._config import ModelConfig
    from rayscore._placement import row_bytes
    from rayscore._plan import inspect_model
    from rayscore._sizing import auto_batch_rows

    width, rows, calls = 1000, 6000, tmp_path / "calls"
    wide = keras.Input((width,), name="wide")
    logged = probes.CallLog(log=str(calls))(wide)
    model = keras.Model(wide, {"score": keras.layers.Dense(1, name="score")(logged)})
    path = str(tmp_path / "wide.keras")
    model.save(path)
    values = np.random.default_rng(3).standard_normal((rows, width), dtype=np.float32)
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    table = pa.table(
        {"id": np.arange(rows, dtype=np.int64), "wide": pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))}
    )
    pq.write_table(table, tmp_path / "wide.parquet")
    spec = inspect_model(ModelConfig(uri=path, custom_objects=probes.CUSTOM_OBJECTS_PATH))[1]
    assert (row_bytes(spec), auto_batch_rows(row_bytes(spec))) == (4004, 4096)

    df = rs.spark.read.parquet(str(tmp_path / "wide.parquet")).repartition(1)  # one task: its calls in order
    scored = rayscore.predict(
        df, model={"uri": path, "custom_objects": probes.CUSTOM_OBJECTS_PATH}, keep_columns=["id"], progress=False
    )
    got = pa.Table.from_batches(scored._collect_as_arrow()).sort_by("id")
    assert [int(line.split()[1]) for line in calls.read_text().splitlines()] == [4096, rows - 4096]
    expected = model.predict(values, verbose=0)["score"][:, 0]
    assert got.column("id").to_numpy().tolist() == list(range(rows))
    np.testing.assert_allclose(got.column("score").to_numpy(), expected, atol=1e-5)


def test_batch_size_auto_keeps_a_calls_embedding_lookups_within_their_bound(rs, tmp_path):
    """``batch_size: auto`` seen by the model's own call log when lookups bind: 100 ids a row through a
    512-wide table make 204,800 bytes of lookups a row (from 400 of ids), so calls of 512 rows
    (the largest power of two within 128 MiB), a partition's last the rest."""
    import keras

    from rayscore._config import ModelConfig
    from rayscore._placement import row_bytes
    from rayscore._plan import inspect_model
    from rayscore._sizing import auto_batch_rows

    width, rows, calls = 100, 1200, tmp_path / "calls"
    ids = keras.Input((width,), dtype="int32", name="ids")
    logged = probes.CallLog(log=str(calls))(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 512)(logged))
    model = keras.Model(ids, {"score": keras.layers.Dense(1, name="score")(pooled)})
    path = str(tmp_path / "ids.keras")
    model.save(path)
    values = np.random.default_rng(4).integers(0, 50, (rows, width), dtype=np.int32)
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    table = pa.table(
        {"id": np.arange(rows, dtype=np.int64), "ids": pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))}
    )
    pq.write_table(table, tmp_path / "ids.parquet")
    spec = inspect_model(ModelConfig(uri=path, custom_objects=probes.CUSTOM_OBJECTS_PATH))[1]
    assert spec.lookup_row_bytes == width * 512 * 4
    assert (auto_batch_rows(row_bytes(spec)), auto_batch_rows(row_bytes(spec), spec.lookup_row_bytes)) == (16384, 512)

    df = rs.spark.read.parquet(str(tmp_path / "ids.parquet")).repartition(1)  # one task: its calls in order
    scored = rayscore.predict(
        df, model={"uri": path, "custom_objects": probes.CUSTOM_OBJECTS_PATH}, keep_columns=["id"], progress=False
    )
    got = pa.Table.from_batches(scored._collect_as_arrow()).sort_by("id")
    assert [int(line.split()[1]) for line in calls.read_text().splitlines()] == [512, 512, rows - 1024]
    expected = model.predict(values, verbose=0)["score"][:, 0]
    assert got.column("id").to_numpy().tolist() == list(range(rows))
    np.testing.assert_allclose(got.column("score").to_numpy(), expected, atol=1e-5)


def test_run_writes_output_report_and_counts_one_load_per_actor(rs, workload, tmp_path):
    """One load per actor, counted by the model itself: a layer that logs each construction's pid."""
    log, models = tmp_path / "loads", tmp_path / "models"
    log.mkdir(), models.mkdir()
    model = probed_model(workload, models, "click", "LoadProbe", log_dir=str(log))
    for built in log.iterdir():  # building it here constructed the layer once too
        built.unlink()
    out = tmp_path / "out" / "scores.parquet"
    result = rayscore.run(
        job(
            workload,
            out,
            model={
                "uri": model,
                "custom_objects": probes.CUSTOM_OBJECTS_PATH,
                "outputs": {"click": "click_prob", "topics": "topic_probs"},
            },
        ),
        session=rs,
    )
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    assert result.model_loads == 2  # loads = actors, not batches (6000 rows / 500 = 12 batches)
    loaded_in = probes.loads_logged(log)
    assert len(loaded_in) == len(set(loaded_in)) == 2  # two processes, each loading once
    assert set(loaded_in) == {a["pid"] for a in result.actor_loads}  # the pool's actors, as the report says
    assert os.getpid() not in loaded_in  # the driver reads the model's config, never builds the model
    assert result.actors == {"min": 2, "max": 2}
    assert result.output == str(out)
    assert result.output_columns == ["id", "click_prob", "topic_probs"]
    assert result.output_shapes == {"click": [1], "topics": [5]}
    assert set(result.seconds) == {"startup", "read_convert", "load", "predict", "write", "first_prediction", "total"}
    assert 0 < result.seconds["first_prediction"] < result.seconds["total"]
    assert all(v >= 0 for v in result.seconds.values())
    assert (out / "_SUCCESS").exists()
    report = json.loads((out / "_rayscore_report.json").read_text())
    assert report["rows_in"] == report["rows_out"] == ROWS
    assert report["model_uri"] == model
    assert report["model_loads"] == 2
    assert_matches_model(read_parquet_dir(out), workload, click="click_prob", topics="topic_probs")
    assert leftovers(out.parent) == ["scores.parquet"]


def test_spark_reads_while_the_model_scores_and_runs_ahead_only_by_what_its_pipes_hold(rs, workload, tmp_path):
    """Streaming seen from outside: a source that logs each chunk of rows it reads (a parquet file read 100
    rows at a time, eight times over, per partition) against the model's own log of each call it starts.
    A design that read its input, or a partition, before scoring would fail each assert below."""
    from pyspark.sql.pandas.types import from_arrow_schema

    models, reads, calls = tmp_path / "models", tmp_path / "reads", tmp_path / "calls"
    models.mkdir()
    model = probed_model(workload, models, "click", "CallLog", log=str(calls))
    data, chunk, parts, repeats = workload["data"], 100, 3, 8

    def source(part: int, _) -> Iterator[tuple]:
        import time

        for _ in range(repeats):
            for batch in pq.ParquetFile(f"{data}/part-{part}.parquet").iter_batches(batch_size=chunk):
                with open(reads, "a") as log:
                    log.write(f"{time.time_ns()} {part} {batch.num_rows}\n")
                yield from (tuple(row.values()) for row in batch.to_pylist())

    sc = rs.spark.sparkContext
    slots = sc.defaultParallelism
    rows_in = ROWS * repeats
    df = rs.spark.createDataFrame(
        sc.parallelize(range(parts), parts).mapPartitionsWithIndex(source), from_arrow_schema(workload["table"].schema)
    )
    rs.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk))
    try:
        scored = rayscore.predict(
            df,
            model={"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH},
            keep_columns=["id"],
            batch_size=chunk,
            actors=1,
            progress=False,
        )
        reads.unlink()  # what predict's sample check read: not the action's
        scored.write.format("noop").mode("overwrite").save()
    finally:
        rs.spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    read = [tuple(map(int, line.split())) for line in reads.read_text().splitlines()]  # (ns, partition, rows)
    call = [tuple(map(int, line.split())) for line in calls.read_text().splitlines()]  # (ns, rows, pid)
    assert sum(r[2] for r in read) == sum(c[1] for c in call) == rows_in  # every row read once, scored once
    first_call = call[0][0]
    # Spark reads only the partitions its task slots run; the others wait until a task's rows are scored.
    assert {r[1] for r in read if r[0] < first_call} == set(range(slots))
    assert min(r[0] for r in read if r[1] == slots) > first_call
    # Inside a task, reading goes on while the model scores.
    for part in range(slots):
        assert max(r[0] for r in read if r[1] == part) > first_call
    # Rows read but not yet scored, at each model call: what Spark's pipes to its Python workers hold (the
    # kernel's socket buffers, a few MB per task) plus rayscore's two batches in flight. Measured here at
    # about 6,700 rows of 1 KB per task (bench/RESULTS.md); never the input.
    lead = max(sum(r[2] for r in read if r[0] <= t) - sum(c[1] for c in call if c[0] <= t) for t, _, _ in call)
    assert lead < 0.4 * rows_in, lead


def test_an_sql_input_with_a_filter_is_streamed_through_the_pool(rs, workload, tmp_path):
    """Any DataFrame takes the one path: Spark reads it, the pool scores its batches, Spark writes them."""
    out = tmp_path / "scores.parquet"
    query = f"SELECT * FROM parquet.`{workload['data']}` WHERE id % 3 != 0"
    result = rayscore.run(job(workload, out, input={"format": "sql", "query": query, "path": None}), session=rs)
    kept = [i for i in range(ROWS) if i % 3]
    assert (result.rows_in, result.rows_out, result.model_loads) == (len(kept), len(kept), 2)
    table = read_parquet_dir(out).sort_by("id")
    assert table.column("id").to_pylist() == kept
    np.testing.assert_allclose(table.column("click").to_numpy(), workload["click"][kept], atol=1e-5, rtol=0)
    assert leftovers(tmp_path) == ["scores.parquet"]


def test_a_filtered_parquet_dataframe_is_read_by_spark_and_scores_only_its_rows(rs, workload, tmp_path):
    """Only the filter's rows are scored, in whatever order Spark gives them."""
    df = rs.spark.read.parquet(workload["data"]).filter("id % 2 = 0")
    scored = rayscore.predict(df, model=workload["keras"], keep_columns=["id"], actors=2)
    rows = scored.orderBy("id").select("id", "click").collect()
    assert [r.id for r in rows] == list(range(0, ROWS, 2))
    np.testing.assert_allclose([r.click for r in rows], workload["click"][::2], atol=1e-5, rtol=0)


def test_an_autoscaling_pool_scores_on_its_minimum_while_the_rest_wait_for_room(rs, workload, tmp_path):
    """``actors: {min: 1, max: 2}`` with room for one actor: the job runs on it; the queued one is cancelled.

    Also: an .h5 model, an SQL source and renamed inputs and outputs.
    """
    import ray

    free = settled_free_cpus(rs)  # the room beside Spark's executor: one CPU per actor

    class Holder:  # takes one actor's CPU for as long as it lives
        pass

    holder = ray.remote(Holder).options(num_cpus=free - 1).remote()
    ray.get(holder.__ray_ready__.remote())
    rs.spark.read.parquet(workload["data"]).createOrReplaceTempView("features")
    query = (
        "SELECT id, title_0 AS t0, title_1 AS t1, title_2 AS t2, title_3 AS t3, "
        "hour_of_week AS how, CAST(price AS DOUBLE) AS p FROM features"
    )
    inputs = {"title_0": "t0", "title_1": "t1", "title_2": "t2", "title_3": "t3", "hour_of_week": "how", "price": "p"}
    out = tmp_path / "scores.csv"
    try:
        result = rayscore.run(
            {
                "input": {"format": "sql", "query": query},
                "model": {"uri": workload["h5"], "inputs": inputs, "outputs": {"click": "click"}},
                "predict": {"batch_size": 256, "actors": {"min": 1, "max": 2}},
                "output": {"path": str(out), "format": "csv", "keep_columns": ["id"]},
            },
            session=rs,
        )
    finally:
        ray.kill(holder)
    assert result.rows_out == ROWS
    assert result.actors == {"min": 1, "max": 2}  # as asked: the node's total room holds both
    assert result.model_loads == 1  # scoring began on the minimum; the second actor never found room
    assert settled_free_cpus(rs) == free  # the queued actor went with the pool
    assert result.model_format == "h5"
    written = rs.spark.read.option("header", "true").option("inferSchema", "true").csv(str(out))
    assert written.columns == ["id", "click"]
    rows = written.toPandas().sort_values("id")
    assert np.array_equal(rows["id"].to_numpy(), np.arange(ROWS))
    np.testing.assert_allclose(rows["click"].to_numpy(), workload["click"], atol=1e-5, rtol=0)


def test_mode_error_refuses_existing_output_and_overwrite_replaces_it(rs, workload, tmp_path):
    out = tmp_path / "scores.parquet"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(
        rayscore.OutputError, match=r"output.path: .*scores.parquet exists \(set output.mode: overwrite"
    ):
        rayscore.run(job(workload, out), session=rs)
    assert leftovers(out) == ["old.txt"]
    result = rayscore.run(job(workload, out, output={"mode": "overwrite"}), session=rs)
    assert result.rows_out == ROWS
    assert not (out / "old.txt").exists()
    assert_matches_model(read_parquet_dir(out), workload)
    assert leftovers(tmp_path) == ["scores.parquet"]


@pytest.fixture(scope="module")
def bad_data(workload, tmp_path_factory) -> dict:
    """Feature files that do not fit the model: a short hour_of_week, a string title."""
    root = tmp_path_factory.mktemp("bad")
    table = workload["table"].slice(0, 300)
    short = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 301 * 100, 100, dtype=np.int32)),
        pa.array(np.zeros(300 * 100, dtype=np.float32)),
    )
    pq.write_table(
        table.set_column(table.schema.get_field_index("hour_of_week"), "hour_of_week", short), root / "short.parquet"
    )
    as_text = pa.array([str(v) for v in range(300)])
    pq.write_table(table.set_column(table.schema.get_field_index("title_2"), "title_2", as_text), root / "text.parquet")
    pq.write_table(table.drop_columns(["price"]), root / "no_price.parquet")
    pq.write_table(table.slice(0, 0), root / "empty.parquet")
    return {
        "short": str(root / "short.parquet"),
        "text": str(root / "text.parquet"),
        "no_price": str(root / "no_price.parquet"),
        "empty": str(root / "empty.parquet"),
    }


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            {
                "model": {
                    "inputs": {
                        "title_0": "title_0",
                        "title_1": "title_1",
                        "title_2": "title_2",
                        "title_3": "nope",
                        "hour_of_week": "hour_of_week",
                        "price": "price",
                    }
                }
            },
            rayscore.InputError,
            "model input 'title_3' needs column 'nope', which the input does not have (columns: id, title_0",
        ),
        (
            {"input": {"path": "no_price"}},
            rayscore.InputError,
            "model input 'price' has no column: the input has no column 'price' and model.inputs does not map it",
        ),
        (
            {"input": {"path": "short"}},
            rayscore.InputError,
            "column 'hour_of_week' has 100 values per row, model input 'hour_of_week' expects 168 (shape [24, 7])",
        ),
        (
            {"input": {"path": "text"}},
            rayscore.InputError,
            "column 'title_2' has type string, but model input 'title_2' expects numbers (int32, shape [20])",
        ),
        (
            {"output": {"keep_columns": ["id", "user"]}},
            rayscore.InputError,
            "output.keep_columns: column 'user' is not in the input",
        ),
        (
            {"output": {"keep_columns": ["id", "price"]}, "model": {"outputs": {"click": "price"}}},
            rayscore.ConfigError,
            "output.keep_columns: 'price' is also a model output column",
        ),
        (
            {"model": {"outputs": {"clicks": "c"}}},
            rayscore.ConfigError,
            "model.outputs: 'clicks' is not an output of the model (outputs: click, topics)",
        ),
        # Found by Spark's side while the pool starts: raised as itself, not as the read tasks' echo.
        ({"input": {"path": "empty"}}, rayscore.InputError, "the input has no rows; nothing to score"),
    ],
    ids=[
        "missing-column",
        "input-without-column",
        "wrong-array-length",
        "string-column",
        "missing-keep-column",
        "keep-column-clash",
        "unknown-output",
        "empty-input",
    ],
)
def test_bad_input_is_reported_before_scoring_and_nothing_is_written(
    rs, workload, bad_data, tmp_path, change, error, message
):
    if "input" in change:
        change = {"input": {"path": bad_data[change["input"]["path"]]}}
    out = tmp_path / "scores.parquet"
    with pytest.raises(error) as caught:
        rayscore.run(job(workload, out, **change), session=rs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert leftovers(tmp_path) == []


def test_ragged_rows_after_the_sample_fail_in_the_actor_with_the_same_message(rs, workload, tmp_path):
    """Rows past the pre-flight sample are checked per batch inside the actors."""
    table = workload["table"].slice(0, 3000)
    how = table.column("hour_of_week").combine_chunks()
    lengths = np.full(3000, 168, dtype=np.int32)
    lengths[2500] = 167
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ragged = pa.ListArray.from_arrays(pa.array(offsets), how.flatten().slice(0, int(offsets[-1])))
    data = tmp_path / "ragged.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("hour_of_week"), "hour_of_week", ragged), data)
    out = tmp_path / "scores.parquet"
    with pytest.raises(rayscore.InputError, match=r"column 'hour_of_week' is ragged: rows hold 167 to 168 values"):
        rayscore.run(job(workload, out, input={"path": str(data)}), session=rs)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["ragged.parquet"]
    # The failed pool's actors are stopped, not left to the garbage collector with their CPUs.
    import ray

    assert settled_free_cpus(rs) == ray.cluster_resources()["CPU"] - rs.spark_cpus


def test_a_local_session_keeps_token_auth_and_starts_no_dashboard_or_spark_ui(rs):
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert is_token_auth_enabled()
    # Ray keeps a minimal dashboard process for its own bookkeeping: no web frontend, no listening port.
    for info in ray._private.worker._global_node.all_processes.get("dashboard", []):
        proc = psutil.Process(info.process.pid)
        assert "--disable-frontend" in proc.cmdline()
        assert not [c for c in proc.net_connections() if c.status == psutil.CONN_LISTEN]
    assert rs.spark.conf.get("spark.ui.enabled") == "false"


def test_the_sessions_jvms_keep_the_jvms_defaults_but_for_java_17s_module_rules(rs):
    """Spark's driver and executor JVMs: the add-opens reach each command line; bytecode is verified, the JIT whole."""
    assert rs.spark.range(100).count() == 100  # an executor is up
    ours = psutil.Process().children(recursive=True)  # this session's Ray and Spark, no one else's
    java = [proc.cmdline() for proc in ours if proc.name() == "java"]
    driver = [c for c in java if "org.apache.spark.deploy.SparkSubmit" in c]
    # RayDP's app master and its executor are Ray actors: they run in Ray's generic Java worker.
    ray_java_workers = [c for c in java if "io.ray.runtime.runner.worker.DefaultWorker" in c]
    assert len(driver) == 1
    assert len(ray_java_workers) >= 2  # the app master's actor and the one executor's
    for flags in [*driver, *ray_java_workers]:
        assert "--add-opens=java.base/java.nio=ALL-UNNAMED" in flags
    for flags in java:
        assert not [
            f
            for f in flags
            if f.startswith(
                (
                    "-XX:-BytecodeVerification",
                    "-XX:TieredStopAtLevel",
                    "-XX:SharedArchiveFile",
                    "-XX:ArchiveClassesAtExit",
                )
            )
        ]


def test_actors_auto_sizes_the_pool_from_the_node_and_reports_it(rs, workload, tmp_path):
    out = tmp_path / "scores.parquet"
    room = settled_free_cpus(rs)  # the session's CPUs beside Spark's executor
    result = rayscore.run(job(workload, out, predict={"actors": "auto"}), session=rs)
    assert result.rows_out == ROWS
    # Everything that fits: one actor per CPU (the node's memory holds many more copies of this small model).
    assert result.actors == {"min": 1, "max": int(room)}
    assert 1 <= result.model_loads <= room  # scoring begins on the first; the others load meanwhile
    assert result.memory_per_actor > result.model_bytes
    # What each actor asks Ray for counts its process before the model (TensorFlow imported) too, and that
    # figure is of the size the actors measure (their RSS also counts the libraries' pages they share).
    from rayscore._placement import ACTOR_PROCESS_BYTES

    assert result.memory_per_actor >= ACTOR_PROCESS_BYTES + result.model_bytes
    assert ACTOR_PROCESS_BYTES / 2 < max(a["rss_before_load"] for a in result.actor_loads) < 2 * ACTOR_PROCESS_BYTES


def test_a_pool_that_fits_no_node_is_refused_before_it_starts(rs, workload, tmp_path):
    import ray

    out = tmp_path / "scores.parquet"
    with pytest.raises(rayscore.ConfigError) as caught:
        rayscore.run(job(workload, out, predict={"memory_factor": 1e7}), session=rs)
    message = str(caught.value)
    assert message.startswith("model: one actor needs ")
    assert "the largest node has " in message and "\n" not in message
    assert leftovers(tmp_path) == []
    # Nothing holds a CPU but Spark's executor (an earlier test's pool may still be winding down).
    assert settled_free_cpus(rs) == ray.cluster_resources()["CPU"] - rs.spark_cpus


def test_a_savedmodel_directory_is_scored_through_its_serving_signature(rs, workload, tmp_path):
    import keras

    saved = tmp_path / "ctr_savedmodel"
    keras.saving.load_model(workload["keras"]).export(str(saved))  # a TF SavedModel with serving_default
    out = tmp_path / "scores.parquet"
    result = rayscore.run(job(workload, out, model={"uri": str(saved)}), session=rs)
    assert result.model_format == "savedmodel"
    assert result.rows_out == ROWS
    assert_matches_model(read_parquet_dir(out), workload)
    with pytest.raises(rayscore.ModelError, match=r"model.signature: 'nope' is not a signature of .*ctr_savedmodel"):
        rayscore.run(
            job(workload, tmp_path / "other.parquet", model={"uri": str(saved), "signature": "nope"}), session=rs
        )
    assert not (tmp_path / "other.parquet").exists()
