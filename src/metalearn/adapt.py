"""`metalearn adapt`: a meta-trained model on your own few-shot task, from folders of images.

    metalearn adapt --model models/omniglot-5w1s/maml/seed0/model.pt \\
                    --support my_support/ --query my_query/ --out predictions.csv

Folders
  support/  one subfolder per class (its name is the class name), a few images in each; classes are
            numbered in the order of their sorted names. Classes may have different numbers of images.
  query/    the images to classify, either directly in the folder, or in subfolders named after
            support classes (then the true classes are known and accuracy is reported).
  Files whose names start with '.' are ignored; anything else must be a readable image. An image
  of more than MAX_PIXELS pixels (Pillow's decompression-bomb limit) is refused before it is
  decoded; one smaller than MIN_SIDE pixels a side is read with a warning naming it (it is too small
  to carry a drawing, and its prediction means little).

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
           else `proto` (`zero` for T-nets and MT-nets): measured better (docs/results/heads.md).
  trained  keep the meta-learned head; an error when the number of classes differs.
  zero     the linear head (``model.head``) gets one output per support class, its weights and
           bias set to zero before adaptation; every other meta-learned parameter is kept.
           A zero head scores every class alike (uniform probabilities) and is symmetric in the
           classes, which suits MAML-style training where labels are assigned to classes at random
           per episode; the adaptation steps then learn it from the support set. (With a zero head
           the first step changes only the head: the features' gradient passes through its weights.)
           What it costs against the trained head: docs/notes/adapt-worked-example.md.
  proto    the head is set from the support set before adaptation (Proto-MAML, Triantafillou et al.
           2020; metalearn/heads.py): for class k with c_k the mean of its support images' features
           (the network's, just before the head), weight 2 c_k and bias -||c_k||^2, so that before any
           step the network scores an image by minus its squared distance to each class's prototype
           (up to a per-image constant); the adaptation steps then run from there. Any number of
           classes; every other meta-learned parameter is kept. Not for T-nets and MT-nets (their T
           follows the head).
  Algorithms with meta-learned parameters shaped by the number of classes cannot change it:
  Meta-SGD (learned rates of the head), T-net (the head's T, ways x ways), MT-net (T and the head's
  mask logits). For them a different number of classes is an error naming those parameters.
  Models of algorithms that build their head from the support set in every task themselves
  (`head_from_support`: protomaml, foprotomaml) always use `proto` (`auto` and `proto` say so; `trained`
  and `zero` are errors), at any number of classes.
"""
from __future__ import annotations

import csv
import io
import os
import struct
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from metalearn.algorithms import Algorithm
from metalearn.data import imagenet, omniglot
from metalearn.data.images import IMAGENET, OMNIGLOT, OMNIGLOT_BINARY, preprocessing_for
from metalearn.errors import BadInput
from metalearn.head_policies import AdaptError, adapted_algorithm, prototype_start  # shared with `evaluate --head`

QUERY_CHUNK = 500  # query images per forward pass (bounds memory on 84x84 inputs)
COLOUR_TOLERANCE = 12  # channel spread (of 255) below which a pixel counts as gray (JPEG noise)
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # larger: refused unread (Pillow warns above it, and refuses twice it)
MIN_SIDE = 8  # a side of fewer pixels: a warning (a few-shot drawing needs more to be told apart)
# What Pillow's decoders raise on a damaged or foreign file (beyond UnidentifiedImageError, an OSError)
UNREADABLE = (OSError, ValueError, EOFError, SyntaxError, struct.error, zlib.error)


# -- reading images --------------------------------------------------------------------------------

def _is_colour(image: Image.Image) -> bool:
    """True when some pixel has visibly different channels (an RGB file of a gray picture is gray)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((rgb.max(axis=2) - rgb.min(axis=2)).max()) > COLOUR_TOLERANCE


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _claimed_size(data: bytes) -> str:
    """'WxH' from an image's header, without Pillow's size check (nothing is decoded)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return "x".join(map(str, image.size))
    except Exception:  # noqa: BLE001 -- only for the message
        return "too many"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path: Path, preprocessing: dict, warn=_warn) -> tuple[Tensor, bool]:
    """(float image [C, size, size] in [0, 1], whether the file is in colour), read as training read.
    An image too large to be a drawing (MAX_PIXELS: a decompression bomb, say) is refused from its
    header, before it is decoded; one too small to carry a drawing (MIN_SIDE) is read, with `warn`."""
    try:
        data = path.read_bytes()
        with warnings.catch_warnings():  # Pillow's bomb warning as an error: refused before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{width}x{height} pixels")
                image.load()
                colour = _is_colour(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AdaptError(f"{path}: {_claimed_size(data)} pixels, too large for a few-shot image (at most "
                         f"{MAX_PIXELS} pixels are read: a decompression bomb, or a photo to scale down); "
                         "scale it down or remove it") from None
    except UNREADABLE as exc:
        raise AdaptError(f"{path}: not a readable image ({exc})") from None
    if preprocessing not in (OMNIGLOT, OMNIGLOT_BINARY, IMAGENET):
        raise AdaptError(f"the model's preprocessing {preprocessing} is unknown to this version of metalearn")
    if min(width, height) < MIN_SIDE:
        warn(f"{path}: {width}x{height} pixels, too small to carry a drawing (the model reads "
             f"{preprocessing.get('size', '?')}x{preprocessing.get('size', '?')}); its prediction means little")
    try:
        if preprocessing in (OMNIGLOT, OMNIGLOT_BINARY):
            pixels = omniglot._load_image(data, preprocessing["resize"])  # uint8 [28, 28], inverted: strokes bright
            border = torch.cat([pixels[:2].flatten(), pixels[-2:].flatten(), pixels[:, :2].flatten(),
                                pixels[:, -2:].flatten()])
            if border.float().mean() > 127:  # bright background after inversion: the file was light-on-dark
                pixels = 255 - pixels
            pixels = pixels.unsqueeze(0)
        else:
            pixels = imagenet._decode(data, str(path))  # uint8 [3, 84, 84]
    except (*UNREADABLE, imagenet.InvalidData) as exc:
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


def read_images(files: list[Path], preprocessing: dict, warn=_warn) -> tuple[Tensor, list[bool]]:
    """(the images as one float batch [N, C, H, W], whether each file is in colour)."""
    images, colours = zip(*(read_image(f, preprocessing, warn) for f in files))
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

def is_uri(model: str | Path) -> bool:
    """Whether --model names an MLflow artifact (``runs:/...``, ``models:/...``, ``scheme://...``)."""
    text = str(model)
    return "://" in text or text.startswith(("runs:/", "models:/"))


def resolve_model(model: str | Path, download_dir: Path | None = None) -> Path:
    """A local model.pt from a path or an MLflow URI (``runs:/<run id>/model``, ``models:/name/1``, ...;
    the tracking store is MLFLOW_TRACKING_URI, else the project's default, as for training)."""
    text = str(model)
    if not is_uri(text):
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


def _fetched(model: str | Path, path: Path, read) -> dict:
    """read(path) for a model fetched from MLflow, its error naming the URI as well as the local copy."""
    from metalearn.errors import BadFile

    try:
        return read(path)
    except BadFile as exc:
        raise BadFile(f"{model}: fetched from MLflow as {exc}") from None


def adapt_and_predict(algo: Algorithm, support: tuple[Tensor, Tensor], query_x: Tensor,
                      steps: int | None = None, head: str = "as_loaded") -> Tensor:
    """Class probabilities [N, ways] of the query images after the algorithm's own adaptation.
    `head`: "proto" sets the head from the support set first (`prototype_start`); anything else starts
    from the algorithm's parameters as they are (its trained or zero head, as `adapted_algorithm` set it;
    an algorithm with `head_from_support` builds its head itself either way)."""
    dev = next(algo.parameters()).device
    support = (support[0].to(dev), support[1].to(dev))
    with torch.enable_grad():
        if head == "proto" and not getattr(algo, "head_from_support", False):
            params = algo.adapt(support, steps, params=prototype_start(algo, support))
        else:
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
        """Written whole or not at all (a temporary file beside it, renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with part.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["file", "predicted", "probability"] + (["label", "correct"] if self.labels is not None else []))
            for i, name in enumerate(self.files):
                row = [name, self.classes[self.predicted[i]], f"{self.probability[i]:.6f}"]
                if self.labels is not None:
                    row += [self.classes[self.labels[i]], int(self.predicted[i] == self.labels[i])]
                out.writerow(row)
        os.replace(part, path)


def adapt(model: str | Path, support_dir: Path, query_dir: Path, steps: int | None = None,
          head: str = "auto", device: str = "auto", warn=_warn) -> Result:
    """Read the folders, adapt the model to the support set and classify the query images."""
    from metalearn.train import read_model_file

    path = resolve_model(model)
    # checked as a local model file is, wherever it came from (an MLflow artifact too): BadFile, named
    saved = _fetched(model, path, read_model_file) if is_uri(model) else read_model_file(path)
    preprocessing = saved.get("preprocessing") or preprocessing_for(saved["config"]["settings"])
    if preprocessing is None:
        raise AdaptError(f"{path} was trained on {saved['config']['benchmark']}, which has no images")
    if preprocessing not in (OMNIGLOT, OMNIGLOT_BINARY, IMAGENET):
        raise AdaptError(f"{path}: the model's preprocessing {preprocessing} is unknown to this version of metalearn")
    classes, support_files, support_y = read_support(Path(support_dir))
    query_files, query_y = read_query(Path(query_dir), classes)
    support_x, support_colour = read_images(support_files, preprocessing, warn)
    query_x, query_colour = read_images(query_files, preprocessing, warn)
    check_kinds(support_files + query_files, support_colour + query_colour, preprocessing)
    try:
        algo, policy = adapted_algorithm(saved, len(classes), head, device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, (AdaptError, BadInput)):
            raise
        raise AdaptError(f"{path}: its settings or parameters do not make a {saved['config']['algorithm']} model "
                         f"({type(exc).__name__}: {str(exc)[:300]}); train it again (`metalearn train`)") from None
    steps = algo.test_inner_steps if steps is None else steps
    probabilities = adapt_and_predict(algo, (support_x, support_y), query_x, steps, head=policy)
    best, predicted = probabilities.max(-1)
    return Result(classes, [str(f.relative_to(query_dir)) for f in query_files], predicted.tolist(),
                  best.tolist(), None if query_y is None else query_y.tolist(), policy, steps,
                  {"model": str(path), "algorithm": saved["config"]["algorithm"],
                   "benchmark": saved["config"]["benchmark"], "trained_ways": saved["config"]["settings"]["ways"]})

