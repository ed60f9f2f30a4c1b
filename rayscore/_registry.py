"""Models from an MLflow registry: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``runs:/RUN_ID/PATH``.

The driver resolves the uri once per job through MLflow's own client
(:func:`resolve`): an alias becomes the version it points at now, so every
actor of the job scores with the same version even if the alias moves. Each
node then downloads that version's artifact once, through MLflow (whatever
its artifact store), into the node's model cache (:func:`cached_download`),
finds the Keras file or SavedModel inside it and loads it with rayscore's own
loaders; a copy whose record matches the version and the fingerprint is
reused. MLflow is an optional extra (``pip install "rayscore[mlflow]"``);
credentials come from MLflow's own environment variables and are never
logged or reported.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._cache import remove_path as _remove
from ._config import REGISTRY_SCHEMES as SCHEMES
from ._errors import ModelError, first_line

__all__ = ["RegistryModel", "is_registry", "resolve", "cached_download", "find_model", "without_password", "SCHEMES"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_MODELS = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))/?")
_RUNS = re.compile(r"runs:/(?P<run>[^/]+)/(?P<path>.+)")


def is_registry(uri: str) -> bool:
    """Whether ``uri`` names a model in an MLflow registry or run."""
    return uri.startswith(SCHEMES)


@dataclass(frozen=True)
class RegistryModel:
    """What a registry uri named when the job started: small and picklable (no credentials)."""

    uri: str  # as given
    pinned: str  # what every node downloads: models:/NAME/VERSION or runs:/RUN_ID/PATH
    tracking_uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None  # where the registry says the artifact lives
    download_uri: str | None = None  # where MLflow reads the version's files (its artifact store)

    def identity(self) -> dict[str, Any]:
        """For the run report and each prediction column's metadata (a password in a uri is not shown)."""
        shown = {k: v for k, v in asdict(self).items() if v is not None and k != "download_uri"}
        shown["tracking_uri"] = without_password(self.tracking_uri)
        return shown

    @property
    def cache_name(self) -> str:
        """The artifact's folder in a node's cache: one per registered version (or run and path)."""
        if self.name is not None:
            key = f"mlflow-{self.name}-v{self.version}"
        else:
            key = f"mlflow-run-{self.run_id}-{self.pinned.split('/', 2)[-1]}"
        return re.sub(r"[^\w.-]+", "_", key)


def without_password(uri: str) -> str:
    """``uri`` with the user:password part of its authority (if any) dropped."""
    return re.sub(r"^([a-z][\w+.-]*://)[^/@]*@", r"\1", uri)


def _mlflow() -> Any:
    try:
        import mlflow  # noqa: PLC0415
    except ImportError:
        raise ModelError('model.uri: models:/ and runs:/ uris need MLflow: pip install "rayscore[mlflow]"') from None
    return mlflow


def _tracking_uri(configured: str | None) -> str:
    mlflow = _mlflow()
    return configured or mlflow.get_tracking_uri()


def _check_reachable(tracking_uri: str) -> None:
    """An http(s) tracking server that does not answer fails at once (MLflow itself retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests  # noqa: PLC0415 - MLflow's own dependency

    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        reason = type(exc).__name__ if not str(exc) else first_line(exc).split(": ")[-1][:160]
        shown = without_password(tracking_uri)
        raise ModelError(f"model.tracking_uri: cannot reach the MLflow tracking server at {shown} ({reason})") from None


def resolve(uri: str, tracking_uri: str | None = None) -> RegistryModel:
    """The registry's answer for ``uri`` now (an alias pinned to its version); one line naming what is missing."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    where = _tracking_uri(tracking_uri)
    _check_reachable(where)
    client = mlflow.MlflowClient(tracking_uri=where, registry_uri=where)
    at = f"in the MLflow registry at {without_password(where)}"
    try:
        if uri.startswith("runs:/"):
            return _resolve_run(client, uri, where, at)
        m = _MODELS.fullmatch(uri)
        if m is None:
            raise ModelError(f"model.uri: {uri} is not models:/NAME/VERSION or models:/NAME@ALIAS")
        name, version, alias = m["name"], m["version"], m["alias"]
        _found(lambda: client.get_registered_model(name), f"model.uri: {uri}: no registered model {name!r} {at}")
        try:
            mv = (
                client.get_model_version(name, version)
                if alias is None
                else client.get_model_version_by_alias(name, alias)
            )
        except MlflowException as exc:
            if not _missing(exc) and "INVALID_PARAMETER_VALUE" not in str(exc.error_code):
                raise
            if alias is None:
                have = sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)
                raise ModelError(
                    f"model.uri: {uri}: model {name!r} has no version {version} (versions: {', '.join(have) or 'none'})"
                ) from None
            aliases = sorted(client.get_registered_model(name).aliases or {})
            raise ModelError(
                f"model.uri: {uri}: model {name!r} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'})"
            ) from None
        return RegistryModel(
            uri=uri,
            pinned=f"models:/{name}/{mv.version}",
            tracking_uri=where,
            name=name,
            version=str(mv.version),
            alias=alias,
            run_id=mv.run_id,
            source=mv.source,
            download_uri=client.get_model_version_download_uri(name, mv.version),
        )
    except MlflowException as exc:
        raise ModelError(f"model.uri: {uri}: MLflow: {first_line(exc)}") from None


def _resolve_run(client: Any, uri: str, where: str, at: str) -> RegistryModel:
    m = _RUNS.fullmatch(uri)
    if m is None:
        raise ModelError(f"model.uri: {uri} is not runs:/RUN_ID/PATH")
    run_id, path = m["run"], m["path"].strip("/")
    _found(lambda: client.get_run(run_id), f"model.uri: {uri}: no run {run_id!r} {at}")
    parent = os.path.dirname(path)
    listed = [a.path for a in client.list_artifacts(run_id, parent or None)]
    if path not in listed:
        logged = [getattr(m, "name", "") for m in _logged_models(client, run_id)]
        if path not in logged:
            names = sorted({*listed, *logged})
            raise ModelError(
                f"model.uri: {uri}: run {run_id} has no artifact {path!r} (it has: {', '.join(names) or 'nothing'})"
            )
    return RegistryModel(uri=uri, pinned=f"runs:/{run_id}/{path}", tracking_uri=where, run_id=run_id, source=uri)


def _logged_models(client: Any, run_id: str) -> list[Any]:
    """MLflow 3 keeps a run's logged models beside its artifacts (``runs:/RUN/NAME`` still finds them)."""
    search = getattr(client, "search_logged_models", None)
    if search is None:
        return []
    run = client.get_run(run_id)
    return list(search(experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"))


def _found(ask: Callable[[], Any], missing: str) -> Any:
    """``ask()``'s answer; ``missing`` as a ModelError if MLflow says there is no such thing."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return ask()
    except MlflowException as exc:
        if _missing(exc):
            raise ModelError(missing) from None
        raise


def _missing(exc: Any) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower()


def find_model(folder: str, shown: str) -> str:
    """The one Keras file or SavedModel directory inside a downloaded artifact, relative to ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        if "saved_model.pb" in files:
            found.append(os.path.relpath(root, folder))
            dirs[:] = []
            continue
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files if f.endswith(MODEL_SUFFIXES)]
    if len(found) == 1:
        return found[0]
    listing = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    if not found:
        raise ModelError(
            f"model.uri: {shown} holds no Keras or TensorFlow model (a .keras or .h5 file, or a SavedModel "
            f"directory); it holds: {', '.join(listing[:12]) or 'nothing'}"
        )
    raise ModelError(f"model.uri: {shown} holds {len(found)} models ({', '.join(sorted(found))}); log one per artifact")


@dataclass(frozen=True)
class Download:
    path: str  # the model inside the node's copy of the artifact
    fingerprint: str
    nbytes: int
    copied: bool  # downloaded by this call


def cached_download(model: RegistryModel, root: str, fingerprint: str | None = None) -> Download:
    """This node's copy of ``model``'s artifact under ``root``: downloaded once (under a lock), then reused.

    With ``fingerprint`` (an actor) the copy must hold exactly the model the
    driver planned with; a stale or foreign copy is downloaded again.
    """
    from ._model import fingerprint as digest_of  # noqa: PLC0415
    from ._model import model_bytes  # noqa: PLC0415

    folder = Path(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"model.cache_dir: cannot create {root}: {exc.strerror}") from None
    name = model.cache_name
    entry, record = folder / name, folder / f"{name}.ok"
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait, then reuse
        if record.exists() and entry.exists():
            seen = json.loads(record.read_text())
            same = seen.get("pinned") == model.pinned and seen.get("tracking") == without_password(model.tracking_uri)
            if same and fingerprint in (None, seen["fingerprint"]):
                return Download(str(entry / seen["model"]), seen["fingerprint"], int(seen["bytes"]), False)
        for stale in (entry, record):
            _remove(stale)
        partial = folder / f".{name}.partial-{os.getpid()}"
        _remove(partial)
        try:
            _mlflow().artifacts.download_artifacts(  # the registry was read once, by the driver
                artifact_uri=model.download_uri or model.pinned, dst_path=str(partial), tracking_uri=model.tracking_uri
            )
            inner = find_model(str(partial), model.uri)
            got = digest_of(str(partial / inner))
        except BaseException as exc:
            _remove(partial)
            if isinstance(exc, ModelError | KeyboardInterrupt | SystemExit):
                raise
            raise ModelError(f"model.uri: {model.uri}: downloading {model.pinned}: {first_line(exc)}") from None
        if fingerprint is not None and got != fingerprint:
            _remove(partial)
            raise ModelError(
                f"model.uri: {model.pinned} downloaded here is not the model the job was planned with "
                f"({got[:19]}… against {fingerprint[:19]}…); was the registered artifact replaced?"
            )
        nbytes = model_bytes(str(partial / inner))
        os.replace(partial, entry)
        tracking = without_password(model.tracking_uri)
        record.write_text(
            json.dumps(
                {"pinned": model.pinned, "tracking": tracking, "model": inner, "fingerprint": got, "bytes": nbytes}
            )
        )
        return Download(str(entry / inner), got, nbytes, True)
