"""The papers' numbers (src/metalearn/paper_numbers.yaml): each names its source, a paper and a table or
figure, and sits on a benchmark and an algorithm that params.yaml configures; MAML's meta-RL numbers
re-derive from the official code's files (metalearn/paper_rl.py), which are read as plain data only."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest

from metalearn import paper, paper_rl
from metalearn.config import load_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"benchmark", "algorithm", "metric", "steps", "mean", "ci95", "iterations", "requires", "source", "data"}
# "Finn et al. 2017, ...", "Lee & Choi 2018, ...", then a table or figure by number
SOURCE = re.compile(r"^[A-Z][A-Za-z'\-]+( et al\.| & [A-Z][A-Za-z'\-]+)? (19|20)\d\d, .*\b(Table|Figure) \d+")
MAML_RL = os.environ.get("METALEARN_MAML_RL")  # a copy of cbfinn/maml_rl (or its icml/ folder)


@pytest.fixture(scope="module")
def profiles() -> dict[str, dict]:
    """Every profile of params.yaml, merged and validated (metalearn.config)."""
    raw = read_yaml(ROOT / "params.yaml")
    return {name: load_params(ROOT / "params.yaml", name) for name in ["default", *(raw.get("profiles") or {})]}


def test_every_number_names_a_paper_and_a_table_or_figure():
    numbers = paper.paper_numbers()
    assert numbers
    for number in numbers:
        source = number.get("source")
        assert isinstance(source, str) and SOURCE.match(source), f"no paper and table/figure in the source: {number}"


def test_every_number_has_the_documented_fields_and_is_listed_once():
    seen = set()
    for number in paper.paper_numbers():
        assert set(number) <= FIELDS, (set(number) - FIELDS, number)
        assert number["metric"] in ("accuracy", "mse", "return"), number
        assert isinstance(number["mean"], (int, float)), number
        assert number.get("ci95") is None or number["ci95"] >= 0, number
        assert number.get("iterations") is None or (isinstance(number["iterations"], int) and number["iterations"] > 0)
        assert number.get("steps") is None or (isinstance(number["steps"], int) and number["steps"] >= 0), number
        assert isinstance(number.get("requires", {}), dict), number
        key = (number["benchmark"], number["algorithm"], number["metric"], number.get("steps"),
               repr(number.get("requires")))
        assert key not in seen, f"listed twice: {number}"
        seen.add(key)


def test_every_number_is_on_a_benchmark_and_an_algorithm_that_some_profile_configures(profiles):
    benchmarks, algorithms = set(), set()
    for params in profiles.values():
        for name, bench in params["benchmarks"].items():
            benchmarks |= {name, bench.get("reproduces")} - {None}  # `reproduces`: the paper's row it goes beside
            algorithms |= {algo for algo, settings in (bench.get("algorithms") or {}).items() if settings is not None}
    for number in paper.paper_numbers():
        assert number["benchmark"] in benchmarks, f"no profile of params.yaml configures the benchmark: {number}"
        assert number["algorithm"] in algorithms, f"no profile of params.yaml runs the algorithm: {number}"


def test_return_is_higher_is_better_in_the_verdict():
    number = {"metric": "return", "mean": 100.0, "ci95": 5.0}
    assert paper.verdict(number, 150.0, 3.0, None, []) == "above (better)"
    assert paper.verdict(number, 50.0, 3.0, None, []) == "below (worse)"
    assert paper.verdict(number, 96.0, 3.0, None, []) == "within the paper's CI"
    assert paper.verdict({"metric": "mse", "mean": 1.0, "ci95": 0.1}, 0.5, 0.1, None, []) == "below (better)"


def test_the_rl_numbers_carry_the_official_file_and_hash_they_come_from():
    rl = [n for n in paper.paper_numbers() if n["metric"] == "return"]
    expected = {}
    for bench, algorithm, name, digest, _ in paper_rl.SOURCES:
        steps = [0] if algorithm == "oracle" else list(range(paper_rl.FIGURE_STEPS))  # the oracle's file: step 0
        for step in steps:
            expected[(bench, algorithm, step)] = {"repo": paper_rl.REPO, "commit": paper_rl.COMMIT,
                                                  "file": f"icml/{name}", "sha256": digest}
    assert {(n["benchmark"], n["algorithm"], n["steps"]): n["data"] for n in rl} == expected
    for n in rl:
        assert n["source"].startswith("Finn et al. 2017, Figure ") and n["data"]["file"] in n["source"]


def test_mamls_rl_tables_4_and_5_are_the_numbers_behind_its_figures():
    """Appendix C, Tables 4 (2D point mass) and 5 (half-cheetah forward/backward), MAML's average return
    after 0..3 steps, as printed; the entries derived from the figures' files must equal them."""
    means = {(n["benchmark"], n["steps"]): n["mean"] for n in paper.paper_numbers()
             if n["metric"] == "return" and n["algorithm"] == "maml"}
    assert [means[("navigation-2d", s)] for s in range(4)] == [-40.41, -11.68, -3.33, -3.23]
    assert [means[("halfcheetah-dir", s)] for s in range(4)] == [-50.69, 293.19, 313.48, 315.65]


@pytest.mark.skipif(not MAML_RL, reason="the official RL results files are not here: set METALEARN_MAML_RL to a copy "
                    f"of {paper_rl.REPO} at {paper_rl.COMMIT[:7]} (or its icml/ folder) to re-derive the RL numbers")
def test_the_rl_numbers_re_derive_from_the_official_files():
    derived = {(n["benchmark"], n["algorithm"], n["steps"]): n for n in paper_rl.numbers(Path(MAML_RL))}
    listed = {(n["benchmark"], n["algorithm"], n["steps"]): n for n in paper.paper_numbers() if n["metric"] == "return"}
    assert derived.keys() == listed.keys()
    for key, number in listed.items():
        for field in ("mean", "ci95", "source", "data"):
            assert number[field] == derived[key][field], (key, field)


class _CallsOsSystem:
    def __reduce__(self):
        return (os.system, ("echo pickled code ran",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_the_plain_data_unpickler_refuses_a_pickle_that_references_os_system(protocol, monkeypatch):
    payload = pickle.dumps(_CallsOsSystem(), protocol=protocol)
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        paper_rl.load_plain(payload)
    assert calls == []


def test_the_plain_data_unpickler_reads_the_official_format(tmp_path):
    rows = [[-40.5, -39.0], [-11.25, -12.0]]
    path = tmp_path / "icml_point_results_maml.pkl"
    path.write_bytes(pickle.dumps({"task_avg_returns": rows}, protocol=0))  # as the official code wrote them
    assert paper_rl.load_returns(path) == rows
    assert paper_rl.load_returns(path, paper_rl.sha256(path)) == rows
    with pytest.raises(ValueError, match="sha256"):
        paper_rl.load_returns(path, "0" * 64)
    path.write_bytes(pickle.dumps({"task_avg_returns": [["not a number"]]}, protocol=0))
    with pytest.raises(ValueError, match="lists of numbers"):
        paper_rl.load_returns(path)


def test_ours_after_the_paper_texts_test_steps_is_read_from_the_runs_curve():
    """MAML's Omniglot numbers: the run follows the code (10 test steps, the verdict's), and the paper's
    text says 3 (protocols.yaml): ours after 3 steps is the same run's curve at step 3."""
    curve = [[float(step * 10 + e) for e in range(4)] for step in range(11)]
    run = {"benchmark": "omniglot-5w1s", "algorithm": "maml", "metric": "accuracy", "inner_steps": 10,
           "per_episode": curve[10], "per_episode_curve": curve, "iterations": 60000}
    settings = {"omniglot-5w1s": {"dataset": "omniglot-binary"}}
    row = next(r for r in paper.paper_rows([run], settings) if r["algorithm"] == "maml")
    assert (row["steps"], row["ours_mean"]) == (10, 101.5)
    assert (row["text_steps"], row["ours_text_steps_mean"]) == (3, 31.5)
    assert "31.5 ± " in paper.markdown([row]) and "(3 steps)" in paper.markdown([row])
    sinusoid = {**run, "benchmark": "sinusoid-k5", "metric": "mse"}  # the text states no other steps there
    assert all(r["text_steps"] == "" for r in paper.paper_rows([sinusoid], {}))


def test_every_measured_cause_names_its_note_and_published_numbers():
    """causes.yaml: each entry a one-line cause, the dated note that measured it, and published numbers
    it explains (a benchmark, algorithm and steps of paper_numbers.yaml)."""
    entries = paper.causes()
    for entry in entries:
        assert set(entry) <= {"benchmark", "algorithm", "steps", "cause", "note"} and entry["cause"].strip(), entry
        assert re.fullmatch(r"docs/notes/[a-z0-9-]+\.md", entry["note"]) and (ROOT / entry["note"]).is_file()
        assert any(n["benchmark"] == entry["benchmark"] and n["algorithm"] == entry["algorithm"]
                   and ("steps" not in entry or n.get("steps") in entry["steps"]) for n in paper.paper_numbers()), entry


def test_a_measured_cause_stands_beside_a_verdict_outside_the_papers_interval_only(monkeypatch):
    monkeypatch.setattr(paper, "causes", lambda: [{"benchmark": "navigation-2d", "algorithm": "maml", "steps": [2, 3],
                                                   "cause": "episodes never ended", "note": "docs/notes/x.md"}])
    published = {n["steps"]: n for n in paper.paper_numbers()
                 if (n["benchmark"], n["algorithm"]) == ("navigation-2d", "maml")}
    curve = [[published[s]["mean"]] * 40 for s in range(4)]
    curve[3] = [published[3]["mean"] - 10] * 40  # far below the paper's after 3 steps only
    run = {"benchmark": "navigation-2d", "algorithm": "maml", "metric": "return", "inner_steps": 3,
           "per_episode": curve[3], "per_episode_curve": curve, "iterations": 100}
    rows = {r["steps"]: r for r in paper.paper_rows([run], {"navigation-2d": {"test_samples": 4000}})}
    assert rows[2]["verdict"] == "within the paper's CI" and rows[2]["cause"] == ""
    assert rows[3]["verdict"].startswith("below") and rows[3]["cause"] == "episodes never ended (docs/notes/x.md)"
    assert rows[1]["cause"] == ""  # within, and no cause listed for step 1 anyway
    assert "| episodes never ended (docs/notes/x.md) |" in paper.markdown(list(rows.values()))
