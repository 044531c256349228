"""One row writer for every front end and format: JSON lines, CSV and Parquet (text lines come
from `Result.text_line`).

A row is `Result.to_dict()`. CSV and Parquet take their columns from `result.FIELDS`, in that
order, and share one cell format, so `infer --format csv` and `batch --output x.csv|.parquet`
write the same values: a list (warnings) joined with "; ", a dict (the guard's scores) as
"k=v" pairs without its nested parts (the DICOM tags), None as an empty cell (null in Parquet).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edge_pneumo import jsonout
from edge_pneumo.device.result import FAILED, FIELDS
from edge_pneumo.errors import MissingRuntimeError

NUMBER_FIELDS = ("probability", "raw_probability", "threshold", "ms")  # float columns in Parquet


def cell(value):
    """One CSV/Parquet cell: lists and dicts flattened to text, None kept."""
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict))
    return value


def cells(row: dict) -> dict:
    """A row's cells, one per FIELDS column, in order."""
    return {k: cell(row.get(k)) for k in FIELDS}


class RowWriter:
    """One result row per line: JSON lines, CSV (with a header) or text."""

    def __init__(self, fmt: str, stream):
        self.fmt, self.stream = fmt, stream
        if fmt == "csv":
            import csv  # only for CSV: one module less on every other start

            self.csv = csv.DictWriter(stream, fieldnames=list(FIELDS), lineterminator="\n")
            self.csv.writeheader()

    def write(self, result) -> None:
        """A Result, in this writer's format (text: failures go to stderr only, by the caller)."""
        if self.fmt == "text":
            if result.status != FAILED:
                self.stream.write(result.text_line() + "\n")
        else:
            self.write_row(result.to_dict())

    def write_row(self, row: dict) -> None:
        """A row (`Result.to_dict()`, or one read back from JSON lines), as JSON or CSV."""
        if self.fmt == "json":
            self.stream.write(jsonout.dumps(row) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow({k: ("" if v is None else v) for k, v in cells(row).items()})
        else:
            raise ValueError(f"rows as {self.fmt!r}: write a Result instead")


def write_csv(rows: Iterable[dict], dst: Path) -> None:
    """Rows to a CSV file, written beside it and renamed into place."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = RowWriter("csv", f)
        for row in rows:
            writer.write_row(row)
    os.replace(tmp, dst)


def write_parquet(rows: Iterable[dict], dst: Path, chunk: int = 5000) -> None:
    """Rows to a Parquet file (the CSV's cells, typed: numbers float64, the rest strings), in chunks."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingRuntimeError("Parquet output needs pyarrow: pip install 'edge-pneumo[cluster]'") from None
    schema = pa.schema([(k, pa.float64() if k in NUMBER_FIELDS else pa.string()) for k in FIELDS])
    tmp = dst.with_name(f".{dst.name}.tmp")
    writer = pq.ParquetWriter(str(tmp), schema)

    def flush(batch: list[dict]) -> None:
        columns = {k: [c[k] if c[k] is None or k in NUMBER_FIELDS else str(c[k]) for c in batch] for k in FIELDS}
        writer.write_table(pa.table(columns, schema=schema))

    batch: list[dict] = []
    try:
        for row in rows:
            batch.append(cells(row))
            if len(batch) >= chunk:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        writer.close()
    os.replace(tmp, dst)


def log_summary(r) -> str:
    """One result in a log line, the same in every long-running front end (serve, the DICOM node):
    content hash prefix, status, label, decision, probability; never a file name or patient data."""
    p = None if r.probability is None else round(r.probability, 4)
    return f"sha256={(r.content_sha256 or '')[:16]} status={r.status} label={r.label} decision={r.decision} p={p}"
