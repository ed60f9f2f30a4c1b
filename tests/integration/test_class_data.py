"""Class-data sharing for Spark's JVMs (rayscore._cds) on a real local Ray and RayDP Spark.

Each start runs in a fresh process: pyspark launches Spark's driver JVM once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from rayscore._cds import CDS_DIR_ENV

START = """
import json, os, psutil, rayscore

s = rayscore.Session(max_actors=1)
s.start_ray()
s.start_spark(executors_on_demand=True)
try:
    total = s.spark.range(1000).selectExpr("sum(id) AS total").collect()[0].total  # starts an executor
    jvms = []
    for p in psutil.Process().children(recursive=True):
        try:
            args = p.cmdline()
        except psutil.Error:  # a process that ended meanwhile
            continue
        if not args or os.path.basename(args[0]) != "java":
            continue
        main = args[-1] if args[-1] != "pyspark-shell" else "org.apache.spark.deploy.SparkSubmit"
        with open(f"/proc/{p.pid}/maps") as maps:
            mapped = sorted({line.split()[-1] for line in maps if line.rstrip().endswith(".jsa")})
        jvms.append({"main": main.rsplit(".", 1)[-1], "mapped": mapped,
                     "options": [a for a in args if a.startswith(("-XX:SharedArchiveFile=", "-XX:DumpLoadedClassList="))]})
finally:
    s.stop()
print(json.dumps({"total": total, "jvms": sorted(jvms, key=lambda j: j["main"]), "builder": s.cds_builder_pid}))
"""


def start(tmp_path: Path, cds: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", START], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, CDS_DIR_ENV: str(cds)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_first_start_records_the_jvms_classes_and_the_next_maps_them_in_every_jvm(tmp_path: Path) -> None:
    cds = tmp_path / "cds"
    first = start(tmp_path, cds)
    mains = ["AppMasterEntryPoint", "DefaultWorker", "DefaultWorker", "SparkSubmit"]  # 2 Java actors: master, executor
    assert first["total"] == sum(range(1000))
    assert [j["main"] for j in first["jvms"]] == mains
    lists = next(iter(first["jvms"]))["options"][-1].split("=", 1)[1]
    assert lists.startswith(str(cds)) and lists.endswith(".lists/%p.classlist")
    for jvm in first["jvms"]:
        assert jvm["options"][-1] == f"-XX:DumpLoadedClassList={lists}", jvm
        assert not any(m.startswith(str(cds)) for m in jvm["mapped"]), jvm
    assert first["builder"] is not None
    psutil.Process(first["builder"]).wait(timeout=600)  # the build outlives the run that launched it
    archives = list(cds.glob("*.jsa"))
    assert len(archives) == 1 and not (cds / "failed").exists() and not list(cds.glob("*.lists"))

    second = start(tmp_path, cds)
    assert second["total"] == sum(range(1000)) and second["builder"] is None
    assert [j["main"] for j in second["jvms"]] == mains
    for jvm in second["jvms"]:  # Spark's driver, RayDP's app master, its Java actor and the executor
        assert jvm["options"][-1] == f"-XX:SharedArchiveFile={archives[0]}", jvm
        assert str(archives[0]) in jvm["mapped"], jvm  # the JVM accepted it: its class path and jars match

