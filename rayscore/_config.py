"""Stage 1, config: the YAML (or dict) parsed once into frozen, typed objects.

Every error names the key path and the bad value, e.g.
``predict.actors.min must be >= 1, got 0``, and is raised before anything
starts. Unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._errors import ConfigError

__all__ = [
    "Config",
    "InputConfig",
    "ModelConfig",
    "ActorsConfig",
    "PredictConfig",
    "OutputConfig",
    "RayConfig",
    "SparkConfig",
    "RayOnSparkConfig",
    "is_local_master",
    "to_bytes",
    "load_config",
    "parse_actors",
    "validated",
    "scoring_settings",
    "spark_options",
]

REGISTRY_SCHEMES = ("models:/", "runs:/")  # MLflow model uris: not paths (rayscore._registry)


def _scalars(value: dict[str, Any]) -> dict[str, Any]:
    bad = {k: v for k, v in value.items() if not isinstance(v, (bool, int, float, str))}
    if bad:
        key, val = next(iter(bad.items()))
        raise ValueError(f"values must be strings, numbers or booleans, got {key}: {val!r}")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class InputConfig(_Frozen):
    """What to score: any source Spark can read."""

    format: Literal["parquet", "csv", "json", "orc", "table", "sql"] = "parquet"
    path: str | None = None
    table: str | None = None
    query: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(classmethod(lambda cls, v: _scalars(v)))

    @model_validator(mode="after")
    def _source_matches_format(self) -> InputConfig:
        needs = {"table": "table", "sql": "query"}.get(self.format, "path")
        if getattr(self, needs) in (None, ""):
            raise ValueError(f"{needs} is required with format: {self.format}")
        for other in ("path", "table", "query"):
            if other != needs and getattr(self, other) is not None:
                raise ValueError(f"{other} does not go with format: {self.format} (use {needs})")
        return self


class ModelConfig(_Frozen):
    """Where every actor loads the model from, and how its tensors map to columns."""

    uri: str = Field(min_length=1)
    format: str = "auto"
    inputs: dict[str, str] | None = None
    outputs: dict[str, str] | None = None
    safe_mode: StrictBool = True
    cache_dir: str | None = None
    signature: str = Field(default="serving_default", min_length=1)  # format: savedmodel only
    custom_objects: str | None = None  # package.module:NAME of a dict of custom classes
    tracking_uri: str | None = None  # the MLflow tracking server of models:/ and runs:/ uris (else MLflow's own)
    # Embedding tables of this many bytes or more are memory-mapped from the node's model file and
    # shared by its actors (rayscore._tables); 0: every table loads into each actor's memory.
    mmap_min_bytes: StrictInt = Field(default=256 << 20, ge=0)
    mmap_on_gpu: StrictBool = False  # GPU actors map too (gather on the host), rather than hold tables on the device
    # Keyword arguments of the uri scheme's pyarrow filesystem; "${VAR}" values
    # come from the environment. May hold secrets: never in repr, logs or reports.
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("custom_objects")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*[.:][A-Za-z_]\w*", value):
            raise ValueError(f"must be a dotted path like mypackage.layers:CUSTOM_OBJECTS, got {value!r}")
        return value

    @field_validator("storage_options")
    @classmethod
    def _from_environment(cls, value: dict[str, Any]) -> dict[str, Any]:
        resolved = {}
        for key, item in _scalars(value).items():
            if isinstance(item, str) and item.startswith("${") and item.endswith("}"):
                var = item[2:-1]
                if var not in os.environ:
                    raise ValueError(f"names the environment variable {var} for {key}, which is not set")
                item = os.environ[var]
            resolved[key] = item
        return resolved

    @field_validator("inputs", "outputs")
    @classmethod
    def _non_empty(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one entry, or be omitted")
        if value is not None:
            bad = [k for k, v in value.items() if not k or not v]
            if bad:
                raise ValueError(f"names must be non-empty, got {bad!r}")
        return value

    @field_validator("outputs")
    @classmethod
    def _distinct_columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            cols = list(value.values())
            dup = sorted({c for c in cols if cols.count(c) > 1})
            if dup:
                raise ValueError(f"two outputs write the same column {dup[0]!r}")
        return value


class ActorsConfig(_Frozen):
    """Size of the predictor pool: fixed (min == max) or autoscaling."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ActorsConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    @property
    def fixed(self) -> bool:
        return self.min == self.max


def parse_actors(value: Any) -> Any:
    """``actors: 2`` means a fixed pool of 2; a mapping is ``{min, max}``; ``auto`` is sized from the cluster."""
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number >= 1 or {{min, max}}, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return {"min": value, "max": value}
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"must be a whole number >= 1, {{min, max}} or auto, got {value!r}")
    return value


# `actors` is either an ActorsConfig or the string "auto". A tagged union keeps
# pydantic's errors to the one member that applies (no "or literal 'auto'" noise);
# _path drops the tags from error locations.
_ACTORS_TAGS = ("[pool]", "[auto]")
Actors = Annotated[
    Annotated[ActorsConfig, Tag(_ACTORS_TAGS[0])] | Annotated[Literal["auto"], Tag(_ACTORS_TAGS[1])],
    Discriminator(lambda v: _ACTORS_TAGS[1] if v == "auto" else _ACTORS_TAGS[0]),
]


class PredictConfig(_Frozen):
    """How the actor pool scores batches."""

    # Rows per model call; "auto": from the model's row bytes once its file is read (rayscore._sizing).
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    actors: Actors = Field(default_factory=lambda: ActorsConfig(min=1, max=1))
    cpus_per_actor: float = Field(default=1.0, gt=0)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    max_retries: int = Field(default=2, ge=0)
    on_bad_rows: Literal["fail", "quarantine"] = "fail"
    reject_nan: StrictBool = False
    # Peak memory of one actor as a multiple of the model's size on disk; None:
    # the loader's measured figure (rayscore._placement.DEFAULT_MEMORY_FACTORS).
    memory_factor: float | None = Field(default=None, gt=0)

    @field_validator("actors", mode="before")
    @classmethod
    def _actors(cls, value: Any) -> Any:
        return parse_actors(value)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        # One message for both members of the union, not pydantic's one per member.
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number or 'auto', got {value!r}")
        if value < 1:
            raise ValueError(f"must be >= 1, got {value!r}")
        return value

    @field_validator("memory_factor", mode="before")
    @classmethod
    def _factor_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a number > 0, got {value!r}")
        return value


class OutputConfig(_Frozen):
    """Where and how the predictions are written (by Spark, or for parquet by the pool's actors)."""

    format: Literal["parquet", "csv", "json", "orc", "table"] = "parquet"
    path: str | None = None
    table: str | None = None
    mode: Literal["error", "overwrite", "resume"] = "error"
    keep_columns: tuple[str, ...] = ()
    key_columns: tuple[str, ...] = ()
    errors_path: str | None = None
    shards: int = Field(default=8, ge=1, le=100_000)
    options: dict[str, Any] = Field(default_factory=dict)

    _options = field_validator("options")(classmethod(lambda cls, v: _scalars(v)))

    @model_validator(mode="after")
    def _target_matches_format(self) -> OutputConfig:
        needs = "table" if self.format == "table" else "path"
        other = "path" if needs == "table" else "table"
        if getattr(self, needs) in (None, ""):
            raise ValueError(f"{needs} is required with format: {self.format}")
        if getattr(self, other) is not None:
            raise ValueError(f"{other} does not go with format: {self.format} (use {needs})")
        dup = sorted({c for c in self.keep_columns if self.keep_columns.count(c) > 1})
        if dup:
            raise ValueError(f"keep_columns names {dup[0]!r} twice")
        if self.mode == "resume":
            if self.format == "table":
                raise ValueError("mode: resume needs a path output, not format: table")
            if not self.key_columns:
                raise ValueError("key_columns is required with mode: resume (they decide the shards)")
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        """Columns that identify a row in messages and error rows: key_columns, else keep_columns."""
        return self.key_columns or self.keep_columns


class RayConfig(_Frozen):
    """Which Ray to use: a local one rayscore starts (address null) or a running cluster."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    dashboard: StrictBool = False


_BYTES = r"^\d+[kKmMgGtT]?[bB]?$"


def is_local_master(master: str) -> bool:
    """A ``local`` or ``local[N]`` master: Spark's driver and executor in one JVM on this host."""
    return master == "local" or master.startswith("local[")


def to_bytes(text: str) -> int:
    """``512m``, ``2g``, ``2048`` (a value of the ``_BYTES`` pattern) as bytes, in powers of 1024.

    >>> to_bytes("2g"), to_bytes("512m"), to_bytes("2048"), to_bytes("1kb")
    (2147483648, 536870912, 2048, 1024)
    """
    match = re.fullmatch(r"(\d+)([kKmMgGtT]?)[bB]?", text)
    if match is None:
        raise ValueError(f"not a size like 512m or 2g: {text!r}")
    return int(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " ")


class RayOnSparkConfig(_Frozen):
    """Ray on Spark's size (``ray.util.spark.setup_ray_cluster``): Ray worker nodes inside the Spark application.

    Each worker node is one long Spark task that holds ``cpus_per_node``
    (and ``gpus_per_node``) of Spark's task slots for as long as it lives;
    the scoring job's own tasks run on the slots left beside them.
    """

    worker_nodes: int = Field(default=1, ge=1)
    cpus_per_node: int | None = Field(default=None, ge=1)  # None: predict.actors.max x predict.cpus_per_actor
    gpus_per_node: int = Field(default=0, ge=0)
    memory_per_node: str | None = Field(default=None, pattern=_BYTES)  # heap for the actors; None: Ray on Spark's
    object_store_memory_per_node: str | None = Field(default=None, pattern=_BYTES)
    head_cpus: int = Field(default=0, ge=0)  # CPUs of the head node on the driver (0: it runs no actor)


class SparkConfig(_Frozen):
    """Which Spark: RayDP's Spark on Ray (``master`` null, the default), or a Spark master of your own.

    With ``master`` (``spark://host:7077``, ``yarn``, ``local-cluster[…]``,
    ``local[*]``) rayscore builds a plain SparkSession and finds a Ray its
    executors' hosts belong to: ``ray.address`` when set, a local Ray for a
    ``local`` master, else Ray on Spark started inside the application
    (``ray_on_spark`` sizes it).
    """

    app_name: str = "rayscore"
    master: str | None = Field(default=None, min_length=1)
    executors: int = Field(default=1, ge=1)
    executor_cores: int | None = Field(default=None, ge=1)  # None: see _sizing.spark_executor_cores
    executor_memory: str = Field(default="2g", pattern=_BYTES)
    configs: dict[str, Any] = Field(default_factory=dict)
    ray_on_spark: RayOnSparkConfig | None = None
    # RayDP's fault-tolerant mode: Spark's driver joins Ray, which ray.data.from_spark needs.
    fault_tolerant_mode: StrictBool = False

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("ray://"):
            raise ValueError(f"{value!r} is RayDP's own master: leave spark.master out for RayDP's Spark on Ray")
        if not re.match(r"^(spark://\S+|yarn|local(\[[^\]]+\])?|local-cluster\[\d+,\s*\d+,\s*\d+\]|k8s://\S+)$", value):
            raise ValueError(
                "must be a Spark master: spark://host:port, yarn, k8s://…, local[N] or local-cluster[N, cores, MB], "
                f"got {value!r}"
            )
        return value

    @field_validator("configs")
    @classmethod
    def _spark_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if not k.startswith("spark.")]
        if bad:
            raise ValueError(f"keys must start with 'spark.', got {bad[0]!r}")
        return _scalars(value)

    @field_validator("ray_on_spark")
    @classmethod
    def _ray_on_spark_needs_a_master(cls, value: RayOnSparkConfig | None, info: ValidationInfo) -> Any:
        master = info.data.get("master")
        if value is not None and (master is None or is_local_master(master)):
            where = "RayDP's Spark (spark.master unset)" if master is None else f"a {master} master"
            raise ValueError(f"does not go with {where}: Ray on Spark needs a cluster master")
        return value

    @model_validator(mode="after")
    def _fault_tolerance_is_raydps(self) -> SparkConfig:
        if self.fault_tolerant_mode and self.master is not None:
            raise ValueError(
                f"fault_tolerant_mode is RayDP's (for ray.data.from_spark): it does not go with master {self.master!r}"
            )
        return self


class Config(_Frozen):
    """A whole rayscore job: input → model → predict → output, on ray + spark."""

    input: InputConfig
    model: ModelConfig
    predict: PredictConfig = Field(default_factory=PredictConfig)
    output: OutputConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)

    @field_validator("predict", "ray", "spark", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        # A section whose keys are all commented out parses as None: use the defaults.
        return {} if value is None else value

    @model_validator(mode="after")
    def _one_ray(self) -> Config:
        if self.ray.address is not None and self.spark.ray_on_spark is not None:
            raise ValueError(
                "spark.ray_on_spark does not go with ray.address: rayscore either joins the Ray cluster at "
                f"{self.ray.address!r} or starts Ray on Spark, not both"
            )
        return self

    @model_validator(mode="after")
    def _no_collisions(self) -> Config:
        if self.predict.on_bad_rows == "quarantine" and not self.output.errors_path:
            raise ValueError("output.errors_path is required with predict.on_bad_rows: quarantine")
        outs = set((self.model.outputs or {}).values())
        clash = [c for c in self.output.keep_columns if c in outs]
        if clash:
            raise ValueError(
                f"output.keep_columns: {clash[0]!r} is also a model output column (rename it in model.outputs)"
            )
        return self


# --------------------------------------------------------------------------- errors


def _key_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the validator names and union tags pydantic puts into it."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in _ACTORS_TAGS)))


def _path(loc: tuple[Any, ...]) -> str:
    # pydantic puts the failing union member or validator name into loc; drop them.
    parts = [str(p) for p in _key_loc(loc)]
    return ".".join(parts)


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    where = _path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        known = _known_keys(model, _key_loc(loc[:-1]))
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tail = f" (did you mean {hint[0]}?)" if hint else f" (known keys: {', '.join(known)})"
        return f"{where} is not a known key{tail}"
    if kind == "missing":
        return f"{where} is required"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        return f"{where} {msg}" if where else msg
    messages = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "string_too_short": lambda: "must not be empty",
        "string_pattern_mismatch": lambda: "must look like 512m, 2g or 2048 (bytes)",
        "int_from_float": lambda: "must be a whole number",
    }
    if kind in messages:
        text = messages[kind]()
    elif kind.endswith(("_type", "_parsing")):
        wanted = kind.replace("_parsing", "").replace("_type", "")
        wanted = {
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false",
            "string": "a string",
            "dict": "a mapping",
            "model": "a mapping",
            "list": "a list",
            "tuple": "a list",
        }.get(wanted, wanted)
        text = f"must be {wanted}"
    else:
        text = str(err["msg"]).lower()
    return f"{where} {text}, got {value!r}"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        members = getattr(annotation, "__args__", (annotation,))
        # a tagged union's members are Annotated[...]: look inside each
        members = tuple(a.__origin__ if hasattr(a, "__metadata__") else a for a in members)
        current = next((a for a in members if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
    fields = getattr(current, "model_fields", None) or {}
    return sorted(fields)


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line naming every bad key path and value, pydantic's tree flattened."""
    lines = [_describe(err, model) for err in exc.errors(include_url=False)]
    unique = list(dict.fromkeys(lines))
    return "; ".join(unique)


# --------------------------------------------------------------------------- loading


def _resolve_local(value: str | None, base: Path) -> str | None:
    """Make a relative local path absolute, so Ray workers (other cwd) find it too."""
    if value is None or "://" in value or value.startswith(("/", "~", *REGISTRY_SCHEMES)):
        return os.path.expanduser(value) if value else value
    return str((base / value).resolve())


def _refuse_repeated_keys(node: yaml.Node | None, path: Path, where: str = "") -> None:
    """Refuse a key given twice in one mapping, at any depth: YAML itself keeps the last and drops the first."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
            here = f"{where}.{name}" if where else name
            if name and name != "<<" and name in seen:
                line = key.start_mark.line + 1
                where_given = f"on line {line}" if line == seen[name] else f"lines {seen[name]} and {line}"
                raise ConfigError(f"config file {str(path)!r}: {here} is given twice ({where_given}); say it once")
            seen[name] = key.start_mark.line + 1
            _refuse_repeated_keys(value, path, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(item, path, f"{where}[{i}]")


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Config:
    """Parse a YAML file path or a mapping into a validated, frozen :class:`Config`.

    Relative local paths (``input.path``, ``model.uri``, ``output.path``) are
    resolved against the current working directory, as Spark would.

    Example:
        >>> cfg = load_config({"input": {"path": "in.parquet"},
        ...                    "model": {"uri": "m.keras"},
        ...                    "output": {"path": "out.parquet"}})
        >>> cfg.predict.batch_size
        'auto'
    """
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
        try:
            _refuse_repeated_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config)) from None
    base = Path.cwd()
    return config.model_copy(
        update={
            "input": config.input.model_copy(update={"path": _resolve_local(config.input.path, base)}),
            "model": config.model.model_copy(update={"uri": _resolve_local(config.model.uri, base)}),
            "output": config.output.model_copy(
                update={
                    "path": _resolve_local(config.output.path, base),
                    "errors_path": _resolve_local(config.output.errors_path, base),
                }
            ),
        }
    )


def validated(cls: type[Any], data: Any, prefix: str, extra: Mapping[str, Any] | None = None) -> Any:
    """``data`` (plus the non-None ``extra`` keys) as a ``cls`` config; errors name ``prefix.key``."""
    if isinstance(data, cls):
        data = data.model_dump()
    data = dict(data)
    for key, value in (extra or {}).items():
        if value is not None:
            data[key] = value
    try:
        cfg = cls.model_validate(data)
    except ValidationError as exc:
        msg = format_validation_error(exc, cls)
        raise ConfigError("; ".join(f"{prefix}.{part}" for part in msg.split("; "))) from None
    if cls is ModelConfig and "://" not in cfg.uri and not cfg.uri.startswith(REGISTRY_SCHEMES):  # as load_config
        cfg = cfg.model_copy(update={"uri": os.path.abspath(os.path.expanduser(cfg.uri))})
    return cfg


def scoring_settings(
    model: str | Mapping[str, Any] | ModelConfig,
    inputs: Mapping[str, str] | None,
    outputs: Mapping[str, str] | None,
    batch_size: int | str,
    actors: int | Mapping[str, int] | str,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> tuple[ModelConfig, PredictConfig]:
    """The keyword arguments of ``rayscore.predict`` and ``rayscore.udf`` as the config's ``model`` and ``predict``.

    Errors name the config's key, as for a file: ``predict.actors.min must be >= 1, got 0``.
    """
    model_cfg = validated(
        ModelConfig,
        model if not isinstance(model, str) else {"uri": model},
        "model",
        extra={"inputs": inputs, "outputs": outputs},
    )
    predict_cfg = validated(
        PredictConfig,
        {
            "batch_size": batch_size,
            "actors": actors,
            "cpus_per_actor": cpus_per_actor,
            "gpus_per_actor": gpus_per_actor,
        },
        "predict",
    )
    return model_cfg, predict_cfg


def spark_options(options: Mapping[str, Any]) -> dict[str, str]:
    """Config values as the strings Spark's options and settings take (``true``/``false`` for booleans)."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
