"""What a session cleans up after Ray's Java runtime and Spark's JVMs, without a cluster."""

from __future__ import annotations

import os
from pathlib import Path

from rayscore._session import remove_lz4_copies, remove_native_library_copies


def native_copy(root: Path, millis: int, *extra: str) -> Path:
    folder = root / str(millis)
    folder.mkdir()
    for name in ("libcore_worker_library_java.so", "file_lock", *extra):
        (folder / name).write_bytes(b"x")
    return folder


def test_only_this_sessions_copies_of_rays_java_library_are_removed(tmp_path: Path) -> None:
    since, until = 1_800_000_000.0, 1_800_000_060.0  # seconds, as time.time() gives them
    mine = [native_copy(tmp_path, 1_800_000_000_000), native_copy(tmp_path, 1_800_000_059_999)]
    lock_only = tmp_path / "1800000030000"
    lock_only.mkdir()
    (lock_only / "file_lock").write_bytes(b"")  # a copy being made: its lock first
    before = native_copy(tmp_path, 1_799_999_999_999)  # another run's, just before
    after = native_copy(tmp_path, 1_800_000_060_001)  # and just after
    other = native_copy(tmp_path, 1_800_000_030_001, "something_else")  # not only the copy: not ours
    session = tmp_path / "session_2027-01-15_08-00-00_000000_1"
    session.mkdir()
    (tmp_path / "1800000031000").write_text("a file, not a folder")

    assert remove_native_library_copies(since, until, root=str(tmp_path)) == 3
    assert not any(p.exists() for p in [*mine, lock_only])
    assert all(p.exists() for p in (before, after, other, session, tmp_path / "1800000031000"))


def test_a_missing_folder_is_nothing_to_remove(tmp_path: Path) -> None:
    assert remove_native_library_copies(0, 2e9, root=str(tmp_path / "missing")) == 0


def test_only_this_sessions_copies_of_lz4s_library_are_removed(tmp_path: Path) -> None:
    since, until = 1_800_000_000.0, 1_800_000_060.0

    def copy(n: int, at: float, lock: bool = True) -> Path:
        library = tmp_path / f"liblz4-java-{n}.so"
        library.write_bytes(b"x")
        os.utime(library, (at, at))
        if lock:
            (tmp_path / f"liblz4-java-{n}.so.lck").write_bytes(b"")
        return library

    mine = [copy(1, since), copy(2, until - 1), copy(3, since + 5, lock=False)]
    others = [copy(4, since - 1), copy(5, until + 1)]
    unrelated = tmp_path / "libsnappyjava.so"
    unrelated.write_bytes(b"x")
    os.utime(unrelated, (since + 1, since + 1))

    assert remove_lz4_copies(since, until, root=str(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "liblz4-java-4.so", "liblz4-java-4.so.lck", "liblz4-java-5.so", "liblz4-java-5.so.lck", "libsnappyjava.so"]
    assert not any(p.exists() for p in mine)


def test_ray_data_is_quieted_without_hiding_its_warnings() -> None:
    """Bars off, and no warning saying so; Ray Data's other warnings (its issue detector's) still show."""
    import logging

    from ray.data import DataContext

    from rayscore._session import _quiet_ray_data

    _quiet_ray_data()
    assert DataContext.get_current().enable_progress_bars is False
    assert not logging.getLogger("ray.data._internal.progress").isEnabledFor(logging.WARNING)
    assert logging.getLogger("ray.data._internal.issue_detection.issue_detector_manager").isEnabledFor(logging.WARNING)
