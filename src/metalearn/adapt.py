"""`metalearn adapt`: a meta-trained model on your own few-shot task, from folders of images.

    metalearn adapt --model models/omniglot-5w1s/maml/seed0/model.pt \\
                    --support my_support/ --query my_query/ --out predictions.csv

Folders
  support/  one subfolder per class (its name is the class name), a few images in each; classes are
            numbered in the order of their sorted names. Classes may have different numbers of images.
  query/    the images to classify, either directly in the folder, or in subfolders named after
            support classes (then the true classes are known and accuracy is reported).
  Files whose names start with '.' are ignored; anything else must be a readable image.

Adaptation is the algorithm's own rule, through the `Algorithm` interface only:
``algo.adapt((support_x, support_y), steps)`` then ``algo.predict(params, query_x)``; so MAML's
gradient steps, iMAML's proximal solve, Meta-SGD's learned rates, WarpGrad's warped steps, MT-net's
masks all apply as in evaluation. The query images are predicted together (chunks of
`QUERY_CHUNK`), like a benchmark episode's query set: BatchNorm normalises with the batch's own
statistics (MAML's convention, models.py), so give the query images together, several per class.

Preprocessing travels with the model: train.py saves a ``preprocessing`` record (see
`metalearn.data.images.preprocessing_for`), older model files get it from their benchmark's
settings. An image of any size and format is read exactly as the training data was:
  Omniglot models        omniglot._load_image: grayscale, Lanczos to 28x28 (the -binary data sets: as
                         the MAML code, nearest on the 1-bit image), inverted (strokes bright).
                         Drawings that already have bright strokes on a dark background (judged by
                         the image's border, which is background) are not inverted, so both
                         polarities reach the model as it was trained.
  ImageNet-style models  imagenet._decode: RGB, bicubic (antialiased) to 84x84.
A colour image is refused by a grayscale (Omniglot) model, and a set of only grayscale images by a
colour model: the network never saw such inputs, and its predictions would be meaningless.

The output layer when the number of classes differs from training (``head``):
  auto     (default) the trained head when the support has the training's number of classes,
           else `zero`.
  trained  keep the meta-learned head; an error when the number of classes differs.
  zero     the linear head (``model.head``) gets one output per support class, its weights and
           bias set to zero before adaptation; every other meta-learned parameter is kept.
           A zero head scores every class alike (uniform probabilities) and is symmetric in the
           classes, which suits MAML-style training where labels are assigned to classes at random
           per episode; the adaptation steps then learn it from the support set. (With a zero head
           the first step changes only the head: the features' gradient passes through its weights.)
           What it costs against the trained head: docs/notes/adapt-worked-example.md.
  Algorithms with meta-learned parameters shaped by the number of classes cannot change it:
  Meta-SGD (learned rates of the head), T-net (the head's T, ways x ways), MT-net (T and the head's
  mask logits). For them a different number of classes is an error naming those parameters.
"""
from __future__ import annotations

import csv
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metalearn import benchmarks
from metalearn.algorithms import Algorithm, build_algorithm
from metalearn.data import imagenet, omniglot
from metalearn.data.images import IMAGENET, OMNIGLOT, OMNIGLOT_BINARY, preprocessing_for

HEAD = ("model.head.weight", "model.head.bias")  # the output layer's entries in an algorithm's state
HEAD_POLICIES = ("auto", "trained", "zero")
QUERY_CHUNK = 500  # query images per forward pass (bounds memory on 84x84 inputs)
COLOUR_TOLERANCE = 12  # channel spread (of 255) below which a pixel counts as gray (JPEG noise)


class AdaptError(ValueError):
    """Input the adaptation cannot use (folders, images, model), with what to change."""


# -- reading images --------------------------------------------------------------------------------

def _is_colour(image: Image.Image) -> bool:
    """True when some pixel has visibly different channels (an RGB file of a gray picture is gray)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((rgb.max(axis=2) - rgb.min(axis=2)).max()) > COLOUR_TOLERANCE


def read_image(path: Path, preprocessing: dict) -> tuple[Tensor, bool]:
    """(float image [C, size, size] in [0, 1], whether the file is in colour), read as training read."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            colour = _is_colour(image)
        if preprocessing in (OMNIGLOT, OMNIGLOT_BINARY):
            pixels = omniglot._load_image(data, preprocessing["resize"])  # uint8 [28, 28], inverted: strokes bright
            border = torch.cat([pixels[:2].flatten(), pixels[-2:].flatten(), pixels[:, :2].flatten(),
                                pixels[:, -2:].flatten()])
            if border.float().mean() > 127:  # bright background after inversion: the file was light-on-dark
                pixels = 255 - pixels
            pixels = pixels.unsqueeze(0)
        elif preprocessing == IMAGENET:
            pixels = imagenet._decode(data, str(path))  # uint8 [3, 84, 84]
        else:
            raise AdaptError(f"the model's preprocessing {preprocessing} is unknown to this version of metalearn")
    except (UnidentifiedImageError, OSError, imagenet.InvalidData) as exc:
        raise AdaptError(f"{path}: not a readable image ({exc})") from None
    return pixels.float().div_(255.0), colour


# -- folders ---------------------------------------------------------------------------------------

def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_files(folder: Path) -> list[Path]:
    files = _entries(folder)
    if not files:
        raise AdaptError(f"class folder {folder} is empty: put a few images of the class in it, or remove it")
    nested = [p.name for p in files if p.is_dir()]
    if nested:
        raise AdaptError(f"class folder {folder} holds folders {nested}: a class folder holds images only")
    return files


def read_support(folder: Path) -> tuple[list[str], list[Path], Tensor]:
    """(class names, image files, labels) of a support folder with one subfolder per class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdaptError(f"support folder {folder} does not exist")
    entries = _entries(folder)
    loose = [p.name for p in entries if not p.is_dir()]
    if loose:
        raise AdaptError(f"support folder {folder} holds files {loose[:5]} outside class folders: "
                         "put each class's images in a subfolder named after the class")
    classes = [p.name for p in entries]
    if len(classes) < 2:
        raise AdaptError(f"support folder {folder} has {len(classes)} class folder(s): a classifier needs at least 2")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_files = _class_files(folder / name)
        files += class_files
        labels += [label] * len(class_files)
    return classes, files, torch.tensor(labels)


def read_query(folder: Path, classes: list[str]) -> tuple[list[Path], Tensor | None]:
    """(image files, labels or None) of a query folder: images, or class subfolders of images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdaptError(f"query folder {folder} does not exist")
    entries = _entries(folder)
    if not entries:
        raise AdaptError(f"query folder {folder} is empty")
    subfolders = [p for p in entries if p.is_dir()]
    if not subfolders:
        return entries, None
    if len(subfolders) != len(entries):
        raise AdaptError(f"query folder {folder} mixes images and class folders: use one or the other")
    unknown = [p.name for p in subfolders if p.name not in classes]
    if unknown:
        raise AdaptError(f"query classes {unknown} have no support images (support classes: {classes})")
    files, labels = [], []
    for sub in subfolders:
        class_files = _class_files(sub)
        files += class_files
        labels += [classes.index(sub.name)] * len(class_files)
    return files, torch.tensor(labels)


def read_images(files: list[Path], preprocessing: dict) -> tuple[Tensor, list[bool]]:
    """(the images as one float batch [N, C, H, W], whether each file is in colour)."""
    images, colours = zip(*(read_image(f, preprocessing) for f in files))
    return torch.stack(images), list(colours)


def check_kinds(files: list[Path], colours: list[bool], preprocessing: dict) -> None:
    """Refuse inputs of a kind the model never saw: colour images for a grayscale model, only
    grayscale images for a colour model (judged over support and query together)."""
    colour_files = [f.name for f, c in zip(files, colours) if c]
    if preprocessing["channels"] == 1 and colour_files:
        raise AdaptError(f"the model was trained on grayscale drawings, but {len(colour_files)} image(s) are in "
                         f"colour (e.g. {colour_files[:3]}); convert them to grayscale or use a colour model")
    if preprocessing["channels"] == 3 and not colour_files:
        raise AdaptError(f"the model was trained on colour photos, but all {len(files)} images are grayscale; "
                         "use a model trained on grayscale images (e.g. Omniglot)")


# -- the model -------------------------------------------------------------------------------------

def resolve_model(model: str | Path, download_dir: Path | None = None) -> Path:
    """A local model.pt from a path or an MLflow URI (``runs:/<run id>/model``, ``models:/name/1``, ...;
    the tracking store is MLFLOW_TRACKING_URI, else the project's default, as for training)."""
    text = str(model)
    if "://" not in text and not text.startswith(("runs:/", "models:/")):
        path = Path(text)
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise AdaptError(f"model file {path} does not exist")
        return path
    import mlflow

    from metalearn.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    target = download_dir or Path(tempfile.mkdtemp(prefix="metalearn-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(target)))
    except Exception as exc:  # MLflow raises several types (MlflowException, OSError, ...)
        raise AdaptError(f"cannot fetch {text} from MLflow ({tracking_uri()}): {exc}") from None
    if local.is_dir():
        found = sorted(local.rglob("model.pt"))
        if len(found) != 1:
            raise AdaptError(f"{text} holds {len(found)} model.pt files; name one, e.g. {text.rstrip('/')}/model.pt")
        local = found[0]
    return local


def adapted_algorithm(saved: dict, ways: int, head: str = "auto", device: str = "auto") -> tuple[Algorithm, str]:
    """The saved algorithm rebuilt for `ways` classes, with the head policy applied; (algorithm, policy used)."""
    from metalearn.train import pick_device

    if head not in HEAD_POLICIES:
        raise AdaptError(f"head policy must be one of {HEAD_POLICIES}, not {head!r}")
    config = saved["config"]
    settings = config["settings"]
    trained_ways = settings.get("ways")
    if trained_ways is None:
        raise AdaptError(f"{config['benchmark']} is not a classification benchmark: nothing to adapt to folders of images")
    if head == "trained" and ways != trained_ways:
        raise AdaptError(f"the trained head has {trained_ways} outputs and the support has {ways} classes; "
                         "use --head zero (or auto)")
    policy = "trained" if head == "auto" and ways == trained_ways else ("zero" if head == "auto" else head)
    # The same construction as train.build, with the support's number of classes.
    torch.manual_seed(config["seed"])
    objective = benchmarks.build_objective({**settings, "ways": ways})
    algo = build_algorithm(config["algorithm"], objective.model, objective, config["hparams"])
    state = algo.state_dict()
    for key, value in saved["state_dict"].items():
        if key in HEAD and policy == "zero":
            state[key] = torch.zeros_like(state[key])
        elif state[key].shape == value.shape:
            state[key] = value
        else:
            shaped = [k for k, v in saved["state_dict"].items() if k not in HEAD and v.shape != state[k].shape]
            raise AdaptError(f"{config['algorithm']} meta-learned {shaped} for {trained_ways} classes; it cannot "
                             f"adapt to {ways}: give the support {trained_ways} classes")
    algo.load_state_dict(state)
    return algo.to(pick_device(device)), policy


def adapt_and_predict(algo: Algorithm, support: tuple[Tensor, Tensor], query_x: Tensor,
                      steps: int | None = None) -> Tensor:
    """Class probabilities [N, ways] of the query images after the algorithm's own adaptation."""
    dev = next(algo.parameters()).device
    support = (support[0].to(dev), support[1].to(dev))
    with torch.enable_grad():
        params = algo.adapt(support, steps)
    params = {name: p.detach() for name, p in params.items()}
    with torch.no_grad():
        logits = torch.cat([algo.predict(params, chunk.to(dev)) for chunk in query_x.split(QUERY_CHUNK)])
    return logits.softmax(-1).cpu()


# -- the command -----------------------------------------------------------------------------------

@dataclass
class Result:
    classes: list[str]
    files: list[str]  # query files, relative to the query folder
    predicted: list[int]
    probability: list[float]
    labels: list[int] | None
    head: str  # the head policy used
    steps: int
    info: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return sum(p == t for p, t in zip(self.predicted, self.labels)) / len(self.labels)

    def write_csv(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["file", "predicted", "probability"] + (["label", "correct"] if self.labels is not None else []))
            for i, name in enumerate(self.files):
                row = [name, self.classes[self.predicted[i]], f"{self.probability[i]:.6f}"]
                if self.labels is not None:
                    row += [self.classes[self.labels[i]], int(self.predicted[i] == self.labels[i])]
                out.writerow(row)


def adapt(model: str | Path, support_dir: Path, query_dir: Path, steps: int | None = None,
          head: str = "auto", device: str = "auto") -> Result:
    """Read the folders, adapt the model to the support set and classify the query images."""
    path = resolve_model(model)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    preprocessing = saved.get("preprocessing") or preprocessing_for(saved["config"]["settings"])
    if preprocessing is None:
        raise AdaptError(f"{path} was trained on {saved['config']['benchmark']}, which has no images")
    classes, support_files, support_y = read_support(Path(support_dir))
    query_files, query_y = read_query(Path(query_dir), classes)
    support_x, support_colour = read_images(support_files, preprocessing)
    query_x, query_colour = read_images(query_files, preprocessing)
    check_kinds(support_files + query_files, support_colour + query_colour, preprocessing)
    algo, policy = adapted_algorithm(saved, len(classes), head, device)
    steps = algo.test_inner_steps if steps is None else steps
    probabilities = adapt_and_predict(algo, (support_x, support_y), query_x, steps)
    best, predicted = probabilities.max(-1)
    return Result(classes, [str(f.relative_to(query_dir)) for f in query_files], predicted.tolist(),
                  best.tolist(), None if query_y is None else query_y.tolist(), policy, steps,
                  {"model": str(path), "algorithm": saved["config"]["algorithm"],
                   "benchmark": saved["config"]["benchmark"], "trained_ways": saved["config"]["settings"]["ways"]})

