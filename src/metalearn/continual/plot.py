"""The continual-learning figure: forgetting curves (the report's `<benchmark>-continual.png`)."""
from __future__ import annotations

from pathlib import Path

import torch


def plot_forgetting(results: list[dict], title: str, path: Path) -> Path:
    """One panel per method: the test MSE on each sub-task against the steps taken, from the step its
    learning starts (seeds averaged); dotted lines mark the sub-task boundaries. A curve that rises
    after its sub-task ends is forgetting."""
    from metalearn.report import _save, plt

    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["algorithm"], []).append(r)
    methods = sorted(by_method, key=lambda m: (m != "sgd", m))
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(5 * max(len(methods), 1), 3.8),
                             squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        runs = by_method[method]
        info = runs[0]["continual"]
        T, per_step = info["subtasks"], info["steps_per_subtask"]
        mean = torch.tensor([r["continual"]["curve_mean"] for r in runs]).mean(0)  # [steps + 1, T]
        for t in range(T):
            xs = list(range(t * per_step, mean.shape[0]))
            ax.plot(xs, mean[t * per_step:, t].tolist(), color=f"C{t}", label=f"sub-task {t + 1}")
        for t in range(1, T):
            ax.axvline(t * per_step, color="grey", lw=0.8, ls=":")
        final = sum(r["mean"] for r in runs) / len(runs)
        ax.set(title=f"{method}: final mean MSE {final:.3g}", xlabel="steps (sub-tasks learned in order)",
               yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test MSE on the sub-task")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title}: loss on each sub-task as learning proceeds (forgetting curves)")
    return _save(fig, path)
