"""Load a Keras model with its weights streamed from disk into its variables.

``keras.saving.load_model`` of a multi-GB model needs several times the
model's bytes: the layers are built with freshly computed random initial
values, then the whole weights file is read into memory, then into numpy
arrays, then copied into the variables (a 4.35 GB ``.keras`` file was killed
above 24 GB on a 24 GB machine). rayscore builds the model differently:

* Every variable is created filled with zeros (``tf.zeros``: one buffer, no
  random-number temporaries), so building costs one model's bytes.
* Keras's own saving code walks the model (so the pairing of variables with
  stored tensors is exactly Keras's), but the store hands out lazy references
  to the HDF5 datasets instead of arrays, and assignments are recorded rather
  than performed.
* Each recorded variable is then filled in place, ``CHUNK_BYTES`` at a time,
  straight from the file (``ResourceStridedSliceAssign`` on the variable's
  buffer). The variable is then taken out of TensorFlow's copy-on-read mode
  (which that op switches on), or each dense read in ``predict`` would copy it.
* A ``.keras`` archive's weights member is read in place: Keras writes it
  uncompressed, so it is a byte range of the archive opened as an HDF5 file.

Cost: one model's bytes of variables plus one chunk (~1.1x the model's bytes
on top of the process, measured in ``bench/bench_load_memory.py``), and no
copy of the weights file. Applies to the TensorFlow backend with variables on
the CPU; anything else (a compressed archive, weights in ``.npz``) falls back
to Keras's own loader, with its memory cost.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from . import _tables
from ._archive import WEIGHTS_MEMBER, ArchiveMember, member_range

__all__ = ["CHUNK_BYTES", "stream_keras_archive", "stream_h5_model", "can_stream_archive"]

CHUNK_BYTES = 64 << 20


def can_stream_archive(path: str) -> bool:
    """Whether ``path``'s weights can be streamed (TF backend, uncompressed ``model.weights.h5``)."""
    return _tf_backend() and member_range(path, WEIGHTS_MEMBER) is not None


def _tf_backend() -> bool:
    import keras  # noqa: PLC0415

    return keras.backend.backend() == "tensorflow"


class _Lazy:
    """A stored tensor not read yet: what the recording store hands to ``Variable.assign``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = dataset.dtype


@contextlib.contextmanager
def _recording(pending: list[tuple[Any, _Lazy]]) -> Iterator[None]:
    """Build variables as zeros; record ``assign(<_Lazy>)`` instead of reading the value."""
    import tensorflow as tf  # noqa: PLC0415
    from keras.src.backend.tensorflow.core import Variable  # noqa: PLC0415

    original_init, original_assign = Variable._initialize_with_initializer, Variable.assign

    def zeros_init(self: Any, initializer: Any) -> None:
        shape, dtype = self._shape, self._dtype
        self._initialize(lambda: tf.zeros(shape, dtype=dtype))

    def assign(self: Any, value: Any) -> Any:
        if isinstance(value, _Lazy):
            if tuple(self.shape) != value.shape:
                raise ValueError(f"variable {self.path} has shape {tuple(self.shape)}, the file has {value.shape}")
            pending.append((self, value))
            return None
        return original_assign(self, value)

    Variable._initialize_with_initializer, Variable.assign = zeros_init, assign
    try:
        yield
    finally:
        Variable._initialize_with_initializer, Variable.assign = original_init, original_assign


def _fill(pending: list[tuple[Any, _Lazy]]) -> None:
    """Copy each recorded dataset into its variable's buffer, one chunk at a time."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow.python.ops import gen_array_ops  # noqa: PLC0415

    for variable, lazy in pending:
        target = variable._value  # the tf.Variable behind the Keras variable
        dataset = lazy.dataset
        if dataset.ndim == 0 or dataset.size == 0 or "CPU" not in target.device.upper():
            # Small, or on a device: one host array, copied over by TF.
            target.assign(np.asarray(dataset[()], dtype=target.dtype.as_numpy_dtype))
            continue
        row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))
        rows = max(1, CHUNK_BYTES // max(1, row_bytes))
        for start in range(0, dataset.shape[0], rows):
            stop = min(dataset.shape[0], start + rows)
            chunk = np.asarray(dataset[start:stop], dtype=target.dtype.as_numpy_dtype)
            gen_array_ops.resource_strided_slice_assign(
                ref=target.handle, begin=[start], end=[stop], strides=[1], value=chunk
            )
        tf.raw_ops.DisableCopyOnRead(resource=target.handle)


def stream_keras_archive(
    path: str, *, safe_mode: bool, custom_objects: Mapping[str, Any] | None, tables: Sequence[_tables.Table] = ()
) -> Any:
    """Build the model in a ``.keras`` archive and stream its weights in; map ``tables`` (see :mod:`._tables`)."""
    import h5py  # noqa: PLC0415
    from keras.src.saving import saving_lib  # noqa: PLC0415

    span = member_range(path, WEIGHTS_MEMBER)
    if span is None:
        raise ValueError(f"{path} has no uncompressed {WEIGHTS_MEMBER}")

    class LazyStore(saving_lib.H5IOStore):
        def _get_h5_file(self, path_or_io: Any, mode: str | None = None) -> Any:
            self.io_file = ArchiveMember(path, *span)
            return h5py.File(self.io_file, mode="r")

        def __getitem__(self, key: str) -> Any:
            dataset = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key)
            if dataset.attrs.get("dtype") == "bfloat16":  # stored as raw bytes; Keras decodes it
                return super().__getitem__(key)
            return _Lazy(dataset)

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    config, custom_objects = _with_mapped(config, custom_objects, tables)
    pending: list[tuple[Any, _Lazy]] = []
    failed: set[int] = set()
    messages: dict[int, Any] = {}
    with _recording(pending), _tables.mapping_source(path, span[0]):
        model = saving_lib._model_from_config(json.dumps(config), custom_objects, False, safe_mode)
        store = LazyStore(path, mode="r")
        try:
            saving_lib._load_state(
                model,
                weights_store=store,
                assets_store=None,
                inner_path="",
                visited_saveables=set(),
                failed_saveables=failed,
                error_msgs=messages,
            )
            if failed:
                saving_lib._raise_loading_failure(messages)
            _fill(pending)
        finally:
            store.close()
    return model


def _with_mapped(
    config: dict[str, Any], custom_objects: Mapping[str, Any] | None, tables: Sequence[_tables.Table]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model config and custom objects that build ``tables``' mapped layers (unchanged when none is)."""
    if not any(t.mapped for t in tables):
        return config, dict(custom_objects) if custom_objects else None
    return _tables.mapped_config(config, tables), {**(custom_objects or {}), **_tables.custom_objects()}


def stream_h5_model(
    path: str, *, safe_mode: bool, custom_objects: Mapping[str, Any] | None, tables: Sequence[_tables.Table] = ()
) -> Any:
    """Build the model in a legacy Keras ``.h5`` file and stream its weights in; map ``tables``.

    Does what ``legacy_h5_format.load_model_from_hdf5`` does, with the config's
    mapped layers swapped in and the weights handed out lazily.
    """
    import h5py  # noqa: PLC0415
    from keras.src.legacy.saving import json_utils, legacy_h5_format, saving_options, saving_utils  # noqa: PLC0415
    from keras.src.saving import saving_lib, serialization_lib  # noqa: PLC0415

    original_subset = legacy_h5_format.load_subset_weights_from_hdf5_group
    original_weights = legacy_h5_format._legacy_weights

    def lazy_subset(group: Any) -> list[_Lazy]:
        names = legacy_h5_format.load_attributes_from_hdf5_group(group, "weight_names")
        return [_Lazy(saving_lib.safe_get_h5_dataset(group, name)) for name in names]

    def legacy_weights(layer: Any) -> list[Any]:
        return [layer._embeddings] if _tables.is_mapped(layer) else original_weights(layer)

    pending: list[tuple[Any, _Lazy]] = []
    with h5py.File(path, "r") as fh, _recording(pending), _tables.mapping_source(path, 0):
        raw = fh.attrs.get("model_config")
        if raw is None:
            raise ValueError(f"No model config found in the file at {path}.")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        config, objects = _with_mapped(config, custom_objects, tables)
        legacy_h5_format.load_subset_weights_from_hdf5_group = lazy_subset
        legacy_h5_format._legacy_weights = legacy_weights
        try:
            with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(safe_mode):
                model = saving_utils.model_from_config(json_utils.decode(json.dumps(config)), custom_objects=objects)
                legacy_h5_format.load_weights_from_hdf5_group(
                    legacy_h5_format.safe_get_h5_group(fh, "model_weights"), model
                )
        finally:
            legacy_h5_format.load_subset_weights_from_hdf5_group = original_subset
            legacy_h5_format._legacy_weights = original_weights
        _fill(pending)
    return model
