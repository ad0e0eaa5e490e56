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

from metalearn import paper
from metalearn.errors import BadFile, BadInput
from metalearn.stats import mean_ci95

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


def paper_number(row: dict) -> str:
    """The papers' number for a summary row's benchmark and algorithm at its own test steps
    (src/metalearn/paper_numbers.yaml; results/paper.md has them all, with sources and verdicts)."""
    for number in paper.paper_numbers():
        if ((number["benchmark"], number["algorithm"], number["metric"]) == (row["benchmark"], row["algorithm"], row["metric"])
                and number.get("steps") is None):
            return f"{number['mean']:g}" + ("" if number.get("ci95") is None else f"±{number['ci95']:g}")
    return ""


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
                              "a_better": sum((d > 0) if metric[bench] in ("accuracy", "return") else (d < 0) for d in diffs),
                              "ties": sum(d == 0 for d in diffs)})
    return pairs


def markdown(rows: list[dict], pairs: list[dict] | None = None) -> str:
    columns = COLUMNS + ["paper"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + f" | {paper_number(row)} |" for row in rows]
    lines += ["", "mean ± ci95: accuracy in %, regression as MSE; ci95 = 1.96·std/√episodes over all episodes "
              "of all seeds. `paper`: the papers' number for the same benchmark protocol (results/paper.md: "
              "all of them, with sources, test steps and verdicts; the papers use the full Omniglot and "
              "40k–70k meta-iterations: only the `paper` and `regression` profiles are comparable)."]
    if pairs:
        lines += ["", "## Paired comparisons on the shared test episodes", "",
                  "| benchmark | a | b | metric | mean(a − b) | ci95 | episodes | a better | ties |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['benchmark']} | {p['a']} | {p['b']} | {p['metric']} | {p['mean']} | {p['ci95']} | "
                  f"{p['episodes']} | {p['a_better']} | {p['ties']} |" for p in pairs]
    return "\n".join(lines) + "\n"


# An evaluation file's fields (metalearn.evaluate) and their types.
RESULT_FIELDS = {"benchmark": str, "algorithm": str, "seed": int, "split": str, "shots": int, "metric": str,
                 "episodes": int, "inner_steps": int, "train_seconds": (int, float), "per_episode": list}
# What runs pooled into one row (one benchmark and algorithm) must share; across the algorithms of a
# benchmark (paired comparisons) the same minus inner_steps, which is each algorithm's own.
RUN_SETTINGS = ("split", "ways", "shots", "metric", "episodes", "inner_steps")


def _read_json(path: Path, what: str, redo: str):
    if not path.is_file():
        raise BadFile(f"{path}: no such {what}" + ("" if not path.exists() else " (a folder)") + f"; {redo}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadFile(f"{path}: not a readable {what} (truncated, or another kind of file: "
                      f"{type(exc).__name__}); {redo}") from None


def read_evaluation(path: Path) -> dict:
    """An evaluation file (`metalearn evaluate --out`), checked; problems are BadFile naming it."""
    redo = "evaluate the model again (`metalearn evaluate`) or leave the file out"
    result = _read_json(Path(path), "evaluation file", redo)
    if not isinstance(result, dict):
        raise BadFile(f"{path}: not an evaluation file (it holds a {type(result).__name__}); {redo}")
    wrong = [key for key, kind in RESULT_FIELDS.items()
             if not isinstance(result.get(key), kind) or isinstance(result.get(key), bool)]
    if not wrong:
        values = result["per_episode"]
        if result["metric"] not in ("accuracy", "mse", "return"):
            wrong.append("metric")
        if not (result.get("ways") is None or type(result.get("ways")) is int):
            wrong.append("ways")
        if not values or len(values) != result["episodes"] or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            wrong.append("per_episode")
    if wrong:
        raise BadFile(f"{path}: not an evaluation file of metalearn (missing or wrong: {', '.join(wrong)}); {redo}")
    return result


def check_runs(results: list[dict], paths: list[Path]) -> None:
    """Refuse what would pool wrongly: the same run twice (a second 'seed' narrows the interval),
    and runs of one benchmark evaluated under different settings."""
    seen: dict[tuple, Path] = {}
    for result, path in zip(results, paths):
        run = (result["benchmark"], result["algorithm"], result["seed"])
        if run in seen:
            same = " (the same file twice)" if Path(seen[run]).resolve() == Path(path).resolve() else ""
            raise BadInput(f"{seen[run]} and {path}: both are {run[0]}/{run[1]}/seed{run[2]}{same}; "
                           "give each run's evaluation once")
        seen[run] = path
    first: dict[tuple, tuple[dict, Path]] = {}
    for result, path in zip(results, paths):
        for group, keys in (((result["benchmark"], result["algorithm"]), RUN_SETTINGS),
                            ((result["benchmark"],), RUN_SETTINGS[:-1])):
            other, other_path = first.setdefault(group, (result, path))
            differ = [f"{k} {other.get(k)!r} vs {result.get(k)!r}" for k in keys if other.get(k) != result.get(k)]
            if differ:
                raise BadInput(f"{other_path} and {path}: runs of {'/'.join(group)} evaluated with different "
                               f"settings ({'; '.join(differ)}); evaluate them alike, or aggregate them separately")


def _read_history(path: Path) -> list[dict]:
    history = _read_json(Path(path), "training history", "train the run again or leave the file out")
    if not (isinstance(history, list) and all(isinstance(h, dict) and isinstance(h.get("iteration"), int)
                                              for h in history)):
        raise BadFile(f"{path}: not a training history (history.json of `metalearn train`); leave it out")
    return history


def aggregate(inputs: list[Path], out_csv: Path, histories: list[Path] | None = None,
              plots_dir: Path | None = None, settings: dict[str, dict] | None = None) -> str:
    """Write the CSV and Markdown tables, paper.md/paper.csv (paper vs ours; `settings`: params.yaml's
    benchmarks, which the papers' numbers are checked against) and, with `plots_dir`, the figures;
    returns the Markdown.

    `histories`: the runs' history.json files (models/<benchmark>/<algorithm>/seed<s>/history.json,
    the folder names give benchmark and algorithm), for the meta-training curves."""
    results = [read_evaluation(p) for p in inputs]
    check_runs(results, inputs)
    curves: dict[tuple[str, str], list[list[dict]]] = {}
    for path in (histories or []) if plots_dir is not None else []:  # read (and checked) before writing
        # .../<benchmark>/<algorithm>/seed<s>/history.json
        bench, algorithm = path.parent.parent.parent.name, path.parent.parent.name
        curves.setdefault((bench, algorithm), []).append(_read_history(path))
    rows = summarise(results)
    pairs = paired(results)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, pairs)
    out_csv.with_suffix(".md").write_text("# Results\n\n" + table)
    # Paper vs ours (metalearn.paper): results/paper.md and paper.csv beside the summary
    paper.write(paper.paper_rows(results, settings), out_csv.with_name("paper.md"))
    if plots_dir is not None:
        from metalearn import report

        for bench in sorted({r["benchmark"] for r in rows}):
            bench_results = [r for r in results if r["benchmark"] == bench]
            report.plot_benchmark(bench, [r for r in rows if r["benchmark"] == bench],
                                  [p for p in pairs if p["benchmark"] == bench],
                                  {a: h for (b, a), h in curves.items() if b == bench}, plots_dir,
                                  bench_results)
            if all("continual" in r for r in bench_results):  # continual learning: forgetting curves
                from metalearn.continual.plot import plot_forgetting  # it draws with report's helpers

                plot_forgetting(bench_results, bench, report.plot_paths(plots_dir, bench, ("continual",))[0])
    return table
