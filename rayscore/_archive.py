"""A ``.keras`` archive's weights member, read in place: Keras stores it uncompressed, so it is a byte range."""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

__all__ = ["WEIGHTS_MEMBER", "ArchiveMember", "member_range"]

WEIGHTS_MEMBER = "model.weights.h5"


class ArchiveMember(io.RawIOBase):
    """An uncompressed zip member, read in place (h5py opens any seekable file object)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:want]], self._offset + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def member_range(path: str, name: str) -> tuple[int, int] | None:
    """(offset, size) of an uncompressed member's bytes in the archive, else None."""
    with zipfile.ZipFile(path) as archive:
        if name not in archive.namelist():
            return None
        info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)  # the local file header: its name and extra field lengths vary
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size
