"""The benchmarks of `make bench` (python -m bench): speed, memory, meta-RL, allocator."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(rows: list[dict], path: str | Path, fieldnames: list[str] | None = None) -> Path:
    """A benchmark's rows as a CSV table (columns: `fieldnames`, or the first row's keys)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out
