"""The benchmarks of `make bench` (python -m bench): speed, memory, meta-RL, allocator."""
from __future__ import annotations

import csv
from pathlib import Path

from metalearn.provenance import stamp

# Every row says which code, when and where it was measured (docs/results/bench.md shows them).
PROVENANCE_COLUMNS = ["commit", "date", "machine"]


def write_csv(rows: list[dict], path: str | Path, fieldnames: list[str] | None = None) -> Path:
    """A benchmark's rows as a CSV table (columns: `fieldnames`, or the first row's keys), each with
    the commit, date and machine of the measurement."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = stamp()
    columns = [c for c in (fieldnames or list(rows[0])) if c not in PROVENANCE_COLUMNS] + PROVENANCE_COLUMNS
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**row, **measured} for row in rows)
    return out
