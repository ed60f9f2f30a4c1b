"""What the sink counts before it commits, and where it stages, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rayscore._config import OutputConfig
from rayscore._sink import count_written, staging_path


def test_local_parquet_is_counted_from_the_footers_of_the_files_spark_reads(tmp_path: Path) -> None:
    out = tmp_path / "staging"
    (out / "day=1").mkdir(parents=True)
    (out / "_temporary").mkdir()
    pq.write_table(pa.table({"id": list(range(7))}), out / "part-0.parquet")
    pq.write_table(pa.table({"id": list(range(5))}), out / "day=1" / "part-1.parquet")
    pq.write_table(pa.table({"id": list(range(100))}), out / "_temporary" / "part-9.parquet")  # skipped, as Spark does
    pq.write_table(pa.table({"id": list(range(100))}), out / ".part-0.parquet.crc")  # hidden: skipped
    (out / "_SUCCESS").write_text("")
    cfg = OutputConfig(path=str(tmp_path / "scores"), format="parquet")
    assert count_written(None, cfg, str(out)) == 12
    assert count_written(None, cfg, f"file://{out}") == 12


def test_a_bare_relative_output_gets_a_staging_directory_beside_it_not_at_the_root() -> None:
    assert staging_path("scores.parquet").startswith(".scores.parquet.rayscore-staging-")
    assert staging_path("/data/out/scores/").startswith("/data/out/.scores.rayscore-staging-")
