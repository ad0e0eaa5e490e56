"""Per-job runtimes of a pipeline run, from Snakemake's `benchmark:` files (workflow/pipeline.py
`runtime_file`): results/runtimes/<step>/<benchmark>/<algorithm>/seed<S>.tsv for trainings and
evaluations, results/runtimes/study/<name>.tsv for studies. Each holds Snakemake's measurement of the
job's process tree: `s` (wall-clock seconds), `cpu_time` (CPU seconds) and `max_rss` (peak MB). The
last two are sampled (psutil, every second for the first 30 s of a job, then every 30 s), so they can
miss up to the last 30 s of a job: `seconds` is the exact one.

`metalearn runtimes` (run by `make reproduce` after the pipeline) writes them as one CSV, the longest
job first, and prints that table with the totals per step and per benchmark: what a run cost, and where.
Jobs whose outputs came from elsewhere (`make pull`) were not run here and have no file, so no row.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

COLUMNS = ["step", "benchmark", "algorithm", "seed", "seconds", "cpu_seconds", "max_rss_mb"]


def read_runtimes(folder: Path) -> list[dict]:
    """One row per `benchmark:` file below `folder` (the last line: Snakemake appends one per repeat)."""
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        parts = path.relative_to(folder).with_suffix("").parts
        with open(path, newline="") as f:
            measured = list(csv.DictReader(f, delimiter="\t"))
        if not measured:
            continue  # a job killed before Snakemake wrote its measurement
        last = measured[-1]
        step, names = parts[0], list(parts[1:])
        if step == "study":  # study/<name>
            benchmark, algorithm, seed = "", names[0], ""
        else:  # <step>/<benchmark>/<algorithm>/seed<S>
            benchmark, algorithm, seed = names[0], names[1], names[2].removeprefix("seed")
        rows.append({"step": step, "benchmark": benchmark, "algorithm": algorithm, "seed": seed,
                     "seconds": float(last["s"]), "cpu_seconds": float(last["cpu_time"]),
                     "max_rss_mb": float(last["max_rss"])})
    return sorted(rows, key=lambda r: -r["seconds"])


def write_runtimes(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**r, "seconds": round(r["seconds"], 1), "cpu_seconds": round(r["cpu_seconds"], 1),
                          "max_rss_mb": round(r["max_rss_mb"], 1)} for r in rows)


def format_runtimes(rows: list[dict]) -> str:
    """The jobs (longest first), then the wall-clock and CPU totals per step and per benchmark."""
    lines = [f"{'step':<9} {'benchmark':<22} {'algorithm':<12} {'seed':>4} {'seconds':>9} {'cpu s':>9} {'peak MB':>8}"]
    for r in rows:
        lines.append(f"{r['step']:<9} {r['benchmark']:<22} {r['algorithm']:<12} {r['seed']:>4} "
                     f"{r['seconds']:>9.1f} {r['cpu_seconds']:>9.1f} {r['max_rss_mb']:>8.0f}")
    for key in ("step", "benchmark"):
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for r in rows:
            total = totals[r[key] or "(studies)"]
            total[0] += r["seconds"]
            total[1] += r["cpu_seconds"]
            total[2] += 1
        lines.append("")
        lines.append(f"per {key}: jobs, summed job seconds, summed CPU seconds")
        for name, (seconds, cpu, jobs) in sorted(totals.items(), key=lambda item: -item[1][0]):
            lines.append(f"  {name:<22} {jobs:>4} {seconds:>9.1f} {cpu:>9.1f}")
    lines.append(f"  {'all':<22} {len(rows):>4} {sum(r['seconds'] for r in rows):>9.1f} "
                 f"{sum(r['cpu_seconds'] for r in rows):>9.1f}")
    return "\n".join(lines)
