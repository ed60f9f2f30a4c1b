"""``import rayscore`` and ``rayscore --help`` load no Ray, Spark or TensorFlow, and take little time."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ray", "raydp", "pyspark", "tensorflow", "keras", "py4j")

PROBE = """
import json, sys, time
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"heavy": heavy, "seconds": seconds}}))
"""


def probe(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_rayscore_loads_no_heavy_framework() -> None:
    seen = probe("import rayscore")
    assert seen["heavy"] == []
    print(f"import rayscore: {seen['seconds']:.2f} s")  # shown with -s; a figure, not a bound


def test_rayscore_help_loads_no_heavy_framework() -> None:
    seen = probe("from rayscore._cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert seen["heavy"] == []
