"""The results table: one row per benchmark x setting x algorithm, seeds pooled.

``summary.csv`` columns: benchmark, algorithm, ways, shots, metric, mean, ci95, episodes,
train_seconds (mean over seeds), seeds. ``summary.md`` beside it holds the same table with the
papers' numbers for the same setting, and the paired comparisons of algorithms on the shared
episodes; with ``plots_dir`` the figures of `metalearn.report` are drawn too.
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


# The papers' headline numbers (test accuracy %, +- 95% CI; ../shared/design/ALGORITHMS.md), by
# (task family, ways, shots) and algorithm name in params.yaml. The papers use the full Omniglot
# (1623 characters) and 40k-60k meta-iterations: compare only runs of the `paper` profile to them.
PAPER_NUMBERS: dict[tuple[str, int, int], dict[str, str]] = {
    ("omniglot", 5, 1): {"maml": "98.7±0.4", "fomaml": "98.3±0.5", "imaml": "99.16±0.35 (GD), 99.50±0.26 (HF)",
                         "mtnet": "99.5"},
    ("omniglot", 5, 5): {"maml": "99.9±0.1", "fomaml": "99.2±0.2", "imaml": "99.67±0.12 (GD), 99.74±0.11 (HF)"},
    ("omniglot", 20, 1): {"maml": "95.8±0.3", "fomaml": "89.4±0.5", "imaml": "94.46±0.42 (GD), 96.18±0.36 (HF)",
                          "mtnet": "96.2"},
    ("omniglot", 20, 5): {"maml": "98.9±0.2", "fomaml": "97.9±0.1", "imaml": "98.69±0.1 (GD), 99.14±0.1 (HF)"},
    ("miniimagenet", 5, 1): {"maml": "48.70±1.84", "fomaml": "48.07±1.75", "imaml": "48.96±1.84 (GD)",
                             "mtnet": "51.70±1.84", "warpgrad": "52.3±0.8 (Warp-MAML)"},
    ("miniimagenet", 5, 5): {"maml": "63.11±0.92", "warpgrad": "68.4±0.6 (Warp-MAML)"},
}


def paper_number(row: dict) -> str:
    family = str(row["benchmark"]).split("-")[0]
    if row["ways"] == "" or row["metric"] != "accuracy":
        return ""
    return PAPER_NUMBERS.get((family, int(row["ways"]), int(row["shots"])), {}).get(row["algorithm"], "")


def paired(results: list[dict]) -> list[dict]:
    """Pairwise comparisons of the algorithms of each benchmark on the shared episodes.

    Per algorithm the per-episode values are averaged over seeds (every run saw the same episodes in
    the same order); for each pair (a, b) the differences a - b per episode give a mean and a 95% CI
    that account for how hard each episode is, unlike two separate intervals."""
    per_algo: dict[tuple[str, str], list[list[float]]] = {}
    metric: dict[str, str] = {}
    for r in results:
        per_algo.setdefault((r["benchmark"], r["algorithm"]), []).append(r["per_episode"])
        metric[r["benchmark"]] = r["metric"]
    means = {}
    for key, runs in per_algo.items():
        if len({len(run) for run in runs}) != 1:
            raise ValueError(f"{key[0]}/{key[1]}: runs were evaluated on different numbers of episodes")
        means[key] = [sum(values) / len(values) for values in zip(*runs)]
    pairs = []
    for bench in sorted(metric):
        names = sorted(a for b, a in means if b == bench)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                va, vb = means[(bench, a)], means[(bench, b)]
                if len(va) != len(vb):
                    raise ValueError(f"{bench}: {a} and {b} were evaluated on different episodes")
                diffs = [x - y for x, y in zip(va, vb)]
                mean, ci95 = mean_ci95(diffs)
                pairs.append({"benchmark": bench, "a": a, "b": b, "metric": metric[bench],
                              "mean": round(mean, 4), "ci95": round(ci95, 4), "episodes": len(diffs),
                              "a_better": sum((d > 0) if metric[bench] == "accuracy" else (d < 0) for d in diffs),
                              "ties": sum(d == 0 for d in diffs)})
    return pairs


def markdown(rows: list[dict], pairs: list[dict] | None = None) -> str:
    columns = COLUMNS + ["paper"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + f" | {paper_number(row)} |" for row in rows]
    lines += ["", "mean ± ci95: accuracy in %, regression as MSE; ci95 = 1.96·std/√episodes over all episodes "
              "of all seeds. `paper`: the papers' numbers for the same ways/shots (full Omniglot, 40k–60k "
              "meta-iterations: only the `paper` profile is comparable)."]
    if pairs:
        lines += ["", "## Paired comparisons on the shared test episodes", "",
                  "| benchmark | a | b | metric | mean(a − b) | ci95 | episodes | a better | ties |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['benchmark']} | {p['a']} | {p['b']} | {p['metric']} | {p['mean']} | {p['ci95']} | "
                  f"{p['episodes']} | {p['a_better']} | {p['ties']} |" for p in pairs]
    return "\n".join(lines) + "\n"


def _read_history(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def aggregate(inputs: list[Path], out_csv: Path, histories: list[Path] | None = None,
              plots_dir: Path | None = None) -> str:
    """Write the CSV and Markdown tables (and the figures with `plots_dir`); returns the Markdown.

    `histories`: the runs' history.json files (models/<benchmark>/<algorithm>/seed<s>/history.json,
    the folder names give benchmark and algorithm), for the meta-training curves."""
    results = [json.loads(p.read_text()) for p in inputs]
    rows = summarise(results)
    pairs = paired(results)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, pairs)
    out_csv.with_suffix(".md").write_text("# Results\n\n" + table)
    if plots_dir is not None:
        from metalearn import report

        curves: dict[tuple[str, str], list[list[dict]]] = {}
        for path in histories or []:
            # .../<benchmark>/<algorithm>/seed<s>/history.json
            bench, algorithm = path.parent.parent.parent.name, path.parent.parent.name
            curves.setdefault((bench, algorithm), []).append(_read_history(path))
        for bench in sorted({r["benchmark"] for r in rows}):
            report.plot_benchmark(bench, [r for r in rows if r["benchmark"] == bench],
                                  [p for p in pairs if p["benchmark"] == bench],
                                  {a: h for (b, a), h in curves.items() if b == bench}, plots_dir)
    return table
