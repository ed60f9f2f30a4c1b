"""Peak memory of loading and running a model, per loader: the memory factors of rayscore._placement.

``python bench/bench_load_memory.py --mb 400`` builds the example's model
(``examples/make_example.py``'s ``build_model``) with its embedding table
grown to about ``--mb`` MiB, saves it as ``.keras`` and ``.h5``, and then, in a
fresh child process per format (as a predictor actor would), measures the
process's resident memory:

* ``base``: after ``import keras`` (what every actor pays before any model);
* ``load``: the peak while ``rayscore._model.loaders[fmt].load(path)`` runs, and what stays after it;
* ``predict``: the peak while predicting one 1024-row batch, and what stays after it.

The peak is sampled every 2 ms in a thread (psutil RSS) and checked against
``getrusage``'s ``ru_maxrss``. ``factor`` is the peak growth over ``base``
divided by the model file's size: what ``DEFAULT_MEMORY_FACTORS`` holds,
rounded up. Several ``--mb`` values also give the growth that does not scale
with the model (TensorFlow's own start-up costs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIM = 16
MiB = 2**20


class PeakRSS:
    """The highest RSS of this process seen since the last reset(), sampled in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil  # noqa: PLC0415

        self._proc = psutil.Process()
        self._interval = interval
        self._peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.now())
            time.sleep(self._interval)

    def reset(self) -> None:
        self._peak = self.now()

    def peak(self) -> int:
        self._peak = max(self._peak, self.now())
        return self._peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _maxrss() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(fmt: str, path: str, vocab: int) -> None:
    """Runs in a fresh process: measure one format, print one JSON line."""
    import gc  # noqa: PLC0415

    import psutil  # noqa: PLC0415

    sampler = PeakRSS()
    import keras  # noqa: F401, PLC0415
    import make_example  # noqa: PLC0415

    from rayscore._model import loaders, model_bytes  # noqa: PLC0415

    feeds = make_example.features_of(make_example.make_table(1024, vocab=vocab))
    gc.collect()
    base = sampler.now()
    base_uss = psutil.Process().memory_full_info().uss
    sampler.reset()
    t0 = time.perf_counter()
    loaded = loaders[fmt].load(path)
    load_s = time.perf_counter() - t0
    load_peak = sampler.peak()
    gc.collect()
    after_load = sampler.now()
    sampler.reset()
    t0 = time.perf_counter()
    out = loaded.predict(feeds)
    predict_s = time.perf_counter() - t0
    predict_peak = max(sampler.peak(), load_peak)
    gc.collect()
    after_predict = sampler.now()
    uss = psutil.Process().memory_full_info().uss
    sampler.stop()
    assert all(len(v) == 1024 for v in out.values())
    size = model_bytes(path)
    peak = max(predict_peak, _maxrss())
    print(
        json.dumps(
            {
                "format": fmt,
                "model_bytes": size,
                "base_rss": base,
                "base_uss": base_uss,
                "load_peak": load_peak,
                "after_load": after_load,
                "predict_peak": predict_peak,
                "after_predict": after_predict,
                "after_predict_uss": uss,
                "ru_maxrss": _maxrss(),
                "growth": peak - base,
                "factor": (peak - base) / size,
                "load_s": load_s,
                "predict_s": predict_s,
            }
        )
    )


def build(mb: float, root: Path) -> tuple[dict[str, Path], int]:
    import make_example  # noqa: PLC0415

    vocab = max(1000, int(mb * MiB / (DIM * 4)))
    model = make_example.build_model(vocab=vocab, dim=DIM)
    paths = {"keras": root / f"m{mb:g}.keras", "h5": root / f"m{mb:g}.h5"}
    for p in paths.values():
        model.save(p)
    return paths, vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb", type=float, nargs="+", default=[400.0], help="embedding table size(s) in MiB (default 400)"
    )
    parser.add_argument("--formats", nargs="+", default=["keras", "h5"])
    parser.add_argument("--child", nargs=3, metavar=("FORMAT", "PATH", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    print(
        f"# {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"keras {keras.__version__}, tensorflow {tf.__version__}"
    )
    print(
        f"{'format':<6} {'MiB':>6} {'file MiB':>9} {'base RSS':>9} {'load peak':>10} {'after load':>11} "
        f"{'pred peak':>10} {'after pred':>11} {'growth':>8} {'factor':>7} {'load s':>7} {'base USS':>9}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="rayscore-bench-mem-") as tmp:
        for mb in args.mb:
            # Build in a child too, so the parent stays small and its pages do not linger.
            code = (
                f"import sys, json; sys.path[:0] = [{str(HERE)!r}]; import bench_load_memory as b; "
                f"from pathlib import Path; p, v = b.build({mb}, Path({tmp!r})); "
                f"print(json.dumps([{{k: str(x) for k, x in p.items()}}, v]))"
            )
            made = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            paths, vocab = json.loads(made.stdout.strip().splitlines()[-1])
            for fmt in args.formats:
                res = subprocess.run(
                    [sys.executable, __file__, "--child", fmt, paths[fmt], str(vocab)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["mb"] = mb
                rows.append(r)
                m = lambda k: r[k] / MiB  # noqa: E731
                print(
                    f"{fmt:<6} {mb:>6g} {m('model_bytes'):>9.1f} {m('base_rss'):>9.1f} {m('load_peak'):>10.1f} "
                    f"{m('after_load'):>11.1f} {m('predict_peak'):>10.1f} {m('after_predict'):>11.1f} "
                    f"{m('growth'):>8.1f} {r['factor']:>7.2f} {r['load_s']:>7.2f} {m('base_uss'):>9.1f}",
                    flush=True,
                )
    for fmt in args.formats:
        mine = sorted((r for r in rows if r["format"] == fmt), key=lambda r: r["model_bytes"])
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            slope = (b["growth"] - a["growth"]) / (b["model_bytes"] - a["model_bytes"])
            fixed = a["growth"] - slope * a["model_bytes"]
            print(
                f"{fmt}: growth = {slope:.2f} x model bytes + {fixed / MiB:.0f} MiB "
                f"(from {a['mb']:g} and {b['mb']:g} MiB)"
            )


if __name__ == "__main__":
    main()
