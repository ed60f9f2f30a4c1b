"""Stage 1, config: parsing, defaults, frozen objects, and every validation message."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from rayscore import Config, ConfigError, RayscoreError, load_config
from rayscore._config import (
    ActorsConfig,
    InputConfig,
    ModelConfig,
    OutputConfig,
    PredictConfig,
    RayConfig,
    SparkConfig,
    parse_actors,
)

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "input": {"path": "in.parquet"},
    "model": {"uri": "m.keras"},
    "output": {"path": "out"},
}


def cfg(**sections: Any) -> dict[str, Any]:
    """The minimal valid config with some sections replaced (None: removed)."""
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    text = str(info.value)
    assert "\n" not in text, f"message is not one line: {text!r}"
    return text


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- loading


def test_load_from_dict(tmp_path: Path) -> None:
    config = load_config(cfg())
    assert isinstance(config, Config)
    assert config.input.path == str(tmp_path.resolve() / "in.parquet")
    assert config.model.uri == str(tmp_path.resolve() / "m.keras")
    assert config.output.path == str(tmp_path.resolve() / "out")


def test_load_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg(predict={"batch_size": 64, "actors": {"min": 1, "max": 3}})))
    for source in (path, str(path), "job.yaml"):
        config = load_config(source)
        assert config.predict.batch_size == 64
        assert config.predict.actors == ActorsConfig(min=1, max=3)
        assert not config.predict.actors.fixed
        assert config.input.path == str(tmp_path.resolve() / "in.parquet")


def test_load_config_passes_a_config_through() -> None:
    config = load_config(cfg())
    assert load_config(config) is config


def test_example_yaml_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_config("configs/example.yaml")
    assert config.input.format == "parquet"
    assert config.input.path == str(REPO / "examples/data/features.parquet")
    assert config.input.options == {}
    assert config.model.uri == str(REPO / "examples/models/ctr.keras")
    assert config.model.format == "auto"
    assert config.model.safe_mode is True
    assert config.model.inputs == {
        "title_0": "title_0",
        "title_1": "title_1",
        "title_2": "title_2",
        "title_3": "title_3",
        "hour_of_week": "hour_of_week",
        "price": "price",
    }
    assert config.model.outputs == {"click": "click_prob", "topics": "topic_probs"}
    assert config.predict.batch_size == "auto"
    assert config.predict.actors == ActorsConfig(min=2, max=2)
    assert config.predict.actors.fixed
    assert config.predict.cpus_per_actor == 1
    assert config.predict.gpus_per_actor == 0
    assert config.output.path == str(REPO / "out/example_scores.parquet")
    assert config.output.format == "parquet"
    assert config.output.mode == "overwrite"
    assert config.output.keep_columns == ("id",)
    assert config.ray == RayConfig()
    assert config.spark == SparkConfig()


def test_defaults() -> None:
    config = load_config(cfg())
    assert config.input.format == "parquet"
    assert config.input.table is None and config.input.query is None
    assert config.input.options == {}
    assert config.model.format == "auto"
    assert config.model.inputs is None and config.model.outputs is None
    assert config.model.safe_mode is True
    assert config.predict.batch_size == "auto"
    assert config.predict.actors.min == 1 and config.predict.actors.max == 1
    assert config.predict.actors.fixed
    assert config.predict.cpus_per_actor == 1.0
    assert config.predict.gpus_per_actor == 0.0
    assert config.output.format == "parquet"
    assert config.output.table is None
    assert config.output.mode == "error"
    assert config.output.keep_columns == ()
    assert config.output.options == {}
    assert config.ray.address is None
    assert config.ray.num_cpus is None
    assert config.ray.dashboard is False
    assert config.spark.app_name == "rayscore"
    assert config.spark.executors == 1
    assert config.spark.executor_cores is None  # the session picks: the machine's cores on a local Ray, else 1
    assert config.spark.executor_memory == "2g"
    assert config.spark.configs == {}


def test_actors_int_is_a_fixed_pool() -> None:
    config = load_config(cfg(predict={"actors": 3}))
    assert config.predict.actors == ActorsConfig(min=3, max=3)
    assert parse_actors(2) == {"min": 2, "max": 2}
    assert parse_actors({"min": 1, "max": 2}) == {"min": 1, "max": 2}


def test_valid_table_sql_and_table_output() -> None:
    config = load_config(
        cfg(input={"format": "table", "table": "db.features"}, output={"format": "table", "table": "db.scores"})
    )
    assert config.input.table == "db.features"
    assert config.input.path is None
    assert config.output.table == "db.scores"
    assert config.output.path is None
    config = load_config(cfg(input={"format": "sql", "query": "SELECT 1 AS x"}))
    assert config.input.query == "SELECT 1 AS x"
    assert config.input.path is None


def test_spark_configs_and_memory_accepted() -> None:
    config = load_config(cfg(spark={"configs": {"spark.sql.shuffle.partitions": 4}, "executor_memory": "512m"}))
    assert config.spark.configs == {"spark.sql.shuffle.partitions": 4}
    assert config.spark.executor_memory == "512m"
    for memory in ("2048", "2g", "2G", "4gb", "1T"):
        assert load_config(cfg(spark={"executor_memory": memory})).spark.executor_memory == memory


# --------------------------------------------------------------------------- frozen


def test_config_objects_are_frozen() -> None:
    config = load_config(cfg())
    with pytest.raises(pydantic.ValidationError):
        config.predict = PredictConfig()  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.predict.batch_size = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.predict.actors.min = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.input.path = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.model.uri = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.output.keep_columns = ("a",)  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.ray.address = "auto"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.spark.executors = 3  # type: ignore[misc]
    assert config.predict.batch_size == "auto"
    assert isinstance(config.output.keep_columns, tuple)


def test_section_classes_forbid_extra_keys() -> None:
    for cls, data in (
        (InputConfig, {"path": "x"}),
        (ModelConfig, {"uri": "m"}),
        (OutputConfig, {"path": "o"}),
        (RayConfig, {}),
        (SparkConfig, {}),
        (PredictConfig, {}),
    ):
        with pytest.raises(pydantic.ValidationError):
            cls.model_validate({**data, "surprise": 1})


# --------------------------------------------------------------------------- unknown keys


def test_unknown_nested_key_suggests_the_close_one() -> None:
    msg = error_of(cfg(output={"path": "out", "keep_column": ["id"]}))
    assert "output.keep_column is not a known key (did you mean keep_columns?)" in msg


def test_unknown_top_level_key() -> None:
    msg = error_of(cfg(outptu={"path": "out"}))
    assert "outptu is not a known key (did you mean output?)" in msg


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    msg = error_of(cfg(ray={"zzzzzz": 1}))
    assert msg == "ray.zzzzzz is not a known key (known keys: address, dashboard, num_cpus, num_gpus)"


def test_unknown_key_inside_actors_mapping() -> None:
    msg = error_of(cfg(predict={"actors": {"min": 1, "max": 2, "mx": 3}}))
    assert "predict.actors.mx is not a known key (did you mean max?)" in msg


# --------------------------------------------------------------------------- predict


def test_actors_zero() -> None:
    assert error_of(cfg(predict={"actors": 0})) == "predict.actors must be >= 1, got 0"


def test_actors_negative() -> None:
    assert error_of(cfg(predict={"actors": -2})) == "predict.actors must be >= 1, got -2"


def test_actors_bool() -> None:
    msg = error_of(cfg(predict={"actors": True}))
    assert msg == "predict.actors must be a whole number >= 1 or {min, max}, got True"


def test_actors_min_zero() -> None:
    msg = error_of(cfg(predict={"actors": {"min": 0, "max": 2}}))
    assert "predict.actors.min must be >= 1, got 0" in msg


def test_actors_min_greater_than_max() -> None:
    msg = error_of(cfg(predict={"actors": {"min": 3, "max": 2}}))
    assert msg.startswith("predict.actors")
    assert "min (3) must be <= max (2)" in msg


def test_actors_mapping_missing_max() -> None:
    assert error_of(cfg(predict={"actors": {"min": 1}})) == "predict.actors.max is required"


def test_batch_size_zero() -> None:
    assert error_of(cfg(predict={"batch_size": 0})) == "predict.batch_size must be >= 1, got 0"


def test_batch_size_negative() -> None:
    assert error_of(cfg(predict={"batch_size": -5})) == "predict.batch_size must be >= 1, got -5"


def test_batch_size_bool() -> None:
    assert (
        error_of(cfg(predict={"batch_size": True})) == "predict.batch_size must be a whole number or 'auto', got True"
    )
    assert (
        error_of(cfg(predict={"batch_size": False})) == "predict.batch_size must be a whole number or 'auto', got False"
    )


def test_batch_size_string() -> None:
    msg = error_of(cfg(predict={"batch_size": "big"}))
    assert msg == "predict.batch_size must be a whole number or 'auto', got 'big'"


def test_batch_size_auto() -> None:
    assert load_config(cfg(predict={"batch_size": "auto"})).predict.batch_size == "auto"
    assert (
        error_of(cfg(predict={"batch_size": "Auto"}))
        == "predict.batch_size must be a whole number or 'auto', got 'Auto'"
    )


def test_batch_size_fraction() -> None:
    # Same "<key> must be ..., got <value>" shape as every other message,
    # with the value named once (not pydantic's own sentence).
    msg = error_of(cfg(predict={"batch_size": 1.5}))
    assert msg.startswith("predict.batch_size must be ")
    assert msg.count("got") == 1
    assert msg.endswith(", got 1.5")


def test_cpus_per_actor_zero() -> None:
    msg = error_of(cfg(predict={"cpus_per_actor": 0}))
    assert msg.startswith("predict.cpus_per_actor must be > 0")
    assert msg.endswith(", got 0")


def test_gpus_per_actor_negative() -> None:
    msg = error_of(cfg(predict={"gpus_per_actor": -1}))
    assert msg.startswith("predict.gpus_per_actor must be >= 0")
    assert msg.endswith(", got -1")


def test_fractional_gpus_accepted() -> None:
    assert load_config(cfg(predict={"gpus_per_actor": 0.5})).predict.gpus_per_actor == 0.5


def test_predict_not_a_mapping() -> None:
    assert error_of(cfg(predict=5)) == "predict must be a mapping, got 5"


# --------------------------------------------------------------------------- formats


def test_the_removed_reader_and_writer_keys_are_unknown_keys() -> None:
    """There is one way in and out (Spark's): the keys that chose another are refused, not ignored."""
    assert (
        error_of(cfg(input={"path": "x", "reader": "spark"}))
        == "input.reader is not a known key (known keys: format, options, path, query, table)"
    )
    assert error_of(cfg(output={"path": "o", "writer": "spark"})).startswith("output.writer is not a known key")


def test_unknown_input_format() -> None:
    msg = error_of(cfg(input={"format": "avro", "path": "x"}))
    assert msg.startswith("input.format must be one of ")
    assert "'parquet'" in msg and "'sql'" in msg
    assert msg.endswith("got 'avro'")


def test_unknown_output_format() -> None:
    msg = error_of(cfg(output={"format": "avro", "path": "o"}))
    assert msg.startswith("output.format must be one of ")
    assert "'table'" in msg
    assert msg.endswith("got 'avro'")


def test_unknown_output_mode() -> None:
    msg = error_of(cfg(output={"path": "o", "mode": "append"}))
    assert msg.startswith("output.mode must be one of ")
    assert "'error'" in msg and "'overwrite'" in msg
    assert msg.endswith("got 'append'")


def test_input_table_format_without_table() -> None:
    msg = error_of(cfg(input={"format": "table"}))
    assert msg.startswith("input")
    assert "table is required with format: table" in msg


def test_input_sql_without_query() -> None:
    msg = error_of(cfg(input={"format": "sql"}))
    assert msg.startswith("input")
    assert "query is required with format: sql" in msg


def test_input_path_format_without_path() -> None:
    msg = error_of(cfg(input={"format": "csv"}))
    assert "path is required with format: csv" in msg


def test_input_path_with_table_format() -> None:
    msg = error_of(cfg(input={"format": "table", "table": "db.t", "path": "x"}))
    assert msg.startswith("input")
    assert "path does not go with format: table (use table)" in msg


def test_input_table_with_path_format() -> None:
    msg = error_of(cfg(input={"path": "x", "table": "db.t"}))
    assert "table does not go with format: parquet (use path)" in msg


def test_output_table_format_without_table() -> None:
    msg = error_of(cfg(output={"format": "table"}))
    assert msg.startswith("output")
    assert "table is required with format: table" in msg


def test_output_path_with_table_format() -> None:
    msg = error_of(cfg(output={"format": "table", "table": "t", "path": "p"}))
    assert "path does not go with format: table (use table)" in msg


# --------------------------------------------------------------------------- columns


def test_keep_columns_duplicates() -> None:
    msg = error_of(cfg(output={"path": "o", "keep_columns": ["id", "ts", "id"]}))
    assert msg.startswith("output")
    assert "keep_columns names 'id' twice" in msg


def test_keep_columns_collide_with_model_output_columns() -> None:
    msg = error_of(
        cfg(
            model={"uri": "m.keras", "outputs": {"click": "score"}},
            output={"path": "o", "keep_columns": ["id", "score"]},
        )
    )
    assert msg == "output.keep_columns: 'score' is also a model output column (rename it in model.outputs)"


def test_two_outputs_to_the_same_column() -> None:
    msg = error_of(cfg(model={"uri": "m.keras", "outputs": {"click": "p", "topics": "p"}}))
    assert msg.startswith("model.outputs")
    assert "two outputs write the same column 'p'" in msg


def test_empty_outputs_mapping() -> None:
    msg = error_of(cfg(model={"uri": "m.keras", "outputs": {}}))
    assert msg == "model.outputs must name at least one entry, or be omitted"


def test_empty_model_uri() -> None:
    msg = error_of(cfg(model={"uri": ""}))
    assert msg == "model.uri must not be empty, got ''"


def test_safe_mode_must_be_bool() -> None:
    msg = error_of(cfg(model={"uri": "m.keras", "safe_mode": "yes"}))
    assert msg == "model.safe_mode must be true or false, got 'yes'"


# --------------------------------------------------------------------------- spark / ray


def test_spark_configs_key_without_spark_prefix() -> None:
    msg = error_of(cfg(spark={"configs": {"executor.memory": "1g"}}))
    assert msg.startswith("spark.configs")
    assert "keys must start with 'spark.', got 'executor.memory'" in msg


def test_executor_memory_bad_pattern() -> None:
    msg = error_of(cfg(spark={"executor_memory": "2 gigs"}))
    assert msg == "spark.executor_memory must look like 512m, 2g or 2048 (bytes), got '2 gigs'"


def test_ray_num_cpus_zero() -> None:
    assert error_of(cfg(ray={"num_cpus": 0})) == "ray.num_cpus must be >= 1, got 0"


def test_option_value_of_wrong_type_names_the_key_once() -> None:
    # A union (bool | int | float | str) failing must be reported against the
    # key path the user wrote, not against pydantic's internal union members.
    msg = error_of(cfg(input={"path": "x", "options": {"sep": [1]}}))
    assert msg == "input.options values must be strings, numbers or booleans, got sep: [1]"
    for member in (".bool", ".int", ".float", ".str"):
        assert f"input.options.sep{member}" not in msg


# --------------------------------------------------------------------------- required


@pytest.mark.parametrize("section", ["input", "model", "output"])
def test_missing_required_section(section: str) -> None:
    assert error_of(cfg(**{section: None})) == f"{section} is required"


def test_missing_model_uri() -> None:
    assert error_of(cfg(model={"format": "keras"})) == "model.uri is required"


def test_several_errors_in_one_line() -> None:
    msg = error_of(cfg(predict={"actors": 0, "batch_size": 0}))
    assert "predict.actors must be >= 1, got 0" in msg
    assert "predict.batch_size must be >= 1, got 0" in msg
    assert "; " in msg


# --------------------------------------------------------------------------- files


def test_config_file_does_not_exist(tmp_path: Path) -> None:
    msg = error_of(tmp_path / "nope.yaml")
    assert msg == f"config file {str(tmp_path / 'nope.yaml')!r} does not exist"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    msg = error_of(tmp_path / "adir")
    assert msg.startswith(f"config file {str(tmp_path / 'adir')!r} cannot be read")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  path: x\n   bad: 1\n")
    msg = error_of(path)
    assert msg.startswith(f"config file {str(path)!r} is not valid YAML at line 3: ")
    assert "mapping values are not allowed here" in msg


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("input:\n  path: a\ninput:\n  path: b\n", "input", (1, 3)),  # a section
        ("input:\n  path: a\n  path: b\nmodel:\n  uri: m\n", "input.path", (2, 3)),  # block style
        ("input: {path: a}\npredict: {batch_size: 10, actors: 2, batch_size: 20}\n", "predict.batch_size", (2, 2)),
        ("output:\n  options:\n    compression: zstd\n    compression: snappy\n", "output.options.compression", (3, 4)),
        ("input:\n  files:\n    - {a: 1, a: 2}\n", "input.files[0].a", (3, 3)),  # inside a list
    ],
)
def test_a_key_given_twice_is_refused_naming_its_path_and_lines(tmp_path: Path, text, key, lines) -> None:
    """YAML's own rule (the last one wins) would drop what the user wrote first, silently."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    where = f"on line {lines[0]}" if lines[0] == lines[1] else f"lines {lines[0]} and {lines[1]}"
    assert error_of(path) == f"config file {str(path)!r}: {key} is given twice ({where}); say it once"


def test_the_same_key_in_two_sections_is_not_a_repeat(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("input:\n  path: in.parquet\nmodel:\n  uri: m.keras\noutput:\n  path: out\n")
    cfg = load_config(path)  # "path" in input and in output: two keys, one each
    assert (Path(cfg.input.path).name, Path(cfg.output.path).name) == ("in.parquet", "out")


def test_unclosed_flow_mapping_names_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input: {path: 'x'\n")
    msg = error_of(path)
    assert msg.startswith(f"config file {str(path)!r} is not valid YAML at line ")


def test_yaml_list_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- input\n- model\n")
    assert error_of(path) == "config must be a mapping of sections, got list"


def test_empty_yaml_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert error_of(path) == "config must be a mapping of sections, got NoneType"


def test_validation_error_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg(predict={"actors": 0})))
    assert error_of(path) == "predict.actors must be >= 1, got 0"


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "work"
    sub.mkdir()
    monkeypatch.chdir(sub)
    config = load_config(
        cfg(input={"path": "data/in.parquet"}, model={"uri": "../models/m.keras"}, output={"path": "./out/scores"})
    )
    root = tmp_path.resolve()
    assert config.input.path == str(root / "work/data/in.parquet")
    assert config.model.uri == str(root / "models/m.keras")
    assert config.output.path == str(root / "work/out/scores")
    for value in (config.input.path, config.model.uri, config.output.path):
        assert os.path.isabs(value)


def test_absolute_paths_kept(tmp_path: Path) -> None:
    config = load_config(
        cfg(input={"path": "/data/in.parquet"}, model={"uri": "/models/m.keras"}, output={"path": "/out/s"})
    )
    assert config.input.path == "/data/in.parquet"
    assert config.model.uri == "/models/m.keras"
    assert config.output.path == "/out/s"


def test_home_paths_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(cfg(model={"uri": "~/m.keras"}))
    assert config.model.uri == str(tmp_path / "home" / "m.keras")


def test_uris_left_alone() -> None:
    config = load_config(
        cfg(
            input={"path": "s3://bucket/in.parquet"},
            model={"uri": "s3://bucket/models/m.keras"},
            output={"path": "hdfs://nn:8020/out"},
        )
    )
    assert config.input.path == "s3://bucket/in.parquet"
    assert config.model.uri == "s3://bucket/models/m.keras"
    assert config.output.path == "hdfs://nn:8020/out"


def test_table_formats_keep_paths_none() -> None:
    config = load_config(cfg(input={"format": "table", "table": "db.t"}, output={"format": "table", "table": "db.o"}))
    assert config.input.path is None
    assert config.output.path is None


# --------------------------------------------------------------------------- error type


def test_config_error_type() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cfg(predict={"actors": 0}))
    assert isinstance(info.value, RayscoreError)
    assert isinstance(info.value, ValueError)
    assert info.value.user_error is True
    assert issubclass(ConfigError, RayscoreError)
    assert issubclass(ConfigError, ValueError)
    # raised "from None": no pydantic tree behind the one-line message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


@pytest.mark.parametrize(
    "data",
    [
        cfg(predict={"actors": {"min": 0, "max": 0}, "batch_size": "x", "cpus_per_actor": -1}),
        cfg(input={"format": "nope"}, output={"format": "nope"}, spark={"configs": {"a": 1}}),
        cfg(input=None, model=None, output=None),
        cfg(model={"uri": "m", "outputs": {"a": "x", "b": "x"}}, output={"path": "o", "keep_columns": ["x", "x"]}),
    ],
)
def test_messages_are_one_line(data: dict[str, Any]) -> None:
    msg = error_of(data)
    assert msg
    assert "\n" not in msg and "\r" not in msg
    assert "Traceback" not in msg
    assert "pydantic" not in msg.lower()


# --------------------------------------------------------------------------- actors: auto, memory_factor


def test_actors_auto() -> None:
    config = load_config(cfg(predict={"actors": "auto"}))
    assert config.predict.actors == "auto"
    assert parse_actors("auto") == "auto"
    assert PredictConfig(actors="auto").actors == "auto"


def test_actors_auto_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg(predict={"actors": "auto"})))
    assert load_config(path).predict.actors == "auto"


def test_actors_auto_survives_a_dump_and_reload() -> None:
    config = load_config(cfg(predict={"actors": "auto", "memory_factor": 1.5}))
    again = PredictConfig.model_validate(config.predict.model_dump())
    assert again == config.predict


def test_actors_other_strings_refused() -> None:
    for bad in ("Auto", "max", "", "2"):
        msg = error_of(cfg(predict={"actors": bad}))
        assert msg == f"predict.actors must be a whole number >= 1, {{min, max}} or auto, got {bad!r}"


def test_actors_errors_unchanged_beside_auto() -> None:
    # the tagged union must not leak its member names into key paths
    assert error_of(cfg(predict={"actors": {"min": 0, "max": 2}})) == "predict.actors.min must be >= 1, got 0"
    assert error_of(cfg(predict={"actors": {"min": 1}})) == "predict.actors.max is required"
    msg = error_of(cfg(predict={"actors": {"min": 1, "max": 2, "mx": 3}}))
    assert msg == "predict.actors.mx is not a known key (did you mean max?)"
    assert error_of(cfg(predict={"actors": 2.5})) == "predict.actors must be a mapping, got 2.5"


def test_memory_factor_default_is_the_loaders() -> None:
    assert load_config(cfg()).predict.memory_factor is None
    assert load_config(cfg(predict={"memory_factor": None})).predict.memory_factor is None


def test_memory_factor_accepted() -> None:
    assert load_config(cfg(predict={"memory_factor": 1.5})).predict.memory_factor == 1.5
    assert load_config(cfg(predict={"memory_factor": 3})).predict.memory_factor == 3.0
    assert load_config(cfg(predict={"memory_factor": 0.8})).predict.memory_factor == 0.8


@pytest.mark.parametrize("bad", [0, -1.5])
def test_memory_factor_must_be_positive(bad: float) -> None:
    msg = error_of(cfg(predict={"memory_factor": bad}))
    assert msg.startswith("predict.memory_factor must be > 0")
    assert msg.endswith(f", got {bad!r}")


def test_memory_factor_bool_and_string_refused() -> None:
    assert error_of(cfg(predict={"memory_factor": True})) == "predict.memory_factor must be a number > 0, got True"
    assert error_of(cfg(predict={"memory_factor": "big"})) == "predict.memory_factor must be a number, got 'big'"


def test_memory_factor_typo_suggests_the_key() -> None:
    msg = error_of(cfg(predict={"memory_factr": 2}))
    assert msg == "predict.memory_factr is not a known key (did you mean memory_factor?)"


def test_example_yaml_and_readme_document_auto_and_memory_factor() -> None:
    example = (REPO / "configs" / "example.yaml").read_text()
    assert "memory_factor:" in example and "auto" in example
    readme = (REPO / "README.md").read_text()
    assert "| `predict.memory_factor` |" in readme
    assert "`auto`" in readme


# --------------------------------------------------------------------------- model: storage, custom objects


def test_storage_options_take_secrets_from_the_environment_and_never_show_them(monkeypatch) -> None:
    from rayscore._predict import ModelRef

    monkeypatch.setenv("RS_TEST_SECRET", "s3cr3t-value")
    model = {
        "uri": "s3://bucket/m.keras",
        "storage_options": {"access_key": "AKIA-TEST", "secret_key": "${RS_TEST_SECRET}", "region": "eu-west-1"},
    }
    config = load_config(cfg(model=model))
    assert config.model.storage_options == {
        "access_key": "AKIA-TEST",
        "secret_key": "s3cr3t-value",
        "region": "eu-west-1",
    }
    assert "s3cr3t-value" not in repr(config) and "AKIA-TEST" not in repr(config)
    ref = ModelRef(path="s3://bucket/m.keras", loader="keras", storage_options=config.model.storage_options)
    assert "s3cr3t-value" not in repr(ref)


def test_a_storage_option_naming_an_unset_variable_is_refused(monkeypatch) -> None:
    monkeypatch.delenv("RS_TEST_UNSET", raising=False)
    msg = error_of(cfg(model={"uri": "s3://b/m.keras", "storage_options": {"secret_key": "${RS_TEST_UNSET}"}}))
    assert msg == (
        "model.storage_options names the environment variable RS_TEST_UNSET for secret_key, which is not set"
    )


def test_storage_options_must_be_scalars() -> None:
    msg = error_of(cfg(model={"uri": "s3://b/m.keras", "storage_options": {"endpoint_override": ["a"]}}))
    assert msg.startswith("model.storage_options values must be strings, numbers or booleans")


@pytest.mark.parametrize("good", ["my_layers:CUSTOM", "pkg.sub.layers.CUSTOM", "pkg.layers:Objects_2"])
def test_custom_objects_is_a_dotted_path(good: str) -> None:
    assert load_config(cfg(model={"uri": "m.keras", "custom_objects": good})).model.custom_objects == good


@pytest.mark.parametrize("bad", ["", "no_attribute", "pkg/layers:X", "pkg.layers:"])
def test_custom_objects_that_is_not_a_dotted_path_is_refused(bad: str) -> None:
    msg = error_of(cfg(model={"uri": "m.keras", "custom_objects": bad}))
    assert msg == f"model.custom_objects must be a dotted path like mypackage.layers:CUSTOM_OBJECTS, got {bad!r}"
