"""Model loaders: what a model file says about its tensors, and loading it.

A loader has two jobs:

* ``inspect(path)`` reads only the model's metadata (names, dtypes, shapes of
  its inputs and outputs) without building its weights, so the driver can
  validate a job against a multi-GB model in milliseconds;
* ``load(path)`` builds the model in the calling process and returns a
  :class:`LoadedModel`. rayscore calls it only inside predictor actors, once
  per actor: the model is never pickled, broadcast or put in Ray's object store.

Loaders live in a small registry (``register_loader``), fsspec-style: a new
format is one class and one entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ._errors import ModelError, first_line
from ._savedmodel import SavedModelLoader
from ._spec import LoadedModel, Loader, ModelSpec, TensorSpec
from ._storage import local_dir
from ._tables import input_batch_shape, lookup_row_bytes

log = logging.getLogger("rayscore")

__all__ = [
    "TensorSpec",
    "ModelSpec",
    "LoadedModel",
    "Loader",
    "register_loader",
    "loaders",
    "resolve_loader",
    "local_model_path",
    "fingerprint",
    "fingerprint_soon",
    "known_fingerprint",
    "remembered_outputs",
    "remember_outputs",
    "file_state",
    "model_bytes",
]


# --------------------------------------------------------------------------- Keras


def _keras_tensor_specs(config: Mapping[str, Any]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs from a Keras functional/sequential model config."""
    cls = config.get("class_name")
    body = config.get("config", {})
    layers = body.get("layers", [])
    if cls == "Sequential":
        first = layers[0] if layers else {}
        cfg = first.get("config", {})
        shape = input_batch_shape(cfg) or body.get("build_input_shape")
        if first.get("class_name") != "InputLayer" and shape is None:
            raise ModelError("a Sequential model without an input shape cannot be inspected")
        name = cfg.get("name", "input") if first.get("class_name") == "InputLayer" else "input"
        inputs = (TensorSpec(name, tuple(shape[1:]), cfg.get("dtype") or "float32"),)
        last = layers[-1].get("config", {}).get("name", "output") if layers else "output"
        return inputs, (TensorSpec(last, None, None),)
    by_name = {layer.get("config", {}).get("name", layer.get("name")): layer for layer in layers}
    by_name.update({layer.get("name"): layer for layer in layers if layer.get("name")})

    def entries(node: Any) -> list[tuple[str, list[Any]]]:
        if isinstance(node, Mapping):
            return [(str(k), v) for k, v in node.items()]
        if node and isinstance(node[0], str):  # a single [layer, node, tensor] triple
            return [(node[0], node)]
        return [(item[0], item) for item in node]

    inputs = []
    for key, ref in entries(body.get("input_layers", [])):
        layer = by_name.get(ref[0], {})
        cfg = layer.get("config", {})
        shape = input_batch_shape(cfg)
        if shape is None:
            raise ModelError(f"model input {key!r} has no shape in the model config")
        dtype = cfg.get("dtype")
        if isinstance(dtype, Mapping):  # a DTypePolicy
            dtype = dtype.get("config", {}).get("name")
        inputs.append(TensorSpec(cfg.get("name", key), tuple(shape[1:]), dtype or "float32"))
    outputs = [TensorSpec(key, None, None) for key, _ in entries(body.get("output_layers", []))]
    if not inputs or not outputs:
        raise ModelError("the model config names no inputs or no outputs")
    return tuple(inputs), tuple(outputs)


def _keras_predict(
    model: Any, output_names: tuple[str, ...]
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    single = len(model.inputs) == 1 and not isinstance(getattr(model, "_inputs_struct", None), Mapping)

    def predict(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A one-input model takes its array as is (a dict makes Keras warn about structure).
        out = model.predict_on_batch(next(iter(feeds.values())) if single else dict(feeds))
        if isinstance(out, Mapping):
            return {k: np.asarray(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return {n: np.asarray(v) for n, v in zip(output_names, out)}
        return {output_names[0]: np.asarray(out)}

    return predict


def _import_keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: PLC0415 - heavy, only inside actors

    return keras


# Packages `import keras` imports whenever they are installed, for what a scoring actor never does:
# its scikit-learn wrappers, its plotting, pandas inputs to fit() and predict(). mlflow installs
# scikit-learn, pandas and matplotlib, and here they were 1.2-1.3 s of a 3.8 s `import keras`
# (python -X importtime; bench/RESULTS.md, 2026-12-07), paid by every actor at its start.
KERAS_EXTRAS = ("sklearn", "matplotlib", "pandas")


def import_keras_lean() -> Any:
    """``import keras`` without :data:`KERAS_EXTRAS`, for a process that only scores (a predictor actor).

    While Keras imports, each extra not imported yet stands in ``sys.modules``
    as ``None``, so importing it raises ``ImportError``, which Keras takes as
    "not installed"; afterwards they import as usual (the model's own code may
    use them), but this Keras keeps those three features off. Not for a
    user's process, whose Keras should have them: only ``prepare()`` calls it.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    held = [name for name in KERAS_EXTRAS if name not in sys.modules]
    for name in held:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        return _import_keras()
    finally:
        for name in held:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_custom_objects(dotted: str | None) -> dict[str, Any] | None:
    """The dict named by ``model.custom_objects`` (``package.module:NAME`` or ``package.module.NAME``)."""
    if not dotted:
        return None
    module_name, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(f"model.custom_objects: cannot import {dotted!r}: {exc}") from None
    if not isinstance(value, Mapping):
        raise ModelError(
            f"model.custom_objects: {dotted!r} must be a dict of name -> class, got {type(value).__name__}"
        )
    return dict(value)


def _read_keras_model(
    path: str,
    fmt: str,
    safe_mode: bool,
    custom_objects: Mapping[str, Any] | None,
    mmap_min_bytes: int,
    mmap_refused: str = "",
) -> tuple[Any, list[Any]]:
    """(the model, its large tables): weights streamed in and big tables mapped where we can, else Keras's loader."""
    keras = _import_keras()
    from . import _tables, _weights  # noqa: PLC0415 - imports keras internals

    try:
        tables = _tables.scan(path, fmt, mmap_min_bytes) if _weights._tf_backend() else []
    except Exception:  # noqa: BLE001 - metadata the scan cannot read: load unmapped, and let Keras name a problem
        tables = []
    if mmap_refused:
        tables = [dataclasses.replace(t, mapped=False, reason=t.reason or mmap_refused) for t in tables]
    if fmt == "h5" and _weights._tf_backend():
        return _weights.stream_h5_model(path, safe_mode=safe_mode, custom_objects=custom_objects, tables=tables), tables
    if fmt == "keras" and _weights.can_stream_archive(path):
        model = _weights.stream_keras_archive(path, safe_mode=safe_mode, custom_objects=custom_objects, tables=tables)
        return model, tables
    model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode, custom_objects=custom_objects)
    return model, [t for t in tables if not t.mapped]


def _load_keras(
    path: str,
    fmt: str,
    safe_mode: bool,
    custom_objects: str | None = None,
    mmap_min_bytes: int = 0,
    mmap_refused: str = "",
) -> LoadedModel:
    objects = import_custom_objects(custom_objects)
    try:
        model, tables = _read_keras_model(path, fmt, safe_mode, objects, mmap_min_bytes, mmap_refused)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise ModelError(
                f"model {path} needs arbitrary code to load (a Lambda layer); "
                "set model.safe_mode: false only if you trust it"
            ) from exc
        unknown = _unknown_class(exc)
        if unknown:
            raise ModelError(
                f"model {path} uses a class Keras does not know: {unknown} "
                "(name a dict of your classes in model.custom_objects)"
            ) from exc
        raise ModelError(f"model {path} cannot be loaded as {fmt}: {first_line(text)}") from exc
    except Exception as exc:  # noqa: BLE001 - h5py/zip/keras raise many kinds
        raise ModelError(
            f"model {path} cannot be loaded as {fmt}: {type(exc).__name__}: {first_line(str(exc))}"
        ) from exc
    names = tuple(getattr(model, "output_names", None) or [_layer_name(model, t) for t in model.outputs])
    inputs = tuple(TensorSpec(t.name, tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs)
    outputs = tuple(TensorSpec(n, tuple(t.shape[1:]), str(t.dtype)) for n, t in zip(names, model.outputs))
    info = {"tables": [t.to_dict() for t in tables]}
    return LoadedModel(ModelSpec(inputs, outputs, fmt), _keras_predict(model, names), info)


def _unknown_class(exc: BaseException) -> str | None:
    """Keras's "Could not locate class 'X'" from anywhere in the exception chain (it is often wrapped)."""
    seen: BaseException | None = exc
    while seen is not None:
        match = re.search(r"Could not locate (class|function) '([^']+)'|Unknown (layer|object): '([^']+)'", str(seen))
        if match:
            return f"class {(match.group(2) or match.group(4))!r}"
        seen = seen.__cause__ or seen.__context__
    return None


def _layer_name(model: Any, tensor: Any) -> str:
    """The name of the layer that makes ``tensor``: what inspect() reads from the config."""
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return getattr(operation, "name", None) or model.layers[-1].name


class _KerasFamily:
    """What the two Keras formats share: the framework to import, and the loader that streams the weights."""

    name = ""
    options = ("custom_objects", "mmap_min_bytes", "mmap_refused")  # extra keywords load() accepts

    def prepare(self) -> None:
        import_keras_lean()

    def load(
        self,
        path: str,
        *,
        safe_mode: bool = True,
        custom_objects: str | None = None,
        mmap_min_bytes: int = 0,
        mmap_refused: str = "",
    ) -> LoadedModel:
        """Build the model; map its embedding tables of ``mmap_min_bytes`` or more (0: none).

        ``mmap_refused``: map none of them, and report each with this reason (a GPU actor's).
        """
        return _load_keras(path, self.name, safe_mode, custom_objects, mmap_min_bytes, mmap_refused)


class KerasLoader(_KerasFamily):
    """Keras 3 ``.keras`` archives (a zip of config.json + weights)."""

    name = "keras"

    def matches(self, path: str) -> bool:
        return path.endswith(".keras")

    def inspect(self, path: str) -> ModelSpec:
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        except zipfile.BadZipFile:
            hint = " (it is an HDF5 file: use format: h5 or the .h5 suffix)" if _is_hdf5(path) else ""
            raise ModelError(f"model {path} is not a .keras archive{hint}") from None
        except KeyError:
            raise ModelError(f"model {path} is a zip without config.json, not a .keras archive") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"model {path} cannot be read: {exc}") from None
        inputs, outputs = _keras_tensor_specs(config)
        return ModelSpec(inputs, outputs, self.name, lookup_row_bytes(config))


def _is_hdf5(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


class H5Loader(_KerasFamily):
    """Legacy Keras HDF5 files (``model.save("m.h5")``)."""

    name = "h5"

    def matches(self, path: str) -> bool:
        return path.endswith((".h5", ".hdf5"))

    def inspect(self, path: str) -> ModelSpec:
        import h5py  # noqa: PLC0415

        if not _is_hdf5(path):
            raise ModelError(f"model {path} is not an HDF5 file")
        try:
            with h5py.File(path, "r") as fh:
                raw = fh.attrs.get("model_config")
        except OSError as exc:
            raise ModelError(f"model {path} cannot be read: {exc}") from None
        if raw is None:
            raise ModelError(f"model {path} is an HDF5 file without a model config (weights only?)")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        inputs, outputs = _keras_tensor_specs(config)
        return ModelSpec(inputs, outputs, self.name, lookup_row_bytes(config))


# --------------------------------------------------------------------------- registry

_LOADERS: dict[str, Loader] = {"keras": KerasLoader(), "h5": H5Loader(), "savedmodel": SavedModelLoader()}
loaders: Mapping[str, Loader] = MappingProxyType(_LOADERS)


def register_loader(name: str, loader: Loader, *, clobber: bool = False) -> None:
    """Add a model format. ``clobber=True`` replaces an existing one.

    The loader must be importable in Ray workers too (define it in a module,
    not in ``__main__``), since actors look it up by name.
    """
    if name in _LOADERS and not clobber:
        raise ValueError(f"a loader named {name!r} is registered already (pass clobber=True)")
    _LOADERS[name] = loader


def model_files(path: str) -> list[str]:
    """The files that make up a model: the file itself, or every file under a directory."""
    if os.path.isdir(path):
        return sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
    return [path]


def model_bytes(path: str) -> int:
    """The model's size on disk."""
    return sum(os.path.getsize(f) for f in model_files(path))


# Fingerprints taken, by each file's (name, size, mtime, ctime, inode): a session that calls
# rayscore.predict again on a model of several GB does not read it all again, nor does the next
# process on this node (a daily `rayscore run`): each is also kept in a small file (_memo_file).
_Key = tuple[tuple[str, int, int, int, int], ...]  # each file's (name, size, mtime, ctime, inode)
_FINGERPRINTS: dict[_Key, str] = {}
_PENDING: dict[_Key, Future[str]] = {}  # being taken
_lock = threading.Lock()
BACKGROUND_NICE = 10  # the hashing thread's nice value (Linux), above the process's 0
SETTLED_S = 2.0  # a file changed more recently than this may still be written to: not remembered
MEMO_DIR = "rayscore-fingerprints"  # <temp directory>/rayscore-fingerprints-<uid>: a JSON file per model version


def file_state(path: str) -> _Key:
    """Each of the model's files as (name, size, mtime, ctime, inode): changes whenever a file is rewritten."""
    names = model_files(path)
    stats = [os.stat(name) for name in names]
    return tuple((n, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for n, st in zip(names, stats))


def fingerprint(path: str, chunk: int = 1 << 22) -> str:
    """``sha256:<hex>`` of the model's bytes (names too, for a directory).

    Reads the whole model once (about 1.5 GB/s of CPU from page cache), in
    the calling thread: a score can be traced to the exact model that made
    it. Once taken it is remembered, in this process and in a file under
    the temp directory (:data:`MEMO_DIR`, this user's) for later processes
    on this node, while no file's size, times or inode changed, as git
    trusts its index (a file changed within :data:`SETTLED_S` seconds
    before the read, or during it, is not remembered, as git does with a
    racy entry; the ctime cannot be set back by a writer). One being taken
    by :func:`fingerprint_soon` is waited for, not read twice.
    """
    key = file_state(path)
    future, mine = _claim(path, key)
    if mine:
        _take(path, key, chunk, future)
    return future.result()


def fingerprint_soon(path: str, chunk: int = 1 << 22) -> Future[str]:
    """:func:`fingerprint` taken on a background thread: the caller goes on while the model is read.

    The driver starts the pool's actors meanwhile, so a multi-GB model's
    hash (seconds) is not on the way to the first prediction; whoever
    needs the digest (the column metadata, the run report) waits for it.
    The thread runs at nice :data:`BACKGROUND_NICE` (Linux): on a node whose
    cores are busy starting the actors, the read yields to them.
    """
    key = file_state(path)
    future, mine = _claim(path, key)
    if mine:
        # A daemon thread: an interpreter that exits meanwhile does not wait for a multi-GB read.
        threading.Thread(
            target=_background, args=(path, key, chunk, future), name="rayscore-fingerprint", daemon=True
        ).start()
    return future


def _claim(path: str, key: _Key) -> tuple[Future[str], bool]:
    """The future of ``key``'s digest: done (remembered), being taken, or new and the caller's to take."""
    kept = None if key in _FINGERPRINTS else _read_memo(path, key)  # a file read: not under the lock
    with _lock:
        if kept is not None:
            _FINGERPRINTS[key] = kept
        if key in _FINGERPRINTS:
            done: Future[str] = Future()
            done.set_result(_FINGERPRINTS[key])
            return done, False
        if key in _PENDING:
            return _PENDING[key], False
        future = _PENDING[key] = Future()
        return future, True


def _background(path: str, key: _Key, chunk: int, future: Future[str]) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux (a thread's own nice is Linux's), or not allowed
        pass
    _take(path, key, chunk, future)


def _take(path: str, key: _Key, chunk: int, future: Future[str]) -> None:
    """Read ``key``'s files into ``future``; remember the digest if the files had settled and did not change."""
    began = time.time_ns()
    try:
        digest = hashlib.sha256()
        for name, *_ in key:
            digest.update(os.path.relpath(name, path).encode() if name != path else b"")
            with open(name, "rb") as fh:
                while block := fh.read(chunk):
                    digest.update(block)  # hashlib lets go of the GIL for blocks this large
        result = f"sha256:{digest.hexdigest()}"
    except BaseException as exc:  # noqa: BLE001 - whoever waits raises it
        with _lock:
            _PENDING.pop(key, None)
        future.set_exception(exc)
        return
    # Settled before the read began (a write in the same clock tick as the stat is not seen in its
    # times, as git's racy entries), and the same files after it: only then is the digest kept.
    newest = max((max(mtime, ctime) for _, _, mtime, ctime, _ in key), default=0)
    try:
        settled = began - newest > SETTLED_S * 1e9 and file_state(path) == key
    except OSError:  # gone or changed meanwhile
        settled = False
    with _lock:
        _PENDING.pop(key, None)
        if settled:
            _FINGERPRINTS[key] = result
    future.set_result(result)
    if settled:
        _write_memo(path, key, result)


def known_fingerprint(path: str) -> str | None:
    """The model's digest when it is known without reading the model: taken in this process, or kept on this
    node for exactly these files (:func:`fingerprint`); else None (not taken yet, being taken, or just written)."""
    try:
        key = file_state(path)
    except OSError:
        return None
    with _lock:
        if key in _FINGERPRINTS:
            return _FINGERPRINTS[key]
    return _read_memo(path, key)


def _memo_dir() -> str:
    """This user's memo folder on this node: under the temp directory, writable by its owner only."""
    return os.path.join(tempfile.gettempdir(), f"{MEMO_DIR}-{os.getuid()}")


def _memo_key(path: str, key: _Key) -> dict[str, Any]:
    """``key`` as the memo keeps it: the model's absolute root (names are hashed relative to it) and files."""
    return {"root": os.path.abspath(path), "files": [[os.path.abspath(name), *state] for name, *state in key]}


def _read_memo(path: str, key: _Key) -> str | None:
    """The digest kept for exactly ``key``, if any, from a folder only this user can write; else None."""
    digest = _recall(_memo_key(path, key), "fingerprint")
    return digest if isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else None


def _write_memo(path: str, key: _Key, digest: str) -> None:
    """Keep ``digest`` for ``key``; a failure costs only a read later."""
    _keep(_memo_key(path, key), "fingerprint", digest)


def _memo_file(key: Mapping[str, Any]) -> str:
    """Where what is known of ``key`` is kept: one small JSON file per key (a model version, a model's outputs)."""
    name = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(key)).hex  # keys are built in a fixed order
    return os.path.join(_memo_dir(), f"{name}.json")


def _recall(key: Mapping[str, Any], field: str) -> Any:
    """``field`` as kept for exactly ``key`` in the memo folder, if only this user can write there; else None."""
    try:
        folder = os.stat(_memo_dir())
        if folder.st_uid != os.getuid() or folder.st_mode & 0o022:  # another user could have planted it
            return None
        with open(_memo_file(key), encoding="utf-8") as fh:
            kept = json.load(fh)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != json.loads(json.dumps(key)):
        return None
    return kept.get(field)


def _keep(key: Mapping[str, Any], field: str, value: Any) -> None:
    """Keep ``value`` as ``key``'s ``field`` (whole or not at all: a temp file renamed); a failure is only logged:
    a memo saves work, it is never needed."""
    temp = None
    try:
        target = _memo_file(key)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"key": key, field: value}, fh)
        os.replace(temp, target)
    except Exception as exc:  # noqa: BLE001 - the value is known either way; the memo only saves work
        log.debug("model: could not keep %s for %s: %s", field, key, exc)
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


# A model's outputs as a loaded copy reports them, for a file that does not state their shapes (.keras):
# kept by the model's digest and what else decides them, so that a later call on this node need not wait
# for an actor's load to type the prediction columns.
def remembered_outputs(identity: Mapping[str, Any], names: tuple[str, ...]) -> tuple[TensorSpec, ...] | None:
    """The outputs a loaded copy of the model ``identity`` names reported on this node (:func:`remember_outputs`),
    if kept for exactly that identity and named ``names`` in that order; else None."""
    kept = _recall({"outputs_of": dict(identity)}, "outputs")
    try:
        outputs = tuple(
            TensorSpec(name, tuple(None if d is None else int(d) for d in shape), dtype) for name, shape, dtype in kept
        )
    except (TypeError, ValueError):  # nothing kept, or not what remember_outputs writes
        return None
    if tuple(t.name for t in outputs) != names or not all(isinstance(t.dtype, str) for t in outputs):
        return None
    return outputs


def remember_outputs(identity: Mapping[str, Any], outputs: tuple[TensorSpec, ...]) -> None:
    """Keep a loaded copy's ``outputs`` (each with its shape and dtype) for the model ``identity`` names."""
    if all(t.shape is not None and t.dtype is not None for t in outputs):
        _keep({"outputs_of": dict(identity)}, "outputs", [[t.name, list(t.shape), t.dtype] for t in outputs])


def local_model_path(uri: str) -> str:
    """The local filesystem path of ``uri`` (a plain path or ``file://``)."""
    path = local_dir(uri)
    if path is None:
        scheme = uri.split("://", 1)[0]
        raise ModelError(f"model.uri: scheme {scheme}:// is not supported yet, got {uri!r}")
    return path


def resolve_loader(location: str, fmt: str = "auto", *, uri: str | None = None) -> tuple[str, Loader]:
    """Pick the loader for a local model; check it exists. Returns (local path, loader).

    ``uri`` is what messages call the model when ``location`` is a cached copy of it.
    """
    path = local_model_path(location)
    shown = uri or path
    if not os.path.exists(path):
        raise ModelError(f"model.uri: no model at {path}{_example_hint(path)}")
    if fmt != "auto":
        if fmt not in _LOADERS:
            raise ModelError(f"model.format must be auto or one of {sorted(_LOADERS)}, got {fmt!r}")
        return path, _LOADERS[fmt]
    for loader in _LOADERS.values():
        if loader.matches(path):
            return path, loader
    raise ModelError(
        f"model.format: cannot tell the format of {shown} from its name; set model.format to one of {sorted(_LOADERS)}"
    )


def _example_hint(path: str) -> str:
    """Point at the script that makes the bundled example's files."""
    script = Path(path).resolve().parent.parent / "make_example.py"
    if script.exists():
        return f" (make the example's model and data with: python {os.path.relpath(script)})"
    return ""
