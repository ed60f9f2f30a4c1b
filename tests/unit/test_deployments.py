"""Choosing a deployment and sizing Ray on Spark: config rules and arithmetic, no cluster."""

from __future__ import annotations

import pytest

from rayscore import ConfigError
from rayscore._config import RayConfig, RayOnSparkConfig, SparkConfig, load_config, to_bytes, validated
from rayscore._deploy import choose
from rayscore._deploy.ray_cluster import RayCluster
from rayscore._deploy.ray_on_spark import RayOnSpark, node_cpus, slots_left
from rayscore._deploy.raydp_spark import RayDP

BASE = {
    "input": {"path": "in.parquet"},
    "model": {"uri": "m.keras"},
    "output": {"path": "out.parquet"},
}


@pytest.fixture(autouse=True)
def no_ray_connection(monkeypatch):
    """As in a fresh interpreter: this process is connected to no Ray (the integration tests' session may be)."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def config(**sections):
    return load_config({**BASE, **sections})


def test_the_embedded_default_stays_raydp():
    cfg = config()
    assert cfg.spark.master is None and cfg.spark.ray_on_spark is None
    assert isinstance(choose(cfg.ray, cfg.spark), RayDP)


@pytest.mark.parametrize(
    ("spark", "ray", "kind"),
    [
        ({"master": "spark://h:7077"}, {}, RayOnSpark),
        ({"master": "yarn", "ray_on_spark": {"worker_nodes": 4}}, {}, RayOnSpark),
        ({"master": "local-cluster[1, 2, 2048]"}, {}, RayOnSpark),
        ({"master": "spark://h:7077"}, {"address": "10.0.0.1:6379"}, RayCluster),
        ({"master": "local[2]"}, {}, RayCluster),
        ({"master": "local"}, {}, RayCluster),
    ],
)
def test_a_master_chooses_ray_on_spark_unless_a_ray_is_named_or_spark_is_local(spark, ray, kind, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = config(spark=spark, ray=ray)
    assert type(choose(cfg.ray, cfg.spark)) is kind


def test_a_process_already_connected_to_ray_scores_beside_that_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    cfg = config(spark={"master": "spark://h:7077"})
    assert type(choose(cfg.ray, cfg.spark)) is RayCluster


def test_ray_address_in_the_environment_joins_that_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = config(spark={"master": "spark://h:7077"})
    assert type(choose(cfg.ray, cfg.spark)) is RayCluster


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"spark": {"master": "mesos://h:5050"}},
            "spark.master must be a Spark master: spark://host:port, yarn, k8s://…, local[N] or "
            "local-cluster[N, cores, MB], got 'mesos://h:5050'",
        ),
        (
            {"spark": {"master": "ray://RAY_APP_MASTER@1.2.3.4:1"}},
            "spark.master 'ray://RAY_APP_MASTER@1.2.3.4:1' is RayDP's own master: leave spark.master out for "
            "RayDP's Spark on Ray",
        ),
        (
            {"spark": {"ray_on_spark": {"worker_nodes": 2}}},
            "spark.ray_on_spark does not go with RayDP's Spark (spark.master unset): Ray on Spark needs a "
            "cluster master",
        ),
        (
            {"spark": {"master": "local[2]", "ray_on_spark": {}}},
            "spark.ray_on_spark does not go with a local[2] master: Ray on Spark needs a cluster master",
        ),
        (
            {"spark": {"master": "yarn", "ray_on_spark": {"worker_nodes": 0}}},
            "spark.ray_on_spark.worker_nodes must be >= 1, got 0",
        ),
        (
            {"spark": {"master": "yarn", "ray_on_spark": {"memory_per_node": "lots"}}},
            "spark.ray_on_spark.memory_per_node must look like 512m, 2g or 2048 (bytes), got 'lots'",
        ),
        (
            {"spark": {"master": "yarn", "ray_on_spark": {"nodes": 2}}},
            "spark.ray_on_spark.nodes is not a known key",
        ),
        (
            {"spark": {"master": "yarn", "ray_on_spark": {}}, "ray": {"address": "h:6379"}},
            "spark.ray_on_spark does not go with ray.address: rayscore either joins the Ray cluster at 'h:6379' "
            "or starts Ray on Spark, not both",
        ),
    ],
)
def test_every_new_key_is_checked_before_anything_starts_with_its_key_path(sections, message):
    with pytest.raises(ConfigError) as err:
        config(**sections)
    assert message in str(err.value)


def test_slots_left_for_scoring_beside_ray_on_spark_worker_nodes():
    assert slots_left(4, 1, 2) == 2
    assert slots_left(4, 2, 2) == 0
    assert slots_left(16, 3, 4) == 4
    assert slots_left(8, 1, 3, task_cpus=2) == 6  # a 3-CPU node asks for two 2-CPU task slots


def test_a_worker_node_is_sized_for_the_largest_pool_unless_told():
    assert node_cpus(RayOnSparkConfig(), 2, 1.0) == 2
    assert node_cpus(RayOnSparkConfig(worker_nodes=2), 4, 1.5) == 3
    assert node_cpus(RayOnSparkConfig(cpus_per_node=8), 2, 1.0) == 8


def test_sizes_are_read_in_powers_of_1024():
    assert (to_bytes("2g"), to_bytes("512m"), to_bytes("2048"), to_bytes("3GB")) == (2 << 30, 512 << 20, 2048, 3 << 30)


def test_the_session_keyword_checks_ray_on_spark_against_the_given_master():
    spark_cfg = validated(SparkConfig, {}, "spark", extra={"master": "yarn", "ray_on_spark": {"worker_nodes": 3}})
    assert spark_cfg.ray_on_spark.worker_nodes == 3
    assert isinstance(choose(RayConfig(), spark_cfg), RayOnSpark)


def test_the_start_hook_hands_ray_on_spark_the_interpreters_bin_and_a_token_made_before_the_head(tmp_path):
    """On a machine with no token yet, the hook makes one (Ray asks it before the head would), and gives PATH."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, os, sys\n"
        "from rayscore._deploy.start_hook import RayscoreStartHook\n"
        "env = RayscoreStartHook().custom_environment_variables()\n"
        "print(json.dumps(env))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    env = json.loads(done.stdout.strip().splitlines()[-1])
    token = (tmp_path / ".ray" / "auth_token").read_text().strip()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token and len(token) >= 32
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    disabled = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "HOME": str(tmp_path / "other"), "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "RAY_AUTH_TOKEN" not in json.loads(disabled.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "other" / ".ray").exists()  # RAY_AUTH_MODE=disabled is respected


def test_a_master_ray_on_spark_cannot_run_on_is_refused_in_one_line_before_any_spark_starts():
    from rayscore._errors import DeploymentError

    cfg = config(spark={"master": "k8s://https://kube:443"})
    deployment = choose(cfg.ray, cfg.spark)
    with pytest.raises(DeploymentError) as err:
        deployment.start_ray()
    assert str(err.value) == (
        "spark.master: Ray on Spark does not run on a 'k8s://https://kube:443' master (it needs spark://…, yarn or "
        "local-cluster[…]); start a Ray cluster on the executors' hosts and set ray.address instead"
    )
    assert err.value.user_error  # exit 2 from the CLI
    assert deployment.spark is None  # refused before a SparkSession was built


def test_spark_false_chooses_ray_alone_which_may_start_a_local_ray_and_builds_no_spark():
    from rayscore._deploy.ray_only import RayOnly

    deployment = choose(RayConfig(), SparkConfig(), spark=False)
    assert type(deployment) is RayOnly and deployment.kind == "ray"
    assert deployment._may_start_local(None)  # a plain Spark beside Ray may not: only for local[N]
    assert not RayCluster(RayConfig(), SparkConfig())._may_start_local(None)
    deployment.start_spark()
    assert deployment.spark is None and deployment.spark_cpus == 0.0


def test_fault_tolerant_mode_is_raydps_and_refused_beside_a_master():
    assert config(spark={"fault_tolerant_mode": True}).spark.fault_tolerant_mode
    with pytest.raises(ConfigError) as caught:
        config(spark={"master": "spark://h:7077", "fault_tolerant_mode": True})
    assert (
        "fault_tolerant_mode is RayDP's (for ray.data.from_spark): it does not go with master 'spark://h:7077'"
        in str(caught.value)
    )
