"""Where models live: uri parsing, storage options and error wording, without a server.

The S3 path itself is exercised against a real S3-protocol server in
tests/integration/test_remote_models.py.
"""

from __future__ import annotations

import pytest

from rayscore import ModelError
from rayscore._storage import (
    RemoteFile,
    basename,
    explain,
    is_remote,
    list_model,
    local_dir,
    open_filesystem,
    version_of,
)


@pytest.mark.parametrize(
    "uri, remote",
    [
        ("s3://b/m.keras", True),
        ("gs://b/m", True),
        ("hdfs://nn:8020/m", True),
        ("file:///m.keras", False),
        ("/data/m.keras", False),
        ("m.keras", False),
    ],
)
def test_is_remote(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_basename_of_files_and_directories() -> None:
    assert basename("s3://bucket/models/ctr.keras") == "ctr.keras"
    assert basename("s3://bucket/models/exported/") == "exported"
    assert basename("/local/models/ctr.h5") == "ctr.h5"


def test_fsspec_spellings_of_s3_options_are_accepted() -> None:
    fs, path = open_filesystem(
        "s3://bucket/dir/m.keras",
        {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s", "region_name": "eu-west-1"},
    )
    assert type(fs).__name__ == "S3FileSystem"
    assert path == "bucket/dir/m.keras"
    assert fs.region == "eu-west-1"


def test_an_unknown_storage_option_is_named() -> None:
    with pytest.raises(
        ModelError,
        match=r"^model.storage_options.endpoint_overide: not an option of "
        r"pyarrow.fs.S3FileSystem$",
    ):
        open_filesystem("s3://bucket/m.keras", {"endpoint_overide": "http://x"})


def test_options_for_a_scheme_that_takes_none_are_refused() -> None:
    with pytest.raises(ModelError, match=r"^model.storage_options: scheme file:// takes none"):
        open_filesystem("file:///tmp/m.keras", {"key": "k"})


def test_local_listing_and_a_missing_model(tmp_path) -> None:
    (tmp_path / "m.keras").write_bytes(b"x" * 10)
    fs, path = open_filesystem(f"file://{tmp_path / 'm.keras'}", {})
    [entry] = list_model(fs, path, "m.keras")
    assert (entry.relpath, entry.size) == ("", 10)
    fs, path = open_filesystem(f"file://{tmp_path / 'missing.keras'}", {})
    with pytest.raises(ModelError, match=r"^model.uri: no model at s3://b/missing.keras$"):
        list_model(fs, path, "s3://b/missing.keras")


def test_the_version_changes_with_size_time_or_name() -> None:
    files = [RemoteFile("", 10, 1)]
    base = version_of("s3://b/m.keras", files)
    assert base == version_of("s3://b/m.keras", [RemoteFile("", 10, 1)])
    assert base != version_of("s3://b/m.keras", [RemoteFile("", 11, 1)])
    assert base != version_of("s3://b/m.keras", [RemoteFile("", 10, 2)])
    assert base != version_of("s3://b/other.keras", files)


def test_storage_errors_say_what_kind_they_are() -> None:
    unreachable = OSError(
        "When getting information for key 'm' in bucket 'b': AWS Error NETWORK_CONNECTION "
        "during HeadObject operation: curlCode: 7, Could not connect to server"
    )
    assert str(explain("s3://b/m", unreachable)).startswith("model.uri: cannot reach the storage for s3://b/m ")
    denied = OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body.")
    assert str(explain("s3://b/m", denied)).startswith(
        "model.uri: access to s3://b/m was denied: check the credentials"
    )
    other = OSError("something else\nwith a second line")
    assert str(explain("s3://b/m", other)) == "model.uri: cannot read s3://b/m: something else"


def test_local_dir_tells_local_paths_from_other_filesystems() -> None:
    assert local_dir("/data/scores") == "/data/scores"
    assert local_dir("scores") == "scores"
    assert local_dir("file:///data/scores") == "/data/scores"
    assert local_dir("s3a://bucket/scores") is None
    assert local_dir("hdfs://nn:8020/scores") is None
    assert local_dir("file:/data/scores") is None  # Hadoop's spelling: left to Hadoop's FileSystem
