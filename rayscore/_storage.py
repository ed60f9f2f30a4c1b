"""Where models are read from: local paths, ``file://`` and remote object stores.

Remote URIs (``s3://``, ``gs://``, ``hdfs://``, …) go through ``pyarrow.fs``,
which ships with pyarrow (no extra dependency), streams in chunks and retries
with the AWS SDK's own policy. ``model.storage_options`` are the keyword
arguments of the scheme's pyarrow filesystem class (``S3FileSystem``:
``endpoint_override``, ``access_key``, ``secret_key``, ``region``, …; a few
fsspec spellings such as ``endpoint_url``, ``key`` and ``secret`` are accepted
too). Without them pyarrow finds credentials the usual way (environment
variables, ``~/.aws``, instance roles).

Nothing here logs an option's value: credentials stay out of logs, error
messages and the run report.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ModelError, first_line

__all__ = [
    "RemoteFile",
    "is_remote",
    "open_filesystem",
    "list_model",
    "copy_model",
    "version_of",
    "basename",
    "local_dir",
]

_ALIASES = {
    "s3": {
        "endpoint_url": "endpoint_override",
        "endpoint": "endpoint_override",
        "key": "access_key",
        "aws_access_key_id": "access_key",
        "secret": "secret_key",
        "aws_secret_access_key": "secret_key",
        "token": "session_token",
        "aws_session_token": "session_token",
        "region_name": "region",
    },
}
COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model: its path relative to the model's root ('' for a single file)."""

    relpath: str
    size: int
    mtime_ns: int | None


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store rather than a local (or mounted) path."""
    return "://" in uri and not uri.startswith("file://")


def local_dir(path: str) -> str | None:
    """A config's ``path`` as a local path, or None if it is on another filesystem (``s3a://``, ``hdfs://``, …)."""
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path or path.startswith("file:") else path


def basename(uri: str) -> str:
    return posixpath.basename(uri.split("://", 1)[-1].rstrip("/"))


def open_filesystem(uri: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """(pyarrow filesystem, path within it) for ``uri`` with ``model.storage_options``."""
    from pyarrow import fs as pafs  # noqa: PLC0415

    scheme = uri.split("://", 1)[0].lower()
    if not options:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise ModelError(f"model.uri: cannot open {uri}: {first_line(exc)}") from None
    kwargs = {_ALIASES.get(scheme, {}).get(k, k): v for k, v in options.items()}
    classes = {"s3": "S3FileSystem", "gs": "GcsFileSystem", "gcs": "GcsFileSystem", "hdfs": "HadoopFileSystem"}
    if scheme not in classes:
        raise ModelError(
            f"model.storage_options: scheme {scheme}:// takes none; "
            f"options are for {', '.join(sorted(set(classes) - {'gcs'}))}"
        )
    cls = getattr(pafs, classes[scheme])
    if scheme == "s3":
        kwargs.setdefault("retry_strategy", pafs.AwsStandardS3RetryStrategy(max_attempts=3))
        kwargs.setdefault("connect_timeout", 5.0)
    try:
        if scheme == "hdfs":  # hdfs://namenode:8020/path: host and port from the uri unless given
            authority = uri.split("://", 1)[1].split("/", 1)[0]
            host, _, port = authority.partition(":")
            kwargs.setdefault("host", host or "default")
            if port:
                kwargs.setdefault("port", int(port))
            fs = cls(**kwargs)
        else:
            fs = cls(**kwargs)
    except TypeError as exc:
        bad = str(exc).split("'")[1] if "'" in str(exc) else "?"
        raise ModelError(f"model.storage_options.{bad}: not an option of pyarrow.fs.{classes[scheme]}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.storage_options: {classes[scheme]} refused them: {first_line(exc)}") from None
    path = uri.split("://", 1)[1]
    if scheme == "hdfs":
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
    return fs, path.rstrip("/")


def explain(uri: str, exc: BaseException) -> ModelError:
    """A one-line ModelError for a storage failure: unreachable, refused, or other."""
    text = str(exc)
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
        return ModelError(
            f"model.uri: cannot reach the storage for {uri} "
            f"(check model.storage_options.endpoint_override and the network): {first_line(exc)}"
        )
    if any(s in text for s in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden")):
        return ModelError(
            f"model.uri: access to {uri} was denied: check the credentials "
            f"(model.storage_options or the environment): {first_line(exc)}"
        )
    return ModelError(f"model.uri: cannot read {uri}: {first_line(exc)}")


def list_model(fs: Any, path: str, uri: str) -> list[RemoteFile]:
    """The files that make up the model at ``path``: one file, or every file under a directory."""
    from pyarrow import fs as pafs  # noqa: PLC0415

    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [RemoteFile("", info.size, info.mtime_ns)]
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)
            if files:
                return [RemoteFile(posixpath.relpath(f.path, path), f.size, f.mtime_ns) for f in files]
    except OSError as exc:
        raise explain(uri, exc) from None
    raise ModelError(f"model.uri: no model at {uri}")


def version_of(uri: str, files: list[RemoteFile]) -> str:
    """What identifies this version of a remote model without reading it: names, sizes, mtimes."""
    digest = hashlib.sha256(uri.encode())
    for f in files:
        digest.update(f"\0{f.relpath}\0{f.size}\0{f.mtime_ns}".encode())
    return digest.hexdigest()


def copy_model(fs: Any, path: str, files: list[RemoteFile], dest: str, uri: str) -> tuple[str, int]:
    """Stream the model into ``dest`` (a file, or a directory for several); returns (sha256, bytes).

    The digest is the same as :func:`rayscore._model.fingerprint` of the copy
    (relative names then bytes, file by file), taken as the bytes pass: the
    copy is never read back. Memory: one chunk.
    """

    digest, total = hashlib.sha256(), 0
    try:
        for f in files:
            source = posixpath.join(path, f.relpath) if f.relpath else path
            target = os.path.join(dest, f.relpath) if f.relpath else dest
            if f.relpath:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            digest.update(f.relpath.encode())
            written = 0
            with fs.open_input_stream(source) as src, open(target, "wb") as out:
                while block := src.read(COPY_CHUNK):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
            if written != f.size:
                raise ModelError(
                    f"model.uri: {uri}: {f.relpath or basename(uri)} has {written} bytes, "
                    f"the listing said {f.size} (changed while copying?)"
                )
            total += written
    except OSError as exc:
        if exc.errno is not None:  # the local disk; pyarrow's storage errors carry no errno
            raise ModelError(f"model.cache_dir: writing into {dest} failed: {exc.strerror or exc}") from None
        raise explain(uri, exc) from None
    return f"sha256:{digest.hexdigest()}", total
