"""Integration fixtures: one real local Ray + RayDP Spark for the whole module set,
and the example's multi-input model and feature table built small and fresh.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from make_example import build_model, features_of, make_table

import rayscore

from ..conftest import PROGRESS_LINE

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


@pytest.fixture(scope="session")
def dirty(workload, tmp_path_factory) -> dict:
    """Features with known bad rows: a null price, a short array, a NaN price."""
    table = workload["table"]
    price = table.column("price").to_numpy().astype(np.float32).copy()
    price[10] = np.nan
    price_arr = pa.array(price, mask=np.isin(np.arange(ROWS), [20, 4000]))
    how = table.column("hour_of_week").combine_chunks()
    lengths = np.full(ROWS, 168, dtype=np.int32)
    lengths[[30, 5000]] = 100
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    keep = np.arange(168)[None, :] < lengths[:, None]  # every other row keeps its own values
    values = pa.array(how.flatten().to_numpy().reshape(ROWS, 168)[keep])
    table = table.set_column(table.schema.get_field_index("price"), "price", price_arr)
    table = table.set_column(
        table.schema.get_field_index("hour_of_week"),
        "hour_of_week",
        pa.ListArray.from_arrays(pa.array(offsets), values),
    )
    path = tmp_path_factory.mktemp("dirty") / "features.parquet"
    pq.write_table(table, path)
    return {"path": str(path), "table": table}


def probed_model(workload: dict, folder: Path, output: str, layer: str, **config) -> str:
    """The workload's model (same weights) with a :mod:`.probes` layer on ``output``, saved under ``folder``.

    Score it with ``model.custom_objects: probes.CUSTOM_OBJECTS_PATH``; its predictions are the workload's.
    """
    import keras

    from . import probes

    path = folder / f"ctr-{layer}.keras"
    probes.with_layer(keras.saving.load_model(workload["keras"]), output, getattr(probes, layer), **config).save(path)
    return str(path)


def said(stderr: str) -> str:
    """``rayscore run``'s stderr without its progress lines: what it said besides (an error, the interrupt)."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not PROGRESS_LINE.match(line))


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


def wait_until(condition, timeout: float, step: float = 0.2):
    """Poll ``condition`` until it returns something truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = condition()
    return value


def settled_free_cpus(rs: rayscore.Session, timeout: float = 60.0) -> float:
    """Free CPUs once nothing but Spark's executors holds any (waits for actors being torn down).

    The session's ``rayscore.predict`` pools, which live as long as the session
    by design, are stopped first: what is checked is what a run left behind.
    """
    import ray

    from rayscore._pool import stop_pools

    stop_pools()
    expected = ray.cluster_resources()["CPU"] - rs.spark_cpus
    wait_until(lambda: ray.available_resources().get("CPU", 0.0) == expected, timeout)
    return ray.available_resources().get("CPU", 0.0)


class S3Server:
    """A real S3-protocol server (moto's standalone server) on loopback, with IAM checks on.

    Requests need an access key that moto's IAM knows: wrong credentials are
    refused as they would be by AWS.
    """

    REGION = "us-east-1"

    def __init__(self) -> None:
        import json
        import socket
        import subprocess
        import sys

        import boto3

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # The first 3 requests (the IAM set-up below) need no credentials; every later one does.
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # wait until it accepts connections (it is a separate process)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.05)
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=self.REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="scorer")
        iam.put_user_policy(
            UserName="scorer",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="scorer")["AccessKey"]
        self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def options(self, **overrides: str) -> dict[str, str]:
        """model.storage_options for this server."""
        return {
            "endpoint_override": self.endpoint,
            "access_key": self.key,
            "secret_key": self.secret,
            "region": self.REGION,
            **overrides,
        }

    def upload(self, local: str | os.PathLike[str], uri: str) -> str:
        """Copy a local file or directory to ``s3://bucket/key``; returns the uri."""
        from pyarrow import fs as pafs

        s3 = pafs.S3FileSystem(**{**self.options(), "allow_bucket_creation": True})
        target = uri[len("s3://") :]
        s3.create_dir(target.split("/")[0])
        pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
        return uri

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def s3():
    server = S3Server()
    yield server
    server.stop()


class MlflowServer:
    """A real MLflow tracking server (``mlflow server``) on loopback: a SQLite store, artifacts served from a folder.

    Models are logged and registered through MLflow's own API (:meth:`register`), as a team's training job does.
    """

    def __init__(self, root: Path) -> None:
        import socket
        import subprocess
        import sys
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.log = open(root / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
                *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                *("--artifacts-destination", str(root / "artifacts"), "--workers", "1"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:  # wait until it answers (a separate process, migrating its database first)
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def register(self, model_path: str, name: str, alias: str | None = None) -> tuple[str, str]:
        """Log the Keras model at ``model_path`` in a new run and register it as a new version of ``name``:
        (version, run id)."""
        import keras
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with warnings.catch_warnings(), mlflow.start_run() as run:
            warnings.simplefilter("ignore")  # MLflow's advice on signatures and type hints
            info = mlflow.keras.log_model(keras.saving.load_model(model_path), name="model", registered_model_name=name)
        version = str(info.registered_model_version)
        if alias is not None:
            mlflow.MlflowClient(self.uri).set_registered_model_alias(name, alias, version)
        return version, run.info.run_id

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def processes_of_session(sid: int, timeout: float = 30.0) -> list[psutil.Process]:
    """The processes in session ``sid`` (one started with ``start_new_session``, and all it started).

    Processes still exiting get ``timeout`` seconds to be gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
