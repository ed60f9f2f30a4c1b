"""The node-local model cache: one verified copy of the model per node.

With ``model.cache_dir`` set (or ``RAYSCORE_CACHE_DIR`` in a node's
environment, which wins, so every host can point at its own local disk), each
predictor copies the model from ``model.uri`` into the cache before loading it.
Actors on the same node take a file lock, so N actors cause one copy; the copy
is written under a temporary name, checked (size and sha256 against the
fingerprint the driver took) and only then renamed into place. The next run
reuses a copy whose fingerprint still matches; a changed model gets a new
entry (the old one is removed).

Cost: one read of the source and one write plus one read of the copy per node
and model version; disk: one model copy per node.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ._errors import ModelError
from ._model import fingerprint, model_bytes

__all__ = ["CACHE_ENV", "cache_root", "cached_model"]

CACHE_ENV = "RAYSCORE_CACHE_DIR"


def cache_root(configured: str | None) -> str | None:
    """This node's cache directory: ``$RAYSCORE_CACHE_DIR``, else ``model.cache_dir``, else None."""
    return os.environ.get(CACHE_ENV) or configured


def _ok_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".ok")


def cached_model(path: str, expected_fingerprint: str, expected_bytes: int, root: str) -> tuple[str, bool]:
    """A verified local copy of the model at ``path`` under ``root``: (its path, copied by this call)."""
    source = Path(path)
    key = expected_fingerprint.split(":")[-1][:16]
    folder = Path(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"model.cache_dir: cannot create {root}: {exc.strerror}") from None
    entry = folder / f"{key}-{source.name}"
    with open(folder / f".{source.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copier per node; the others wait, then reuse
        ok = _ok_file(entry)
        if entry.exists() and ok.exists() and ok.read_text() == expected_fingerprint:
            return str(entry), False
        for stale in folder.glob(f"*-{source.name}*"):  # older versions of this model, half copies
            _remove(stale)
        partial = folder / f".{entry.name}.partial-{os.getpid()}"
        _remove(partial)
        try:
            if source.is_dir():
                shutil.copytree(source, partial)
            else:
                shutil.copyfile(source, partial)
        except OSError as exc:
            _remove(partial)
            raise ModelError(f"model.cache_dir: copying {path} into {root} failed: {exc.strerror}") from None
        got_bytes, got_print = model_bytes(str(partial)), fingerprint(str(partial))
        if (got_bytes, got_print) != (expected_bytes, expected_fingerprint):
            _remove(partial)
            raise ModelError(
                f"model.uri: the copy of {path} does not match the model the job was planned with "
                f"({got_bytes} bytes, {got_print[:19]}… against {expected_bytes} bytes, "
                f"{expected_fingerprint[:19]}…); was it changed while the job ran?"
            )
        os.replace(partial, entry)
        ok.write_text(expected_fingerprint)
        return str(entry), True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
