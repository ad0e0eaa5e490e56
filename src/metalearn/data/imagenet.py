"""mini-ImageNet and tiered-ImageNet: the files researchers have -> a compact uint8 cache.

Neither data set has an official download, so the files come from where the user says
(``data.<dataset>`` in params.yaml), looked for in this order:
  path    a folder holding the files, read in place;
  files   {file name: {url, sha256 or md5}}: each downloaded into ``<data.root>/raw/<dataset>/``
          and verified (metalearn.data.download.fetch);
  else    ``<data mirror>/<dataset>/`` if the data mirror is a local folder holding one, then
          ``<data.root>/raw/<dataset>/``.

Formats (``data.<dataset>.format``; found from the files present when not set)
  miniimagenet   pickle  mini-imagenet-cache-{train,validation,test}.pkl: a dict with ``image_data``
                         uint8 [N, 84, 84, 3] (RGB) and ``class_dict`` {wnid: [indices]}
                 csv     Ravi & Larochelle's train.csv, val.csv, test.csv (``filename,label``; 64/16/20
                         classes x 600 images) over ``images/<filename>`` (or ``<split>/<label>/<filename>``,
                         the layout MAML's proc_images.py leaves); any size, resized to 84x84
  tieredimagenet pickle {train,val,test}_images_png.pkl (PNG-encoded images, as arrays or bytes) and
                         {train,val,test}_labels.pkl (a dict with ``label_specific``, the class index
                         within the split, and optionally ``label_specific_str``, the class names);
                         351/97/160 classes
Pickles are untrusted input: `load_pickle` only rebuilds numpy arrays and plain containers.

Cache ``<data.root>/prepared/<dataset>.pt``: the classes differ in size in tiered-ImageNet (732 to 1300
images), so each split is one flat array grouped by class rather than [classes, images, ...]:
  {"train" | "val" | "test": {
      "images":  uint8 [N, 3, 84, 84], RGB; classes sorted by name, images in file order within a class,
      "offsets": int64 [classes + 1]: class c is images[offsets[c]:offsets[c + 1]],
      "classes": class names (wnids where the files give them)}}
It is loaded memory-mapped (tiered-ImageNet is 16 GB as uint8). A JSON manifest beside it records
the format, the counts and the source files' sha256.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from PIL import Image

from metalearn.data.download import ChecksumError, DownloadError, RemoteFile, data_mirror, fetch, file_digests
from metalearn.errors import ConfigError

DATASETS = ("miniimagenet", "tieredimagenet")
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
# The standard splits (class counts) and the fewest images any class has in them; config.py
# checks ways and shots against these before any work; the prepared cache is checked again.
SPLIT_CLASSES = {"miniimagenet": {"train": 64, "val": 16, "test": 20},
                 "tieredimagenet": {"train": 351, "val": 97, "test": 160}}
MIN_IMAGES_PER_CLASS = {"miniimagenet": 600, "tieredimagenet": 732}  # 732: ILSVRC-12's smallest class
FORMATS = {
    "miniimagenet": {
        "pickle": [f"mini-imagenet-cache-{s}.pkl" for s in ("train", "validation", "test")],
        "csv": [f"{s}.csv" for s in SPLITS],
    },
    "tieredimagenet": {
        "pickle": [f"{s}_{kind}.pkl" for s in SPLITS for kind in ("images_png", "labels")],
    },
}
NAMES = {"miniimagenet": "mini-ImageNet", "tieredimagenet": "tiered-ImageNet"}


class MissingData(DownloadError):
    """The data set's files are not where the configuration says."""


# -- where the files are ---------------------------------------------------------------------------


def raw_dir(params: dict, dataset: str) -> Path:
    return Path(params["data"]["root"]) / "raw" / dataset


@dataclass(frozen=True)
class Source:
    dataset: str
    format: str
    folder: Path

    def files(self) -> list[Path]:
        return [self.folder / name for name in FORMATS[self.dataset][self.format]]


def _complete_format(dataset: str, folder: Path, wanted: str | None) -> str | None:
    """The format whose files are all in `folder` (`wanted` only, if given)."""
    for fmt, names in FORMATS[dataset].items():
        if (wanted in (None, fmt)) and all((folder / n).is_file() for n in names):
            return fmt
    return None


def _missing_message(params: dict, dataset: str, looked_in: list[Path], wanted: str | None) -> str:
    formats = {f: n for f, n in FORMATS[dataset].items() if wanted in (None, f)}
    expected = "; or ".join(f"{', '.join(names)} (format {fmt}"
                            + (", with the images in images/" if fmt == "csv" else "") + ")"
                            for fmt, names in formats.items())
    return (f"{NAMES[dataset]}: the files were not found in {', '.join(str(p) for p in looked_in)}.\n"
            f"Expected: {expected}.\n"
            f"Put them in {raw_dir(params, dataset)}, or set data.{dataset}.path in params.yaml to the folder "
            f"holding them (data.{dataset}.format picks the format), or data.{dataset}.files to their URLs "
            f"with checksums. There is no official download; see docs/data.md, 'mini-ImageNet and tiered-ImageNet'.")


def search_folders(params: dict, dataset: str) -> list[Path]:
    """Where `locate` looks for the files: data.<dataset>.path; else the data mirror's <dataset>/
    folder (when there is one), then <data.root>/raw/<dataset>/."""
    config = params["data"].get(dataset) or {}
    if config.get("path"):
        return [Path(config["path"]).expanduser()]
    candidates = [raw_dir(params, dataset)]
    mirror = data_mirror(params)
    if mirror and Path(mirror, dataset).is_dir():
        candidates.insert(0, Path(mirror, dataset))
    return candidates


def not_found(params: dict, dataset: str) -> str:
    """`locate`'s failure in one line, with the setting that fixes it (the pipeline's planning prints
    it for each data set whose benchmarks it skips)."""
    folders = " or ".join(str(folder) for folder in search_folders(params, dataset))
    return (f"{NAMES[dataset]} files not found at {folders} (set data.{dataset}.path in params.yaml; "
            "docs/data.md)")


def locate(params: dict, dataset: str) -> Source | None:
    """The folder holding the data set's files, checked without downloading anything; None when they
    are to be downloaded from data.<dataset>.files. Raises MissingData naming the files expected."""
    config = params["data"].get(dataset) or {}
    wanted = config.get("format")
    if config.get("files"):
        return None
    candidates = search_folders(params, dataset)
    for folder in candidates:
        fmt = _complete_format(dataset, folder, wanted)
        if fmt is not None:
            return Source(dataset, fmt, folder)
    raise MissingData(_missing_message(params, dataset, candidates, wanted))


def download(params: dict, dataset: str) -> Source:
    """The data set's files: downloaded and verified if data.<dataset>.files gives URLs, else located."""
    source = locate(params, dataset)
    if source is not None:
        return source
    files = params["data"][dataset]["files"]
    target = raw_dir(params, dataset)
    for name, remote in files.items():
        try:
            fetch(RemoteFile(name, remote["url"], md5=remote.get("md5", ""), sha256=remote.get("sha256")), target)
        except ChecksumError:
            raise
        except DownloadError as exc:  # fetch's own hint is about Omniglot: give this data set's
            raise MissingData(f"{str(exc).splitlines()[0]}\nCheck data.{dataset}.files.{name}.url, or put the "
                              f"file in {target} (or data.{dataset}.path) and remove data.{dataset}.files.") from exc
    fmt = _complete_format(dataset, target, None)
    if fmt is None:
        raise MissingData(_missing_message(params, dataset, [target], None))
    return Source(dataset, fmt, target)


# -- safe pickles ----------------------------------------------------------------------------------


class InvalidData(DownloadError):
    """A file that is not what its format says (wrong keys, shapes, unreadable images)."""


class UnsafePickle(InvalidData):
    """A pickle that asks for a class or function beyond numpy arrays and plain containers."""


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers; refuses every other class or
    function, so a hostile pickle cannot run code. (Dicts, lists, tuples, ints, floats, strings and
    bytes need no lookup: they are pickle opcodes.)"""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):  # numpy < 2 wrote these names
            module = "numpy._core." + module[len("numpy.core."):]
        if (module, name) not in self.ALLOWED:
            raise UnsafePickle(f"refusing {module}.{name}: only numpy arrays and plain containers are allowed")
        return super().find_class(module, name)


def load_pickle(path: Path):
    """Unpickle an untrusted file. latin1: pickles written by Python 2 (tiered-ImageNet's) hold
    numpy arrays whose raw bytes must pass through unchanged."""
    try:
        with open(path, "rb") as handle:
            return _ArraysOnly(handle, encoding="latin1").load()
    except UnsafePickle as exc:
        raise UnsafePickle(f"{path}: {exc}") from None


def _key(mapping: dict, name: str):
    """mapping[name], also when the keys are bytes (Python 2 pickles read with encoding='bytes')."""
    for key in (name, name.encode()):
        if key in mapping:
            return mapping[key]
    raise InvalidData(f"expected a key {name!r}; found {sorted(map(str, mapping))}")


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- reading each format ----------------------------------------------------------------------------
# Each reader lists a split's classes as (name, members: whatever locates an image) and says how to
# read one member; `_fill` then decodes into one preallocated array, so a split is never held twice.


def _to_84(image: Tensor) -> Tensor:
    """uint8 [3, H, W] -> [3, 84, 84]. The MAML script resized with PIL's Lanczos; bicubic with
    antialiasing is the closest torchvision offers for tensors. 84x84 images are kept as they are."""
    if image.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    from torchvision.transforms import InterpolationMode  # here: see omniglot._load_image
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, [IMAGE_SIZE, IMAGE_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)


def _decode(data: bytes | np.ndarray | str, what: str) -> Tensor:
    """An encoded image (PNG, JPEG, ...) -> uint8 [3, 84, 84]. Decoded by Pillow, as Omniglot's:
    torchvision's decoders are deprecated since 0.29."""
    if isinstance(data, str):  # a Python 2 byte string, read as latin1
        data = data.encode("latin1")
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    from torchvision.transforms.v2 import functional as TF  # here: see omniglot._load_image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            return _to_84(TF.pil_to_tensor(image.convert("RGB")))
    except OSError as exc:
        raise InvalidData(f"{what}: not a readable image ({exc})") from None


def _fill(classes: list[tuple[str, list]], read_one: Callable[[object], Tensor]) -> dict:
    """{"images": uint8 [N, 3, 84, 84], "offsets": [classes + 1], "classes": names}, classes sorted by name."""
    classes = sorted(classes, key=lambda c: c[0])
    sizes = torch.tensor([len(members) for _, members in classes], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    images = torch.empty(int(offsets[-1]), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    position = 0
    for _, members in classes:
        for member in members:
            images[position] = read_one(member)
            position += 1
    return {"images": images, "offsets": offsets, "classes": [name for name, _ in classes]}


def _read_mini_pickle(path: Path) -> dict:
    cache = load_pickle(path)
    if not isinstance(cache, dict):
        raise InvalidData(f"{path}: expected a dict with image_data and class_dict, found {type(cache).__name__}")
    data, class_dict = _key(cache, "image_data"), _key(cache, "class_dict")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4 and data.shape[3] == 3):
        raise InvalidData(f"{path}: image_data should be uint8 [N, H, W, 3], not "
                         f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
    images = torch.from_numpy(data).permute(0, 3, 1, 2)  # HWC -> CHW, a view
    classes = []
    for name, index in class_dict.items():
        index = [int(i) for i in index]
        if not index or min(index) < 0 or max(index) >= len(images):
            raise InvalidData(f"{path}: class {_as_text(name)} has no images or indices outside image_data")
        classes.append((_as_text(name), index))
    return _fill(classes, lambda i: _to_84(images[i]))


def _find_image(folder: Path, split: str, label: str, filename: str) -> Path:
    for path in (folder / "images" / filename, folder / split / label / filename):
        if path.is_file():
            return path
    raise MissingData(f"{NAMES['miniimagenet']}: {filename}, listed in {folder / (split + '.csv')}, is in neither "
                      f"{folder / 'images'} nor {folder / split / label}")


def _read_mini_csv(folder: Path, split: str) -> dict:
    path = folder / f"{split}.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise InvalidData(f"{path}: expected a header 'filename,label'")
    by_label: dict[str, list[Path]] = {}
    for row in rows[1:]:
        if row:  # paths resolved first: a missing image is reported before hours of decoding
            by_label.setdefault(row[1], []).append(_find_image(folder, split, row[1], row[0]))
    return _fill(list(by_label.items()), lambda p: _decode(p.read_bytes(), str(p)))


def _read_tiered(folder: Path, split: str) -> dict:
    labels_path, images_path = folder / f"{split}_labels.pkl", folder / f"{split}_images_png.pkl"
    labels = load_pickle(labels_path)
    if not isinstance(labels, dict):
        raise InvalidData(f"{labels_path}: expected a dict with label_specific, found {type(labels).__name__}")
    specific = np.asarray(_key(labels, "label_specific")).astype(np.int64).reshape(-1)
    n_classes = int(specific.max()) + 1
    try:
        names = [_as_text(n) for n in _key(labels, "label_specific_str")]
    except InvalidData:  # no class names in the file: the split and the index
        names = [f"{split}-{c:04d}" for c in range(n_classes)]
    encoded = load_pickle(images_path)
    if len(encoded) != len(specific):
        raise InvalidData(f"{images_path} holds {len(encoded)} images but {labels_path} {len(specific)} labels")
    classes = [(names[c], np.flatnonzero(specific == c).tolist()) for c in range(n_classes)]
    return _fill([c for c in classes if c[1]], lambda i: _decode(encoded[i], f"{images_path.name}[{i}]"))


def read_split(source: Source, split: str) -> dict:
    """One split: {"images": uint8 [N, 3, 84, 84], "offsets": [classes + 1], "classes": names}."""
    if source.dataset == "tieredimagenet":
        return _read_tiered(source.folder, split)
    if source.format == "csv":
        return _read_mini_csv(source.folder, split)
    name = {"train": "train", "val": "validation", "test": "test"}[split]
    return _read_mini_pickle(source.folder / f"mini-imagenet-cache-{name}.pkl")


# -- the cache -------------------------------------------------------------------------------------


def prepare(source: Source, out: Path) -> dict:
    """Read every split into ``out`` (the .pt cache) and ``out.with_suffix('.json')`` (manifest)."""
    cache = {}
    for split in SPLITS:  # one split's source files in memory at a time
        cache[split] = read_split(source, split)
    names = [name for split in SPLITS for name in cache[split]["classes"]]
    if len(set(names)) != len(names):
        raise InvalidData(f"{NAMES[source.dataset]}: a class appears twice, or in more than one split")
    sizes = torch.cat([cache[split]["offsets"].diff() for split in SPLITS])
    manifest = {
        "dataset": source.dataset,
        "format": source.format,
        "classes_per_split": {split: len(cache[split]["classes"]) for split in SPLITS},
        "images": int(sizes.sum()),
        "images_per_class": {"min": int(sizes.min()), "max": int(sizes.max())},
        "classes": {split: cache[split]["classes"] for split in SPLITS},
        "files": {p.name: file_digests(p)["sha256"] for p in source.files()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".pt.part")
    torch.save(cache, tmp)
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load(path: Path) -> dict:
    """The cache, memory-mapped: images are read from disk as episodes touch them."""
    if not path.exists():
        dataset = path.stem
        raise MissingData(f"{path}: no prepared {NAMES.get(dataset, dataset)} cache; run "
                          f"`metalearn prepare --dataset {dataset}` first")
    return torch.load(path, mmap=True, weights_only=True)


def split_pools(cache: dict) -> dict[str, tuple[Tensor, Tensor]]:
    """{split: (images [n, 3, 84, 84], offsets [classes + 1])}."""
    return {split: (cache[split]["images"], cache[split]["offsets"]) for split in SPLITS}


def check_fits(pools: dict[str, tuple[Tensor, Tensor]], bench: dict, bench_name: str) -> None:
    """The prepared data may be a subset of the standard splits: check ways and shots against it."""
    for split, (_, offsets) in pools.items():
        n_classes, fewest = len(offsets) - 1, int(offsets.diff().min()) if len(offsets) > 1 else 0
        if bench["ways"] > n_classes:
            raise ConfigError(f"benchmarks.{bench_name}.ways: {bench['ways']} ways but the prepared "
                              f"{bench['dataset']} {split} split has {n_classes} classes")
        for key in ("queries", "eval_queries"):
            if bench["shots"] + bench[key] > fewest:
                raise ConfigError(f"benchmarks.{bench_name}.{key}: shots + {key} = {bench['shots'] + bench[key]} "
                                  f"but a class of the prepared {bench['dataset']} {split} split has {fewest} images")
