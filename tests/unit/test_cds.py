"""The class-data archive of Spark's JVMs (rayscore._cds), with a real JVM and no cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from rayscore._cds import CDS_DIR_ENV, ClassArchive, _merge_lists, cds_root

JAVA = shutil.which("java") or "java"  # Java 17 is part of the set-up (README): Spark needs it


def jar(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    return path


def archive_for(tmp_path: Path, class_path: str) -> ClassArchive:
    return ClassArchive(tmp_path / "cds", os.path.realpath(JAVA), class_path)


def run_java(option: str, class_path: str, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([JAVA, *filter(None, [option]), *more, "-cp", class_path, "-version"],
                          capture_output=True, text=True, timeout=120)


def wait_for(pid: int) -> None:
    psutil.Process(pid).wait(timeout=300)


def test_the_archives_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CDS_DIR_ENV, str(tmp_path / "mine"))
    assert cds_root() == tmp_path / "mine"
    monkeypatch.delenv(CDS_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cds_root() == tmp_path / "xdg" / "rayscore" / "cds"


def test_the_archives_name_changes_with_any_jar_on_the_class_path(tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    libs.mkdir()
    a, b = jar(libs / "a.jar"), jar(libs / "b.jar")
    wildcard = f"{libs}/*"
    first = archive_for(tmp_path, wildcard).key
    assert archive_for(tmp_path, wildcard).key == first  # the same jars: the same archive
    assert archive_for(tmp_path, f"{a}:{b}").key != first  # another class path string
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 1_000_000_000))  # an upgraded jar
    assert archive_for(tmp_path, wildcard).key != first
    jar(libs / "c.jar")  # one more jar behind the wildcard
    assert len({first, archive_for(tmp_path, wildcard).key}) == 2


def test_class_lists_are_merged_once_each_without_what_cannot_be_archived(tmp_path: Path) -> None:
    (tmp_path / "pid1.classlist").write_text(
        "# NOTE: Do not modify this file.\njava/lang/Object\norg/apache/spark/SparkConf\n"
        "@lambda-proxy java/lang/Runnable run ()V\nfoo/Bar id: 7 super: 0 source: /x.jar\n")
    (tmp_path / "pid2.classlist").write_text("java/lang/Object\nscala/Option$\norg/apa\x00che/Trunc")
    (tmp_path / "other.txt").write_text("not/a/List\n")
    assert _merge_lists(tmp_path) == ["java/lang/Object", "org/apache/spark/SparkConf", "scala/Option$"]


def test_a_first_start_records_its_classes_and_its_stop_builds_the_archive_the_next_jvm_maps(tmp_path: Path) -> None:
    class_path = str(jar(tmp_path / "app.jar"))
    archive = archive_for(tmp_path, class_path)
    option = archive.java_option()
    assert option == f"-XX:DumpLoadedClassList={archive.lists}/%p.classlist" and archive.recording
    # Two JVMs record, each into its own list.
    for _ in range(2):
        assert run_java(option, class_path).returncode == 0
    assert len(list(archive.lists.glob("pid*.classlist"))) == 2
    assert archive_for(tmp_path, class_path).java_option() == option  # a run meanwhile records too

    pid = archive.build_in_background()
    assert pid is not None
    assert not archive.lists.exists()
    assert archive_for(tmp_path, class_path).java_option() == ""  # while it is being built: nothing
    assert archive.build_in_background() is None  # once per recording
    wait_for(pid)

    assert archive.path.is_file() and not archive.lock.exists() and not archive.failed.exists()
    assert not (archive.root / f"{archive.key}.classlist").exists()
    later = archive_for(tmp_path, class_path)
    assert later.java_option() == f"-XX:SharedArchiveFile={archive.path}" and not later.recording
    assert later.build_in_background() is None
    # -Xshare:on refuses to start unless the archive maps (the JVM checks its Java build, jars and class path).
    mapped = run_java(later.java_option(), class_path, "-Xshare:on")
    assert mapped.returncode == 0 and "sharing" in mapped.stderr


def test_a_failed_build_is_not_retried_and_says_why(tmp_path: Path) -> None:
    class_path = str(jar(tmp_path / "app.jar"))
    failing = shutil.which("false")  # a "java" whose dump exits 1, as one out of disk or memory would
    archive = ClassArchive(tmp_path / "cds", failing, class_path)
    assert run_java(archive.java_option(), class_path).returncode == 0  # the real JVM records
    wait_for(archive.build_in_background())

    assert not archive.path.exists() and not archive.lock.exists()
    assert not list(archive.root.glob("*.tmp")) and not (archive.root / f"{archive.key}.classlist").exists()
    assert archive.failed.read_text().startswith("java -Xshare:dump exited 1; see ")
    assert ClassArchive(tmp_path / "cds", failing, class_path).java_option() == ""  # until .failed is removed


def test_a_lock_left_by_a_build_that_died_is_taken_over(tmp_path: Path) -> None:
    archive = archive_for(tmp_path, str(tmp_path / "app.jar"))
    archive.root.mkdir()
    archive.lock.write_text("")
    assert archive.java_option() == ""
    old = time.time() - 31 * 60
    os.utime(archive.lock, (old, old))
    assert archive.java_option().startswith("-XX:DumpLoadedClassList=")


def test_only_the_most_recently_used_archive_is_kept_beside_a_new_one_and_dead_builds_are_cleared(tmp_path: Path) -> None:
    archive = archive_for(tmp_path, str(tmp_path / "app.jar"))
    archive.root.mkdir()
    for age, name in enumerate(("recent", "older", "oldest")):
        for suffix in (".jsa", ".log", ".jsa.123.tmp"):
            path = archive.root / f"{name}{suffix}"
            path.write_text(name)
            os.utime(path, (time.time() - age * 3600,) * 2)
    archive._prune()
    # The unfinished archive of a build that may still run (the newest) stays; those of builds that died go.
    assert sorted(p.name for p in archive.root.iterdir()) == ["recent.jsa", "recent.jsa.123.tmp", "recent.log"]


def test_a_session_gives_the_option_to_every_jvm_first_only_on_a_local_ray_it_started(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rayscore import Session
    from rayscore._config import RayConfig, SparkConfig

    monkeypatch.setenv(CDS_DIR_ENV, str(tmp_path))
    keys = ("spark.driver.extraJavaOptions", "spark.ray.raydp_app_master.extraJavaOptions",
            "spark.executor.extraJavaOptions")
    local = Session(RayConfig(), SparkConfig())
    local._started_ray = True  # as after start_ray() on the embedded default
    configs = {"spark.driver.extraJavaOptions": "-XX:SharedArchiveFile=/mine.jsa"}
    local._share_class_data(configs)
    option = configs["spark.ray.raydp_app_master.extraJavaOptions"]
    assert option.startswith(f"-XX:DumpLoadedClassList={tmp_path}/") and option.endswith(".lists/%p.classlist")
    assert [configs[k] for k in keys] == [f"{option} -XX:SharedArchiveFile=/mine.jsa", option, option]  # the user's last

    for session in (Session(RayConfig(), SparkConfig(class_data_sharing=False)),  # turned off
                    Session(RayConfig(address="auto"), SparkConfig())):  # a cluster: JVMs on other machines
        session._started_ray = True
        untouched: dict[str, str] = {}
        session._share_class_data(untouched)
        assert untouched == {}
    assert Session(RayConfig(), SparkConfig())._share_class_data(untouched) is None and untouched == {}  # a Ray it joined
