"""Spark's Hadoop FileSystem, reached through its JVM: one way to list, rename and write on any store.

Local paths, HDFS and object stores (``s3a://``, ``gs://``) all go through
the FileSystem the Spark session is configured with, so what rayscore sees
is what Spark reads and writes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HadoopFS"]


class HadoopFS:
    """The few Hadoop FileSystem calls rayscore needs, through Spark's JVM."""

    def __init__(self, spark: Any, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.root = jvm.org.apache.hadoop.fs.Path(path)
        self.fs = self.root.getFileSystem(self._conf)
        if str(self.fs.getUri().getScheme()) == "file":
            # No hidden .crc files beside ours. The session's local filesystem may be Hive's
            # ProxyLocalFileSystem (Hive support on), which is no LocalFileSystem to unwrap.
            self.fs = jvm.org.apache.hadoop.fs.RawLocalFileSystem()
            self.fs.initialize(jvm.java.net.URI.create("file:///"), self._conf)

    def path(self, p: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(p)

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.path(p)))

    def is_dir(self, p: str) -> bool:
        return bool(self.fs.getFileStatus(self.path(p)).isDirectory())

    def rename(self, src: str, dst: str) -> bool:
        return bool(self.fs.rename(self.path(src), self.path(dst)))

    def delete(self, p: str) -> None:
        self.fs.delete(self.path(p), True)

    def list_names(self, p: str) -> list[str]:
        if not self.exists(p):
            return []
        return [st.getPath().getName() for st in self.fs.listStatus(self.path(p))]

    def read_text(self, p: str) -> str:
        stream = self.fs.open(self.path(p))
        try:
            chunks = []
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            line = reader.readLine()
            while line is not None:
                chunks.append(line)
                line = reader.readLine()
            return "\n".join(chunks)
        finally:
            stream.close()

    def write_text(self, p: str, text: str) -> None:
        stream = self.fs.create(self.path(p), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def qualified(self, p: str) -> str:
        """``p`` as Hadoop spells it (``file:/x`` for ``file:///x``), the key of :meth:`statuses`."""
        return str(self.path(p))

    def statuses(self, folder: str) -> dict[str, tuple[int, int]]:
        """``folder``'s files: qualified path -> (bytes, modification time in ms); one listing call.

        A folder that is gone lists nothing.
        """
        if not self.exists(folder):
            return {}
        return {
            str(st.getPath()): (int(st.getLen()), int(st.getModificationTime()))
            for st in self.fs.listStatus(self.path(folder))
            if st.isFile()
        }
