"""The figures of the results, one set per benchmark (PNG, matplotlib's Agg backend):

  <benchmark>-curves.png  meta-training curves (history.json of every run; mean over seeds)
  <benchmark>-scores.png  test score of each algorithm with its 95% confidence interval
  <benchmark>-paired.png  paired comparison on the shared episodes: mean per-episode difference
                          between two algorithms with its 95% CI (an interval excluding 0 is a
                          difference the episodes resolve)
and, for benchmarks evaluated after every number of test steps (`eval_curve`):
  <benchmark>-steps.png   test score against the number of gradient steps at test time, each
                          algorithm with its 95% CI band (MAML's Figure 2, right)
  <benchmark>-fits.png    sinusoids: a few test tasks, their support points and the functions the
                          algorithms fit after 0, 1 and all test steps (MAML's Figure 2, left)
and, for continual-learning benchmarks (metalearn.continual.plot, called by metalearn.aggregate):
  <benchmark>-continual.png  the loss on each sub-task as the sub-tasks are learned in order
                          (forgetting curves), one panel per method
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from metalearn.figures import KINDS, plot_kinds, plot_paths  # noqa: E402,F401 (file names: figures.py)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(histories: dict[str, list[list[dict]]], title: str, path: Path) -> Path:
    """`histories`: algorithm -> one history (list of logged records) per seed."""
    keys = sorted({k for runs in histories.values() for run in runs for record in run for k in record}
                  - {"iteration", "seconds"})
    keys = keys or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for algorithm, runs in sorted(histories.items()):
            # Seeds log at the same iterations: average them point by point.
            by_iteration: dict[int, list[float]] = {}
            for run in runs:
                for record in run:
                    if key in record:
                        by_iteration.setdefault(record["iteration"], []).append(record[key])
            if by_iteration:
                xs = sorted(by_iteration)
                ax.plot(xs, [sum(by_iteration[x]) / len(by_iteration[x]) for x in xs], label=algorithm)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(f"meta-training {key}")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_scores(rows: list[dict], title: str, path: Path) -> Path:
    """`rows`: summary rows of one benchmark (algorithm, mean, ci95, metric)."""
    fig, ax = plt.subplots(figsize=(1.2 * max(len(rows), 2) + 2, 3.4))
    names = [r["algorithm"] for r in rows]
    ax.errorbar(range(len(rows)), [r["mean"] for r in rows], yerr=[r["ci95"] for r in rows],
                fmt="o", capsize=6)
    ax.set_xticks(range(len(rows)), names)
    metric = rows[0]["metric"] if rows else ""
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else f"test {metric}")
    ax.set_title(f"{title}: mean and 95% CI")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_paired(pairs: list[dict], title: str, path: Path) -> Path:
    """`pairs`: paired comparisons of one benchmark (a, b, mean, ci95, metric), see aggregate.paired."""
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.5 * max(len(pairs), 1)))
    if not pairs:
        ax.text(0.5, 0.5, "only one algorithm: nothing to compare", ha="center", va="center")
        ax.set_axis_off()
    else:
        ys = list(range(len(pairs)))
        ax.errorbar([p["mean"] for p in pairs], ys, xerr=[p["ci95"] for p in pairs], fmt="o", capsize=5)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(ys, [f"{p['a']} - {p['b']}" for p in pairs])
        unit = "accuracy points" if pairs[0]["metric"] == "accuracy" else pairs[0]["metric"]
        ax.set_xlabel(f"mean per-episode difference ({unit}), 95% CI")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{title}: paired on the same episodes")
    return _save(fig, path)


def plot_steps(results: list[dict], title: str, path: Path) -> Path:
    """Test score against the number of test steps, per algorithm (seeds pooled), with 95% CI bands."""
    from metalearn.stats import mean_ci95

    fig, ax = plt.subplots(figsize=(6, 4))
    by_algorithm: dict[str, list[dict]] = {}
    for r in results:
        by_algorithm.setdefault(r["algorithm"], []).append(r)
    for algorithm, runs in sorted(by_algorithm.items()):
        steps = min(len(r["per_episode_curve"]) for r in runs)
        points = [mean_ci95([v for r in runs for v in r["per_episode_curve"][s]]) for s in range(steps)]
        means = [m for m, _ in points]
        ax.plot(range(steps), means, marker="o", ms=3, label=algorithm)
        ax.fill_between(range(steps), [m - c for m, c in points], [m + c for m, c in points], alpha=0.2)
    metric = results[0]["metric"] if results else ""
    ax.set(xlabel="number of gradient steps at test time", title=f"{title}: test {metric} vs steps (95% CI)",
           ylabel="test accuracy (%)" if metric == "accuracy" else f"test {metric}")
    if metric == "mse":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_fits(results: list[dict], title: str, path: Path) -> Path:
    """Rows: test tasks; columns: algorithms. The true sinusoid, the support points and the fitted
    function after 0, 1 and all test steps (the first seed's run of each algorithm)."""
    runs = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        if "examples" in r:
            runs.setdefault(r["algorithm"], r)
    algorithms = sorted(runs)
    count = min((len(r["examples"]["tasks"]) for r in runs.values()), default=0)
    fig, axes = plt.subplots(max(count, 1), max(len(algorithms), 1), squeeze=False,
                             figsize=(3.3 * max(len(algorithms), 1), 2.4 * max(count, 1)), sharex=True)
    for column, algorithm in enumerate(algorithms):
        x = runs[algorithm]["examples"]["x"]
        for row in range(count):
            ax, task = axes[row][column], runs[algorithm]["examples"]["tasks"][row]
            ax.plot(x, task["truth"], color="black", lw=1.2, label="true function")
            for number, (steps, prediction) in enumerate(sorted(task["predictions"].items(), key=lambda kv: int(kv[0]))):
                ax.plot(x, prediction, lw=1, ls=("--", "-.", "-")[min(number, 2)], label=f"after {steps} steps")
            ax.plot(task["support_x"], task["support_y"], "^", color="tab:red", ms=5, label="support points")
            if row == 0:
                ax.set_title(algorithm)
            ax.grid(alpha=0.3)
    if algorithms and count:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: fitted test tasks")
    return _save(fig, path)


def plot_benchmark(benchmark: str, rows: list[dict], pairs: list[dict],
                   histories: dict[str, list[list[dict]]], folder: Path,
                   results: list[dict] | None = None) -> list[Path]:
    curves, scores, paired = plot_paths(folder, benchmark)
    written = [plot_curves(histories, benchmark, curves), plot_scores(rows, benchmark, scores),
               plot_paired(pairs, benchmark, paired)]
    results = results or []
    if results and all("per_episode_curve" in r for r in results):
        written.append(plot_steps(results, benchmark, Path(folder) / f"{benchmark}-steps.png"))
        if any("examples" in r for r in results):
            written.append(plot_fits(results, benchmark, Path(folder) / f"{benchmark}-fits.png"))
    return written
