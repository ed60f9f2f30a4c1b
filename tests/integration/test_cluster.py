"""Beyond one machine: a real two-node Ray cluster on loopback, one node with (logical) GPUs.

Each node has its own model cache directory (``RAYSCORE_CACHE_DIR`` in its
environment), standing in for another host's local disk. Jobs run through
the CLI, joining the cluster as a user's driver would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import ROWS, assert_matches_model, read_parquet_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head node with 3 CPUs and a second node with 3 CPUs and 2 logical GPUs."""
    from ray.cluster_utils import Cluster

    caches = tmp_path_factory.mktemp("caches")
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 3,
            "num_gpus": 0,
            "include_dashboard": False,
            "env_vars": {"RAYSCORE_CACHE_DIR": str(caches / "head")},
        },
    )
    cluster.add_node(num_cpus=3, num_gpus=2, env_vars={"RAYSCORE_CACHE_DIR": str(caches / "gpu-node")})
    cluster.wait_for_nodes()
    yield cluster, caches
    cluster.shutdown()


def run_cli(config: dict, tmp_path: Path, env: dict | None = None) -> dict:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "rayscore", "run", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def probe(address: str) -> dict:
    """The cluster seen from a fresh driver: free vs total resources, live actors and placement groups."""
    code = f"""
import json, ray
from ray._private import state
ray.init(address={address!r}, logging_level="ERROR")
ours = ("Predictor", "LoadLedger", "RayDP", "RayAppMaster", "SPARK_MASTER")
# Ray Data keeps a few detached, cluster-wide helpers (stats, autoscaling) for every job: Ray's, not ours.
actors = [a for a in state.actors().values() if a["State"] != "DEAD" and
          (not a.get("IsDetached") or any(o in (a.get("ActorClassName") or "") + (a.get("Name") or "") for o in ours))]
groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
print(json.dumps({{"total": ray.cluster_resources(), "free": ray.available_resources(),
                   "nodes": len([n for n in ray.nodes() if n["Alive"]]), "actors": len(actors),
                   "groups": len(groups)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_left_clean(address: str) -> None:
    """Still running, and once the job's driver is gone nothing of rayscore's holds anything."""
    deadline = time.monotonic() + 60
    seen = probe(address)
    while (
        seen["actors"] or seen["groups"] or seen["free"].get("CPU") != seen["total"].get("CPU")
    ) and time.monotonic() < deadline:
        seen = probe(address)
    assert seen["nodes"] == 2
    assert seen["actors"] == 0 and seen["groups"] == 0
    assert seen["free"].get("CPU") == seen["total"].get("CPU") == 6
    assert seen["free"].get("GPU") == seen["total"].get("GPU") == 2


def cache_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*-ctr.keras")) if folder.exists() else []


def job(workload: dict, out: Path, address: str, model: dict | None = None, **predict) -> dict:
    return {
        "input": {"path": workload["data"]},
        "model": {"uri": workload["keras"], "cache_dir": "/nonexistent/overridden-by-each-node", **(model or {})},
        "predict": {"batch_size": 500, "actors": 2, **predict},
        "output": {"path": str(out), "keep_columns": ["id"]},
        "ray": {"address": address},
    }


def test_actors_spread_over_both_nodes_with_one_model_copy_per_node_cache(two_nodes, workload, tmp_path):
    cluster, caches = two_nodes
    for node_cache in caches.iterdir():  # whatever ran before: each node starts without a copy
        shutil.rmtree(node_cache)
    out = tmp_path / "scores.parquet"
    # The example's table (500 x 8 float32: 16,000 bytes) mapped: each actor maps its node's copy.
    report = run_cli(job(workload, out, cluster.address, model={"mmap_min_bytes": 1024}), tmp_path)
    assert (report["rows_in"], report["rows_out"]) == (ROWS, ROWS)
    assert report["nodes"] == 2 and report["model_loads"] == 2
    assert [a["mapped_tables"] for a in report["actor_loads"]] == [["title_embedding"]] * 2
    assert report["table_bytes_resident_peak"] > 0
    assert report["model_copies"] == 2  # one per node, each into that node's own cache
    assert len(cache_entries(caches / "head")) == 1
    assert len(cache_entries(caches / "gpu-node")) == 1
    assert_matches_model(read_parquet_dir(out), workload)
    assert_left_clean(cluster.address)


def test_gpu_actors_get_distinct_gpus_on_the_gpu_node_and_reuse_its_cached_model(two_nodes, workload, tmp_path):
    cluster, caches = two_nodes
    # The node already holds a verified copy (put there as its first actor would), whatever ran before.
    from rayscore._cache import cached_model
    from rayscore._model import fingerprint

    copy = cached_model(workload["keras"], str(caches / "gpu-node"), fingerprint=fingerprint(workload["keras"]))
    before = Path(copy.path).stat()
    out = tmp_path / "scores.parquet"
    report = run_cli(job(workload, out, cluster.address, model={"mmap_min_bytes": 1024}, gpus_per_actor=1), tmp_path)
    assert report["rows_out"] == ROWS
    assert [a["mapped_tables"] for a in report["actor_loads"]] == [[], []]  # GPU actors: on the device by default
    [table] = [t for t in report["tables"] if t["layer"] == "title_embedding"]
    assert table["reason"] == "a GPU actor keeps its tables on the device (model.mmap_on_gpu: false)"
    assert report["nodes"] == 1  # only the second node has GPUs
    assert report["gpu_ids"] == ["0", "1"]  # one GPU each, as Ray assigned them
    # Each actor's TensorFlow sees only its own GPU: Ray set CUDA_VISIBLE_DEVICES to what it assigned.
    seen = sorted((a["gpu_ids"], a["cuda_visible_devices"]) for a in report["actor_loads"])
    assert seen == [(["0"], "0"), (["1"], "1")]
    assert report["model_copies"] == 0  # the node's verified copy is reused...
    after = Path(copy.path).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # ...not written again
    assert cache_entries(caches / "gpu-node") == [Path(copy.path).name]
    assert_matches_model(read_parquet_dir(out), workload)
    assert_left_clean(cluster.address)


HOLD_A_GPU = """
import ray, sys
ray.init(address=sys.argv[1], logging_level="ERROR")

@ray.remote(num_cpus=0, num_gpus=1)
class Holder:
    def gpu(self):
        return ray.get_gpu_ids()[0]

holder = Holder.remote()
print(ray.get(holder.gpu.remote()), flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


def test_half_a_gpu_per_actor_puts_two_actors_on_one_gpu(two_nodes, workload, tmp_path):
    """With one of the node's two GPUs held elsewhere, two half-GPU actors must share the other one."""
    cluster, _ = two_nodes
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_GPU, cluster.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        held = holder.stdout.readline().strip()
        assert held in ("0", "1"), held
        free = "1" if held == "0" else "0"
        out = tmp_path / "scores.parquet"
        mapped = {"mmap_min_bytes": 1024, "mmap_on_gpu": True}
        report = run_cli(job(workload, out, cluster.address, model=mapped, gpus_per_actor=0.5), tmp_path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert report["rows_out"] == ROWS
    assert report["model_loads"] == 2 and report["nodes"] == 1
    assert report["gpu_ids"] == [free]
    assert [(a["gpu_ids"], a["cuda_visible_devices"]) for a in report["actor_loads"]] == [([free], free)] * 2
    assert [a["mapped_tables"] for a in report["actor_loads"]] == [["title_embedding"]] * 2  # mmap_on_gpu
    assert_matches_model(read_parquet_dir(out), workload)
    assert_left_clean(cluster.address)


def test_a_registry_model_is_downloaded_once_per_node_and_loaded_from_each_node_s_copy(
    two_nodes, workload, mlflow_server, tmp_path
):
    """models:/NAME/VERSION on two nodes: the driver (on the head node, sharing its cache) downloads it once
    through MLflow to inspect it, the head node's actor reuses that copy, the other node's actor downloads it
    once: two downloads for two nodes, one cache entry on each."""
    cluster, caches = two_nodes
    for node_cache in caches.iterdir():
        shutil.rmtree(node_cache)
    version, run_id = mlflow_server.register(workload["keras"], "ctr-cluster")
    out = tmp_path / "scores.parquet"
    cfg = job(workload, out, cluster.address)
    cfg["model"] = {"uri": f"models:/ctr-cluster/{version}", "tracking_uri": mlflow_server.uri}
    report = run_cli(cfg, tmp_path, env={"RAYSCORE_CACHE_DIR": str(caches / "head")})
    assert (report["rows_in"], report["rows_out"]) == (ROWS, ROWS)
    assert report["nodes"] == 2 and report["model_loads"] == 2
    assert report["model_copies"] == 2  # one download per node
    assert report["model_registry"]["version"] == version and report["model_registry"]["run_id"] == run_id
    entry = f"mlflow-ctr-cluster-v{version}"
    for node in ("head", "gpu-node"):
        assert sorted(p.name for p in (caches / node).iterdir() if not p.name.startswith(".")) == [entry, f"{entry}.ok"]
    assert_matches_model(read_parquet_dir(out), workload)
    assert_left_clean(cluster.address)
