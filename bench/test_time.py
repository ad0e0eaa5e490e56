"""How long CI takes: `bash .ci/run` (install + `make test`) in fresh clones, timed.

    python -m bench.test_time [--runs 2] [--source .] [--shared ../shared]

Each run clones the repository's committed HEAD into a new temporary folder beside a link to the
shared folder (the Omniglot mirror, as CI has it), runs `bash .ci/run` there, and records the wall
time of the whole (install included), pytest's own time and its counts. Meant for a machine with
nothing else running (the measurement says nothing otherwise). Not part of `make bench` (it takes as
long as CI, every run). Appends to bench/results/test_time.csv: seconds, tests_seconds, passed, failed,
skipped, exit_code, cores (with the commit, date and machine of every bench CSV).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import PROVENANCE_COLUMNS
from metalearn.provenance import stamp

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["seconds", "tests_seconds", "passed", "failed", "skipped", "exit_code", "cores"]


def summary(log: str) -> dict:
    """pytest's last summary line: its counts and seconds ('677 passed, 3 skipped, ... in 768.96s')."""
    lines = [line for line in log.splitlines() if re.search(r" in [\d.]+s", line) and ("passed" in line or "failed" in line)]
    if not lines:
        return {"tests_seconds": "", "passed": 0, "failed": 0, "skipped": 0}
    line = lines[-1]
    count = {key: int(m.group(1)) if (m := re.search(rf"(\d+) {key}", line)) else 0
             for key in ("passed", "failed", "skipped")}
    return {"tests_seconds": float(re.search(r" in ([\d.]+)s", line).group(1)), **count}


def one_run(source: Path, shared: Path, log_path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="metalearn-ci-") as tmp:
        os.symlink(shared.resolve(), Path(tmp) / "shared")
        clone = Path(tmp) / "main"
        subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
        start = time.perf_counter()
        done = subprocess.run(["bash", ".ci/run"], cwd=clone, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        log = done.stdout + done.stderr
        log_path.write_text(log)
    return {"seconds": round(seconds, 1), **summary(log), "exit_code": done.returncode, "cores": os.cpu_count()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--source", default=".", help="the repository to clone (its committed HEAD)")
    parser.add_argument("--shared", default="../shared", help="the shared folder CI has beside the checkout")
    parser.add_argument("--out", default=str(RESULTS / "test_time.csv"))
    args = parser.parse_args(argv)
    if not (Path(args.shared) / "data" / "omniglot").is_dir():
        raise SystemExit(f"--shared {args.shared}: no data/omniglot there (the Omniglot mirror CI has)")
    out = Path(args.out)
    rows = []
    if out.exists():
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
    measured = stamp()
    for number in range(1, args.runs + 1):
        log = Path(tempfile.gettempdir()) / f"metalearn-ci-run{number}.log"
        row = one_run(Path(args.source).resolve(), Path(args.shared), log)
        rows.append({**row, **measured})
        print(f"run {number}: {row['seconds']} s in all, tests {row['tests_seconds']} s "
              f"({row['passed']} passed, {row['failed']} failed; exit {row['exit_code']}); log: {log}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + PROVENANCE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
