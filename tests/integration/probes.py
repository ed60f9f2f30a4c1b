"""Keras layers the tests add to the workload's model, loaded by the actors through ``model.custom_objects``.

Each is the identity on its input, so the model's predictions stay
``model.predict``'s, and each reports a fact from inside the actor that
loads it, without any of rayscore's own counters:

* :class:`LoadProbe` writes one file per construction (one per model load)
  into a directory the test owns, named by the loading process's pid.
* :class:`GatedLoad` holds each construction (a model load) until a file
  the test makes exists, then logs it as :class:`LoadProbe` does.
* :class:`CallLog` logs each model call: when it starts, its rows, its pid.
* :class:`KillOnFirstCall` SIGKILLs the actor that makes the first model
  call, and names its pid.
* :class:`InterruptOnFirstCall` sends SIGINT to a driver (a user's Ctrl-C)
  from the first model call.
* :class:`ChangeFileOnFirstCall` deletes or rewrites an input file from
  inside the first batch's model call.
* :class:`KilledForMemory` puts the actor's process under a memory limit the
  test set (a cgroup) and, in every call, fills more memory than that: the
  kernel kills the actor, as a container's limit would.
* :class:`KillNodeAfterShard` kills a Ray node (its raylet and everything
  under it) from inside the first batch after a shard is committed.
* :class:`OomAbove` asks TensorFlow's allocator for 4 TiB when a call has more
  than ``max_rows`` rows: a real ``ResourceExhaustedError`` from a model op.
  ``Empty`` with ``init=False`` touches nothing, so on a kernel that would
  grant the allocation nothing is consumed (and the test fails, not the machine).

Used as ``model.custom_objects: tests.integration.probes:CUSTOM_OBJECTS``;
Ray's workers find this module because Ray puts the driver's working
directory (the repository root) on their path.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import keras
import tensorflow as tf

CUSTOM_OBJECTS_PATH = "tests.integration.probes:CUSTOM_OBJECTS"


@keras.saving.register_keras_serializable(package="rayscore_tests")
class LoadProbe(keras.layers.Layer):
    """The identity; constructing it writes ``<log_dir>/<pid>-<random>``."""

    def __init__(self, log_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_dir = log_dir
        Path(log_dir, f"{os.getpid()}-{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))

    def call(self, x):
        return x

    def compute_output_shape(self, shape):
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "log_dir": self.log_dir}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class GatedLoad(LoadProbe):
    """A :class:`LoadProbe` whose construction first waits until the file ``gate`` exists (``timeout_s`` at
    most, then it raises): a model load the test holds back, then lets go."""

    def __init__(self, gate: str, log_dir: str, timeout_s: float = 60.0, **kwargs) -> None:
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"GatedLoad: {gate} was not made within {timeout_s} s")
            time.sleep(0.05)
        super().__init__(log_dir, **kwargs)
        self.gate, self.timeout_s = gate, timeout_s

    def get_config(self) -> dict:
        return {**super().get_config(), "gate": self.gate, "timeout_s": self.timeout_s}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class OomAbove(keras.layers.Layer):
    """The identity for at most ``max_rows`` rows; above that, TensorFlow runs out of memory."""

    def __init__(self, max_rows: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_rows = max_rows

    def call(self, x):
        def too_big():
            scratch = tf.raw_ops.Empty(shape=tf.constant([2**20, 2**20], tf.int32), dtype=x.dtype, init=False)
            return x + 0 * scratch[0, 0]

        return tf.cond(tf.shape(x)[0] > self.max_rows, too_big, lambda: x)

    def compute_output_shape(self, shape):
        return shape

    def get_config(self) -> dict:
        return {**super().get_config(), "max_rows": self.max_rows}


class _PythonOnCall(keras.layers.Layer):
    """The identity, running ``self.act(rows)`` in Python (``tf.py_function``) at each model call, in the actor."""

    def act(self, rows: int) -> None:
        raise NotImplementedError

    def call(self, x):
        def run(t):
            self.act(int(t.shape[0]))
            return t

        y = tf.py_function(run, [x], x.dtype)
        y.set_shape(x.shape)
        return y

    def compute_output_shape(self, shape):
        return shape


@keras.saving.register_keras_serializable(package="rayscore_tests")
class CallLog(_PythonOnCall):
    """Each model call appends ``<time_ns> <rows> <pid>`` to ``log`` as it starts."""

    def __init__(self, log: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log = log

    def act(self, rows: int) -> None:
        with open(self.log, "a") as f:
            f.write(f"{time.time_ns()} {rows} {os.getpid()}\n")

    def get_config(self) -> dict:
        return {**super().get_config(), "log": self.log}


def first_time(marker: str) -> bool:
    """True for the one caller, in any process, that creates ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@keras.saving.register_keras_serializable(package="rayscore_tests")
class ChangeFileOnFirstCall(_PythonOnCall):
    """The first call of any actor (``marker`` is created once) deletes or rewrites ``target``.

    A file changed mid-job, at a moment that is certain: Spark has listed the
    input and is streaming it through the pool.
    """

    def __init__(self, target: str, action: str, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target, self.action, self.marker = target, action, marker  # Keras layers have a .path

    def act(self, rows: int) -> None:
        if not first_time(self.marker):
            return
        if self.action == "delete":
            os.remove(self.target)
        else:  # rewrite: the file's first ten rows, in a new file moved over it
            import pyarrow.parquet as pq

            pq.write_table(pq.read_table(self.target).slice(0, 10), self.target + ".new")
            os.replace(self.target + ".new", self.target)

    def get_config(self) -> dict:
        return {**super().get_config(), "target": self.target, "action": self.action, "marker": self.marker}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class KillOnFirstCall(_PythonOnCall):
    """The first call of any actor (``marker`` is created once) writes its pid into ``marker`` and SIGKILLs it.

    A predictor killed mid-job at a moment that is certain: while it scores a batch.
    """

    def __init__(self, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.marker = marker

    def act(self, rows: int) -> None:
        if first_time(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)

    def get_config(self) -> dict:
        return {**super().get_config(), "marker": self.marker}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class InterruptOnFirstCall(_PythonOnCall):
    """The first call of any actor (``marker`` is created once) sends SIGINT to process ``pid`` (a user's Ctrl-C)."""

    def __init__(self, pid: int, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pid, self.marker = pid, marker

    def act(self, rows: int) -> None:
        if first_time(self.marker):
            os.kill(self.pid, 2)

    def get_config(self) -> dict:
        return {**super().get_config(), "pid": self.pid, "marker": self.marker}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class KilledForMemory(_PythonOnCall):
    """Each call joins the cgroup ``procs`` names, then fills ``fill_bytes`` of memory.

    Joining at the call, not at construction, keeps the test's own process
    (which builds the model) out of the cgroup.
    """

    def __init__(self, procs: str, fill_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.procs, self.fill_bytes = procs, fill_bytes

    def act(self, rows: int) -> None:
        import numpy as np

        Path(self.procs).write_text(str(os.getpid()))
        np.ones(self.fill_bytes // 8).sum()

    def get_config(self) -> dict:
        return {**super().get_config(), "procs": self.procs, "fill_bytes": self.fill_bytes}


@keras.saving.register_keras_serializable(package="rayscore_tests")
class KillNodeAfterShard(_PythonOnCall):
    """The first call after a shard is committed under ``out_dir`` kills a Ray node: its raylet, and every
    process under it, with SIGKILL (``marker`` makes it once, and lists their pids) — the node lost while
    its actors score.
    """

    def __init__(self, out_dir: str, shard_marker: str, raylet_pid: int, marker: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir, self.shard_marker, self.raylet_pid, self.marker = out_dir, shard_marker, raylet_pid, marker

    def act(self, rows: int) -> None:
        if not any(Path(self.out_dir).glob(f"rayscore_shard=*/{self.shard_marker}")) or not first_time(self.marker):
            return
        import signal

        import psutil

        raylet = psutil.Process(self.raylet_pid)
        node = [raylet, *raylet.children(recursive=True)]
        Path(self.marker).write_text(" ".join(str(proc.pid) for proc in node))  # what the test may ask about
        for proc in sorted(node, key=lambda p: p.pid == os.getpid()):  # this process last, if it is there
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    def get_config(self) -> dict:
        keys = ("out_dir", "shard_marker", "raylet_pid", "marker")
        return {**super().get_config(), **{k: getattr(self, k) for k in keys}}


CUSTOM_OBJECTS = {
    "CallLog": CallLog,
    "LoadProbe": LoadProbe,
    "GatedLoad": GatedLoad,
    "KillOnFirstCall": KillOnFirstCall,
    "InterruptOnFirstCall": InterruptOnFirstCall,
    "OomAbove": OomAbove,
    "ChangeFileOnFirstCall": ChangeFileOnFirstCall,
    "KilledForMemory": KilledForMemory,
    "KillNodeAfterShard": KillNodeAfterShard,
}


def loads_logged(log_dir: Path) -> list[int]:
    """The pid of each model load :class:`LoadProbe` saw, sorted."""
    return sorted(int(p.read_text()) for p in log_dir.iterdir())


def with_layer(model: keras.Model, output: str, make: type[keras.layers.Layer], **config) -> keras.Model:
    """``model`` with a ``make(**config)`` layer on its output ``output``, which keeps its name."""
    names = list(model.output_names)
    model.get_layer(output).name = f"{output}_before_{make.__name__}"
    outputs = [make(**config, name=name)(t) if name == output else t for name, t in zip(names, model.outputs)]
    return keras.Model(model.inputs, outputs)
