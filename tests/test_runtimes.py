"""`metalearn runtimes`: the per-job table from Snakemake's benchmark files (metalearn.runtimes).
The end-to-end test (tests/test_workflow.py) checks the files a real run writes; here, known files."""
from __future__ import annotations

import csv

from metalearn.cli import main
from metalearn.runtimes import format_runtimes, read_runtimes

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_tsv(path, seconds, cpu, rss, repeats=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{seconds + i}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu + i}\n" for i in range(repeats))
    path.write_text(HEADER + lines)


def test_runtimes_table_reads_every_job_longest_first_with_totals(tmp_path, capsys):
    folder = tmp_path / "results" / "runtimes"
    write_tsv(folder / "train/omniglot-5w1s/maml/seed0.tsv", 600.5, 598.0, 900)
    write_tsv(folder / "train/sinusoid/maml/seed0.tsv", 20.0, 19.0, 300, repeats=2)  # the last line counts
    write_tsv(folder / "evaluate/sinusoid/maml/seed0.tsv", 3.0, 2.5, 250)
    write_tsv(folder / "study/mtnet.tsv", 100.0, 99.0, 400)
    (folder / "train/sinusoid/leap").mkdir(parents=True)
    (folder / "train/sinusoid/leap/seed0.tsv").write_text(HEADER)  # killed before it was measured: skipped

    rows = read_runtimes(folder)
    assert [(r["step"], r["benchmark"], r["algorithm"], r["seed"], r["seconds"], r["cpu_seconds"]) for r in rows] == [
        ("train", "omniglot-5w1s", "maml", "0", 600.5, 598.0),
        ("study", "", "mtnet", "", 100.0, 99.0),
        ("train", "sinusoid", "maml", "0", 21.0, 20.0),
        ("evaluate", "sinusoid", "maml", "0", 3.0, 2.5),
    ]
    text = format_runtimes(rows)
    assert "  train                     2     621.5     618.0" in text  # per step: jobs, seconds, CPU seconds
    assert "  sinusoid                  2      24.0      22.5" in text  # per benchmark
    assert "  all                       4     724.5     719.5" in text

    out = tmp_path / "runtimes.csv"
    assert main(["runtimes", "--dir", str(folder), "--out", str(out)]) == 0
    written = list(csv.DictReader(open(out)))
    assert [r["algorithm"] for r in written] == ["maml", "mtnet", "maml", "maml"]
    assert written[0]["max_rss_mb"] == "900.0" and "all" in capsys.readouterr().err


def test_runtimes_without_a_run_says_what_to_do(tmp_path, capsys):
    assert main(["runtimes", "--dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "make reproduce" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
