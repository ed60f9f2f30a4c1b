"""Planning a job before anything is scored: the model found and inspected, bound to the input's columns, checked.

Shared by ``run`` and ``predict`` (:mod:`rayscore._pipeline`), ``validate``
and resume: each check here runs before any batch is scored, most before
any actor starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa

from ._cache import cache_root, cached_model
from ._config import Config, ModelConfig, OutputConfig, PredictConfig
from ._convert import Plan, make_plan, to_tensors
from ._errors import InputError, translate_errors
from ._model import ModelSpec, fingerprint_soon, import_custom_objects, model_bytes, resolve_loader
from ._placement import format_bytes, row_bytes
from ._predict import ModelRef, first_bad_row
from ._registry import cached_download, is_registry, resolve
from ._report import RunResult
from ._sizing import auto_batch_rows
from ._source import arrow_schema, head_table
from ._storage import is_remote
from ._tables import Table, scan

__all__ = [
    "inspect_model",
    "sized",
    "plan_job",
    "bind",
    "check_sample",
    "errors_output",
    "max_actors_hint",
    "new_result",
    "SAMPLE_ROWS",
]

SAMPLE_ROWS = 1000

log = logging.getLogger("rayscore")


def inspect_model(model: ModelConfig) -> tuple[ModelRef, ModelSpec]:
    """Find the model and read its inputs/outputs without loading its weights.

    A remote model is first copied into this node's cache (one streamed read;
    reused while its listing is unchanged), which gives its fingerprint and a
    local copy to inspect; actors on this node then reuse that copy. A local
    model read in place is hashed on a background thread instead (seconds for
    a multi-GB file), so the actors start meanwhile; ``ref.digest()`` waits for it.
    """
    import_custom_objects(model.custom_objects)  # a bad import path fails here, not in every actor
    registry = resolve(model.uri, model.tracking_uri) if is_registry(model.uri) else None
    if registry is not None:
        root = cache_root(model.cache_dir, model.uri)
        assert root is not None
        got = cached_download(registry, root)
        path, digest, nbytes, fetched = got.path, got.fingerprint, got.nbytes, got.copied
        local, loader = resolve_loader(path, model.format, uri=model.uri)
    elif is_remote(model.uri):
        root = cache_root(model.cache_dir, model.uri)
        assert root is not None
        copy = cached_model(model.uri, root, storage_options=model.storage_options)
        path, digest, nbytes, fetched = copy.path, copy.fingerprint, copy.nbytes, copy.copied
        local, loader = resolve_loader(path, model.format, uri=model.uri)
    else:
        local, loader = resolve_loader(model.uri, model.format)
        root = model.cache_dir
        path, digest, nbytes, fetched = local, "", model_bytes(local), False
        if cache_root(root, local) is None:
            # Read in place: its sha256 is taken on a thread while the actors start (ModelRef.digest()).
            fingerprint_soon(local)
        else:  # actors copy it into their node's cache and check the copy against this digest
            digest = fingerprint_soon(local).result()
    options = getattr(loader, "options", ())
    spec = loader.inspect(local, **({"signature": model.signature} if "signature" in options else {}))
    # Actors map tables with Keras's TensorFlow backend only (rayscore._weights).
    tf_backend = os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
    mmap = model.mmap_min_bytes if "mmap_min_bytes" in options and tf_backend else None
    tables = _scan_tables(local, loader.name, mmap or 0)
    if "mmap_min_bytes" not in options and model.mmap_min_bytes and nbytes >= model.mmap_min_bytes:
        log.warning(
            "model: %s's tables load into each actor's memory (tables are mapped from .keras and .h5 files only)",
            loader.name,
        )
    ref = ModelRef(
        path=registry.pinned if registry else model.uri if is_remote(model.uri) else local,
        loader=loader.name,
        safe_mode=model.safe_mode,
        fingerprint=digest,
        nbytes=nbytes,
        cache_dir=root,
        signature=model.signature if "signature" in options else None,
        custom_objects=model.custom_objects if "custom_objects" in options else None,
        storage_options=model.storage_options,
        fetched=fetched,
        registry=registry,
        mmap_min_bytes=mmap,
        mmap_on_gpu=model.mmap_on_gpu,
        shared_bytes=sum(t.nbytes for t in tables if t.mapped),
    )
    return ref, spec


def sized(predict: PredictConfig, spec: ModelSpec) -> PredictConfig:
    """``predict`` with ``batch_size: auto`` made a number of rows from the model's row bytes and lookups
    (:func:`auto_batch_rows`).

    Done once per job, as soon as the model's file has been read.
    """
    if predict.batch_size != "auto":
        return predict
    return predict.model_copy(update={"batch_size": auto_batch_rows(row_bytes(spec), spec.lookup_row_bytes)})


def _scan_tables(path: str, fmt: str, min_bytes: int) -> list[Table]:
    """The model's tables of ``min_bytes`` or more (:func:`rayscore._tables.scan`); one log line for each not mapped."""
    try:
        tables = scan(path, fmt, min_bytes)
    except Exception:  # noqa: BLE001 - a damaged weights file (zip, json, h5py): the actors' load names it
        return []
    for table in tables:
        if not table.mapped:
            log.warning(
                "model: %s (%s) loads into each actor's memory, not mapped: %s",
                table.layer,
                format_bytes(table.nbytes),
                table.reason,
            )
    return tables


def check_sample(df: Any, plan: Plan) -> None:
    """Convert the first rows exactly as the actors will, so bad shapes fail before scoring.

    Cost: a Spark job that reads only the partitions holding the first
    ``SAMPLE_ROWS`` rows (:func:`~rayscore._source.head_table`; more than
    one when the first holds too few). An input with no rows is refused.
    In quarantine mode bad rows are expected, so only the columns' types
    are checked.
    """
    with translate_errors("reading a sample of the input", InputError):
        sample = head_table(df, plan.read_columns, SAMPLE_ROWS)
    if sample is None:
        raise InputError("the input has no rows; nothing to score")
    if not plan.quarantine:
        try:
            to_tensors(sample, plan.bindings, reject_nan=plan.reject_nan)
        except InputError as exc:
            raise first_bad_row(sample, plan, exc) from None


def plan_job(cfg: Config, spec: ModelSpec, df: Any, *, sample: bool = True) -> Plan:
    """Bind the config's model to the DataFrame's columns; check a sample of rows (unless ``sample=False``)."""
    plan = bind(cfg, spec, arrow_schema(df))
    if sample:
        check_sample(df, plan)
    return plan


def bind(cfg: Config, spec: ModelSpec, schema: pa.Schema) -> Plan:
    """The column plan of ``cfg`` for a model with ``spec`` over columns ``schema``."""
    return make_plan(
        spec,
        schema,
        inputs=cfg.model.inputs,
        outputs=cfg.model.outputs,
        keep_columns=cfg.output.keep_columns,
        key_columns=cfg.output.keys,
        quarantine=cfg.predict.on_bad_rows == "quarantine",
        reject_nan=cfg.predict.reject_nan,
        max_retries=cfg.predict.max_retries,
    )


def max_actors_hint(predict: PredictConfig) -> int:
    """The largest pool a local Ray should make room for (``auto``: one per core)."""
    return (os.cpu_count() or 1) if predict.actors == "auto" else predict.actors.max


def errors_output(cfg: Config) -> OutputConfig:
    """Where quarantined rows go: output.errors_path, in the output's format (parquet for tables)."""
    fmt = "parquet" if cfg.output.format == "table" else cfg.output.format
    mode = "overwrite" if cfg.output.mode == "resume" else cfg.output.mode
    return OutputConfig(format=fmt, path=cfg.output.errors_path, mode=mode, options=cfg.output.options)


def new_result(cfg: Config, ref: ModelRef, spec: ModelSpec, plan: Plan) -> RunResult:
    """A RunResult with what is known before scoring."""
    return RunResult(
        output=cfg.output.path or cfg.output.table,
        model_uri=cfg.model.uri,
        model_format=spec.format,
        model_bytes=ref.nbytes,
        model_fingerprint=ref.digest(),
        model_registry=ref.registry.identity() if ref.registry else {},
        model_copies=int(ref.fetched),
        batch_size=cfg.predict.batch_size,
        output_columns=list(plan.keep_columns) + list(plan.output_columns),
        errors_output=cfg.output.errors_path if plan.quarantine else None,
    )
