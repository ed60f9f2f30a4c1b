"""Pre-flight checks of a job: ``rayscore validate CONFIG`` and :func:`rayscore.validate`.

Makes the checks ``rayscore run`` makes before it scores, with the same
functions (so the messages are the same), but collects every problem instead
of stopping at the first:

1. the config (a ConfigError ends it here: nothing else can be checked);
2. the model: found, opened, its inputs and outputs read (no weights);
3. the output location: free (``mode: error``), not a file, writable;
4. a session (Ray + RayDP's Spark, started like ``run`` starts it, or the
   caller's), needed for the input's schema; it is stopped at the end;
5. the input: readable; its columns fit the model's inputs (names, dtypes,
   shapes); the first rows convert as the actors would convert them;
6. the predictor pool fits beside Spark;
7. the model, loaded in this process, predicts a handful of rows.

No predictor actor starts and nothing is written. Step 7 needs the memory of
one model copy in the calling process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ._config import Config, OutputConfig, load_config
from ._convert import Plan, make_plan
from ._errors import ConfigError, InputError, ModelError, RayscoreError, translate_errors
from ._model import ModelSpec, loaders
from ._placement import PoolPlan, format_bytes
from ._plan import SAMPLE_ROWS, errors_output, inspect_model, max_actors_hint, plan_job, sized
from ._pool import check_pool
from ._predict import ModelRef, local_copy, predict_table
from ._session import Session
from ._sink import check_output_free
from ._source import arrow_schema, head_table, read_input
from ._storage import local_dir

__all__ = ["Validation", "validate", "plan_problems", "SMOKE_ROWS"]

SMOKE_ROWS = 8  # rows the model predicts in the driver


@dataclass(frozen=True)
class Validation:
    """What :func:`validate` found: every problem, and the checks that passed.

    ``ok`` is true when there are no problems. Each problem is one line naming
    the config key or column, as ``rayscore run`` would report it.
    """

    problems: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "problems", tuple(self.problems))
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def ok(self) -> bool:
        return not self.problems


class _Findings:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checks: list[str] = []

    def problem(self, exc: BaseException | str) -> None:
        text = str(exc)
        if text not in self.problems:
            self.problems.append(text)

    def passed(self, check: str) -> None:
        self.checks.append(check)

    def attempt(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call ``fn``; a RayscoreError becomes a problem. Returns (succeeded, value)."""
        try:
            return True, fn(*args, **kwargs)
        except RayscoreError as exc:
            self.problem(exc)
            return False, None

    def result(self) -> Validation:
        return Validation(tuple(self.problems), tuple(self.checks))


def validate(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config, *, session: Session | None = None
) -> Validation:
    """Check a job without scoring it; return every problem found and the checks that passed.

    Reads the config, the model's signature, the input's schema and first
    rows, checks the output location, and predicts a few rows with the model
    loaded in this process. Starts Ray and RayDP's Spark as :func:`rayscore.run`
    would (or uses ``session``) and stops them again; starts no predictor
    actor and writes nothing. Errors other than rayscore's own propagate.

    Example:
        >>> v = rayscore.validate("configs/example.yaml")       # doctest: +SKIP
        >>> v.ok, v.problems
        (True, ())
    """
    found = _Findings()
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        found.problem(exc)
        return found.result()
    found.passed("config: every key is known and has a valid value")

    ok, inspected = found.attempt(inspect_model, cfg.model)
    ref, spec = inspected if ok else (None, None)
    if ok:
        found.passed(_describe_model(ref, spec))
        cfg = cfg.model_copy(update={"predict": sized(cfg.predict, spec)})

    outputs = _outputs(cfg)
    for label, out in outputs:
        if _is_local(out) and found.attempt(check_output_free, out)[0]:
            found.passed(_describe_output(label, out))

    own = session is None
    if session is None:
        session = Session(
            cfg.ray, cfg.spark, max_actors=max_actors_hint(cfg.predict), cpus_per_actor=cfg.predict.cpus_per_actor
        )
    try:
        if own and not found.attempt(session.start)[0]:
            return found.result()
        found.passed(_describe_session(session, own))
        spark = session.spark
        for label, out in outputs:
            if not _is_local(out) and found.attempt(check_output_free, out, spark)[0]:
                found.passed(_describe_output(label, out))
        if ref is not None:
            ok, pool = found.attempt(check_pool, session.spark_cpus, cfg.predict, ref, spec)
            if ok:
                found.passed(_describe_pool(cfg, pool, session.spark_cpus))
        ok, df = found.attempt(read_input, spark, cfg.input)
        if ok:
            found.passed(f"input: {_describe_source(cfg)} read, {len(df.columns)} columns")
        if ok and spec is not None and ref is not None:
            plan = _plan(found, cfg, spec, df)
            if plan is not None:
                found.passed(_describe_plan(plan))
                if not plan.quarantine:
                    found.passed(f"sample: the first {SAMPLE_ROWS} rows convert to the model's inputs")
                ok, line = found.attempt(_run_model, df, plan, ref)
                if ok:
                    found.passed(line)
    finally:
        if own:
            session.stop()
    return found.result()


# --------------------------------------------------------------------------- steps


def _outputs(cfg: Config) -> list[tuple[str, OutputConfig]]:
    """The output locations ``run`` checks: the output, and the errors output when quarantining."""
    outputs = [("output." + ("table" if cfg.output.format == "table" else "path"), cfg.output)]
    if getattr(cfg.predict, "on_bad_rows", "fail") == "quarantine":
        outputs.append(("output.errors_path", errors_output(cfg)))
    return outputs


def _is_local(out: OutputConfig) -> bool:
    """Whether check_output_free can check ``out`` without Spark (a local path)."""
    return out.format != "table" and local_dir(out.path or "") is not None


def _plan(found: _Findings, cfg: Config, spec: ModelSpec, df: Any) -> Plan | None:
    """``run``'s plan and sample check; on failure, every column problem, not only the first."""
    try:
        return plan_job(cfg, spec, df)
    except RayscoreError as exc:
        found.problem(exc)
    for problem in plan_problems(
        spec,
        arrow_schema(df),
        inputs=cfg.model.inputs,
        outputs=cfg.model.outputs,
        keep_columns=cfg.output.keep_columns,
        key_columns=cfg.output.key_columns,
    ):
        found.problem(problem)
    return None


def plan_problems(
    spec: ModelSpec,
    schema: pa.Schema,
    *,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    keep_columns: Sequence[str] = (),
    key_columns: Sequence[str] = (),
) -> list[str]:
    """Every problem :func:`make_plan` would report, not only the first.

    ``make_plan`` stops at the first problem; this calls it once as ``run``
    does, then once per model input, once for the outputs and once for the
    kept columns, so the messages are make_plan's own. The first is the one
    ``run`` reports.
    """
    problems: list[str] = []

    def attempt(sub: ModelSpec, **kwargs: Any) -> None:
        if not kwargs.get("key_columns"):
            kwargs.pop("key_columns", None)
        try:
            make_plan(sub, schema, **kwargs)
        except RayscoreError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))

    attempt(spec, inputs=inputs, outputs=outputs, keep_columns=tuple(keep_columns), key_columns=tuple(key_columns))
    for tensor in spec.inputs:
        mapping = None if inputs is None else {k: v for k, v in inputs.items() if k == tensor.name}
        attempt(dataclasses.replace(spec, inputs=(tensor,)), inputs=mapping)
    no_inputs = dataclasses.replace(spec, inputs=())
    attempt(no_inputs, outputs=outputs)
    known = None if outputs is None else {k: v for k, v in outputs.items() if k in spec.output_names}
    attempt(no_inputs, outputs=known, keep_columns=tuple(keep_columns), key_columns=tuple(key_columns))
    return problems


def _run_model(df: Any, plan: Plan, ref: ModelRef) -> str:
    """Predict the first few rows with the model loaded here, as an actor would."""
    with translate_errors("reading a sample of the input", InputError):
        table = head_table(df, plan.read_columns, SMOKE_ROWS)
    if table is None:
        raise InputError("the input has no rows; nothing to score")
    model = loaders[ref.loader].load(local_copy(ref)[0], safe_mode=ref.safe_mode, **ref.options())
    with translate_errors(f"model: predicting {table.num_rows} sample rows in the driver", ModelError):
        predict_table(model, plan, table)
    shapes = ", ".join(
        f"{t.name} {list(t.shape or ())}" for t in model.spec.outputs if t.name in {name for name, _ in plan.outputs}
    )
    return f"model run: {table.num_rows} sample rows predicted in this process (outputs {shapes})"


# --------------------------------------------------------------------------- check lines


def _describe_model(ref: ModelRef, spec: ModelSpec) -> str:
    inputs = ", ".join(f"{t.name} {t.dtype} {list(t.shape or ())}" for t in spec.inputs)
    return f"model: {ref.path} opens as {spec.format}; inputs {inputs}; outputs {', '.join(spec.output_names)}"


def _describe_output(label: str, out: OutputConfig) -> str:
    where = out.table if out.format == "table" else out.path
    if out.mode == "error":
        return f"{label}: {where} does not exist yet and can be written"
    return f"{label}: {where} can be written (mode: {out.mode})"


def _describe_session(session: Session, own: bool) -> str:
    if not own:
        return "session: using the session passed in"
    return f"session: {session.deployment.describe()}"


def _describe_pool(cfg: Config, pool: PoolPlan, spark_cpus: float) -> str:
    size = str(pool.min_actors) if pool.min_actors == pool.max_actors else f"{pool.min_actors} to {pool.max_actors}"
    return (
        f"predict.actors: a pool of {size} actor(s) with {cfg.predict.cpus_per_actor:g} CPU(s) and "
        f"{format_bytes(pool.memory_per_actor)} each ({cfg.predict.batch_size:,} rows a call) fits beside "
        f"Spark's {spark_cpus:g} CPU(s)"
    )


def _describe_source(cfg: Config) -> str:
    if cfg.input.format == "table":
        return f"table {cfg.input.table}"
    if cfg.input.format == "sql":
        return "the query"
    return f"{cfg.input.path} ({cfg.input.format})"


def _describe_plan(plan: Plan) -> str:
    fed = ", ".join(b.input if b.column == b.input else f"{b.input} <- {b.column}" for b in plan.bindings)
    written = ", ".join([*plan.keep_columns, *plan.output_columns])
    return f"columns: every model input has a fitting column ({fed}); writes {written}"
