"""MAML's meta-RL numbers (Finn et al. 2017, Figures 4 and 5; Appendix C, Tables 4 and 5), re-derived from
the returns the official code saved for those figures: cbfinn/maml_rl `icml/icml_<env>_results_<method>.pkl`,
each a dict {'task_avg_returns': rows}, row s holding the return on each of the 40 test tasks after s
policy-gradient steps (`icml/make_<env>_plots.py` draws the mean over the tasks after 0..3 steps; an
oracle's file holds step 0 only, drawn flat).

The files are not in this repository. `numbers(root)` reads them from a copy of cbfinn/maml_rl (COMMIT),
checks each file's sha256 and returns paper_numbers.yaml's entries for them: mean and 95% CI over the 40
tasks (metalearn.stats.mean_ci95, as ours), rounded to 2 decimals as Tables 4 and 5 print them.
`python -m metalearn.paper_rl DIR` prints them.

The files are pickles. They are read with PlainDataUnpickler, which refuses every global (no class, no
function, not even numpy's): a file that is not plain data fails to load instead of running code.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import sys
from pathlib import Path

from metalearn.stats import mean_ci95

REPO = "cbfinn/maml_rl"
COMMIT = "9c8e2ebd741cb0c7b8bf2d040c4caeeb8e06cc95"
KEY = "task_avg_returns"
FIGURE_STEPS = 4  # make_*_plots.py: n_itr = 4, the returns after 0..3 steps

# benchmark (params.yaml), algorithm, file under icml/, its sha256 at COMMIT, where the paper shows it.
# Only what the figures draw: make_cheetah_plots.py and make_ant_plots.py leave `random` out (commented out);
# make_point_plots.py reads the pretrained policy's icml_point_results_maml0.pkl, which is not in the
# repository (nor in its history).
SOURCES = [
    ("navigation-2d", "maml", "icml_point_results_maml.pkl",
     "bdc23c23c8d55eafc53492a9ad30c225556869a0132662e9201cdf086011410a", "Figure 4 and Appendix C, Table 4"),
    ("navigation-2d", "random", "icml_point_results_random.pkl",
     "27f909e58d96cc704f1af1458afafd43922d2319ac7903b27cd5ae845d3adc0b", "Figure 4"),
    ("navigation-2d", "oracle", "icml_point_results_oracle.pkl",
     "08659a9279fd94cb2c9c9f2c126f223d57853a33dd7aad1443acfaba3d51783c", "Figure 4"),
    ("halfcheetah-vel", "maml", "icml_cheetah_results_maml.pkl",
     "0b7aca9cef55e12fcdc5b7dea3732d8d7c1e586cd0674f800798ce0cbfb6886e", "Figure 5"),
    ("halfcheetah-vel", "pretrained", "icml_cheetah_results_pretrain.pkl",
     "886a554d790feb4ea1166f40929e3ee710d5a18864223afaecc8cfcdbbe48a5f", "Figure 5"),
    ("halfcheetah-vel", "oracle", "icml_cheetah_results_oracle.pkl",
     "2f97c7e42040eeb951ebeadd895707020b378f4df106031b2651410c2509e1c4", "Figure 5"),
    ("halfcheetah-dir", "maml", "icml_cheetahdirec_results_maml.pkl",
     "693b01e158e7f9ecd63e533858c3b8f059f2db8f85ee0132e015d9f3efc6ed4f", "Figure 5 and Appendix C, Table 5"),
    ("halfcheetah-dir", "pretrained", "icml_cheetahdirec_results_pretrain.pkl",
     "3ee470a878faab23949e120a770357f9ec4cfbf108fda214f614f38e8adb0ac4", "Figure 5"),
    ("halfcheetah-dir", "random", "icml_cheetahdirec_results_random.pkl",
     "e860726433c9023d36631304758386902279b84aa0fc8ebe638a61ef6b1c1202", "Figure 5"),
    ("halfcheetah-dir", "oracle", "icml_cheetahdirec_results_oracle.pkl",
     "c60b871d26ac06d2ad3b18846dd963ae0547a7f2f8fe0d503467fde088bbd047", "Figure 5"),
    ("ant-vel", "maml", "icml_ant_results_maml.pkl",
     "03c207d7e69937adb5c21bb30078b1a062267b97e230c616947e2d94e04fd92d", "Figure 5"),
    ("ant-vel", "pretrained", "icml_ant_results_pretrain.pkl",
     "aeaabf07344bf856f4a6c9a2f8f42207a37d069618c80284d7f1240d58cf96aa", "Figure 5"),
    ("ant-vel", "oracle", "icml_ant_results_oracle.pkl",
     "54723abea014eb4f3efe5c0a493c39f774d255cb4a6f14acfc02d680a4fcfeaa", "Figure 5"),
    ("ant-dir", "maml", "icml_antdirec_results_maml.pkl",
     "60696d771a9313235e8a256726e48145dab2088811251fcf6fdccccd98408a91", "Figure 5"),
    ("ant-dir", "pretrained", "icml_antdirec_results_pretrain.pkl",
     "0e8969fac05b767c098a828e55719a8f00721e16de43ef5b7d3644724bcaf65b", "Figure 5"),
    ("ant-dir", "random", "icml_antdirec_results_random.pkl",
     "cacb047339d8561a804c3d7f30686b1c50ef77dfe4fc07304cafb033f3596370", "Figure 5"),
    ("ant-dir", "oracle", "icml_antdirec_results_oracle.pkl",
     "b50aab45b09777606d52653bd88502569d444bd5710d211302be1255ac788e41", "Figure 5"),
]


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dict, list, tuple, str, bytes, numbers, None, bool): every global a
    pickle names (a class, a function, os.system, numpy's array constructor) is refused, so loading
    can build data but never import or call anything."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused: the pickle references {module}.{name}; only plain data "
                                     "(dict, list, str, numbers) is read")


def load_plain(data: bytes):
    return PlainDataUnpickler(io.BytesIO(data)).load()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_file(root: Path, name: str) -> Path:
    """A results file in a copy of cbfinn/maml_rl (root/icml/name) or in a folder of them (root/name)."""
    for path in (Path(root) / "icml" / name, Path(root) / name):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name}: not in {root}/icml or {root} (a copy of {REPO} at {COMMIT[:7]})")


def load_returns(path: Path, expected_sha256: str | None = None) -> list[list[float]]:
    """task_avg_returns of one results file, [steps][tasks], checked to be numbers (and the file to have
    `expected_sha256`)."""
    data = Path(path).read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ValueError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()}, not {expected_sha256} "
                         f"({REPO} at {COMMIT[:7]})")
    content = load_plain(data)
    rows = content.get(KEY) if isinstance(content, dict) else None
    if not (isinstance(rows, list) and rows and all(
            isinstance(row, list) and row and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in row) for row in rows)):
        raise ValueError(f"{path}: expected a dict whose {KEY!r} is a list of lists of numbers")
    return [[float(v) for v in row] for row in rows]


def numbers(root: Path) -> list[dict]:
    """paper_numbers.yaml's entries for the RL figures, from the files in `root` (see find_file)."""
    entries = []
    for bench, algorithm, name, digest, shown in SOURCES:
        rows = load_returns(find_file(root, name), digest)
        for step, values in enumerate(rows[:FIGURE_STEPS]):
            mean, ci95 = mean_ci95(values)
            entries.append({
                "benchmark": bench, "algorithm": algorithm, "metric": "return", "steps": step,
                "mean": round(mean, 2), "ci95": round(ci95, 2),
                "source": f"Finn et al. 2017, {shown} ({REPO} icml/{name})",
                "data": {"repo": REPO, "commit": COMMIT, "file": f"icml/{name}", "sha256": digest}})
    return entries


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m metalearn.paper_rl DIR  (DIR: a copy of {REPO} at {COMMIT[:7]}, or its icml/)",
              file=sys.stderr)
        return 2
    for e in numbers(Path(argv[0])):
        print(f"- {{benchmark: {e['benchmark']}, algorithm: {e['algorithm']}, metric: return, "
              f"steps: {e['steps']}, mean: {e['mean']}, ci95: {e['ci95']}, source: \"{e['source']}\"}}  "
              f"# sha256 {e['data']['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
