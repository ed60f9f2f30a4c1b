"""GPU check: rayscore's predictor core on one device against ``model.predict`` there.

What it does, in one process:

1. picks the Keras backend before Keras is imported: ``--backend``, else
   ``$KERAS_BACKEND`` when set, else ``tensorflow`` when TensorFlow is
   importable, else ``jax`` (the GPU machines have JAX and PyTorch but no
   TensorFlow);
2. imports only rayscore's Ray-free predictor core: ``rayscore._model``
   (loaders), ``rayscore._convert`` (column plan, Arrow -> tensors) and
   ``rayscore._predict`` (``predict_table``). No Ray, RayDP or Spark is
   imported. If ``rayscore/__init__.py`` cannot be imported (it pulls in
   pydantic and PyYAML for the config), the core modules are loaded without
   it and the output says so;
3. builds the example model (``examples/make_example.py build_model``, plain
   Keras 3 layers, no TensorFlow ops), saves it as ``.keras`` in a temp dir and
   makes ``--rows`` feature rows with ``make_table`` (pyarrow);
4. loads the model twice from that file: through rayscore's loader
   (``resolve_loader`` / ``loaders[...]``, the way a predictor actor does) and
   with ``keras.saving.load_model`` for the baseline;
5. reports where the models' variables live (JAX: ``jax.devices()`` and a
   variable's ``.value.devices()`` / ``.sharding``; TensorFlow: the
   variable's ``.device``; PyTorch: ``.device``) and whether that is a GPU;
6. after a warm-up of every batch shape (JAX compiles one program per shape),
   times ``--repeats`` passes of each way over all rows and reports the median:

   * rayscore: ``predict_table(model, plan, batch)`` over ``table.slice``
     batches of ``--batch-size`` rows: Arrow in, Arrow out (conversion both
     ways included; the share spent inside the model call is shown too);
   * baseline: a bare ``model.predict(feeds, batch_size=--batch-size)`` on
     numpy arrays made beforehand by ``features_of`` (conversion not timed;
     shown on its own line);

   and the ratio rayscore rows/s / ``model.predict`` rows/s;
7. checks rayscore's predictions against ``model.predict``'s: max abs
   difference <= 1e-4 for both outputs.

Run it from the repository root::

    python bench/bench_gpu.py                          # 200,000 rows, batch 4096
    python bench/bench_gpu.py --rows 20000 --json      # smoke test on a CPU
    python bench/bench_gpu.py --backend jax --require-gpu

Exit status: 0 when the predictions match, 1 when they do not, 3 with
``--require-gpu`` when the models' variables are not on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TOLERANCE = 1e-4
OUTPUTS = ("click", "topics")
BACKENDS = ("jax", "tensorflow", "torch")
CORE = ("rayscore._model", "rayscore._convert", "rayscore._predict")
FORBIDDEN = ("ray", "raydp", "pyspark")  # the core must not need these


# --------------------------------------------------------------------------- set-up


def choose_backend(flag: str) -> tuple[str, str]:
    """The Keras backend and why it was picked. Must run before Keras is imported."""
    if flag != "auto":
        return flag, "--backend"
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env, "$KERAS_BACKEND"
    if importlib.util.find_spec("tensorflow") is not None:
        return "tensorflow", "tensorflow is importable"
    return "jax", "tensorflow is not importable"


def _third_party(names: set[str]) -> list[str]:
    tops = {n.split(".")[0] for n in names}
    return sorted(
        t
        for t in tops
        if t not in sys.stdlib_module_names and not t.startswith("_") and t not in ("rayscore", "cython_runtime")
    )


def import_core() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType, dict[str, Any]]:
    """``rayscore._model``, ``._convert``, ``._predict`` and how they were imported.

    First the ordinary way (``rayscore/__init__.py`` runs first). Where that
    fails on a missing module (pydantic, yaml: the config's, not the core's),
    the three modules are loaded under an empty ``rayscore`` package instead,
    so the check still runs; ``info["bypassed_init"]`` names what was missing.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    before = set(sys.modules)
    info: dict[str, Any] = {"bypassed_init": None}
    try:
        mods = [importlib.import_module(name) for name in CORE]
    except ModuleNotFoundError as exc:
        for name in [n for n in sys.modules if n == "rayscore" or n.startswith("rayscore.")]:
            del sys.modules[name]
        package = types.ModuleType("rayscore")
        package.__path__ = [str(REPO / "rayscore")]  # a package whose __init__ never ran
        package.__package__ = "rayscore"
        sys.modules["rayscore"] = package
        info["bypassed_init"] = f"rayscore/__init__.py needs {exc.name!r}, which is missing"
        mods = [importlib.import_module(name) for name in CORE]
    loaded = set(sys.modules) - before
    info["third_party_modules"] = _third_party(loaded)
    info["forbidden_loaded"] = sorted(n for n in FORBIDDEN if n in sys.modules)
    info["rayscore_file"] = str(Path(mods[0].__file__).resolve().parent)
    return mods[0], mods[1], mods[2], info


def make_example() -> types.ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import make_example as ex  # noqa: PLC0415

    return ex


# --------------------------------------------------------------------------- devices


def framework_devices(backend: str) -> dict[str, Any]:
    """The devices the backend sees, and its default one."""
    if backend == "jax":
        import jax  # noqa: PLC0415

        return {
            "default_backend": jax.default_backend(),
            "jax_version": jax.__version__,
            "devices": [f"{d} ({d.platform}, {getattr(d, 'device_kind', '?')})" for d in jax.devices()],
        }
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        return {
            "tensorflow_version": tf.__version__,
            "devices": [f"{d.name} ({d.device_type})" for d in tf.config.list_logical_devices()],
        }
    if backend == "torch":
        import torch  # noqa: PLC0415

        out = {"torch_version": torch.__version__, "cuda_available": torch.cuda.is_available(), "devices": ["cpu"]}
        if torch.cuda.is_available():
            out["devices"] += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        return out
    return {"devices": []}


def variable_device(model: Any, backend: str) -> dict[str, Any]:
    """Where ``model``'s first variable lives, and whether that is a GPU."""
    if not model.weights:
        return {"device": None, "is_gpu": False}
    var = model.weights[0]
    value = getattr(var, "value", var)
    out: dict[str, Any] = {"variable": var.path if hasattr(var, "path") else var.name}
    if backend == "jax":
        devices = value.devices() if callable(getattr(value, "devices", None)) else set()
        out["device"] = ", ".join(sorted(str(d) for d in devices))
        out["platform"] = ", ".join(sorted({d.platform for d in devices}))
        out["device_kind"] = ", ".join(sorted({getattr(d, "device_kind", "?") for d in devices}))
        out["sharding"] = str(getattr(value, "sharding", None))
        out["is_gpu"] = bool(devices) and all(d.platform in ("gpu", "cuda", "rocm") for d in devices)
    elif backend == "tensorflow":
        device = str(getattr(value, "device", "") or getattr(var, "device", ""))
        out["device"] = device
        out["is_gpu"] = "GPU" in device.upper()
    elif backend == "torch":
        device = getattr(value, "device", None)
        out["device"] = str(device)
        out["is_gpu"] = getattr(device, "type", "") == "cuda"
    else:
        out["device"], out["is_gpu"] = None, False
    return out


def keras_model_of(loaded: Any) -> Any | None:
    """The Keras model inside rayscore's LoadedModel (its predict closes over it)."""
    try:
        return inspect.getclosurevars(loaded.predict).nonlocals.get("model")
    except TypeError:
        return None


# --------------------------------------------------------------------------- the two ways


class TimedPredict:
    """Wraps LoadedModel.predict to add up the seconds spent inside the model call."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, feeds: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(feeds)
        finally:
            self.seconds += time.perf_counter() - t0


def rayscore_pass(predict_table: Any, loaded: Any, plan: Any, table: Any, batch_size: int) -> list[Any]:
    return [
        predict_table(loaded, plan, table.slice(start, batch_size)) for start in range(0, table.num_rows, batch_size)
    ]


def batch_shapes(rows: int, batch_size: int) -> list[int]:
    """The batch sizes one pass uses: full batches and the last, partial one."""
    sizes = [min(batch_size, rows)]
    if rows > batch_size and rows % batch_size:
        sizes.append(rows % batch_size)
    return sizes


def collect(tables: list[Any], rows: int) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415

    table = pa.concat_tables(tables)
    out = {"id": np.asarray(table.column("id").to_numpy())}
    for name in OUTPUTS:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)
        else:
            out[name] = col.to_numpy(zero_copy_only=False).reshape(rows, 1)
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


def run(args: argparse.Namespace, backend: str, why: str) -> dict[str, Any]:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _model, _convert, _predict, core = import_core()
    predict_table = _predict.predict_table

    import numpy as np  # noqa: PLC0415

    ex = make_example()
    t0 = time.perf_counter()
    import keras  # noqa: PLC0415

    if keras.backend.backend() != backend:
        raise SystemExit(
            f"asked for Keras backend {backend!r} but Keras runs {keras.backend.backend()!r} "
            "(was keras imported before KERAS_BACKEND was set?)"
        )
    keras_import_seconds = time.perf_counter() - t0
    devices = framework_devices(backend)

    with tempfile.TemporaryDirectory(prefix="rayscore-gpu-") as workdir:
        t0 = time.perf_counter()
        model_path = os.path.join(workdir, "ctr.keras")
        ex.build_model().save(model_path)
        table = ex.make_table(args.rows)
        feeds_time = time.perf_counter()
        feeds = ex.features_of(table)
        features_of_seconds = time.perf_counter() - feeds_time
        workload_seconds = time.perf_counter() - t0

        # rayscore's core, the way an actor does it: inspect (driver), plan, load (actor).
        t0 = time.perf_counter()
        path, loader = _model.resolve_loader(model_path)
        spec = loader.inspect(path)
        plan = _convert.make_plan(spec, table.schema, keep_columns=["id"])
        loaded = _model.loaders[loader.name].load(path)
        rayscore_load_seconds = time.perf_counter() - t0
        inner = keras_model_of(loaded)
        timed = TimedPredict(loaded.predict)
        loaded = dataclasses.replace(loaded, predict=timed)

        t0 = time.perf_counter()
        baseline = keras.saving.load_model(model_path, compile=False)
        baseline_load_seconds = time.perf_counter() - t0

        placement = {
            "rayscore_model": variable_device(inner, backend) if inner is not None else {"device": "unknown"},
            "baseline_model": variable_device(baseline, backend),
        }

        # Warm-up: every batch shape, both ways (JAX/XLA compiles one program per shape).
        t0 = time.perf_counter()
        for size in batch_shapes(args.rows, args.batch_size):
            predict_table(loaded, plan, table.slice(0, size))
            baseline.predict({k: v[:size] for k, v in feeds.items()}, batch_size=args.batch_size, verbose=0)
        warmup_seconds = time.perf_counter() - t0

        ray_times, ray_model_times, base_times = [], [], []
        got = ref = None
        for _ in range(args.repeats):
            timed.seconds = 0.0
            t0 = time.perf_counter()
            tables = rayscore_pass(predict_table, loaded, plan, table, args.batch_size)
            ray_times.append(time.perf_counter() - t0)
            ray_model_times.append(timed.seconds)
            got = tables

            t0 = time.perf_counter()
            ref = baseline.predict(feeds, batch_size=args.batch_size, verbose=0)
            base_times.append(time.perf_counter() - t0)

        scored = collect(got, args.rows)
        ids_ok = bool(np.array_equal(scored["id"], table.column("id").to_numpy()))
        diffs = {}
        for name in OUTPUTS:
            want = np.asarray(ref[name]).reshape(args.rows, -1).astype(np.float64)
            have = scored[name].astype(np.float64)
            diffs[name] = float(np.abs(have - want).max()) if have.shape == want.shape else float("inf")

    ray_s, base_s = _median(ray_times), _median(base_times)
    model_s = _median(ray_model_times)
    return {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "backend": backend,
        "backend_why": why,
        "python": platform.python_version(),
        "keras_version": keras.__version__,
        "keras_import_seconds": keras_import_seconds,
        "framework": devices,
        "core": core,
        "placement": placement,
        "on_gpu": bool(placement["rayscore_model"].get("is_gpu")) and bool(placement["baseline_model"].get("is_gpu")),
        "seconds": {
            "workload": workload_seconds,
            "rayscore_load": rayscore_load_seconds,
            "baseline_load": baseline_load_seconds,
            "warmup": warmup_seconds,
            "features_of": features_of_seconds,
            "rayscore_passes": ray_times,
            "rayscore_model_call_passes": ray_model_times,
            "model_predict_passes": base_times,
        },
        "rayscore_rows_per_second": _rate(args.rows, ray_s),
        "rayscore_model_call_share": model_s / ray_s if ray_s > 0 else float("nan"),
        "model_predict_rows_per_second": _rate(args.rows, base_s),
        "features_of_plus_predict_rows_per_second": _rate(args.rows, base_s + features_of_seconds),
        "ratio": _rate(args.rows, ray_s) / _rate(args.rows, base_s),
        "ratio_vs_features_of_plus_predict": _rate(args.rows, ray_s) / _rate(args.rows, base_s + features_of_seconds),
        "check": {
            "max_abs_diff": diffs,
            "ids_in_order": ids_ok,
            "tolerance": TOLERANCE,
            "ok": ids_ok and all(d <= TOLERANCE for d in diffs.values()),
        },
    }


# --------------------------------------------------------------------------- report


def render(r: dict[str, Any]) -> str:
    s = r["seconds"]
    core = r["core"]
    lines = [
        f"rayscore GPU check: {r['rows']:,} rows, batch size {r['batch_size']}, median of {r['repeats']} pass(es), "
        f"Python {r['python']}, Keras {r['keras_version']}",
        f"backend: {r['backend']} ({r['backend_why']})",
        f"framework devices: {'; '.join(r['framework'].get('devices', [])) or 'none listed'}"
        + (
            f"  [jax default backend: {r['framework']['default_backend']}]"
            if "default_backend" in r["framework"]
            else ""
        ),
        f"core: rayscore._model, ._convert, ._predict from {core['rayscore_file']}; third-party modules they "
        f"imported: {', '.join(core['third_party_modules']) or 'none'}; Ray/RayDP/Spark imported: "
        f"{', '.join(core['forbidden_loaded']) or 'no'}",
    ]
    if core["bypassed_init"]:
        lines.append(f"core: loaded without rayscore/__init__.py: {core['bypassed_init']}")
    for who, label in (("rayscore_model", "rayscore's loaded model"), ("baseline_model", "baseline model")):
        p = r["placement"][who]
        extra = "".join(f", {k} {p[k]}" for k in ("platform", "device_kind", "sharding") if p.get(k))
        lines.append(
            f"placement: {label}: variable {p.get('variable', '?')} on {p.get('device')}{extra} "
            f"-> {'GPU' if p.get('is_gpu') else 'not a GPU'}"
        )
    lines += [
        f"set-up (not timed as a way): workload {s['workload']:.2f} s, rayscore inspect+plan+load "
        f"{s['rayscore_load']:.2f} s, baseline load {s['baseline_load']:.2f} s, warm-up {s['warmup']:.2f} s",
        "",
    ]
    rows = [
        ("way", "seconds", "rows/s"),
        (
            f"rayscore predict_table (Arrow in/out, bs {r['batch_size']})",
            f"{_median(s['rayscore_passes']):.3f}",
            f"{r['rayscore_rows_per_second']:,.0f}",
        ),
        (
            "  of which inside the model call",
            f"{_median(s['rayscore_model_call_passes']):.3f}",
            f"({r['rayscore_model_call_share']:.0%})",
        ),
        (
            f"model.predict (numpy in/out, bs {r['batch_size']})",
            f"{_median(s['model_predict_passes']):.3f}",
            f"{r['model_predict_rows_per_second']:,.0f}",
        ),
        ("features_of (Arrow -> numpy, for model.predict)", f"{s['features_of']:.3f}", ""),
        (
            "features_of + model.predict",
            f"{_median(s['model_predict_passes']) + s['features_of']:.3f}",
            f"{r['features_of_plus_predict_rows_per_second']:,.0f}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    c = r["check"]
    lines += [
        "",
        f"ratio rayscore / model.predict rows/s: {r['ratio']:.3f} "
        f"(vs features_of + model.predict: {r['ratio_vs_features_of_plus_predict']:.3f})",
        f"check: {'OK' if c['ok'] else 'FAILED'}: max abs diff "
        + ", ".join(f"{k} {v:.2e}" for k, v in c["max_abs_diff"].items())
        + f" (tolerance {c['tolerance']:g}); ids in order: {c['ids_in_order']}",
        f"on GPU: {'yes' if r['on_gpu'] else 'no'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="feature rows to score (default 200000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per model call, both ways (default 4096)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes of each way; the median counts (default 3)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="Keras backend (default auto: $KERAS_BACKEND, else tensorflow if importable, else jax; "
        "torch is offered but has not been run yet)",
    )
    parser.add_argument("--require-gpu", action="store_true", help="exit 3 when the models' variables are not on a GPU")
    parser.add_argument("--json", action="store_true", help="also print a one-line JSON summary at the end")
    args = parser.parse_args(argv)
    for name in ("rows", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "keras" in sys.modules:
        raise SystemExit("keras is imported already: the backend can no longer be chosen")
    backend, why = choose_backend(args.backend)
    result = run(args, backend, why)
    print(render(result), flush=True)
    if args.json:
        print(json.dumps(result, sort_keys=True, default=str))
    if not result["check"]["ok"]:
        return 1
    if args.require_gpu and not result["on_gpu"]:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
