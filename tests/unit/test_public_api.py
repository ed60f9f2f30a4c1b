"""The public surface: names, error hierarchy, cause-chain lookup."""

from __future__ import annotations

import pytest

import rayscore
from rayscore import (
    ConfigError,
    InputError,
    ModelError,
    OutputError,
    PredictError,
    RayscoreError,
    SessionError,
)
from rayscore._errors import find_rayscore_error, translate_errors

EXPECTED_ALL = {
    "run",
    "validate",
    "Validation",
    "predict",
    "udf",
    "session",
    "Session",
    "load_config",
    "Config",
    "RunResult",
    "Progress",
    "inspect_model",
    "register_loader",
    "ModelSpec",
    "TensorSpec",
    "RayscoreError",
    "ConfigError",
    "ModelError",
    "InputError",
    "OutputError",
    "SessionError",
    "PredictError",
    "__version__",
}

ERRORS = [ConfigError, ModelError, InputError, OutputError, SessionError, PredictError]


def test_all_is_exactly_the_public_surface() -> None:
    assert set(rayscore.__all__) == EXPECTED_ALL
    assert len(rayscore.__all__) == len(EXPECTED_ALL), "duplicate names in __all__"


def test_every_public_name_exists() -> None:
    for name in rayscore.__all__:
        assert hasattr(rayscore, name), name


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from rayscore import *", namespace)  # noqa: S102
    assert EXPECTED_ALL <= set(namespace)


def test_version() -> None:
    assert rayscore.__version__ == "0.1.0"


def test_callables() -> None:
    for name in ("run", "validate", "predict", "udf", "session", "load_config", "inspect_model", "register_loader"):
        assert callable(getattr(rayscore, name)), name


def test_import_does_not_start_or_import_ray_spark() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rayscore; "
        "print(sorted(m for m in ('ray', 'raydp', 'pyspark', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cls", ERRORS)
def test_errors_subclass_rayscore_error(cls: type[Exception]) -> None:
    assert issubclass(cls, RayscoreError)
    assert issubclass(cls, Exception)


def test_user_error_flags() -> None:
    assert RayscoreError.user_error is False
    for cls in (ConfigError, ModelError, InputError, OutputError):
        assert cls.user_error is True, cls
        assert cls("x").user_error is True
    for cls in (SessionError, PredictError):
        assert cls.user_error is False, cls
        assert cls("x").user_error is False


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    for cls in (ModelError, InputError, OutputError, SessionError, PredictError):
        assert not issubclass(cls, ValueError), cls


# --------------------------------------------------------------------------- find_rayscore_error


def test_find_itself() -> None:
    err = InputError("bad column")
    assert find_rayscore_error(err) is err


def test_find_none() -> None:
    assert find_rayscore_error(RuntimeError("plain")) is None
    try:
        try:
            raise KeyError("a")
        except KeyError as inner:
            raise RuntimeError("b") from inner
    except RuntimeError as exc:
        assert find_rayscore_error(exc) is None


def test_find_through_cause_chain() -> None:
    original = ModelError("no model at /x")
    try:
        try:
            try:
                raise original
            except ModelError as e1:
                raise RuntimeError("ray task failed") from e1
        except RuntimeError as e2:
            raise TypeError("wrapped again") from e2
    except TypeError as exc:
        assert find_rayscore_error(exc) is original


def test_find_through_context() -> None:
    original = OutputError("taken")
    try:
        try:
            raise original
        except OutputError:
            raise RuntimeError("while handling")  # noqa: B904 - implicit __context__ on purpose
    except RuntimeError as exc:
        assert find_rayscore_error(exc) is original


class _RayTaskErrorLike(Exception):
    """Like Ray's RayTaskError: keeps the actor's exception in ``.cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("task failed")
        self.cause = cause


def test_find_through_cause_attribute() -> None:
    original = InputError("column 'x' is ragged")
    wrapper = _RayTaskErrorLike(original)
    assert find_rayscore_error(wrapper) is original
    outer = RuntimeError("outer")
    outer.__cause__ = _RayTaskErrorLike(_RayTaskErrorLike(original))
    assert find_rayscore_error(outer) is original


def test_find_survives_cycles() -> None:
    a = RuntimeError("a")
    b = RuntimeError("b")
    a.__cause__ = b
    b.__cause__ = a
    assert find_rayscore_error(a) is None


def test_translate_errors_rewraps_inner_error() -> None:
    original = InputError("column 'x' is ragged")
    with pytest.raises(InputError) as info:
        with translate_errors("predict"):
            raise _RayTaskErrorLike(original)
    assert str(info.value) == "column 'x' is ragged"


def test_translate_errors_wraps_other_errors() -> None:
    with pytest.raises(PredictError) as info:
        with translate_errors("predict"):
            raise RuntimeError("boom\nsecond line")
    assert str(info.value) == "predict: RuntimeError: boom second line"
    with pytest.raises(OutputError, match=r"^output.path: ValueError: x$"):
        with translate_errors("output.path", OutputError):
            raise ValueError("x")


def test_translate_errors_passes_interrupts() -> None:
    with pytest.raises(KeyboardInterrupt):
        with translate_errors("predict"):
            raise KeyboardInterrupt
