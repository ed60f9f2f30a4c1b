"""Stage 5, predict: a pool of long-lived Ray actors, one model copy each.

Each :class:`Predictor` loads the model in its constructor from shared
storage (``model.uri``) and keeps it for the whole job. The model itself never
travels: only its uri, the column plan and the batches do. Memory per actor:
one model copy plus a few batches of tensors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ._convert import Plan, to_columns, to_tensors
from ._errors import ModelError, PredictError, RayscoreError
from ._model import ModelSpec, loaders

__all__ = ["ModelRef", "Predictor", "LoadLedger", "predict_table"]


@dataclass(frozen=True)
class ModelRef:
    """Where an actor finds the model: a path and a loader name. Small and picklable."""

    path: str
    loader: str
    safe_mode: bool = True


def _check_same_inputs(expected: tuple[Any, ...], spec: ModelSpec, path: str) -> None:
    have = {t.name for t in spec.inputs}
    missing = [b.input for b in expected if b.input not in have]
    if missing:
        raise ModelError(f"model {path} has no input {missing[0]!r} (inputs: {', '.join(sorted(have))})")


def predict_table(model: Any, plan: Plan, batch: pa.Table) -> pa.Table:
    """Score one Arrow batch: convert, predict, convert back, keep columns beside."""
    feeds = to_tensors(batch, plan.bindings)
    predictions = model.predict(feeds)
    columns = {name: batch.column(name) for name in plan.keep_columns}
    columns.update(to_columns(predictions, plan.outputs, batch.num_rows))
    return pa.table(columns)


class Predictor:
    """The callable class Ray Data runs in each pool actor (``map_batches``)."""

    def __init__(self, model: ModelRef, plan: Plan, ledger: Any = None) -> None:
        t0 = time.perf_counter()
        self._plan = plan
        self._model = loaders[model.loader].load(model.path, safe_mode=model.safe_mode)
        _check_same_inputs(plan.bindings, self._model.spec, model.path)
        seconds = time.perf_counter() - t0
        if ledger is not None:
            import ray  # noqa: PLC0415

            ray.get(ledger.record.remote({
                "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(),
                "load_seconds": seconds,
                "output_shapes": {t.name: list(t.shape or ()) for t in self._model.spec.outputs},
            }))

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            return predict_table(self._model, self._plan, batch)
        except RayscoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own error, named with its batch
            first = {c: batch.column(c)[0].as_py() for c in self._plan.keep_columns[:3]} if batch.num_rows else {}
            where = f" (first row {first})" if first else ""
            raise PredictError(
                f"predicting a batch of {batch.num_rows} rows{where} failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc


class LoadLedger:
    """A tiny actor that predictors report their model loads to (counts, seconds)."""

    def __init__(self) -> None:
        self._loads: list[dict[str, Any]] = []

    def record(self, info: dict[str, Any]) -> None:
        self._loads.append(info)

    def loads(self) -> list[dict[str, Any]]:
        return list(self._loads)


def summarize_loads(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Count and time of model loads, as the run report shows them."""
    seconds = [float(x["load_seconds"]) for x in loads]
    shapes = loads[0]["output_shapes"] if loads else {}
    return {
        "model_loads": len(loads),
        "load_seconds_max": max(seconds) if seconds else 0.0,
        "load_seconds_mean": float(np.mean(seconds)) if seconds else 0.0,
        "output_shapes": shapes,
        "nodes": len({x["node"] for x in loads}),
    }
