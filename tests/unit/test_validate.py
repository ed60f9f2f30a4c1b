"""``rayscore validate`` without a cluster: the result object, the CLI's parsing and output,
collecting every column problem, and the helpers behind the one-line input errors."""

from __future__ import annotations

import dataclasses
import io
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

import rayscore
from rayscore._cli import _parser, _print_validation
from rayscore._convert import make_plan
from rayscore._errors import RayscoreError
from rayscore._model import ModelSpec, TensorSpec
from rayscore._session import _keep_signal_handlers
from rayscore._source import has_data_files, spark_reason
from rayscore._validate import Validation, plan_problems

TIMEOUT = 60


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rayscore", *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


# --------------------------------------------------------------------------- Validation


def test_validation_ok_means_no_problems() -> None:
    assert Validation().ok
    assert Validation(checks=("config: fine",)).ok
    assert not Validation(problems=("input.path: /x does not exist",), checks=("config: fine",)).ok


def test_validation_is_frozen_and_holds_tuples() -> None:
    v = Validation(problems=["a"], checks=["b", "c"])  # type: ignore[arg-type]
    assert v.problems == ("a",)
    assert v.checks == ("b", "c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.problems = ()  # type: ignore[misc]
    assert v == Validation(("a",), ("b", "c"))
    assert hash(v) == hash(Validation(("a",), ("b", "c")))


def test_validate_stops_at_a_config_error_without_starting_anything(tmp_path: Path) -> None:
    code = (
        "import sys, rayscore\n"
        "v = rayscore.validate({'input': {'path': 'in.parquet'}, 'model': {'uri': 'm.keras'},\n"
        "                       'output': {'path': 'out'}, 'predict': {'actors': 0, 'batch_size': 0}})\n"
        "print(repr(v.problems)); print(repr(v.checks)); print(v.ok)\n"
        "print(sorted(m for m in ('ray', 'raydp', 'pyspark', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert done.stdout.splitlines() == [
        "('predict.batch_size must be >= 1, got 0; predict.actors must be >= 1, got 0',)",
        "()",
        "False",
        "[]",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the CLI


def test_parser_knows_validate() -> None:
    args = _parser().parse_args(["validate", "job.yaml"])
    assert (args.command, args.config, args.verbose) == ("validate", "job.yaml", False)
    args = _parser().parse_args(["validate", "-v", "job.yaml"])
    assert args.verbose is True
    assert not hasattr(args, "json")


def test_print_validation_ok_lists_checks_on_stdout() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = _print_validation(Validation(checks=("config: fine", "model: fine")), out, err)
    assert code == 0
    assert out.getvalue() == "rayscore: ok: config: fine\nrayscore: ok: model: fine\n"
    assert err.getvalue() == ""


def test_print_validation_problems_on_stderr_only() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = _print_validation(
        Validation(problems=("input.path: /x does not exist", "output.path: /y exists"), checks=("config: fine",)),
        out,
        err,
    )
    assert code == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        "rayscore: error: input.path: /x does not exist\nrayscore: error: output.path: /y exists\n"
    )


def test_help_lists_validate(tmp_path: Path) -> None:
    done = cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "validate" in done.stdout


def test_validate_help(tmp_path: Path) -> None:
    done = cli("validate", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: rayscore validate")
    assert "config" in done.stdout


def test_validate_without_config_is_a_usage_error(tmp_path: Path) -> None:
    done = cli("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "usage: rayscore validate" in done.stderr


@pytest.mark.parametrize(
    ("config", "line"),
    [
        (None, "rayscore: error: config file 'job.yaml' does not exist"),
        (
            {
                "input": {"path": "in.parquet"},
                "model": {"uri": "m.keras"},
                "output": {"path": "out"},
                "predict": {"batch_size": 0},
            },
            "rayscore: error: predict.batch_size must be >= 1, got 0",
        ),
        (
            {
                "input": {"path": "in.parquet"},
                "model": {"uri": "m.keras"},
                "output": {"path": "out", "keep_column": []},
            },
            "rayscore: error: output.keep_column is not a known key (did you mean keep_columns?)",
        ),
    ],
    ids=["missing-file", "bad-value", "unknown-key"],
)
def test_validate_config_errors_exit_2_with_one_line(tmp_path: Path, config: dict | None, line: str) -> None:
    if config is not None:
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    done = cli("validate", "job.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == line + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if config is None else ["job.yaml"])


# --------------------------------------------------------------------------- every column problem

SPEC = ModelSpec(
    inputs=(
        TensorSpec("title", (20,), "int32"),
        TensorSpec("hours", (24, 7), "float32"),
        TensorSpec("price", (), "float32"),
    ),
    outputs=(TensorSpec("click", None, None), TensorSpec("topics", None, None)),
    format="keras",
)
SCHEMA = pa.schema(
    [("id", pa.int64()), ("title", pa.list_(pa.int32())), ("hours", pa.list_(pa.float32())), ("price", pa.float32())]
)


def first_problem_of(schema: pa.Schema, **kwargs) -> str:
    with pytest.raises(RayscoreError) as caught:
        make_plan(SPEC, schema, **kwargs)
    return str(caught.value)


def test_plan_problems_none_for_a_fitting_schema() -> None:
    assert plan_problems(SPEC, SCHEMA, keep_columns=("id",)) == []


def test_plan_problems_lists_every_input_then_outputs_and_kept_columns() -> None:
    schema = pa.schema([("id", pa.int64()), ("title", pa.string()), ("price", pa.float32())])
    kwargs = {"inputs": {"price": "cost"}, "outputs": {"click": "p", "clicks": "q"}, "keep_columns": ("id", "user")}
    columns = "(columns: id, title, price)"
    problems = plan_problems(SPEC, schema, **kwargs)
    assert problems == [
        "column 'title' has type string, but model input 'title' expects numbers (int32, shape [20])",
        "model input 'hours' has no column: the input has no column 'hours' and model.inputs does not map it "
        f"{columns}",
        f"model input 'price' needs column 'cost', which the input does not have {columns}",
        "model.outputs: 'clicks' is not an output of the model (outputs: click, topics)",
        f"output.keep_columns: column 'user' is not in the input {columns}",
    ]
    assert problems[0] == first_problem_of(schema, **kwargs)  # the first is exactly what run() reports


def test_plan_problems_keep_column_clashing_with_a_renamed_output() -> None:
    problems = plan_problems(SPEC, SCHEMA, outputs={"click": "price", "clicks": "q"}, keep_columns=("id", "price"))
    assert problems == [
        "model.outputs: 'clicks' is not an output of the model (outputs: click, topics)",
        "output.keep_columns: 'price' is also a model output column (rename it in model.outputs)",
    ]


def test_plan_problems_reports_kept_columns_and_unknown_input_names() -> None:
    problems = plan_problems(SPEC, SCHEMA, inputs={"titel": "title"}, keep_columns=("id", "user"))
    assert problems == [
        "model.inputs: 'titel' is not an input of the model (inputs: title, hours, price)",
        "output.keep_columns: column 'user' is not in the input (columns: id, title, hours, price)",
    ]
    assert problems[0] == first_problem_of(SCHEMA, inputs={"titel": "title"}, keep_columns=("id", "user"))


def test_plan_problems_keep_column_named_like_an_output() -> None:
    schema = SCHEMA.append(pa.field("click", pa.float32()))
    assert plan_problems(SPEC, schema, keep_columns=("id", "click")) == [
        "output.keep_columns: 'click' is also a model output column (rename it in model.outputs)",
    ]


# --------------------------------------------------------------------------- input helpers


def test_has_data_files(tmp_path: Path) -> None:
    assert has_data_files(str(tmp_path / "missing.parquet"))  # not a directory: Spark decides
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not has_data_files(str(empty))
    (empty / "_SUCCESS").write_text("")
    (empty / ".part-0.crc").write_text("")
    (empty / "_temporary").mkdir()
    (empty / "_temporary" / "part-0.parquet").write_text("x")
    assert not has_data_files(str(empty))
    (empty / "day=1").mkdir()
    assert not has_data_files(str(empty))
    (empty / "day=1" / "part-0.parquet").write_text("x")
    assert has_data_files(str(empty))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "part-0.csv").write_text("a\n1\n")
    assert has_data_files(str(flat))


@pytest.mark.parametrize(
    ("desc", "reason"),
    [
        (
            "\n[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'.(line 1, pos 0)\n\n"
            "== SQL ==\nSELEC * FROM x\n^^^\n",
            "syntax error at or near 'SELEC' (line 1, pos 0)",
        ),
        (
            "[TABLE_OR_VIEW_NOT_FOUND] The table or view `nope` cannot be found. Verify the spelling and correctness "
            "of the schema and catalog.\nIf you did not qualify the name with a schema, verify the current_schema() "
            "output.\nTo tolerate the error on drop use DROP VIEW IF EXISTS.; line 1 pos 14;\n'Project [*]\n"
            "+- 'UnresolvedRelation [nope], [], false\n",
            "the table or view `nope` cannot be found. Verify the spelling and correctness of the schema and catalog "
            "(line 1, pos 14)",
        ),
        (
            "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column or function parameter with name `nocol` cannot be resolved. "
            "Did you mean one of the following? [`id`].; line 1 pos 7;\n'Project ['nocol]\n+- Range (0, 3, step=1)\n",
            "a column or function parameter with name `nocol` cannot be resolved. Did you mean one of the following? "
            "[`id`] (line 1, pos 7)",
        ),
        (
            "[UNABLE_TO_INFER_SCHEMA] Unable to infer schema for Parquet. It must be specified manually.",
            "unable to infer schema for Parquet. It must be specified manually",
        ),
        ("SQL not supported", "SQL not supported"),
    ],
    ids=["parse", "no-table", "no-column", "no-schema", "plain"],
)
def test_spark_reason_is_one_line_without_plan_or_sql_echo(desc: str, reason: str) -> None:
    assert spark_reason(desc) == reason
    assert "\n" not in spark_reason(desc)


# --------------------------------------------------------------------------- the CLI's handlers survive Ray and pyspark


def test_the_callers_signal_handlers_survive_what_ray_and_pyspark_install() -> None:
    def mine(signum, frame):  # pragma: no cover - never called
        raise KeyboardInterrupt

    def theirs(signum, frame):  # pragma: no cover - never called
        sys.exit(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGINT, mine)
        with _keep_signal_handlers():
            signal.signal(signal.SIGTERM, theirs)  # what ray.init does
            signal.signal(signal.SIGINT, theirs)  # what pyspark's SparkContext does
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
        # Python's own defaults are no handler of the caller's: left as Ray and pyspark set them.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with _keep_signal_handlers():
            signal.signal(signal.SIGTERM, theirs)
            signal.signal(signal.SIGINT, theirs)
        assert signal.getsignal(signal.SIGTERM) is theirs and signal.getsignal(signal.SIGINT) is theirs
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_public_validate_is_the_module_function() -> None:
    from rayscore import _validate

    assert rayscore.validate is _validate.validate
    assert rayscore.Validation is _validate.Validation
