"""The predictor core (loader + plan + batched predict on one device) works without Ray or Spark.

bench/bench_gpu.py runs it on machines that have no Ray, RayDP or PySpark, so
``rayscore._model``, ``rayscore._convert`` and ``rayscore._predict`` must import
and score without them. A fresh Python process makes those imports fail (a
meta path finder raises ImportError for them and their submodules) before it
imports anything of rayscore, then loads a small multi-input model through the
loader and scores an Arrow batch with ``predict_table``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BLOCKED = ("ray", "raydp", "pyspark")

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    blocked_works = True
    try:
        import ray  # noqa: F401
        blocked_works = False
    except ImportError:
        pass

    workdir, examples = sys.argv[2], sys.argv[3]
    sys.path.insert(0, examples)

    from rayscore._model import loaders, resolve_loader
    from rayscore._convert import make_plan, to_tensors
    from rayscore._predict import predict_table
    import numpy as np
    import pyarrow as pa
    import make_example

    model = make_example.build_model(vocab=50, dim=4)
    model_path = workdir + "/ctr.keras"
    model.save(model_path)
    table = make_example.make_table(300, vocab=50, seed=3)

    path, loader = resolve_loader(model_path)
    spec = loader.inspect(path)
    plan = make_plan(spec, table.schema, keep_columns=["id"])
    loaded = loaders[loader.name].load(path)
    feeds = to_tensors(table, plan.bindings)

    # two Arrow batches, as an actor gets them, the second a partial one
    parts = [predict_table(loaded, plan, table.slice(0, 256)), predict_table(loaded, plan, table.slice(256))]
    scored = pa.concat_tables(parts)
    want = model.predict(make_example.features_of(table), batch_size=256, verbose=0)

    diffs = {}
    for name in ("click", "topics"):
        col = scored.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            have = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
        else:
            have = col.to_numpy(zero_copy_only=False).reshape(len(col), -1)
        ref = np.asarray(want[name]).reshape(len(col), -1)
        diffs[name] = float(np.abs(have.astype(np.float64) - ref.astype(np.float64)).max())

    print(json.dumps({
        "blocked_works": blocked_works,
        "loaded_blocked": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED),
        "columns": scored.column_names,
        "rows": scored.num_rows,
        "ids": scored.column("id").to_pylist() == list(range(300)),
        "feeds": {k: list(v.shape) for k, v in feeds.items()},
        "diffs": diffs,
    }))
    """
)


def test_core_scores_without_ray_raydp_or_pyspark(tmp_path: Path) -> None:
    # this checkout's rayscore first, whether or not it is installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(BLOCKED), str(tmp_path), str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"the core failed without {', '.join(BLOCKED)}:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked_works"], "the import blocker let `import ray` through"
    assert result["loaded_blocked"] == []
    assert result["columns"] == ["id", "click", "topics"]
    assert result["rows"] == 300 and result["ids"]
    assert result["feeds"] == {
        "title_0": [300, 20],
        "title_1": [300, 20],
        "title_2": [300, 20],
        "title_3": [300, 20],
        "hour_of_week": [300, 24, 7],
        "price": [300],
    }
    assert all(d <= 1e-5 for d in result["diffs"].values()), result["diffs"]
