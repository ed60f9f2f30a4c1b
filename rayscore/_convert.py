"""Stage 4, convert: Arrow columns ⇄ model tensors, whole batches at a time.

Cost model: a scalar column becomes a numpy array with at most one copy (a
cast or a chunk concatenation); a ``list<number>`` column is flattened to its
value buffer and reshaped to ``(rows, *input_shape)`` — never built row by row
from Python lists. Outputs go back the same way: one value per row becomes a
plain numeric column, more become ``list<float>`` (row-major) built from one
offsets array and one values array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import ConfigError, InputError
from ._model import ModelSpec, TensorSpec

__all__ = [
    "to_ipc",
    "from_ipc",
    "Binding",
    "Plan",
    "make_plan",
    "check_column_type",
    "to_tensors",
    "row_problems",
    "to_columns",
]


@dataclass(frozen=True)
class Binding:
    """One model input fed from one column."""

    input: str
    column: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class Plan:
    """Everything a predictor needs besides the model: picklable, small."""

    bindings: tuple[Binding, ...]
    outputs: tuple[tuple[str, str], ...]  # (model output, column)
    keep_columns: tuple[str, ...]
    key_columns: tuple[str, ...] = ()  # name rows in errors; carried to error rows
    quarantine: bool = False  # bad rows become error rows instead of failing the job
    reject_nan: bool = False
    max_retries: int = 0  # model calls retried per batch before the job fails

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([b.column for b in self.bindings]))

    @property
    def read_columns(self) -> tuple[str, ...]:
        """Columns to take from the source: keep and key columns first, then features."""
        return tuple(dict.fromkeys([*self.keep_columns, *self.key_columns, *self.input_columns]))

    @property
    def carried_columns(self) -> tuple[str, ...]:
        """Input columns copied into the predictor's output."""
        if not self.quarantine:
            return self.keep_columns
        return tuple(dict.fromkeys([*self.keep_columns, *self.key_columns]))

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(col for _, col in self.outputs)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _list_depth(t: pa.DataType) -> tuple[int, pa.DataType]:
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        depth += 1
    return depth, t


def check_column_type(binding: Binding, arrow_type: pa.DataType) -> None:
    """Refuse a column whose type cannot feed the binding's input."""
    depth, leaf = _list_depth(arrow_type)
    if not _numeric(leaf):
        raise InputError(
            f"column {binding.column!r} has type {arrow_type}, but model input "
            f"{binding.input!r} expects numbers ({binding.dtype}, shape {list(binding.shape)})"
        )
    if depth == 0 and binding.size != 1:
        raise InputError(
            f"column {binding.column!r} holds one value per row, but model input "
            f"{binding.input!r} expects {binding.size} values per row (shape {list(binding.shape)}); "
            "use an array column"
        )


def make_plan(
    spec: ModelSpec,
    schema: pa.Schema,
    *,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    keep_columns: Sequence[str] = (),
    key_columns: Sequence[str] = (),
    quarantine: bool = False,
    reject_nan: bool = False,
    max_retries: int = 0,
) -> Plan:
    """Bind model inputs to columns of ``schema`` and outputs to new columns.

    ``inputs`` maps model input → column; an input it does not name (or
    every input, when omitted) reads the column of its own name; ``outputs``
    maps model output → column (omitted: every output under its own name).
    Raises ConfigError/InputError naming what is missing.
    """
    names = set(schema.names)
    if inputs is not None:
        unknown = [k for k in inputs if k not in spec.input_names]
        if unknown:
            raise ConfigError(
                f"model.inputs: {unknown[0]!r} is not an input of the model (inputs: {', '.join(spec.input_names)})"
            )
    mapping = dict(inputs) if inputs is not None else {}
    bindings = []
    for tensor in spec.inputs:
        column = mapping.get(tensor.name, tensor.name)
        if column not in names and tensor.name not in mapping:
            raise InputError(
                f"model input {tensor.name!r} has no column: the input has no column {column!r} "
                f"and model.inputs does not map it (columns: {', '.join(schema.names)})"
            )
        if column not in names:
            raise InputError(
                f"model input {tensor.name!r} needs column {column!r}, which the input does not have "
                f"(columns: {', '.join(schema.names)})"
            )
        shape = _concrete_shape(tensor)
        binding = Binding(tensor.name, column, shape, tensor.dtype or "float32")
        check_column_type(binding, schema.field(column).type)
        bindings.append(binding)

    if outputs is not None:
        unknown = [k for k in outputs if k not in spec.output_names]
        if unknown:
            raise ConfigError(
                f"model.outputs: {unknown[0]!r} is not an output of the model (outputs: {', '.join(spec.output_names)})"
            )
        out_pairs = tuple((k, v) for k, v in outputs.items())
    else:
        out_pairs = tuple((n, n) for n in spec.output_names)

    for key, wanted in (("keep_columns", keep_columns), ("key_columns", key_columns)):
        missing = [c for c in wanted if c not in names]
        if missing:
            raise InputError(
                f"output.{key}: column {missing[0]!r} is not in the input (columns: {', '.join(schema.names)})"
            )
    clash = [c for c in keep_columns if c in {col for _, col in out_pairs}]
    if clash:
        raise ConfigError(
            f"output.keep_columns: {clash[0]!r} is also a model output column (rename it in model.outputs)"
        )
    return Plan(
        tuple(bindings),
        out_pairs,
        tuple(keep_columns),
        tuple(key_columns or keep_columns),
        quarantine,
        reject_nan,
        max_retries,
    )


def _concrete_shape(tensor: TensorSpec) -> tuple[int, ...]:
    shape = tensor.shape or ()
    if any(d is None for d in shape):
        raise InputError(
            f"model input {tensor.name!r} has a variable dimension (shape {list(shape)}); "
            "rayscore needs fixed per-row shapes"
        )
    return tuple(int(d) for d in shape)


def _flatten_lists(column: pa.ChunkedArray | pa.Array, binding: Binding) -> tuple[pa.Array, int]:
    """Flatten nested list arrays to their leaf values; check every row's length."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise InputError(f"column {binding.column!r} has {arr.null_count} null rows (model input {binding.input!r})")
    rows = len(arr)
    per_row = 1
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr)
        bounds = pc.min_max(lengths)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo != hi:
            raise InputError(
                f"column {binding.column!r} is ragged: rows hold {lo} to {hi} values, "
                f"model input {binding.input!r} expects {binding.size} (shape {list(binding.shape)})"
            )
        per_row *= lo or 0
        arr = arr.flatten()
        if arr.null_count:
            raise InputError(
                f"column {binding.column!r} has null values inside its arrays (model input {binding.input!r})"
            )
    if rows and per_row != binding.size:
        raise InputError(
            f"column {binding.column!r} has {per_row} values per row, model input "
            f"{binding.input!r} expects {binding.size} (shape {list(binding.shape)})"
        )
    return arr, rows


def _leaf_numpy(values: pa.Array) -> np.ndarray:
    if pa.types.is_decimal(values.type) or pa.types.is_boolean(values.type):
        values = values.cast(pa.float64())
    return values.to_numpy(zero_copy_only=False)


def _uncastable(flat: np.ndarray, dtype: str, reject_nan: bool) -> np.ndarray | None:
    """Mask of leaf values that cannot become ``dtype`` (None when all can; cheap when so)."""
    target = np.dtype(dtype)
    if target.kind in "iu":
        if flat.dtype.kind == "f":
            bad = ~np.isfinite(flat)
            bad |= np.where(bad, False, flat != np.trunc(np.where(bad, 0, flat)))
            info = np.iinfo(target)
            bad |= np.where(bad, False, (flat < info.min) | (flat > info.max))
            return bad if bad.any() else None
        if flat.dtype.kind in "iu" and flat.size:
            info = np.iinfo(target)
            if flat.min() < info.min or flat.max() > info.max:
                return (flat < info.min) | (flat > info.max)
        return None
    if reject_nan and flat.dtype.kind == "f":
        bad = np.isnan(flat)
        return bad if bad.any() else None
    return None


def to_tensors(table: pa.Table, bindings: Iterable[Binding], *, reject_nan: bool = False) -> dict[str, np.ndarray]:
    """One numpy array per model input, shaped ``(rows, *shape)`` and cast to its dtype.

    Raises InputError on the first problem (null, ragged or wrong length,
    values the input's dtype cannot hold, NaN when ``reject_nan``); use
    :func:`row_problems` to find which rows.
    """
    feeds: dict[str, np.ndarray] = {}
    for binding in bindings:
        values, rows = _flatten_lists(table.column(binding.column), binding)
        flat = _leaf_numpy(values)
        bad = _uncastable(flat, binding.dtype, reject_nan)
        if bad is not None:
            example = flat[np.flatnonzero(bad)[0]].item()
            raise InputError(
                f"column {binding.column!r} holds {int(bad.sum())} values that model input "
                f"{binding.input!r} ({binding.dtype}) cannot take, e.g. {example!r}"
            )
        feeds[binding.input] = flat.astype(binding.dtype, copy=False).reshape((rows, *binding.shape))
    return feeds


def row_problems(table: pa.Table, bindings: Iterable[Binding], *, reject_nan: bool = False) -> np.ndarray:
    """Why each row cannot be scored: an object array of reasons, None for good rows.

    Vectorised per column; only the bad rows get a Python string. The first
    problem found for a row is the one reported.
    """
    rows = table.num_rows
    reasons = np.full(rows, None, dtype=object)

    def mark(mask: np.ndarray, text: Callable[[int], str]) -> None:
        """Give the rows in ``mask`` that have no reason yet this one (built for them alone)."""
        for i in np.flatnonzero(mask & np.equal(reasons, None)):
            reasons[i] = text(int(i))

    for binding in bindings:
        column = table.column(binding.column)
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        name = binding.column
        mark(arr.is_null().to_numpy(zero_copy_only=False), lambda i: f"column {name!r}: null")
        parents = np.arange(rows)
        values = arr
        depth = 0
        while (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
        ):
            parents = parents[pc.list_parent_indices(values).to_numpy()]
            values = values.flatten()
            depth += 1
        if depth:
            counts = np.bincount(parents, minlength=rows)
            mark(
                counts != binding.size,
                lambda i: f"column {name!r}: {counts[i]} values, model input {binding.input!r} expects {binding.size}",
            )
        leaf_null = values.is_null().to_numpy(zero_copy_only=False)
        if leaf_null.any():
            mark(
                np.bincount(parents[leaf_null], minlength=rows) > 0, lambda i: f"column {name!r}: null inside the array"
            )
            values = values.filter(pc.invert(values.is_null()))
            parents = parents[~leaf_null]
        flat = _leaf_numpy(values)
        bad = _uncastable(flat, binding.dtype, reject_nan)
        if bad is not None:
            first = {}
            for j in np.flatnonzero(bad):
                first.setdefault(int(parents[j]), flat[j].item())
            mask = np.zeros(rows, dtype=bool)
            mask[list(first)] = True
            mark(mask, lambda i: f"column {name!r}: value {first[i]!r} is not a valid {binding.dtype}")
    return reasons


def output_type(tensor: TensorSpec) -> pa.DataType:
    """The Arrow type rayscore gives a model output's column."""
    dtype = np.dtype(tensor.dtype or "float32")
    if dtype.kind == "f" and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    value = pa.from_numpy_dtype(dtype)
    return value if (tensor.size or 0) == 1 else pa.list_(value)


def to_columns(
    predictions: Mapping[str, np.ndarray], outputs: Iterable[tuple[str, str]], rows: int
) -> dict[str, pa.Array]:
    """Arrow columns from model outputs: scalars as numbers, larger as ``list<float>``.

    ``list<…>`` (not ``fixed_size_list`` nor Ray's tensor extension) because
    RayDP's ``to_spark`` accepts only plain Arrow types.
    """
    columns: dict[str, pa.Array] = {}
    for name, column in outputs:
        if name not in predictions:
            raise InputError(f"the model returned no output {name!r} (it returned: {', '.join(predictions)})")
        value = np.asarray(predictions[name])
        if value.dtype.kind == "f" and value.dtype.itemsize < 4:
            value = value.astype(np.float32)
        if value.shape[:1] != (rows,):
            raise InputError(f"model output {name!r} has {value.shape[:1]} rows for a batch of {rows}")
        per_row = int(np.prod(value.shape[1:], dtype=np.int64)) if value.ndim > 1 else 1
        if per_row == 1:
            columns[column] = pa.array(value.reshape(rows))
        else:
            offsets = pa.array(np.arange(0, (rows + 1) * per_row, per_row, dtype=np.int32))
            columns[column] = pa.ListArray.from_arrays(offsets, pa.array(value.reshape(-1)))
    return columns


def to_ipc(table: pa.Table) -> pa.Buffer:
    """``table`` as one Arrow IPC stream: only the rows it holds, even when it is a slice of a larger batch.

    Pickling a sliced Arrow array carries its whole parent buffer; the IPC
    writer carries the slice. Ray moves the buffer without another copy.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_ipc(buffer: pa.Buffer) -> pa.Table:
    """The table :func:`to_ipc` wrote, reading its buffer in place (no copy)."""
    return pa.ipc.open_stream(buffer).read_all()
