"""The results table: one row per benchmark x setting x algorithm, seeds pooled.

``summary.csv`` columns: benchmark, algorithm, ways, shots, metric, mean, ci95, episodes,
train_seconds (mean over seeds), seeds. ``summary.md`` beside it holds the same table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from metalearn.evaluate import mean_ci95

COLUMNS = ["benchmark", "algorithm", "ways", "shots", "metric", "mean", "ci95", "episodes",
           "train_seconds", "seeds"]


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["benchmark"], r["algorithm"], r["ways"], r["shots"], r["metric"]), []).append(r)
    rows = []
    for (bench, algo, ways, shots, metric), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        values = [v for r in runs for v in r["per_episode"]]
        mean, ci95 = mean_ci95(values)
        rows.append({"benchmark": bench, "algorithm": algo, "ways": "" if ways is None else ways,
                     "shots": shots, "metric": metric, "mean": round(mean, 4), "ci95": round(ci95, 4),
                     "episodes": len(values),
                     "train_seconds": round(sum(r["train_seconds"] for r in runs) / len(runs), 1),
                     "seeds": len(runs)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def aggregate(inputs: list[Path], out_csv: Path) -> str:
    rows = summarise([json.loads(p.read_text()) for p in inputs])
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows)
    out_csv.with_suffix(".md").write_text("# Results\n\n" + table)
    return table
