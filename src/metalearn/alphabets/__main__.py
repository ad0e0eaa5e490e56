"""`python -m metalearn.alphabets`: split, train and evaluate as the pipeline's jobs do, in one command."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from metalearn.alphabets import __doc__ as PROTOCOL
from metalearn.alphabets.evaluate import evaluate
from metalearn.alphabets.settings import CPU, PAPER
from metalearn.alphabets.tasks import make_episodes
from metalearn.alphabets.train import METHODS, train
from metalearn.config import Benchmark


def main(argv: list[str] | None = None) -> None:
    """python -m metalearn.alphabets --settings cpu|paper --data <root> [--methods ...] [--out results.json]:
    split, train and evaluate as the pipeline's jobs do (models under --work)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m metalearn.alphabets", description=PROTOCOL.splitlines()[0])
    parser.add_argument("--settings", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--data", default="data", help="data root holding prepared/omniglot-binary.pt "
                        "(the settings' dataset: metalearn prepare --dataset omniglot-binary)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("models-alphabets"), help="folder for the models")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    name = f"omniglot-alphabets-{args.settings}"
    params = {"profile": args.settings, "data": {"root": args.data},
              "benchmarks": {name: CPU if args.settings == "cpu" else PAPER}}
    bench = Benchmark.of(params, name)
    make_episodes(bench)
    results = {}
    for method in args.methods:
        start = time.process_time()
        model = train(bench, method, args.seed, args.work / method, device="cpu", log=lambda s: None)
        result = evaluate(bench, model, torch.load(model, weights_only=True), log=lambda s: None)
        result["cpu_seconds"] = time.process_time() - start
        print(f"{method}: {result['mean']:.1f} +- {result['ci95']:.1f} % ({result['episodes']} test alphabets, "
              f"{result['cpu_seconds']:.0f} CPU-s)", flush=True)
        results[method] = result
    if args.out:
        args.out.write_text(json.dumps({"settings": bench.settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
