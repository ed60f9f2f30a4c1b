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
import io
import os
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["CHUNK_BYTES", "stream_keras_archive", "stream_h5_model", "can_stream_archive"]

CHUNK_BYTES = 64 << 20
WEIGHTS_MEMBER = "model.weights.h5"


class _ArchiveMember(io.RawIOBase):
    """An uncompressed zip member, read in place (h5py opens any seekable file object)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:want]], self._offset + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _member_range(path: str, name: str) -> tuple[int, int] | None:
    """(offset, size) of an uncompressed member's bytes in the archive, else None."""
    with zipfile.ZipFile(path) as archive:
        if name not in archive.namelist():
            return None
        info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)  # the local file header: its name and extra field lengths vary
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def can_stream_archive(path: str) -> bool:
    """Whether ``path``'s weights can be streamed (TF backend, uncompressed ``model.weights.h5``)."""
    return _tf_backend() and _member_range(path, WEIGHTS_MEMBER) is not None


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


def stream_keras_archive(path: str, *, safe_mode: bool, custom_objects: Mapping[str, Any] | None) -> Any:
    """Build the model in a ``.keras`` archive and stream its weights in (see module docstring)."""
    import h5py  # noqa: PLC0415
    from keras.src.saving import saving_lib  # noqa: PLC0415

    span = _member_range(path, WEIGHTS_MEMBER)
    if span is None:
        raise ValueError(f"{path} has no uncompressed {WEIGHTS_MEMBER}")

    class LazyStore(saving_lib.H5IOStore):
        def _get_h5_file(self, path_or_io: Any, mode: str | None = None) -> Any:
            self.io_file = _ArchiveMember(path, *span)
            return h5py.File(self.io_file, mode="r")

        def __getitem__(self, key: str) -> Any:
            dataset = saving_lib.safe_get_h5_dataset(self._h5_entry_group, key)
            if dataset.attrs.get("dtype") == "bfloat16":  # stored as raw bytes; Keras decodes it
                return super().__getitem__(key)
            return _Lazy(dataset)

    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json")
    pending: list[tuple[Any, _Lazy]] = []
    failed: set[int] = set()
    messages: dict[int, Any] = {}
    with _recording(pending):
        model = saving_lib._model_from_config(config, custom_objects, False, safe_mode)
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


def stream_h5_model(path: str, *, safe_mode: bool, custom_objects: Mapping[str, Any] | None) -> Any:
    """Build the model in a legacy Keras ``.h5`` file and stream its weights in."""
    import h5py  # noqa: PLC0415
    from keras.src.legacy.saving import legacy_h5_format  # noqa: PLC0415
    from keras.src.saving import saving_lib  # noqa: PLC0415

    original = legacy_h5_format.load_subset_weights_from_hdf5_group

    def lazy_subset(group: Any) -> list[_Lazy]:
        names = legacy_h5_format.load_attributes_from_hdf5_group(group, "weight_names")
        return [_Lazy(saving_lib.safe_get_h5_dataset(group, name)) for name in names]

    pending: list[tuple[Any, _Lazy]] = []
    with h5py.File(path, "r") as fh, _recording(pending):
        legacy_h5_format.load_subset_weights_from_hdf5_group = lazy_subset
        try:
            model = legacy_h5_format.load_model_from_hdf5(
                fh, custom_objects=dict(custom_objects or {}), compile=False, safe_mode=safe_mode
            )
        finally:
            legacy_h5_format.load_subset_weights_from_hdf5_group = original
        _fill(pending)
    return model
