"""What a model is to rayscore, whatever its format: named tensors, a loaded model, a loader.

Plain data and one Protocol, with no framework import: the loaders
(:mod:`rayscore._model`, :mod:`rayscore._savedmodel`) and everything that
plans or sizes a job share them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["TensorSpec", "ModelSpec", "LoadedModel", "Loader"]


@dataclass(frozen=True)
class TensorSpec:
    """One named model input or output.

    ``shape`` excludes the batch dimension; ``None`` where the model file does
    not say (outputs of some formats: then it is learnt from the first batch).
    """

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str | None

    @property
    def size(self) -> int | None:
        """Values per row, or None when a dimension is unknown."""
        if self.shape is None or any(d is None for d in self.shape):
            return None
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ModelSpec:
    """The named inputs and outputs of a model, in the model's own order.

    ``lookup_row_bytes``: what one row's embedding lookups make in a call
    (:func:`rayscore._tables.lookup_row_bytes`), 0 where the format or the
    file does not tell; it sizes ``batch_size: auto`` and an actor's memory.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    format: str = ""
    lookup_row_bytes: int = 0

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass
class LoadedModel:
    """A model held in this process: its spec and a batched predict function.

    ``predict`` takes one numpy array per named input (batch first) and returns
    one numpy array per named output.
    """

    spec: ModelSpec
    predict: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


class Loader(Protocol):
    """What a model format provides. See :class:`KerasLoader` for an example."""

    name: str

    def matches(self, path: str) -> bool:
        """Whether ``format: auto`` should pick this loader for ``path``."""

    def inspect(self, path: str) -> ModelSpec:
        """Read names, dtypes and shapes without building the weights."""

    def load(self, path: str, *, safe_mode: bool = True) -> LoadedModel:
        """Build the model in this process."""

    # Optional: ``prepare()`` imports what ``load`` needs (the framework) before the model is
    # read, so that an actor's memory before its load counts the framework (rayscore._predict.Predictor).
