"""Paper vs ours: every published number (paper_numbers.yaml) beside our result for the same
benchmark (or one whose settings say it `reproduces` it, e.g. under another code's protocol),
algorithm and number of test steps, with a verdict.

Verdicts, in this order:
  not comparable      the run's settings differ from what the paper's number assumes (`requires`,
                      e.g. omniglot-small instead of the full Omniglot)
  within the paper's CI   |ours - paper| <= the paper's 95% CI half-width; when the paper gives no CI:
                      the paper's number lies within our 95% CI
  budget-limited      outside, and we trained for less than half the paper's meta-iterations
  below / above       outside at (at least half) the paper's budget; for MSE below is better, for
                      accuracy and return above is better (said in the verdict)
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

from metalearn.config import read_yaml
from metalearn.stats import mean_ci95

NUMBERS_PATH = Path(__file__).with_name("paper_numbers.yaml")
CAUSES_PATH = Path(__file__).with_name("causes.yaml")
COLUMNS = ["benchmark", "algorithm", "metric", "steps", "paper_mean", "paper_ci95", "source", "ours_mean",
           "ours_ci95", "episodes", "iterations_ratio", "verdict", "text_steps", "ours_text_steps_mean",
           "ours_text_steps_ci95", "cause"]


@functools.lru_cache(maxsize=4)
def paper_numbers(path: Path = NUMBERS_PATH) -> list[dict]:
    return read_yaml(path, what="the papers' numbers") or []


@functools.lru_cache(maxsize=4)
def causes(path: Path = CAUSES_PATH) -> list[dict]:
    """The measured causes of gaps (causes.yaml): benchmark, algorithm, steps (absent: every step), cause, note."""
    return read_yaml(path, what="the measured causes of gaps") or []


def cause_of(bench_name: str, paper: dict, steps: int) -> str:
    """The measured cause written beside a verdict outside the paper's interval ('' where none is known)."""
    for entry in causes():
        if (entry["benchmark"] in (bench_name, paper["benchmark"]) and entry["algorithm"] == paper["algorithm"]
                and ("steps" not in entry or steps in entry["steps"])):
            return f"{entry['cause']} ({entry['note']})"
    return ""


@functools.lru_cache(maxsize=1)
def _text_steps() -> dict[tuple[str, str], int]:
    """(benchmark, algorithm) -> the test steps the paper's text states where the official code, which the
    paper profile follows, uses others (protocols.yaml: test_inner_steps entries with a `paper` value)."""
    from metalearn import protocols

    return {(bench, algorithm): entry["paper"]["value"] for entry in protocols.entries(protocols.load())
            if entry["key"] == "test_inner_steps" and "paper" in entry
            for bench in entry.get("benchmarks") or [] for algorithm in entry.get("algorithms") or []}


def our_score(runs: list[dict], steps: int | None) -> tuple[float, float, int, int] | None:
    """Mean, 95% CI, episodes and test steps of one benchmark x algorithm, seeds pooled, after `steps`
    test steps (None: the runs' own test steps). None when the runs have no score at that step count."""
    values: list[float] = []
    for run in runs:
        if steps is None or steps == run["inner_steps"]:
            values += run["per_episode"]
        elif "per_episode_curve" in run and steps < len(run["per_episode_curve"]):
            values += run["per_episode_curve"][steps]
        else:
            return None
    mean, ci95 = mean_ci95(values)
    return mean, ci95, len(values), runs[0]["inner_steps"] if steps is None else steps


def verdict(paper: dict, mean: float, ci95: float, ratio: float | None, mismatch: list[str]) -> str:
    if mismatch:
        return "not comparable: " + "; ".join(mismatch)
    lower_is_better = paper["metric"] == "mse"
    if paper.get("ci95") is not None:
        if abs(mean - paper["mean"]) <= paper["ci95"]:
            return "within the paper's CI"
    elif abs(mean - paper["mean"]) <= ci95:
        return "within our CI (the paper gives none)"
    side = "below" if mean < paper["mean"] else "above"
    better = (side == "below") == lower_is_better
    word = f"{side} ({'better' if better else 'worse'})"
    if ratio is not None and ratio < 0.5:
        return f"budget-limited ({100 * ratio:.0f}% of the paper's meta-iterations), {word}"
    return word


def paper_rows(results: list[dict], settings: dict[str, dict] | None = None,
               numbers: list[dict] | None = None) -> list[dict]:
    """One row per published number and each of our benchmarks for it that has results of its algorithm:
    the benchmark of the same name, and any whose settings say it `reproduces` that one (e.g.
    omniglot-5w1s-imaml, the iMAML code's protocol of omniglot-5w1s); the row names ours. `settings`: each
    benchmark's params.yaml settings, to check a number's `requires` and to read `reproduces`."""
    numbers = paper_numbers() if numbers is None else numbers
    settings = settings or {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["benchmark"], r["algorithm"]), []).append(r)
    rows = []
    for paper in numbers:
        ours = sorted({name for name, algorithm in groups if algorithm == paper["algorithm"] and paper["benchmark"]
                       in (name, settings.get(name, {}).get("reproduces"))})
        for bench_name in ours:
            runs = groups[(bench_name, paper["algorithm"])]
            if runs[0]["metric"] != paper["metric"]:
                continue
            score = our_score(runs, paper.get("steps"))
            if score is None:
                continue
            mean, ci95, episodes, steps = score
            text = _text_steps().get((paper["benchmark"], paper["algorithm"])) if "steps" not in paper else None
            at_text = our_score(runs, text) if text is not None and text != steps else None
            iterations = [r.get("iterations") for r in runs]
            ratio = (sum(iterations) / len(iterations) / paper["iterations"]
                     if paper.get("iterations") and all(iterations) else None)
            bench = settings.get(bench_name, {})
            mismatch = [f"{key} {bench.get(key)!r}, the paper's {value!r}"  # a list: any of its values
                        for key, value in (paper.get("requires") or {}).items()
                        if bench.get(key) not in (value if isinstance(value, list) else [value])]
            found = verdict(paper, mean, ci95, ratio, mismatch)
            outside = not found.startswith(("within", "not comparable", "budget-limited"))
            rows.append({"benchmark": bench_name, "algorithm": paper["algorithm"], "metric": paper["metric"],
                         "steps": steps, "paper_mean": paper["mean"],
                         "paper_ci95": "" if paper.get("ci95") is None else paper["ci95"], "source": paper["source"],
                         "ours_mean": round(mean, 4), "ours_ci95": round(ci95, 4), "episodes": episodes,
                         "iterations_ratio": "" if ratio is None else round(ratio, 3),
                         "verdict": found,
                         "text_steps": text if at_text else "",
                         "ours_text_steps_mean": round(at_text[0], 4) if at_text else "",
                         "ours_text_steps_ci95": round(at_text[1], 4) if at_text else "",
                         "cause": cause_of(bench_name, paper, steps) if outside else ""})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["# Paper vs ours", "",
             "Every published number (src/metalearn/paper_numbers.yaml, with its source) for which this run "
             "has a result: same benchmark protocol, algorithm and test steps. Accuracy in %, regression as "
             "MSE; ± is the 95% CI (ours: 1.96·std/√episodes over the saved test episodes, seeds pooled). "
             "`iterations`: our meta-iterations ÷ the paper's. `steps` follow the official code; where the "
             "paper's text states other test steps, ours after those is the last column (the verdict is the "
             "code's). Beside a verdict outside the paper's interval: its cause where a measurement found one "
             "(src/metalearn/causes.yaml, with the note that measured it).", "",
             "| benchmark | algorithm | steps | paper | source | ours | iterations | verdict | ours at the text's steps | "
             "measured cause |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"{r['paper_mean']}" + (f" ± {r['paper_ci95']}" if r["paper_ci95"] != "" else "")
        text = (f"{r['ours_text_steps_mean']:.4g} ± {r['ours_text_steps_ci95']:.2g} ({r['text_steps']} steps)"
                if r.get("text_steps", "") != "" else "")
        lines.append(f"| {r['benchmark']} | {r['algorithm']} | {r['steps']} | {paper} | {r['source']} | "
                     f"{r['ours_mean']:.4g} ± {r['ours_ci95']:.2g} | {r['iterations_ratio']} | {r['verdict']} | "
                     f"{text} | {r.get('cause', '')} |")
    if not rows:
        lines.append("| (no result of this run has a published number) | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out_md: Path) -> None:
    """results/paper.md and, beside it, paper.csv (the HTML report's table)."""
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(markdown(rows))
    with open(out_md.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
