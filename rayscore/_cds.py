"""Class-data sharing for Spark's JVMs: one archive of the classes they load, mapped at each start.

A job starts three JVMs before its first Spark job (Spark's driver, RayDP's
app master and the Java actor it creates) and one per executor, and loading
and verifying Spark's, RayDP's and Ray's classes is most of what they do at
start. With the JDK's class-data sharing (CDS) those classes come parsed and
verified from one memory-mapped file: on 2 cores, the three took 8.6 CPU
seconds instead of 12.8, and Spark was up 3.5 s sooner (bench/RESULTS.md).

The first start on a machine records which classes its JVMs load
(``-XX:DumpLoadedClassList``, one list per JVM). When that session stops, a
background process at the lowest priority dumps them into one archive
(``java -Xshare:dump``: 40-60 s of one core, 140-175 MB on disk); the next
starts map it (``-XX:SharedArchiveFile``). The JVM checks the archive itself
(same Java build; same jars, sizes and times, at the head of its class path)
and starts without it, silently, if anything differs. The archive's name
hashes the same things, so an upgraded Java, Spark, RayDP or Ray gets a new
one; the least recently used beyond two are removed.

One archive serves every JVM: RayDP's app master, its Java actor and the
executors run on RayDP's class path, and the driver's class path starts with
it. Used only when rayscore starts a local Ray (the archive is on this
machine's disk); ``spark.class_data_sharing: false`` turns it off.
Archives live in ``$RAYSCORE_CDS_DIR``, else ``$XDG_CACHE_HOME/rayscore/cds``
(``~/.cache/rayscore/cds``).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CDS_DIR_ENV", "ClassArchive", "cds_root"]

log = logging.getLogger("rayscore")

CDS_DIR_ENV = "RAYSCORE_CDS_DIR"
KEEP = 2  # archives kept (most recently used); each is 140-175 MB
STALE_LOCK_SECONDS = 30 * 60  # a build that has held its lock this long died without removing it
_CLASS_NAME = re.compile(r"^[\w$/.-]+$")

# Outlives `rayscore run`; in its own process group (a Ctrl-C to the job is not for it) but the
# job's session: where the kernel groups scheduling by session (autogroup), a process in another
# session gets as much CPU as the whole job whatever its nice value. Nice 19 and SCHED_IDLE: the
# next job, started meanwhile, takes the cores first.
_BUILDER = """
import os, subprocess, sys
java, class_path, class_list, archive, log_file, lock, failed = sys.argv[1:]
os.setpgrp()
os.nice(19)
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    pass
tmp = f"{archive}.{os.getpid()}.tmp"
try:
    with open(log_file, "wb") as out:
        code = subprocess.call([java, "-Xshare:dump", "-XX:SharedClassListFile=" + class_list,
                                "-XX:SharedArchiveFile=" + tmp, "-cp", class_path],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code == 0 and os.path.isfile(tmp):
        os.replace(tmp, archive)
    else:
        with open(failed, "w") as out:
            out.write(f"java -Xshare:dump exited {code}; see {log_file}\\n")
finally:
    for path in (tmp, class_list, lock):
        try:
            os.remove(path)
        except OSError:
            pass
"""


def cds_root() -> Path:
    """Where archives live: ``$RAYSCORE_CDS_DIR``, else ``$XDG_CACHE_HOME/rayscore/cds`` (``~/.cache``)."""
    configured = os.environ.get(CDS_DIR_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "rayscore" / "cds"


class ClassArchive:
    """The archive for one Java and one class path: its JVM option, and its build after a recording start.

    Costs nothing at run time but a file check and a memory-mapped file
    (shared between the JVMs, in the page cache); the recording start
    writes one class list per JVM (about 300 KB each) and its session's
    stop launches the build in the background.
    """

    def __init__(self, root: Path, java: str, class_path: str) -> None:
        self.root = root
        self.java = java
        self.class_path = class_path
        self.key = _key(java, class_path)
        self.path = root / f"{self.key}.jsa"
        self.lists = root / f"{self.key}.lists"
        self.lock = root / f"{self.key}.lock"
        self.failed = root / f"{self.key}.failed"
        self.recording = False

    @classmethod
    def for_raydp(cls, configs: dict[str, str], root: Path | None = None) -> ClassArchive | None:
        """The archive for RayDP's class path under these Spark settings; None without a ``java`` on PATH."""
        java = shutil.which("java")
        if java is None:
            return None
        return cls(root or cds_root(), os.path.realpath(java), raydp_class_path(configs))

    def java_option(self) -> str:
        """The option to give each JVM: map the archive, or record classes for it, or nothing.

        Nothing while another process builds it, after a failed build (its
        ``.failed`` file says why; remove it to try again), or where the
        directory cannot be written.
        """
        if self.path.is_file():
            try:
                os.utime(self.path)  # the least recently used are the ones removed
            except OSError:
                pass
            shutil.rmtree(self.lists, ignore_errors=True)  # lists a run recorded while it was being built
            return f"-XX:SharedArchiveFile={self.path}"
        if self.failed.exists() or self._building():
            return ""
        try:
            self.lists.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.debug("no class-data sharing: cannot create %s: %s", self.lists, exc)
            return ""
        self.recording = True
        return f"-XX:DumpLoadedClassList={self.lists}/%p.classlist"  # the JVM puts its pid in place of %p

    def build_in_background(self) -> int | None:
        """After a recording start has stopped: merge its lists and launch the archive's build.

        Returns the builder's pid (None if nothing was launched). Another
        process building the same archive, or one already built, wins.
        """
        if not self.recording:
            return None
        self.recording = False
        if self.path.is_file():  # another run built it meanwhile: these lists are not needed
            shutil.rmtree(self.lists, ignore_errors=True)
            return None
        if not self._take_lock():  # another run builds it, from the lists in this directory too
            return None
        class_list = self.root / f"{self.key}.classlist"
        try:
            names = _merge_lists(self.lists)
            shutil.rmtree(self.lists, ignore_errors=True)
            if not names:
                self.lock.unlink(missing_ok=True)
                return None
            class_list.write_text("\n".join(names) + "\n")
            self._prune()
            proc = subprocess.Popen(
                [sys.executable, "-c", _BUILDER, self.java, self.class_path, str(class_list), str(self.path),
                 str(self.root / f"{self.key}.log"), str(self.lock), str(self.failed)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.debug("no class-data archive built: %s", exc)
            class_list.unlink(missing_ok=True)
            self.lock.unlink(missing_ok=True)
            return None
        log.info("building a class-data archive for Spark's JVMs in the background (pid %d): %s", proc.pid, self.path)
        return proc.pid

    def _building(self) -> bool:
        try:
            age = time.time() - self.lock.stat().st_mtime
        except FileNotFoundError:
            return False
        return age < STALE_LOCK_SECONDS

    def _take_lock(self) -> bool:
        if self.lock.exists() and not self._building():
            self.lock.unlink(missing_ok=True)
        try:
            fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except OSError:
            return False
        os.close(fd)
        return True

    def _prune(self) -> None:
        """Keep the most recently used archives (with the one about to be built, ``KEEP`` in all).

        Also removes what builds that died left: their unfinished archives.
        """
        others = sorted(self.root.glob("*.jsa"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP - 1:]:
            old.unlink(missing_ok=True)
            for suffix in (".log", ".failed"):
                old.with_suffix(suffix).unlink(missing_ok=True)
        for unfinished in self.root.glob("*.jsa.*.tmp"):
            try:
                if time.time() - unfinished.stat().st_mtime > STALE_LOCK_SECONDS:
                    unfinished.unlink()
            except OSError:
                pass


def raydp_class_path(configs: dict[str, str]) -> str:
    """The class path RayDP gives its app master and Java actors, as RayDP computes it.

    RayDP's own method, on an instance that starts nothing; the executors
    get the same one, and Spark's driver one that starts with it.
    """
    from raydp.spark.ray_cluster_master import RayDPSparkMaster  # noqa: PLC0415

    cls = RayDPSparkMaster.__ray_actor_class__  # the class under Ray's actor wrapper
    bare = cls.__new__(cls)
    bare._configs = dict(configs)
    return os.pathsep.join(bare._prepare_jvm_classpath())


def _key(java: str, class_path: str) -> str:
    """A hash of what the JVM checks the archive against: the Java build and each jar on the class path."""
    digest = hashlib.sha256()
    for path in [java, *_class_path_files(class_path)]:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    digest.update(class_path.encode())
    return digest.hexdigest()[:20]


def _class_path_files(class_path: str) -> list[str]:
    files: list[str] = []
    for entry in class_path.split(os.pathsep):
        if entry.endswith("*"):  # the JVM's wildcard: the directory's jars
            files.extend(sorted(glob.glob(entry[:-1] + "*.jar") + glob.glob(entry[:-1] + "*.JAR")))
        elif entry:
            files.append(entry)
    return files


def _merge_lists(lists: Path) -> list[str]:
    """The classes the recorded JVMs loaded from the JDK and the class path, each once.

    Lines with more fields (classes of other class loaders, lambda forms)
    cannot be archived from a static list and are left out, as are lines
    with characters no class name has. A name a killed JVM cut short is
    kept: the dump warns that it cannot find it and goes on.
    """
    names: set[str] = set()
    for path in lists.glob("*.classlist"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line and not line.startswith("#") and _CLASS_NAME.match(line):
                names.add(line)
    return sorted(names)
