"""The node-local model cache and the out-of-memory batch split, without a cluster."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rayscore import ModelError, ModelSpec, TensorSpec
from rayscore._cache import cached_model
from rayscore._convert import make_plan
from rayscore._model import LoadedModel, fingerprint, model_bytes
from rayscore._predict import BatchLimit, predict_table


def make_model_file(folder: Path, payload: bytes = b"weights" * 1000) -> Path:
    path = folder / "ctr.keras"
    path.write_bytes(payload)
    return path


def test_one_copy_per_node_even_with_many_actors_at_once(tmp_path):
    source = make_model_file(tmp_path)
    cache = tmp_path / "cache"
    results: list[tuple[str, bool]] = []

    def actor() -> None:
        copy = cached_model(str(source), str(cache), fingerprint=fingerprint(str(source)))
        results.append((copy.path, copy.copied))

    threads = [threading.Thread(target=actor) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(copied for _, copied in results) == 1
    assert len({path for path, _ in results}) == 1
    copy = Path(results[0][0])
    assert copy.read_bytes() == source.read_bytes()
    assert copy.name.endswith("-ctr.keras")  # the loader still sees the suffix
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [copy.name, copy.name + ".ok"]


def test_a_matching_copy_is_reused_and_a_changed_model_fetched_again(tmp_path):
    source = make_model_file(tmp_path)
    cache = str(tmp_path / "cache")
    first = cached_model(str(source), cache, fingerprint=fingerprint(str(source)))
    assert first.copied and first.nbytes == model_bytes(str(source))
    again = cached_model(str(source), cache, fingerprint=fingerprint(str(source)))
    assert (again.path, again.copied) == (first.path, False)
    source.write_bytes(b"new weights" * 1000)
    newer = cached_model(str(source), cache, fingerprint=fingerprint(str(source)))
    assert newer.copied and newer.path != first.path
    first, newer = first.path, newer.path
    assert not Path(first).exists()  # the stale version is gone
    assert Path(newer).read_bytes() == source.read_bytes()


def test_a_copy_that_does_not_match_the_planned_model_is_refused_and_removed(tmp_path):
    source = make_model_file(tmp_path)
    planned = fingerprint(str(source))
    source.write_bytes(b"changed while the job ran")
    with pytest.raises(ModelError, match=r"the copy of .*ctr.keras does not match the model the job was planned with"):
        cached_model(str(source), str(tmp_path / "cache"), fingerprint=planned)
    assert not [p for p in (tmp_path / "cache").iterdir() if "ctr.keras" in p.name and not p.name.endswith(".lock")]


def test_directories_are_cached_whole(tmp_path):
    saved = tmp_path / "saved_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"v" * 5000)
    copy = cached_model(str(saved), str(tmp_path / "c"), fingerprint=fingerprint(str(saved)))
    assert copy.copied and fingerprint(copy.path) == fingerprint(str(saved)) == copy.fingerprint


def test_without_a_fingerprint_the_copy_is_found_again_by_its_listing(tmp_path):
    source = make_model_file(tmp_path)
    cache = str(tmp_path / "cache")
    first = cached_model(str(source), cache)  # the driver's first sight of a remote model
    assert first.copied and first.fingerprint == fingerprint(str(source))
    again = cached_model(str(source), cache)
    assert (again.path, again.fingerprint, again.copied) == (first.path, first.fingerprint, False)
    source.write_bytes(b"a retrained model" * 1000)
    newer = cached_model(str(source), cache)
    assert newer.copied and newer.fingerprint == fingerprint(str(source)) != first.fingerprint


SPEC = ModelSpec(inputs=(TensorSpec("x", (3,), "float32"),), outputs=(TensorSpec("y", (2,), "float32"),))


class TooBig(Exception):
    """Stands in for TensorFlow's ResourceExhaustedError (same name is what counts)."""


TooBig.__name__ = "ResourceExhaustedError"


def fake_model(max_rows: int, calls: list[int]) -> LoadedModel:
    def predict(feeds):
        rows = len(feeds["x"])
        calls.append(rows)
        if rows > max_rows:
            raise TooBig(f"OOM when allocating tensor with shape[{rows},3]")
        return {"y": np.stack([feeds["x"].sum(1), feeds["x"].max(1)], axis=1)}

    return LoadedModel(SPEC, predict)


def table(rows: int) -> pa.Table:
    values = np.arange(rows * 3, dtype=np.float32)
    return pa.table(
        {
            "id": np.arange(rows),
            "x": pa.ListArray.from_arrays(pa.array(np.arange(0, (rows + 1) * 3, 3, dtype=np.int32)), pa.array(values)),
        }
    )


def test_an_out_of_memory_batch_is_split_and_the_working_size_kept():
    plan = make_plan(SPEC, table(1).schema, keep_columns=["id"])
    calls: list[int] = []
    model, limit = fake_model(max_rows=300, calls=calls), BatchLimit()
    out = predict_table(model, plan, table(1000), limit)
    assert limit.rows == 250 and limit.splits == 2  # 1000 -> 500 -> 250
    assert calls == [1000, 500, 250, 250, 250, 250]
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    np.testing.assert_array_equal(
        np.stack(out.column("y").to_numpy(zero_copy_only=False)), np.stack([x.sum(1), x.max(1)], axis=1)
    )
    calls.clear()
    predict_table(model, plan, table(1000), limit)  # the next batch starts at the size that worked
    assert calls == [250, 250, 250, 250]


def test_splitting_stops_at_the_floor_and_then_fails_naming_the_batch():
    plan = make_plan(SPEC, table(1).schema, keep_columns=["id"])
    from rayscore import PredictError

    with pytest.raises(
        PredictError,
        match=r"a batch of 8 rows \(first row: id=0\) failed 1 time\(s\) .*ResourceExhaustedError: OOM when allocating",
    ):
        predict_table(fake_model(max_rows=0, calls=[]), plan, table(8), BatchLimit(floor=2))


def _bytes_read() -> int:
    """Bytes this process has read through read() and friends, as the kernel counts them (``rchar``)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


class _CountedSha256:
    """hashlib as rayscore._model sees it, counting the digests it starts: a read of the whole model each."""

    def __init__(self) -> None:
        self.made, self._sha256 = 0, hashlib.sha256

    def sha256(self, *args):
        self.made += 1
        return self._sha256(*args)


def test_a_settled_models_fingerprint_is_taken_once_per_process(tmp_path, monkeypatch):
    import rayscore._model as model_module

    counted = _CountedSha256()
    monkeypatch.setattr(model_module, "hashlib", counted)
    monkeypatch.setattr(model_module, "_FINGERPRINTS", {})
    source = make_model_file(tmp_path)
    expected = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()

    # Just written: read every time (a writer may not be done with it).
    assert fingerprint(str(source)) == fingerprint(str(source)) == expected
    assert counted.made == 2

    monkeypatch.setattr(model_module, "SETTLED_S", -1.0)  # as if written long ago
    assert fingerprint(str(source)) == expected
    read_before = _bytes_read()
    assert fingerprint(str(source)) == expected
    assert counted.made == 3
    assert _bytes_read() - read_before < source.stat().st_size  # the kernel's count: the file was not read again

    # The same size, new bytes, a new mtime: read again, and the new digest given.
    source.write_bytes(b"WEIGHTS" * 1000)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(str(source)) == "sha256:" + hashlib.sha256(b"WEIGHTS" * 1000).hexdigest()
    assert counted.made == 4


_FINGERPRINT_IN_A_NEW_PROCESS = """
import json, sys
import rayscore._model as m

def rchar():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))

if sys.argv[2] == "settled":
    m.SETTLED_S = -1.0  # as if written long ago
before = rchar()
digest = m.fingerprint(sys.argv[1])
print(json.dumps({"digest": digest, "read": rchar() - before}))
"""


def _fingerprint_in_a_new_process(path: Path, temp: Path, settled: bool = True) -> dict:
    import json
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(temp)}  # the memo's folder is under the temp directory
    done = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_IN_A_NEW_PROCESS, str(path), "settled" if settled else "new"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_settled_models_fingerprint_is_read_once_per_node_while_its_files_are_unchanged(tmp_path):
    """Each a new process, as each ``rayscore run`` is; the kernel's count of bytes read says which read the model."""
    from rayscore._model import MEMO_DIR

    temp, model = tmp_path / "temp", tmp_path / "model.bin"
    temp.mkdir()
    memos = temp / f"{MEMO_DIR}-{os.getuid()}"
    model.write_bytes(os.urandom(4 << 20))
    size = model.stat().st_size

    # Just written (a writer may not be done with it): read, and not kept.
    fresh = _fingerprint_in_a_new_process(model, temp, settled=False)
    assert fresh["digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert fresh["read"] >= size and not memos.exists()

    first = _fingerprint_in_a_new_process(model, temp)
    assert first["digest"] == fresh["digest"] and first["read"] >= size
    [memo] = memos.iterdir()
    assert memos.stat().st_mode & 0o777 == 0o700
    again = _fingerprint_in_a_new_process(model, temp)
    assert again["digest"] == first["digest"] and again["read"] < size  # the model was not read

    # Rewritten with the same size (a new ctime, whatever its mtime says): read, and the new digest given.
    stat = model.stat()
    model.write_bytes(os.urandom(size))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model.stat().st_ctime_ns != stat.st_ctime_ns, "this filesystem's ctime did not move"
    changed = _fingerprint_in_a_new_process(model, temp)
    assert changed["digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest() != first["digest"]
    assert changed["read"] >= size
    assert _fingerprint_in_a_new_process(model, temp)["read"] < size

    # A folder others may write to could hold a planted digest: it is not trusted.
    memos.chmod(0o777)
    assert _fingerprint_in_a_new_process(model, temp)["read"] >= size
    memos.chmod(0o700)

    # A memo that does not read back (cut short, or not rayscore's) is no memo: the model is read.
    for kept in memos.iterdir():
        kept.write_text('{"key": {"root": "' + str(model) + '"')
    assert _fingerprint_in_a_new_process(model, temp)["read"] >= size
    assert memo.exists() and not list(memos.glob("*.tmp"))


class _HeldSha256:
    """hashlib whose sha256 objects wait for ``release`` before taking their first block."""

    def __init__(self) -> None:
        self.made, self.release, self._sha256 = 0, threading.Event(), hashlib.sha256

    def sha256(self, *args):
        self.made += 1
        digest, release = self._sha256(*args), self.release

        class Held:
            def update(self, block: bytes) -> None:
                assert release.wait(20), "the test never released the hash (was it taken in the caller?)"
                digest.update(block)

            def hexdigest(self) -> str:
                return digest.hexdigest()

        return Held()


def test_a_model_changed_while_its_digest_is_taken_is_not_kept(tmp_path, monkeypatch):
    """The read is held while the file is rewritten in place: the digest given is of what was read, and
    neither this process nor the node keeps it; the next read, of settled files, is kept."""
    import rayscore._model as model_module

    held = _HeldSha256()
    monkeypatch.setattr(model_module, "hashlib", held)
    monkeypatch.setattr(model_module, "_FINGERPRINTS", {})
    monkeypatch.setattr(model_module, "SETTLED_S", -1.0)  # settled before the read: only a change during it counts
    source = make_model_file(tmp_path)
    pending = model_module.fingerprint_soon(str(source))
    source.write_bytes(b"REWRITE" * 1000)  # the same size, while the read waits on its first block
    held.release.set()
    assert pending.result().startswith("sha256:")
    assert model_module._FINGERPRINTS == {} and not (tmp_path / "fingerprint-memos").exists()
    assert model_module.known_fingerprint(str(source)) is None

    expected = "sha256:" + hashlib.sha256(b"REWRITE" * 1000).hexdigest()
    assert fingerprint(str(source)) == expected == model_module.known_fingerprint(str(source))
    assert len(list((tmp_path / "fingerprint-memos").iterdir())) == 1


def test_a_local_models_digest_is_taken_on_a_thread_while_the_driver_goes_on(model_files, monkeypatch):
    import rayscore._model as model_module
    from rayscore._config import ModelConfig
    from rayscore._plan import inspect_model
    from rayscore._pool import pool_key

    held = _HeldSha256()
    monkeypatch.setattr(model_module, "hashlib", held)
    monkeypatch.setattr(model_module, "_FINGERPRINTS", {})
    monkeypatch.delenv("RAYSCORE_CACHE_DIR", raising=False)
    path = str(model_files["keras"])
    expected = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    # inspect_model returns (and the pool's key is known) while the read is held.
    ref, spec = inspect_model(ModelConfig(uri=path))
    assert ref.fingerprint == "" and spec.input_names and held.made == 1
    assert pool_key(ref) == pool_key(inspect_model(ModelConfig(uri=path))[0])
    pending = model_module.fingerprint_soon(path)
    assert not pending.done() and held.made == 1  # the same read, not a second one

    held.release.set()
    assert ref.digest() == pending.result() == expected
    assert held.made == 1

    # The pool's key follows the file: rewritten (a new inode and ctime), it names another pool.
    before = pool_key(ref)
    Path(path + ".new").write_bytes(Path(path).read_bytes())
    os.replace(path + ".new", path)
    assert pool_key(inspect_model(ModelConfig(uri=path))[0]) != before


def test_a_cached_local_models_digest_is_taken_before_the_actors_copy_it(model_files, tmp_path, monkeypatch):
    from rayscore._config import ModelConfig
    from rayscore._plan import inspect_model

    path = str(model_files["keras"])
    ref, _ = inspect_model(ModelConfig(uri=path, cache_dir=str(tmp_path / "cache")))
    assert ref.fingerprint == "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest() == ref.digest()


class _PoolOfOneModel:
    """What :func:`typed_outputs` uses of a pool: its model, whether it has loaded, and ``spec()`` (a loaded
    actor's), each call's thread noted."""

    def __init__(self, model, loaded: ModelSpec, *, is_loaded: bool = False) -> None:
        self.model, self._loaded, self.loaded, self.callers = model, loaded, is_loaded, []

    def spec(self) -> ModelSpec:
        self.callers.append(threading.current_thread().name)
        return self._loaded

    @property
    def waited(self) -> int:
        """Times the caller's own thread asked a loaded actor (the call waited for the pool)."""
        _join_output_checks()
        return self.callers.count(threading.current_thread().name)

    @property
    def checked(self) -> int:
        """Times a check thread asked a loaded actor (kept outputs checked after the call returned)."""
        _join_output_checks()
        return self.callers.count("rayscore-outputs-check")


def _join_output_checks() -> None:
    for thread in threading.enumerate():
        if thread.name == "rayscore-outputs-check":
            thread.join(20)


_STATED = ModelSpec(
    inputs=(TensorSpec("x", (4,), "float32"),),
    outputs=(TensorSpec("click", None, None), TensorSpec("topics", None, None)),
)
_LOADED = ModelSpec(
    inputs=_STATED.inputs,
    outputs=(TensorSpec("click", (1,), "float32"), TensorSpec("topics", (8,), "float32")),
)


def test_a_keras_models_outputs_are_asked_of_a_loaded_actor_once_per_node_and_model_version(tmp_path, monkeypatch):
    """A .keras file does not state its outputs' shapes: the first call waits for an actor, later ones find them."""
    import rayscore._model as model_module
    from rayscore._predict import ModelRef
    from rayscore._stream import typed_outputs

    source = make_model_file(tmp_path)
    stated, loaded = _STATED, _LOADED
    ref = ModelRef(path=str(source), loader="keras")

    # Its digest not known yet (just written, never hashed): the actor is asked, nothing is kept.
    pool = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, pool) == loaded and pool.waited == 1
    assert typed_outputs(stated, _PoolOfOneModel(ref, loaded)).outputs == loaded.outputs
    assert not (tmp_path / "fingerprint-memos").exists()

    monkeypatch.setattr(model_module, "SETTLED_S", -1.0)  # as if written long ago: its digest is kept
    assert fingerprint(str(source))
    first = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, first) == loaded and (first.waited, first.checked) == (1, 0)
    again = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, again) == loaded
    assert (again.waited, again.checked) == (0, 1)  # kept: no wait; checked once an actor loaded, after the call

    # Other custom objects may build other outputs: asked again.
    other = _PoolOfOneModel(ModelRef(path=str(source), loader="keras", custom_objects="pkg.mod:LAYERS"), loaded)
    assert typed_outputs(stated, other) == loaded and other.waited == 1
    # A file that states its outputs needs no actor and keeps nothing.
    stating = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(loaded, stating) == loaded and stating.callers == []

    # A new version of the file (new bytes, so a new digest): asked again.
    source.write_bytes(b"other weights" * 1000)
    assert fingerprint(str(source))
    changed = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, changed) == loaded and changed.waited == 1

    # Kept outputs named otherwise than the file's (not this model's), or a folder others may write to: not used.
    renamed = ModelSpec(inputs=stated.inputs, outputs=(TensorSpec("ctr", None, None), TensorSpec("topics", None, None)))
    odd = _PoolOfOneModel(ref, loaded)
    typed_outputs(renamed, odd)
    assert odd.waited == 1
    memos = tmp_path / "fingerprint-memos"
    memos.chmod(0o777)
    shared = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, shared) == loaded and shared.waited == 1
    memos.chmod(0o700)
    # A kept file cut short is no memo.
    for kept in memos.iterdir():
        kept.write_text('{"key": {"outputs_of"')
    cut = _PoolOfOneModel(ref, loaded)
    assert typed_outputs(stated, cut) == loaded and cut.waited == 1


def test_kept_outputs_the_actors_model_no_longer_gives_are_kept_anew_and_a_loaded_pool_is_asked(
    tmp_path, monkeypatch, caplog
):
    """The same bytes may build other outputs (custom objects' code, Keras's settings): the check thread
    keeps what the loaded actor says, and a pool that has loaded is asked, not the memo."""
    import rayscore._model as model_module
    from rayscore._predict import ModelRef
    from rayscore._stream import typed_outputs

    monkeypatch.setattr(model_module, "SETTLED_S", -1.0)
    source = make_model_file(tmp_path)
    assert fingerprint(str(source))
    ref = ModelRef(path=str(source), loader="keras")
    wider = ModelSpec(
        inputs=_STATED.inputs,
        outputs=(TensorSpec("click", (1,), "float64"), TensorSpec("topics", (9,), "float32")),
    )
    assert typed_outputs(_STATED, _PoolOfOneModel(ref, _LOADED)) == _LOADED  # kept: click float32, topics 8

    # The call types the columns from the kept outputs; the check finds the actor's differ and keeps them.
    stale = _PoolOfOneModel(ref, wider)
    assert typed_outputs(_STATED, stale) == _LOADED and (stale.waited, stale.checked) == (0, 1)
    assert "its outputs differ from those kept for it on this node" in caplog.text
    fresh = _PoolOfOneModel(ref, wider)
    assert typed_outputs(_STATED, fresh) == wider and (fresh.waited, fresh.checked) == (0, 1)

    # A pool that has loaded is asked (no wait), and what it says is kept.
    ready = _PoolOfOneModel(ref, _LOADED, is_loaded=True)
    assert typed_outputs(_STATED, ready) == _LOADED and (ready.waited, ready.checked) == (1, 0)
    assert typed_outputs(_STATED, _PoolOfOneModel(ref, _LOADED)) == _LOADED


def test_a_batch_whose_outputs_differ_from_the_calls_columns_fails_in_one_line():
    from types import SimpleNamespace

    from rayscore import PredictError
    from rayscore._stream import check_outputs

    plan = SimpleNamespace(outputs=(("click", "p_click"), ("topics", "p_topics")))
    schema = pa.schema([("id", pa.int64()), ("p_click", pa.float32()), ("p_topics", pa.list_(pa.float32()))])
    route = SimpleNamespace(plan=plan, schema=schema, made_by="rayscore.predict")
    same = pa.table({"id": pa.array([1], pa.int32()), "p_click": [0.5], "p_topics": [[0.1, 0.2]]}).cast(
        pa.schema([("id", pa.int32()), ("p_click", pa.float32()), ("p_topics", pa.list_(pa.float32()))])
    )
    check_outputs(same, route)  # a carried column's type is Spark's to cast; the outputs agree
    wider = same.set_column(1, "p_click", pa.array([0.5], pa.float64()))
    with pytest.raises(PredictError) as err:
        check_outputs(wider, route)
    assert str(err.value) == (
        "model output 'click': the pool's model gives double where the call typed column 'p_click' float, from "
        "the outputs kept for this model on the driver's node, which it no longer gives; they are kept anew once "
        "an actor has loaded: call rayscore.predict again"
    )
