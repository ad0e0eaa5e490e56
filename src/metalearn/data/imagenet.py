"""mini-ImageNet and tiered-ImageNet: the files researchers have (found or downloaded by
metalearn.data.imagenet_files, which also says their formats) -> a compact uint8 cache.

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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from PIL import Image

from metalearn.data.download import DownloadError, file_digests
from metalearn.data.imagenet_files import NAMES, SPLITS, MissingData, Source
from metalearn.errors import ConfigError

IMAGE_SIZE = 84


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
