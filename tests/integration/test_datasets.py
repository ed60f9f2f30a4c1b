"""Ray Datasets in and out: ``rayscore.predict(ds)`` on real Ray Data, scored by the session's pool.

Loads and model calls are counted by the model itself (:mod:`.probes`), not
by rayscore; the 2-core case runs in its own process on a Ray of 2 CPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import rayscore
from rayscore import _pool

from . import probes
from .conftest import ROWS, assert_matches_model, probed_model

pytestmark = pytest.mark.integration


def consume(ds) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def probed(workload: dict, folder: Path, layer: str, **config) -> dict:
    folder.mkdir(exist_ok=True)
    model = probed_model(workload, folder, "click", layer, **config)
    return {"uri": model, "custom_objects": probes.CUSTOM_OBJECTS_PATH}


def test_a_dataset_is_scored_lazily_by_one_pool_that_loads_once_however_often_it_is_consumed(rs, workload, tmp_path):
    import ray

    loads = tmp_path / "loads"
    loads.mkdir()
    model = probed(workload, tmp_path / "models", "LoadProbe", log_dir=str(loads))
    for built in loads.iterdir():  # building it here constructed the probe once too
        built.unlink()
    ds = ray.data.read_parquet(workload["data"])
    scored = rayscore.predict(ds, model=model, keep_columns=["id"], batch_size=500, actors=2)
    assert isinstance(scored, ray.data.Dataset)
    first = consume(scored)
    assert first.column_names == ["id", "click", "topics"]
    assert_matches_model(first, workload)
    assert_matches_model(consume(scored), workload)  # consumed again: the same pool, no new load
    (pool,) = [p for p in _pool._pools.values() if p.model.path == model["uri"]]
    ray.get([a.__ray_ready__.remote() for a in pool.actors])  # Ray Data may have used only the first one loaded
    loaded_in = probes.loads_logged(loads)
    assert len(loaded_in) == len(set(loaded_in)) == 2  # one load per actor, counted by the model itself
    again = rayscore.predict(ds.filter(expr="id < 100"), model=model, keep_columns=["id"], batch_size=500, actors=2)
    assert consume(again).num_rows == 100
    assert len(probes.loads_logged(loads)) == 2  # a new dataset, the session's same pool


def test_a_predictor_killed_mid_dataset_leaves_exactly_one_row_per_input_row(rs, workload, tmp_path):
    import ray

    marker = tmp_path / "killed"
    model = probed(workload, tmp_path / "models", "KillOnFirstCall", marker=str(marker))
    scored = rayscore.predict(
        ray.data.read_parquet(workload["data"]), model=model, keep_columns=["id"], batch_size=300, actors=2
    )
    table = consume(scored)
    assert marker.read_text().strip().isdigit()  # an actor was SIGKILLed in its first call
    assert_matches_model(table, workload)  # every id once, values model.predict's


def test_bad_input_fails_in_one_line_naming_the_column_or_the_row(rs, workload, dirty):
    import ray

    with pytest.raises(rayscore.InputError, match=r"^model input 'price' has no column"):
        rayscore.predict(
            ray.data.read_parquet(workload["data"]).drop_columns(["price"]), model=workload["keras"], actors=1
        )
    scored = rayscore.predict(
        ray.data.read_parquet(dirty["path"]), model=workload["keras"], keep_columns=["id"], batch_size=500, actors=1
    )
    with pytest.raises(rayscore.InputError) as caught:
        consume(scored)
    said = [line for line in str(caught.value).splitlines() if "first bad row" in line]
    assert said and said[-1].endswith("(first bad row: id=20: column 'price': null)"), str(caught.value)


def driver(script: str, workload: dict) -> dict:
    """Run ``script`` (``python -c``, with the data and the model) in a process of its own; its last line, read."""
    done = subprocess.run(
        [sys.executable, "-c", script, workload["data"], workload["keras"]], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


HAND_OFF = """
import json, sys, time
import ray
import rayscore

data, model = sys.argv[1], sys.argv[2]
with rayscore.session(spark={"fault_tolerant_mode": True}, max_actors=1) as s:
    df = s.spark.read.parquet(data)
    began = time.perf_counter()
    ds = ray.data.from_spark(df)  # RayDP: the whole DataFrame, materialised in Ray's object store
    from_spark_s = time.perf_counter() - began
    scored = rayscore.predict(ds, model=model, keep_columns=["id"], batch_size=500, actors=1)
    began = time.perf_counter()
    back = scored.to_spark(s.spark)  # runs the whole dataset, then hands its blocks to Spark
    to_spark_s = time.perf_counter() - began
    rows = back.orderBy("id").collect()
    print(json.dumps({
        "columns": back.columns, "id": [r.id for r in rows], "click": [r.click for r in rows],
        "topics": [list(r.topics) for r in rows], "from_spark_s": from_spark_s, "to_spark_s": to_spark_s,
    }))
"""


def test_a_spark_dataframe_goes_to_a_dataset_and_back_through_raydp(workload):
    """The hand-off between the two worlds, in a RayDP session of its own (fault-tolerant mode, which
    ray.data.from_spark needs): a DataFrame to a Ray Dataset, scored, and back to a DataFrame."""
    seen = driver(HAND_OFF, workload)
    assert seen["columns"] == ["id", "click", "topics"]
    assert_matches_model(pa.table({k: seen[k] for k in ("id", "click", "topics")}), workload)
    assert seen["from_spark_s"] > 0 and seen["to_spark_s"] > 0


TWO_CORES = """
import json, sys
import pyarrow as pa, ray
import rayscore

data, model = sys.argv[1], sys.argv[2]
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
ds = ray.data.read_parquet(data, override_num_blocks=3)
try:
    rayscore.predict(ds, model=model, actors=2)
    refused = None
except rayscore.RayscoreError as exc:
    refused = str(exc)
scored = rayscore.predict(ds, model=model, keep_columns=["id"], batch_size=500, actors=1)
table = pa.concat_tables(ray.get(scored.to_arrow_refs()))
print(json.dumps({"refused": refused, "rows": table.num_rows, "ids": len(set(table.column("id").to_pylist()))}))
"""


def test_on_two_cores_the_hand_off_tasks_hold_no_cpu_and_the_pool_leaves_one_to_the_reads(workload):
    """A Ray of 2 CPUs: one actor (1 CPU) and Ray Data's reads (1 CPU) run; the hand-off tasks hold none, so
    nothing waits for a CPU that never frees. Two actors would take both: refused before anything runs."""
    seen = driver(TWO_CORES, workload)
    assert (seen["rows"], seen["ids"]) == (ROWS, ROWS)
    assert seen["refused"] is not None and "predict.actors" in seen["refused"], seen["refused"]
