"""The registry of meta-learning algorithms: name in params.yaml -> class.

To add an algorithm: one file here with a subclass of `Algorithm` (see base.py), one line below,
and its hyperparameters in params.schema.yaml (``$defs``) and params.yaml.
"""
from metalearn.algorithms.base import Algorithm
from metalearn.algorithms.imaml import IMAML
from metalearn.algorithms.maml import FOMAML, MAML

ALGORITHMS: dict[str, type[Algorithm]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "imaml": IMAML,
}


def build_algorithm(name: str, model, objective, hparams) -> Algorithm:
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}") from None
    return cls(model, objective, hparams)
