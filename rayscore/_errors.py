"""The exception tree, and the one place where Ray, Spark and TensorFlow errors
are translated into it.

::

    RayscoreError                 base of everything rayscore raises on purpose
    ├── ConfigError               a config key has a bad value (names the key path)
    ├── ModelError                the model cannot be found, opened or called
    ├── InputError                the input data does not fit the model (names the column)
    ├── OutputError               the output location is taken, unwritable, or a count is off
    ├── SessionError              Ray or RayDP's Spark could not be started or joined
    └── PredictError              scoring failed at run time (names the batch)

Errors of the first four kinds are the user's to fix: the CLI exits 2 on them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

__all__ = [
    "RayscoreError",
    "ConfigError",
    "ModelError",
    "InputError",
    "OutputError",
    "SessionError",
    "DeploymentError",
    "PredictError",
    "translate_errors",
    "local_name",
    "not_parquet",
    "deleted_mid_job",
    "actor_died",
    "find_rayscore_error",
    "model_error_text",
    "first_line",
    "one_line",
]


class RayscoreError(Exception):
    """Base class of every error rayscore raises on purpose.

    ``user_error`` tells whether the cause is in the user's input (config,
    model file, data, output location): the CLI exits 2 on those, 1 otherwise.
    """

    user_error = False


class ConfigError(RayscoreError, ValueError):
    """A config value is missing, unknown or out of range; the message names its key path."""

    user_error = True


class ModelError(RayscoreError):
    """The model cannot be found, opened, inspected or called."""

    user_error = True


class InputError(RayscoreError):
    """The input data does not fit the model (column, type, shape, nulls)."""

    user_error = True


class OutputError(RayscoreError):
    """The output location is taken or unwritable, or the written row count is wrong."""

    user_error = True


class SessionError(RayscoreError):
    """Ray or RayDP's Spark could not be started or joined."""


class DeploymentError(SessionError):
    """The chosen deployment cannot work as configured (no room, an unsupported master): the user's to change."""

    user_error = True


class PredictError(RayscoreError):
    """Scoring failed while running (a batch raised inside a predictor actor)."""


def find_rayscore_error(exc: BaseException) -> RayscoreError | None:
    """Return the first RayscoreError in ``exc``'s cause chain, if any.

    Ray wraps an exception raised inside an actor in ``RayTaskError`` (and Ray
    Data in ``UserCodeException``); the original stays reachable through
    ``__cause__``/``cause``. This walks that chain without importing Ray.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        wrapped = getattr(cur, "cause", None)
        if isinstance(wrapped, BaseException):
            # RayTaskError(X) subclasses X but carries the traceback text in str();
            # the original exception is its ``cause``.
            todo.append(wrapped)
            continue
        if isinstance(cur, RayscoreError):
            return cur
        todo.extend([cur.__cause__, cur.__context__])
    return None


def model_error_text(exc: BaseException) -> str:
    """The line of a TensorFlow/Keras error that says what went wrong.

    TF's graph errors start with "Graph execution error:" and a Python stack;
    the cause (``indices[3,2] = 99999 is not in [0, 50)``) comes after it.
    """
    for raw in str(exc).splitlines():
        line = raw.strip()
        if not line or line == "Graph execution error:" or line.startswith(("Detected at node", "File ", "[[")):
            continue
        return one_line(line.split("\t [[")[0])
    return ""


# A RayscoreError raised in a Spark task (rayscore._stream) reads so in the driver's Spark error.
_SPARK_TASK_ERROR = re.compile(r"rayscore\._errors\.(\w+Error): ([^\n]+)")


def _raised_in_spark_task(exc: BaseException) -> RayscoreError | None:
    """The RayscoreError a Spark task raised, rebuilt from the text of the Spark error that reports it."""
    found = _SPARK_TASK_ERROR.findall(str(exc))
    if not found:
        return None
    name, message = found[-1]
    cls = next((c for c in _error_classes() if c.__name__ == name), PredictError)
    return cls(message.strip())


NO_SPACE = "No space left on device"  # ENOSPC, as the JVM and Python spell it

# An input file Spark could not read in a task: named, as InputError, whatever stage was running.
_NOT_PARQUET = re.compile(r"(\S+) is not a Parquet file\. Expected magic number at (head|tail)")
_FILE_GONE = re.compile(r"FileNotFoundException: File (\S+) does not exist")


def _input_file_problem(exc: BaseException) -> InputError | None:
    text = str(exc)
    if found := _NOT_PARQUET.search(text):
        return InputError(f"{not_parquet(found[1], at_end=found[2] == 'tail')}; nothing committed")
    if found := _FILE_GONE.search(text):
        return InputError(deleted_mid_job(found[1]))
    return None


def not_parquet(uri: str, *, at_end: bool) -> str:
    """The line for an input file without parquet's magic bytes at its start, or at its end (cut short)."""
    where = (
        "end with parquet's magic bytes 'PAR1' (cut short?)" if at_end else "start with parquet's magic bytes 'PAR1'"
    )
    return f"input: {local_name(uri)} is not a parquet file (or is truncated): it does not {where}"


def deleted_mid_job(uri: str) -> str:
    return f"input: {local_name(uri)} was deleted while the job ran; nothing committed"


# What Ray's ActorDiedError says of an actor whose process died (its restarts used up).
_ACTOR_FIELD = re.compile(r"^\s*(name|ip): (\S+)$", re.MULTILINE)
_EXIT_DETAIL = re.compile(r"Worker exit detail: (.+?\.)(?: |$)")


def actor_died(exc: BaseException, *, doing: str, restarts: int, advice: str) -> PredictError | None:
    """The line for a pool actor whose process died for good while ``doing``; None for any other error.

    Ray restarts a dead actor ``restarts`` times and reruns its calls; what
    reaches rayscore is the death after the last restart. A process killed
    without a Python error is most often killed for memory, by the kernel
    (a container's limit) or by Ray's memory monitor; ``advice`` says what
    to change.
    """
    text = str(exc)
    if type(exc).__name__ != "ActorDiedError" or "worker process has died" not in text:
        return None
    fields = dict(_ACTOR_FIELD.findall(text))
    node = fields.get("ip", "?")
    detail = _EXIT_DETAIL.search(text)
    ray_says = f" (Ray: {detail[1]})" if detail else ""
    if "out of memory" in text.lower():
        cause = f"memory ran out on node {node}: Ray's memory monitor killed it{ray_says}"
    else:
        cause = f"its process on node {node} was killed{ray_says}, most likely for memory"
    return PredictError(
        f"predict: actor {fields.get('name', '?')} died {doing}, {restarts + 1} times "
        f"(Ray restarts an actor {restarts} times); {cause}. {advice}"
    )


def local_name(uri: str) -> str:
    """A file's name as the user wrote it: a local path without Hadoop's ``file:`` scheme."""
    return uri[len("file:") :].replace("///", "/", 1) if uri.startswith("file:") else uri


def _error_classes() -> list[type[RayscoreError]]:
    todo, found = [RayscoreError], []
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def first_line(text: object) -> str:
    """The first non-blank line of ``text``, stripped; of an exception without a message, its class's name."""
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return line or (type(text).__name__ if isinstance(text, BaseException) else "")


def one_line(text: str, limit: int = 400) -> str:
    """``text`` folded onto one line, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _spark_message(exc: BaseException) -> str:
    """The first meaningful line of a Spark/py4j error, without the JVM stack."""
    desc = getattr(exc, "desc", None) or getattr(exc, "getMessage", lambda: None)()
    if desc:
        return one_line(str(desc).split("\n\tat ")[0])
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            return one_line(java.toString())
        except Exception:  # pragma: no cover - JVM already gone
            pass
    return one_line(str(exc).split("\n\tat ")[0])


@contextlib.contextmanager
def translate_errors(stage: str, kind: type[RayscoreError] = PredictError) -> Iterator[None]:
    """Map errors from Ray, Spark and TensorFlow raised in ``stage`` to RayscoreError.

    A RayscoreError raised anywhere underneath (also inside a Ray actor) is
    re-raised as itself, so its message reaches the user unchanged.
    KeyboardInterrupt and SystemExit pass through untouched.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - this is the translation boundary
        inner = find_rayscore_error(exc)
        if inner is exc and "\n" not in str(exc):
            raise
        if inner is not None:  # e.g. RayTaskError(InputError): a subclass, but its str() is a traceback
            # Ray appends its traceback on further lines: ours is the first.
            raise type(inner)(first_line(inner)) from exc
        module = type(exc).__module__ or ""
        if NO_SPACE in str(exc):
            raise kind(f"{stage}: no space left on the device; nothing committed") from exc
        if module.startswith(("pyspark", "py4j")):
            raised = _raised_in_spark_task(exc) or _input_file_problem(exc)
            if raised is not None:
                raise raised from exc
            raise kind(f"{stage}: {_spark_message(exc)}") from exc
        raise kind(f"{stage}: {type(exc).__name__}: {one_line(exc)}") from exc
