"""Large embedding tables read in place: memory-mapped from the node's model file, shared by its actors.

An ``Embedding`` table is most of a big recommendation model, and a batch
touches a few thousand of its rows. Loaded into a variable, every actor holds
all of it. Mapped, the table lives once in the node's page cache, whatever the
number of actors on the node, and only the rows that batches touch need to be
resident: a model larger than the node's memory can be scored, its cold rows
read from disk when a batch needs them.

What is mapped: a plain ``keras.layers.Embedding`` (no LoRA, not quantised,
not sparse) of a ``.keras`` or ``.h5`` model, whose table has at least
``model.mmap_min_bytes`` bytes and is stored contiguous and uncompressed in
the file (as Keras writes it; a ``.keras`` archive's weights member must be
stored, not deflated). Its layer is built as a ``MappedEmbedding``, which has
no variable: each lookup gathers the batch's rows from the mapping on the
host. :func:`scan` says which tables are mapped, and why not, from the file's
metadata alone, so the driver can plan and explain before any actor starts.

Cost: per actor, the rows one batch gathers; per node, the table's touched
pages in the page cache, shared and reclaimable. The gather runs in Python
(``tf.numpy_function``), so a model with a mapped table is not XLA-compiled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._archive import WEIGHTS_MEMBER, ArchiveMember, member_range
from ._placement import TABLE_SHARE

__all__ = [
    "DEFAULT_MIN_BYTES",
    "Table",
    "scan",
    "lookup_row_bytes",
    "input_batch_shape",
    "mapped_config",
    "mapping_source",
    "custom_objects",
    "resident",
]

DEFAULT_MIN_BYTES = 256 << 20


@dataclass(frozen=True)
class Table:
    """One embedding table of at least ``mmap_min_bytes``: mapped, or the reason it is not."""

    layer: str
    nbytes: int
    mapped: bool
    reason: str = ""
    at: str = field(default="", compare=False)  # where its layer sits in the model's config (_walk_layers)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "at"}


# --------------------------------------------------------------------------- what the file holds


def _snake(name: str) -> str:
    """Keras's ``naming.to_snake_case``: how a ``.keras`` file names a layer's weights by its class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _walk_layers(config: Any, depth: int = 0, prefix: str = "layers") -> Iterator[tuple[dict[str, Any], int, str]]:
    """Every layer entry of a model config, nested models' too: (entry, nesting depth, its path in a .keras file).

    A ``.keras`` file keys each layer by its class, numbered in order within
    its model (``layers/embedding``, ``layers/embedding_1``), not by its name.
    """
    body = config.get("config") if isinstance(config, Mapping) else None
    if not isinstance(body, Mapping) or not isinstance(body.get("layers"), list):
        return
    used: dict[str, int] = {}
    for layer in body["layers"]:
        key = _snake(str(layer.get("class_name", "")))
        used[key] = used.get(key, -1) + 1
        path = f"{prefix}/{key}" + (f"_{used[key]}" if used[key] else "")
        yield layer, depth, path
        yield from _walk_layers(layer, depth + 1, f"{path}/layers")


def _itemsize(dtype: Any) -> int:
    """Bytes per value of a layer's variables, from its config's dtype (a name or a DTypePolicy)."""
    if isinstance(dtype, Mapping):
        dtype = dtype.get("config", {}).get("name", "float32")
    name = str(dtype or "float32")
    if name.startswith("mixed_"):  # mixed precision keeps its variables in float32
        return 4
    try:
        return 2 if name == "bfloat16" else np.dtype(name).itemsize
    except TypeError:  # a dtype numpy does not know (float8 kinds): sized as float32, to be safe
        return 4


def _plain_embedding(layer: Mapping[str, Any], depth: int, fmt: str) -> tuple[str, int, str]:
    """(name, table bytes, why it cannot be mapped or "") of an ``Embedding`` config entry."""
    cfg = layer.get("config", {})
    nbytes = int(cfg.get("input_dim", 0)) * int(cfg.get("output_dim", 0)) * _itemsize(cfg.get("dtype"))
    why = ""
    if cfg.get("lora_rank"):
        why = "it has LoRA weights"
    elif cfg.get("quantization_config") or "Quant" in json.dumps(cfg.get("dtype")):
        why = "it is quantised"
    elif cfg.get("sparse"):
        why = "it is sparse"
    elif fmt == "h5" and depth > 0:
        why = "it is inside a nested model of a .h5 file"
    return str(cfg.get("name", layer.get("name", ""))), nbytes, why


def lookup_row_bytes(config: Mapping[str, Any]) -> int:
    """Bytes one row's embedding lookups make in a model call, from the model's config alone.

    Each call of an ``Embedding`` layer turns a row's ids into ids x
    ``output_dim`` values: a 20-token title through a 64-wide table makes
    5 KiB a row from 80 bytes of ids. Those outputs, not the ids, are most
    of a call's memory in a recommendation model, and the batch size and an
    actor's memory ask count them (:func:`rayscore._sizing.auto_batch_rows`,
    :func:`rayscore._placement.actor_memory`). A ``.keras`` config states each
    call's input shape; a legacy one names the input layer it reads, whose
    shape is taken; a call whose ids' count the config does not state (an
    open sequence, an input made by another layer) counts nothing.

    >>> ids = {"class_name": "__keras_tensor__", "config": {"shape": [None, 20]}}
    >>> emb = {"class_name": "Embedding", "config": {"output_dim": 64}, "inbound_nodes": [{"args": [ids]}] * 4}
    >>> lookup_row_bytes({"class_name": "Functional", "config": {"layers": [emb]}})
    20480
    """
    body = config.get("config") if isinstance(config, Mapping) else None
    if not isinstance(body, Mapping) or not isinstance(body.get("layers"), list):
        return 0
    layers = [
        layer for layer in body["layers"] if isinstance(layer, Mapping) and isinstance(layer.get("config"), Mapping)
    ]
    shapes = {
        str(layer["config"].get("name", layer.get("name"))): input_batch_shape(layer["config"])
        for layer in layers
        if layer.get("class_name") == "InputLayer"
    }
    total = 0
    for i, layer in enumerate(layers):
        if layer.get("class_name") == "Embedding":
            cfg = layer["config"]
            width = cfg.get("output_dim") if isinstance(cfg.get("output_dim"), int) else 0
            width *= _itemsize(cfg.get("dtype"))
            calls = [_ids_per_row(node, shapes) for node in layer.get("inbound_nodes") or []]
            if (
                not calls
                and config.get("class_name") == "Sequential"
                and all(x.get("class_name") == "InputLayer" for x in layers[:i])
            ):  # a Sequential's first layer: its input is the model's
                first = layers[0]["config"] if i else cfg
                calls = [_count(input_batch_shape(first) or body.get("build_input_shape"))]
            total += sum(width * ids for ids in calls if ids)
        total += lookup_row_bytes(layer)  # a nested model's own lookups
    return total


def input_batch_shape(cfg: Mapping[str, Any]) -> Any:
    """An input layer's batch shape in its config: ``batch_shape`` (Keras 3) or ``batch_input_shape`` (legacy)."""
    return cfg.get("batch_shape") or cfg.get("batch_input_shape")


def _count(shape: Any) -> int | None:
    """Values per row of a batch shape (its first dimension the batch), or None when one is open."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return int(np.prod(shape[1:], dtype=np.int64))


def _ids_per_row(node: Any, shapes: Mapping[str, Any]) -> int | None:
    """Ids per row that one call of a layer takes: its input's shape in a ``.keras`` node, else its input layer's."""
    if isinstance(node, Mapping):  # Keras 3: {"args": [{"class_name": "__keras_tensor__", "config": {"shape": ...}}]}
        args = node.get("args")
        first = args[0] if isinstance(args, list) and args and isinstance(args[0], Mapping) else {}
        tensor = first.get("config")
        return _count(tensor.get("shape")) if isinstance(tensor, Mapping) else None
    if isinstance(node, list) and node and isinstance(node[0], list) and node[0]:  # legacy: [[layer, node, tensor, {}]]
        return _count(shapes.get(str(node[0][0])))
    return None


def _read_config(path: str, fmt: str) -> dict[str, Any]:
    import h5py  # noqa: PLC0415

    if fmt == "keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    with h5py.File(path, "r") as fh:
        raw = fh.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


@contextlib.contextmanager
def _open_weights(path: str, fmt: str) -> Iterator[Any]:
    """The model's weights as an open h5py file (a ``.keras`` archive's read in place)."""
    import h5py  # noqa: PLC0415

    if fmt == "h5":
        with h5py.File(path, "r") as fh:
            yield fh
        return
    span = member_range(path, WEIGHTS_MEMBER)
    if span is None:
        raise _Unmappable(f"the archive's {WEIGHTS_MEMBER} is compressed or missing")
    member = ArchiveMember(path, *span)
    try:
        with h5py.File(member, "r") as fh:
            yield fh
    finally:
        member.close()


class _Unmappable(Exception):
    """Why none of a file's tables can be mapped."""


def _datasets(fh: Any) -> list[tuple[str, Any]]:
    import h5py  # noqa: PLC0415

    found: list[tuple[str, Any]] = []
    fh.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def _not_in_place(dataset: Any) -> str:
    """Why ``dataset``'s bytes are not one plain run in the file ("" when they are)."""
    if dataset.chunks is not None or dataset.compression is not None:
        return "it is stored chunked or compressed"
    if dataset.external or dataset.id.get_offset() is None:
        return "its bytes are not stored in the file"
    if dataset.dtype.kind not in "fiu":
        return f"its dtype {dataset.dtype} cannot be read in place"
    return ""


def _owner(dataset: str, layer: str) -> bool:
    """Whether a ``.h5`` file's ``dataset`` path is under a group named for ``layer``."""
    return layer in dataset.split("/")[:-1]


def scan(path: str, fmt: str, min_bytes: int) -> list[Table]:
    """The model's tables of at least ``min_bytes``: mapped, or why not. ``[]`` when none or ``min_bytes <= 0``.

    Reads only the config and the weights file's metadata. Large weights that
    belong to no plain ``Embedding`` are listed as not mapped, with the reason.
    """
    if min_bytes <= 0 or fmt not in ("keras", "h5"):
        return []
    config = _read_config(path, fmt)
    candidates = []
    for layer, depth, keras_path in _walk_layers(config):
        if layer.get("class_name") == "Embedding" and layer.get("module", "keras.layers") == "keras.layers":
            name, nbytes, why = _plain_embedding(layer, depth, fmt)
            shape = (int(layer["config"]["input_dim"]), int(layer["config"]["output_dim"]))
            if nbytes >= min_bytes:
                candidates.append((name, nbytes, why, shape, keras_path))
    try:
        with _open_weights(path, fmt) as fh:
            datasets = {n: (tuple(d.shape), d.nbytes, _not_in_place(d)) for n, d in _datasets(fh)}
    except _Unmappable as exc:
        return [Table(name, nbytes, False, why or str(exc)) for name, nbytes, why, _, _ in candidates]
    tables, claimed = [], set()
    for name, nbytes, why, shape, keras_path in candidates:
        if fmt == "keras":
            mine = [f"{keras_path}/vars/0"] if datasets.get(f"{keras_path}/vars/0", ((),))[0] == shape else []
        else:  # a .h5 file keys weights by layer name: model_weights/[MODEL/]NAME/NAME/embeddings
            mine = [n for n, d in datasets.items() if _owner(n, name) and d[0] == shape]
        if len(mine) != 1:
            why = why or f"{len(mine)} weights of shape {shape} belong to it in the file"
        else:
            claimed.add(mine[0])
            why = why or datasets[mine[0]][2]
        tables.append(Table(name, nbytes, not why, why, keras_path))
    for dname, (_, nbytes, _) in datasets.items():
        if nbytes >= min_bytes and dname not in claimed:
            tables.append(Table(dname, nbytes, False, "it is not the table of a plain keras Embedding layer"))
    return tables


# --------------------------------------------------------------------------- the mapped layer


def mapped_config(config: dict[str, Any], tables: list[Table]) -> dict[str, Any]:
    """``config`` with each mapped table's ``Embedding`` made a ``MappedEmbedding`` (the rest unchanged)."""
    where = {t.at for t in tables if t.mapped}
    config = json.loads(json.dumps(config))
    for layer, _, at in _walk_layers(config):
        if at in where:
            layer.update(class_name="MappedEmbedding", module=None, registered_name="rayscore>MappedEmbedding")
    return config


_SOURCE: list[tuple[str, int]] = []  # (file, where the weights' HDF5 bytes begin in it), while a model loads
_OPEN: list[MappedTable] = []  # this process's mapped tables


@contextlib.contextmanager
def mapping_source(path: str, base: int) -> Iterator[None]:
    """Tables assigned inside this block are mapped from ``path``, whose HDF5 weights begin at ``base``."""
    _SOURCE.append((path, base))
    try:
        yield
    finally:
        _SOURCE.pop()


def memory_bytes() -> int:
    """This node's memory as its processes get it: a container's cgroup limit, else the machine's.

    The page cache that holds a mapped table counts against the cgroup's limit.
    """
    from ray._private.utils import get_system_memory  # noqa: PLC0415 - Ray reads cgroup v1 and v2 limits

    return int(get_system_memory())


class MappedTable:
    """A table read in place: what a ``MappedEmbedding`` holds instead of a variable.

    ``assign`` takes the stored dataset (rayscore's lazy reference to it) and maps
    its bytes read-only; ``lookup`` gathers rows from the mapping.
    """

    def __init__(self, layer: str, shape: tuple[int, int]) -> None:
        self.layer, self.shape, self.path = layer, shape, f"{layer}/embeddings"
        self.rows: np.ndarray | None = None  # the table's bytes, one row of bytes per id
        self.dtype = np.dtype("float32")
        self._map: mmap.mmap | None = None

    def assign(self, value: Any) -> None:
        dataset = getattr(value, "dataset", None)
        if dataset is None or not _SOURCE:
            raise ValueError(f"the table of layer {self.layer!r} can only be mapped from its model file")
        if tuple(dataset.shape) != self.shape:
            raise ValueError(f"layer {self.layer!r} has a table of shape {self.shape}, the file has {dataset.shape}")
        why = _not_in_place(dataset)
        if why:
            raise ValueError(f"the table of layer {self.layer!r} cannot be mapped: {why}")
        path, base = _SOURCE[-1]
        start = base + int(dataset.id.get_offset())
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as fh:
            self._map = mmap.mmap(
                fh.fileno(), start - aligned + dataset.nbytes, access=mmap.ACCESS_READ, offset=aligned
            )
        if dataset.nbytes > TABLE_SHARE * memory_bytes():
            # Too large to stay cached: a fault reads its own page, not the 128 KiB around it, which
            # would multiply the reads and evict rows still in use. A table that fits keeps the
            # kernel's read-around, which warms it from a cold cache in a few batches.
            self._map.madvise(mmap.MADV_RANDOM)
        # Rows as raw bytes: a table inside a zip archive is seldom aligned to its dtype, and numpy
        # copies a whole unaligned array before a take. Bytes are always aligned; the gathered rows
        # are a new (aligned) array, viewed as the dtype afterwards.
        self.dtype = dataset.dtype
        self.rows = np.frombuffer(self._map, np.uint8, dataset.nbytes, start - aligned).reshape(self.shape[0], -1)
        _OPEN.append(self)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` (any shape) of the table: ``ids.shape + (dim,)``, in the native byte order."""
        assert self.rows is not None
        count = self.shape[0]
        if ids.size and ids.min() < 0:  # as Keras's take does: -1 is the last row
            ids = np.where(ids < 0, ids + count, ids)
        if ids.size and (ids.min() < 0 or ids.max() >= count):
            bad = ids[(ids < 0) | (ids >= count)].flat[0]
            raise IndexError(f"layer {self.layer!r}: id {bad} is not in [0, {count})")
        out = np.take(self.rows, ids, axis=0).view(self.dtype)
        return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))

    def lookup(self, ids: Any) -> Any:
        import tensorflow as tf  # noqa: PLC0415

        assert self.rows is not None, f"the table of layer {self.layer!r} was never assigned"
        dtype = self.dtype.newbyteorder("=")
        out = tf.numpy_function(self.gather, [ids], Tout=tf.as_dtype(dtype), stateful=False)
        out.set_shape(ids.shape.concatenate([self.shape[1]]))
        return out

    def resident_bytes(self) -> int:
        """Bytes of this table in the node's page cache now (``mincore``: what every process shares)."""
        if self._map is None:
            return 0
        page = mmap.PAGESIZE
        length = len(self._map)
        vec = (ctypes.c_ubyte * ((length + page - 1) // page))()
        base = np.frombuffer(self._map, np.uint8, 1).ctypes.data  # the mapping's first byte: page-aligned
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mincore(ctypes.c_void_p(base), ctypes.c_size_t(length), vec) != 0:
            return 0
        return int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) * page


def resident() -> int:
    """Bytes of this process's mapped tables in the page cache now."""
    return sum(t.resident_bytes() for t in _OPEN)


def custom_objects() -> dict[str, Any]:
    """``{"rayscore>MappedEmbedding": the class}``, for Keras's deserialisation of a :func:`mapped_config`."""
    import keras  # noqa: PLC0415
    from keras import ops  # noqa: PLC0415

    class Embedding(keras.layers.Embedding):
        """A plain ``Embedding`` whose table is a :class:`MappedTable`, not a variable.

        Named ``Embedding``: a ``.keras`` file keys a layer's weights by its class's name.
        """

        supports_jit = False  # the gather runs in Python

        def build(self, input_shape: Any = None) -> None:
            if self.built:
                return
            self._embeddings = MappedTable(self.name, (self.input_dim, self.output_dim))
            self.built = True

        def call(self, inputs: Any) -> Any:
            if inputs.dtype not in ("int32", "int64"):  # as Embedding.call does (float ids from a default Input)
                inputs = ops.cast(inputs, "int32")
            return ops.cast(self._embeddings.lookup(inputs), self.compute_dtype)

        def load_own_variables(self, store: Any) -> None:
            if len(store.keys()) != 1:
                raise ValueError(f"layer {self.name!r} has one weight, the file has {len(store.keys())}")
            self._embeddings.assign(store["0"])

    return {"rayscore>MappedEmbedding": Embedding}


def is_mapped(layer: Any) -> bool:
    """Whether ``layer`` is a ``MappedEmbedding`` (its one weight is a :class:`MappedTable`)."""
    return isinstance(getattr(layer, "_embeddings", None), MappedTable)
