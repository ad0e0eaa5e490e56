"""The bookkeeping every training loop shares (metalearn.train: Progress, Checkpoint), used by
train.py, continual/train.py, alphabets/train.py and rl/train.py: known windows' means, exact state round trips."""
from __future__ import annotations

import torch


def test_progress_reports_the_mean_of_each_window():
    """train.Progress, every loop's bookkeeping: with log_every 3 over 7 iterations whose loss is the
    iteration number, the history holds the windows' means 2 (1..3), 5 (4..6) and 7 (the short last
    window), each with its iteration and seconds; the same means go to the log line and the tracker."""
    from metalearn.train import Progress

    class Tracker:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, metrics))

    history, lines, tracker = [], [], Tracker()
    progress = Progress("bench/algo/seed0", 7, 3, history, lines.append, tracker, unit="meta-step", speed=False)
    for iteration in range(1, 8):
        progress.add(iteration, {"loss": float(iteration), "accuracy": 2.0 * iteration}, elapsed=0.5 * iteration)
    assert history == [{"iteration": 3, "seconds": 1.5, "loss": 2.0, "accuracy": 4.0},
                       {"iteration": 6, "seconds": 3.0, "loss": 5.0, "accuracy": 10.0},
                       {"iteration": 7, "seconds": 3.5, "loss": 7.0, "accuracy": 14.0}]
    assert lines == ["[bench/algo/seed0] meta-step 3/7 | loss 2.0000 | accuracy 4.0000",
                     "[bench/algo/seed0] meta-step 6/7 | loss 5.0000 | accuracy 10.0000",
                     "[bench/algo/seed0] meta-step 7/7 | loss 7.0000 | accuracy 14.0000"]
    assert tracker.calls == [(3, {"train_loss": 2.0, "train_accuracy": 4.0}),
                             (6, {"train_loss": 5.0, "train_accuracy": 10.0}),
                             (7, {"train_loss": 7.0, "train_accuracy": 14.0})]
    lines.clear()
    Progress("b", 2, 1, [], lines.append).add(1, {"loss": 1.0}, 0.0)  # the default line ends with the speed
    assert lines[0].startswith("[b] iter 1/2 | loss 1.0000 | ") and lines[0].endswith(" it/s")


def test_checkpoint_resumes_every_state_it_saved(tmp_path):
    """train.Checkpoint: what `save` wrote, `resume` restores -- the modules' parameters, the optimizer's
    moments, the loop's and torch's generators (the next draws equal those after the save) -- and
    returns the iteration, history and seconds; a checkpoint of another config hash, or none, starts
    afresh. Without an optimizer (TRPO) it saves {}."""
    from metalearn.train import Checkpoint

    def parts(seed):
        torch.manual_seed(seed)
        net, head = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
        optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=0.1)
        return net, head, optimizer, torch.Generator().manual_seed(seed)

    net, head, optimizer, generator = parts(0)
    head(net(torch.randn(4, 3))).sum().backward()
    optimizer.step()
    torch.rand(5, generator=generator)
    path = tmp_path / "checkpoint.pt"
    Checkpoint(path, "abc", {"seed": 0}, {"algorithm": net, "heads": head}, optimizer, generator).save(
        4, [{"iteration": 4}], 1.25)
    saved = torch.load(path, weights_only=True)
    assert list(saved) == ["config_hash", "config", "iteration", "algorithm", "heads", "optimizer", "generator",
                           "torch_rng", "history", "train_seconds", "cpu_seconds", "window"]
    assert saved["window"] is None and saved["cpu_seconds"] > 0
    expected_draws = torch.rand(3, generator=generator), torch.rand(3)

    net2, head2, optimizer2, generator2 = parts(1)
    messages = []
    resumed = Checkpoint(path, "abc", {}, {"algorithm": net2, "heads": head2}, optimizer2, generator2)
    assert resumed.resume(torch.device("cpu"), messages.append, "b/a/seed0") == (4, [{"iteration": 4}], 1.25)
    assert messages == ["resuming b/a/seed0 from iteration 4"]
    for a, b in ((net, net2), (head, head2)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    assert all(torch.equal(x, y["exp_avg"]) for x, y in zip(moments, optimizer2.state_dict()["state"].values()))
    draws = torch.rand(3, generator=generator2), torch.rand(3)
    assert all(torch.equal(x, y) for x, y in zip(draws, expected_draws))

    messages.clear()
    other = Checkpoint(path, "other", {}, {"algorithm": net2}, None, generator2)
    assert other.resume(torch.device("cpu"), messages.append, "x") == (0, [], 0.0)
    assert messages == [f"ignoring {path}: it belongs to other settings"]
    other.save(1, [], 0.0)
    assert torch.load(path, weights_only=True)["optimizer"] == {}
    assert Checkpoint(tmp_path / "none.pt", "abc", {}, {}, None, generator2).resume(
        torch.device("cpu"), messages.append, "x") == (0, [], 0.0) and len(messages) == 1
