"""The benchmarks of `make bench` (python -m bench): speed, memory, meta-RL, allocator."""
from __future__ import annotations

import csv
import datetime
import os
from pathlib import Path

# Every row says which code, when and where it was measured (docs/results/bench.md shows them).
PROVENANCE_COLUMNS = ["commit", "date", "machine"]


def provenance_columns() -> dict:
    from metalearn import provenance

    version = provenance.code_version()
    commit = (version["commit"] or "unknown")[:12] + ("-dirty" if version["dirty"] else "")
    return {"commit": commit, "date": datetime.date.today().isoformat(),
            "machine": f"{provenance.cpu_model()} ({os.cpu_count()} cores)"}


def write_csv(rows: list[dict], path: str | Path, fieldnames: list[str] | None = None) -> Path:
    """A benchmark's rows as a CSV table (columns: `fieldnames`, or the first row's keys), each with
    the commit, date and machine of the measurement."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = provenance_columns()
    columns = [c for c in (fieldnames or list(rows[0])) if c not in PROVENANCE_COLUMNS] + PROVENANCE_COLUMNS
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**row, **stamp} for row in rows)
    return out
