"""The speed harness (bench/speed.py) runs end to end and its implementations agree; the timings
themselves are the harness's output, not something a test can check (`make bench`)."""
from __future__ import annotations

import csv

import pytest
import torch

from bench import evaluation, speed


@pytest.mark.parametrize("benchmark", list(speed.SETTINGS))
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_ours_computes_the_plain_loops_meta_gradient(benchmark, algorithm):
    assert speed.check_same_gradients(benchmark, algorithm, ["ours", "plain", *speed.UNCHUNKED_IMPLS]) < 1e-9


@pytest.mark.parametrize("algorithm", list(speed.OTHER_ALGORITHMS))
def test_the_other_algorithms_timed_paths_compute_the_per_task_loops_meta_gradient(algorithm):
    """On the sinusoid (`make bench` checks both settings; tests/test_batched.py the Omniglot shape)."""
    assert speed.check_same_gradients("sinusoid-10shot", algorithm, ["ours", "loop"]) < 1e-9


@pytest.mark.parametrize("impl, pooled", [("serial", False), ("loop", True)])
def test_the_serial_loop_runs_its_tasks_in_order_in_this_thread_and_the_loop_in_the_pool(monkeypatch, impl, pooled):
    """`serial` is the plain per-task loop (a peer): no task may run in the pool; `loop` (the ablation)
    spreads them over it."""
    import threading

    monkeypatch.setenv("METALEARN_TASK_THREADS", "2")
    model, tasks, criterion = speed.make_problem("sinusoid-10shot", torch.device("cpu"))
    step = speed.make_step(impl, "metasgd", "sinusoid-10shot", model, tasks, criterion)
    seen = []
    task_meta_loss = step.algo.task_meta_loss
    monkeypatch.setattr(step.algo, "task_meta_loss",
                        lambda task: (seen.append((threading.current_thread().name, task.support[0][0, 0].item())),
                                      task_meta_loss(task))[1])
    step()
    assert len(seen) == len(tasks)
    assert any(name.startswith("metalearn-task") for name, _ in seen) == pooled
    if not pooled:
        assert [x for _, x in seen] == tasks.support_x[:, 0, 0].tolist()  # in order


@pytest.fixture
def two_threads():
    """The harness on 2 intra-op threads, whatever this test process has (conftest gives an xdist
    worker its share of the cores), so that the 1-thread control rows are timed on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_the_harness_writes_the_speed_table(tmp_path, capsys, two_threads):
    out = tmp_path / "speed.csv"
    speed.main(["--impls", "ours", "plain", "--benchmarks", "sinusoid-10shot", "--iterations", "1",
                "--repeats", "2", "--eval-episodes", "60", "--algorithms", "metasgd", "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["impl", "algorithm", "benchmark", "iters_per_s", "peak_mb", "threads",
                             "commit", "date", "machine"]  # every row says which code, when and where
    assert all(row["commit"] and row["date"] and "cores" in row["machine"] for row in rows)
    cores = "2"  # the harness process's threads (the fixture), given to every worker
    # the control rows: one thread each, where `loop` is `serial`
    assert sorted((r["impl"], r["algorithm"], r["benchmark"], r["threads"]) for r in rows) == sorted(
        [(impl, algorithm, "sinusoid-10shot", threads) for impl in ("ours", "plain", "serial")
         for algorithm in ("maml", "fomaml") for threads in (cores, "1")]
        + [("loop", algorithm, "sinusoid-10shot", cores) for algorithm in ("maml", "fomaml")]
        + [(impl, "metasgd", "sinusoid-10shot", cores) for impl in ("ours", "serial", "loop")]
        + [(impl, "maml-evaluation", "sinusoid-10shot-60-episodes", cores) for impl in ("ours", "serial", "loop")])
    assert all(float(r["iters_per_s"]) > 0 for r in rows)
    assert all(float(r["peak_mb"]) >= 0 for r in rows if r["algorithm"] != "maml-evaluation")
    printed = capsys.readouterr().out
    assert "x our concurrent loop" in printed and "serial one-episode loop" in printed
    # the concurrent loop is an ablation, not a peer: never the best peer
    assert "best peer (plain)" in printed or "best peer (serial)" in printed
    assert "best peer (loop)" not in printed


@pytest.mark.parametrize("benchmark", list(evaluation.BENCHMARKS))
def test_the_evaluation_benchmark_times_paths_that_agree(benchmark):
    """The three paths the evaluation rows compare give every episode the same metrics (float64)."""
    assert evaluation.check_same_metrics(benchmark, episodes=9) < 1e-9


def test_the_allocator_benchmark_compares_both_settings_in_separate_workers(tmp_path, capsys):
    from bench import allocator

    out = tmp_path / "allocator.csv"
    allocator.main(["--algorithms", "maml", "--benchmark", "sinusoid-10shot", "--threads", "1", "--iterations", "2",
                    "--repeats", "2", "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm"], r["threads"], r["malloc"]) for r in rows] == [("maml", "1", "default"), ("maml", "1", "tuned")]
    assert all(float(r["iters_per_s"]) > 0 and int(r["page_faults_per_iter"]) >= 0 for r in rows)
    assert "tuned" in capsys.readouterr().out


def test_the_step_profile_puts_all_of_the_steps_time_in_categories(tmp_path):
    from bench import step_profile

    assert step_profile.category("aten::convolution_backward") == "convolution"
    assert step_profile.category("aten::native_batch_norm_backward") == "batch norm"
    assert step_profile.category("aten::add") == "elementwise" and step_profile.category("aten::copy_") == "copies"
    out = tmp_path / "step_profile.csv"
    step_profile.main(["--steps", "1", "--threads", "1", "--algorithms", "fomaml", "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {r["category"] for r in rows} >= {"convolution", "elementwise"}
    assert abs(sum(float(r["share"]) for r in rows) - 1) < 0.01
    assert all(r["algorithm"] == "fomaml" and r["benchmark"] == "omniglot-5w1s" and r["commit"] for r in rows)


def test_the_ci_timer_reads_pytests_summary():
    from bench.test_time import summary

    log = "....\n3 failed, 677 passed, 3 skipped, 1 warning in 768.96s (0:12:48)\nmake: *** Error 1\n"
    assert summary(log) == {"tests_seconds": 768.96, "passed": 677, "failed": 3, "skipped": 0 + 3}
    assert summary("690 passed in 512.3s (0:08:32)") == {"tests_seconds": 512.3, "passed": 690, "failed": 0,
                                                          "skipped": 0}
    assert summary("pip: error") == {"tests_seconds": "", "passed": 0, "failed": 0, "skipped": 0}


def test_the_readmes_test_time_is_the_last_measurement_in_the_csv(tmp_path):
    from metalearn import pages

    columns = "seconds,tests_seconds,passed,failed,skipped,exit_code,cores,commit,date,machine\n"
    (tmp_path / "test_time.csv").write_text(
        columns + "900.0,780.0,600,0,3,0,2,aaa,2026-01-01,X (2 cores)\n"
        "650.4,530.0,700,0,3,0,2,bbb,2026-02-02,X (2 cores)\n640.2,520.5,700,0,3,0,2,bbb,2026-02-02,X (2 cores)\n"
        "300.0,200.0,10,5,0,2,2,bbb,2026-02-02,X (2 cores)\n")  # a failed run is no measurement of CI
    sentence = pages.test_time(tmp_path)
    assert "took 10.8 min and 10.7 min (the tests alone 8.8 min and 8.7 min; 700 passed)" in sentence
    assert "at bbb on 2026-02-02" in sentence and "15.0 min" not in sentence
    readme = f"a\n{pages.TEST_TIME_BEGIN}\nold\n{pages.TEST_TIME_END}\nb\n"
    assert pages.with_block(readme, pages.TEST_TIME_BEGIN, pages.TEST_TIME_END, sentence) == (
        f"a\n{pages.TEST_TIME_BEGIN}\n{sentence}{pages.TEST_TIME_END}\nb\n")
