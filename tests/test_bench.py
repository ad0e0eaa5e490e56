"""The speed harness (bench/speed.py) runs end to end and its implementations agree; the timings
themselves are the harness's output, not something a test can check (`make bench`)."""
from __future__ import annotations

import csv

import pytest

from bench import speed


@pytest.mark.parametrize("benchmark", list(speed.SETTINGS))
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_ours_computes_the_plain_loops_meta_gradient(benchmark, algorithm):
    assert speed.check_same_gradients(benchmark, algorithm, ["ours", "plain"]) < 1e-9


def test_the_harness_writes_the_speed_table(tmp_path, capsys):
    out = tmp_path / "speed.csv"
    speed.main(["--impls", "ours", "plain", "--benchmarks", "sinusoid-10shot", "--iterations", "1",
                "--repeats", "2", "--out", str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["impl", "algorithm", "benchmark", "iters_per_s", "peak_mb"]
    assert {(r["impl"], r["algorithm"], r["benchmark"]) for r in rows} == {
        (impl, algorithm, benchmark) for impl in ("ours", "plain") for algorithm in ("maml", "fomaml")
        for benchmark in ["sinusoid-10shot"]}
    assert all(float(r["iters_per_s"]) > 0 and float(r["peak_mb"]) >= 0 for r in rows)
    assert "x best peer (plain)" in capsys.readouterr().out
