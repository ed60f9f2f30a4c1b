"""TensorFlow SavedModel directories, called through one serving signature.

A SavedModel is a directory holding ``saved_model.pb`` (the graphs and their
signatures) and ``variables/`` (the weights). rayscore calls it through one
named signature (``model.signature``, default ``serving_default``): the
signature's input keys are the model's inputs, its output keys its outputs.

* ``inspect`` parses only ``saved_model.pb``: the variables are never read, so
  a multi-GB model inspects as fast as a small one.
* ``load`` runs ``tf.saved_model.load`` in the actor and calls the signature's
  concrete function with one tensor per input key.

Signatures have no order of their own (they are protobuf maps; TensorFlow
flattens their keyword arguments sorted by name), so inputs and outputs are
listed sorted by name (numbers by value: ``output_2`` before ``output_10``).

Exports seen in practice: Keras 3 ``model.export(dir)`` writes
``serving_default`` (and ``serve``) whose input keys are the Keras input names
and whose output keys are the output names of a dict-output model (a single
unnamed output is ``output_0``, a list ``output_0``, ``output_1``, ...);
``tf.saved_model.save`` names inputs after the ``tf.TensorSpec`` name, else
the argument name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import ModelError, model_error_text, one_line
from ._spec import LoadedModel, ModelSpec, TensorSpec

__all__ = ["SavedModelLoader", "DEFAULT_SIGNATURE", "SAVED_MODEL_FILE"]

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"
SERVE_TAG = "serve"
_INTERNAL_SIGNATURES = frozenset({"__saved_model_init_op"})


def _import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415 - heavy, only when a SavedModel is used

    return tf


def _by_name(names: Any) -> list[str]:
    """Sorted, numbers by value: output_2 before output_10."""
    return sorted(names, key=lambda n: [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", n))])


def _check_directory(path: str) -> str:
    """The path of ``saved_model.pb`` in ``path``, or a ModelError saying why there is none."""
    if not os.path.isdir(path):
        if os.path.basename(path) == SAVED_MODEL_FILE:
            parent = os.path.dirname(path) or "."
            raise ModelError(
                f"model {path} is the graph file of a SavedModel; point model.uri at its directory, {parent}"
            )
        raise ModelError(f"model {path} is a file, not a SavedModel directory")
    pb = os.path.join(path, SAVED_MODEL_FILE)
    if not os.path.isfile(pb):
        raise ModelError(f"model {path} is a directory without {SAVED_MODEL_FILE}, not a SavedModel")
    return pb


def _read_meta_graph(path: str) -> Any:
    """The ``serve`` MetaGraphDef of the SavedModel at ``path``, parsed from saved_model.pb only."""
    pb = _check_directory(path)
    _import_tf()
    from google.protobuf.message import DecodeError  # noqa: PLC0415
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    try:
        with open(pb, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ModelError(f"model {path} cannot be read: {one_line(str(exc))}") from None
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"model {path} has a corrupt {SAVED_MODEL_FILE} (truncated or not a SavedModel): "
            f"{one_line(str(exc)) or type(exc).__name__}"
        ) from None
    graphs = list(saved.meta_graphs)
    if not graphs:
        raise ModelError(
            f"model {path} has a corrupt {SAVED_MODEL_FILE} (truncated or not a SavedModel): it holds no MetaGraph"
        )
    for graph in graphs:
        if SERVE_TAG in graph.meta_info_def.tags:
            return graph
    if len(graphs) == 1:
        return graphs[0]
    tags = "; ".join(", ".join(g.meta_info_def.tags) or "(none)" for g in graphs)
    raise ModelError(f"model {path} has no MetaGraph tagged {SERVE_TAG!r} (tag sets: {tags})")


def _signature_names(signature_defs: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in signature_defs if k not in _INTERNAL_SIGNATURES)


def _unknown_signature(path: str, signature: str, names: list[str]) -> ModelError:
    listed = ", ".join(names) if names else "none"
    return ModelError(f"model.signature: {signature!r} is not a signature of {path} (signatures: {listed})")


def _tensor_spec(tf: Any, key: str, info: Any) -> TensorSpec:
    """A TensorSpec from a signature's TensorInfo: the batch dimension dropped, -1 as None."""
    try:
        dtype = tf.dtypes.as_dtype(info.dtype).name
    except TypeError:
        dtype = None
    if info.tensor_shape.unknown_rank:
        return TensorSpec(key, None, dtype)
    dims = [d.size for d in info.tensor_shape.dim]
    shape = tuple(None if d < 0 else int(d) for d in dims[1:])
    return TensorSpec(key, shape if dims else (), dtype)


def _check_batched_inputs(path: str, signature: str, meta_inputs: Mapping[str, Any]) -> None:
    """Every input must have a batch dimension: rayscore feeds whole batches."""
    for key in sorted(meta_inputs):
        shape = meta_inputs[key].tensor_shape
        if shape.unknown_rank:
            raise ModelError(
                f"model {path}: input {key!r} of signature {signature!r} has an unknown rank; "
                "rayscore needs a batch dimension and fixed per-row shapes"
            )
        if not shape.dim:
            raise ModelError(
                f"model {path}: input {key!r} of signature {signature!r} is a scalar "
                "without a batch dimension; rayscore feeds whole batches"
            )


def _spec_of(path: str, signature: str, meta_graph: Any, fmt: str) -> ModelSpec:
    tf = _import_tf()
    defs = meta_graph.signature_def
    if signature not in defs or signature in _INTERNAL_SIGNATURES:
        raise _unknown_signature(path, signature, _signature_names(defs))
    sig = defs[signature]
    _check_batched_inputs(path, signature, sig.inputs)
    inputs = tuple(_tensor_spec(tf, k, sig.inputs[k]) for k in _by_name(sig.inputs))
    outputs = tuple(_tensor_spec(tf, k, sig.outputs[k]) for k in _by_name(sig.outputs))
    if not inputs or not outputs:
        raise ModelError(f"model {path}: signature {signature!r} has no inputs or no outputs")
    return ModelSpec(inputs, outputs, fmt)


class SavedModelLoader:
    """TensorFlow SavedModel directories (``tf.saved_model.save``, Keras 3 ``model.export``).

    ``inspect`` and ``load`` take an optional ``signature`` keyword (default
    ``serving_default``); the other loaders do not have it, so callers pass it
    only to this one (see :attr:`options`).
    """

    name = "savedmodel"
    options = ("signature",)  # extra keywords inspect() and load() accept

    def matches(self, path: str) -> bool:
        return os.path.isdir(path) and os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))

    def inspect(self, path: str, *, signature: str = DEFAULT_SIGNATURE) -> ModelSpec:
        return _spec_of(path, signature, _read_meta_graph(path), self.name)

    def prepare(self) -> None:
        _import_tf()

    def load(self, path: str, *, safe_mode: bool = True, signature: str = DEFAULT_SIGNATURE) -> LoadedModel:
        # safe_mode has nothing to guard here: a SavedModel is graphs of
        # TensorFlow ops, it runs no Python code of its author's when loaded.
        meta_graph = _read_meta_graph(path)
        spec = _spec_of(path, signature, meta_graph, self.name)
        tf = _import_tf()
        try:
            module = tf.saved_model.load(path, tags=list(meta_graph.meta_info_def.tags) or None)
        except Exception as exc:  # noqa: BLE001 - TF raises many kinds
            raise ModelError(
                f"model {path} cannot be loaded as {self.name}: {type(exc).__name__}: {model_error_text(exc)}"
            ) from None
        signatures = module.signatures
        if signature not in signatures:
            raise _unknown_signature(path, signature, sorted(signatures.keys()))
        dtypes = {t.name: tf.dtypes.as_dtype(t.dtype) for t in spec.inputs if t.dtype}
        output_names = spec.output_names

        def predict(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            args = {}
            for name, value in feeds.items():
                tensor = tf.constant(np.asarray(value))
                want = dtypes.get(name)
                if want is not None and tensor.dtype != want:
                    tensor = tf.cast(tensor, want)
                args[name] = tensor
            # Looked up through the module each call: a signature's function holds
            # its variables weakly, so the module must live as long as predict.
            out = module.signatures[signature](**args)
            return {name: out[name].numpy() for name in output_names}

        info = {"signature": signature, "module": module}
        return LoadedModel(spec, predict, info)
