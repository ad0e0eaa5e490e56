"""The registry of meta-learning algorithms: name in params.yaml -> class.

To add an algorithm: one file here with a subclass of `Algorithm` (see base.py), one line below,
and its hyperparameters in params.schema.yaml (``$defs``) and params.yaml.
"""
import inspect
import sys
from pathlib import Path
from types import ModuleType

from metalearn.algorithms.base import Algorithm
from metalearn.algorithms.imaml import IMAML
from metalearn.algorithms.leap import Leap
from metalearn.algorithms.maml import FOMAML, MAML
from metalearn.algorithms.metasgd import MetaSGD
from metalearn.algorithms.mtnet import MTNet, TNet
from metalearn.algorithms.pretrained import Oracle, Pretrained
from metalearn.algorithms.protomaml import FOProtoMAML, ProtoMAML
from metalearn.algorithms.reptile import Reptile
from metalearn.algorithms.warpgrad import WarpGrad, WarpLeap, WarpMAML

ALGORITHMS: dict[str, type[Algorithm]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "imaml": IMAML,
    "leap": Leap,
    "reptile": Reptile,
    "warpgrad": WarpGrad,
    "warpmaml": WarpMAML,
    "warpleap": WarpLeap,
    "tnet": TNet,
    "mtnet": MTNet,
    "metasgd": MetaSGD,
    "protomaml": ProtoMAML,  # MAML with the head set from each task's support set (Proto-MAML)
    "foprotomaml": FOProtoMAML,
    "pretrained": Pretrained,  # baselines (MAML's regression study): no meta-learning
    "oracle": Oracle,
}


def build_algorithm(name: str, model, objective, hparams) -> Algorithm:
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}") from None
    return cls(model, objective, hparams)


def source_files(name: str) -> list[Path]:
    """The files that define an algorithm, i.e. whose edits change its results: its class's module,
    its base classes' modules, and the algorithm modules these use, transitively (warpleap ->
    warpgrad.py, leap.py, base.py). Training resumes and the pipeline reruns on these."""
    pending = [cls.__module__ for cls in ALGORITHMS[name].__mro__ if cls.__module__.startswith(__name__ + ".")]
    found: list[str] = []
    while pending:
        module = pending.pop(0)
        if module in found:
            continue
        found.append(module)
        for value in vars(sys.modules[module]).values():
            used = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(used, str) and used.startswith(__name__ + ".") and used not in found:
                pending.append(used)
    return [Path(inspect.getsourcefile(sys.modules[module])).resolve() for module in found]
