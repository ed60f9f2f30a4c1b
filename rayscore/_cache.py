"""The node-local model cache: one verified copy of the model per node.

Remote models (``s3://`` and the like) always go through it; local models do
when ``model.cache_dir`` is set. ``RAYSCORE_CACHE_DIR`` in a node's
environment wins over the config, so every host can point at its own disk;
remote models without either use ``<tmp>/rayscore-models``.

Copies are made under a file lock, so N actors on a node cause one copy; the
copy is written under a temporary name while its sha256 is taken from the
bytes as they pass, checked (sizes against the listing, digest against the
fingerprint the driver planned with) and only then renamed into place with an
``.ok`` record beside it. The next run reuses a copy whose record still
matches: by fingerprint (actors) or, for a remote model the driver has not
read yet, by its listing (names, sizes, modification times), so a changed
remote model is fetched again. Older versions of the model are removed.

Cost: one read of the source and one write per node and model version (never
a read-back of the copy); disk: one model copy per node.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import REGISTRY_SCHEMES
from ._errors import ModelError
from ._storage import basename, copy_model, is_remote, list_model, local_dir, open_filesystem, version_of

__all__ = ["CACHE_ENV", "CachedCopy", "cache_root", "cached_model", "remove_path"]

CACHE_ENV = "RAYSCORE_CACHE_DIR"


def cache_root(configured: str | None, uri: str = "") -> str | None:
    """This node's cache directory: ``$RAYSCORE_CACHE_DIR``, else ``model.cache_dir``, else a
    default under the temp directory for remote and registry models, else None (read the model in place)."""
    root = os.environ.get(CACHE_ENV) or configured
    if root is None and (is_remote(uri) or uri.startswith(REGISTRY_SCHEMES)):
        root = os.path.join(tempfile.gettempdir(), "rayscore-models")
    return root


@dataclass(frozen=True)
class CachedCopy:
    path: str
    fingerprint: str
    nbytes: int
    copied: bool  # made by this call


def _local_uri(uri: str) -> str:
    return "file://" + os.path.abspath(local_dir(uri) or uri)


def cached_model(
    uri: str, root: str, *, fingerprint: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> CachedCopy:
    """A verified local copy of the model at ``uri`` under ``root``.

    With ``fingerprint`` (an actor, after the driver planned the job) the copy
    must have exactly that content; without it (the driver, first sight of a
    remote model) the copy's own digest becomes the model's fingerprint.
    """
    fs, path = open_filesystem(uri if is_remote(uri) else _local_uri(uri), storage_options or {})
    files = list_model(fs, path, uri)
    version = version_of(uri, files)
    name = basename(uri)
    folder = Path(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"model.cache_dir: cannot create {root}: {exc.strerror}") from None
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copier per node; the others wait, then reuse
        hit = _find(folder, name, fingerprint, version)
        if hit is not None:
            return hit
        for stale in [*folder.glob(f"*-{name}"), *folder.glob(f"*-{name}.ok"), *folder.glob(f".{name}.partial-*")]:
            remove_path(stale)  # older versions of this model, half copies of crashed copiers
        partial = folder / f".{name}.partial-{os.getpid()}"
        remove_path(partial)
        if len(files) > 1 or files[0].relpath:
            partial.mkdir()
        try:
            got, nbytes = copy_model(fs, path, files, str(partial), uri)
        except BaseException:
            remove_path(partial)
            raise
        if fingerprint is not None and got != fingerprint:
            remove_path(partial)
            raise ModelError(
                f"model.uri: the copy of {uri} does not match the model the job was planned with "
                f"({nbytes} bytes, {got[:19]}… against {fingerprint[:19]}…); was it changed while the job ran?"
            )
        entry = folder / f"{got.split(':')[-1][:16]}-{name}"
        os.replace(partial, entry)
        _ok_file(entry).write_text(json.dumps({"fingerprint": got, "version": version, "bytes": nbytes}))
        return CachedCopy(str(entry), got, nbytes, True)


def _ok_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".ok")


def _find(folder: Path, name: str, fingerprint: str | None, version: str) -> CachedCopy | None:
    """A complete copy matching the fingerprint, or (without one) the source's listing."""
    for ok in folder.glob(f"*-{name}.ok"):
        try:
            record = json.loads(ok.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        matches = record.get("fingerprint") == fingerprint if fingerprint else record.get("version") == version
        entry = ok.with_name(ok.name[: -len(".ok")])
        if matches and entry.exists():
            return CachedCopy(str(entry), record["fingerprint"], int(record.get("bytes", 0)), False)
    return None


def remove_path(p: Path) -> None:
    """Remove a file or a folder with what is in it, if it is there."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
