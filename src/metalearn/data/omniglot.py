"""Omniglot: official archives -> a compact uint8 cache, and the class splits.

Variants
  omniglot        all 1623 characters (images_background.zip + images_evaluation.zip)
  omniglot-small  the official small subsets (images_background_small1/2.zip): 242 characters
  omniglot-binary, omniglot-small-binary
                  the same archives, resized as the MAML code's images (cbfinn/maml
                  data/omniglot_resized/resize_images.py, also MT-net's): its `im.resize((28, 28),
                  resample=Image.LANCZOS)` on the 1-bit PNGs is nearest neighbour (Pillow resamples mode
                  "1" images so), so every pixel is 0 or 255. The others: Lanczos from 8-bit grey
                  (`resize`), greys at the strokes' edges.

Cache: ``<root>/prepared/<variant>.pt`` holds ``images`` uint8 [classes, 20, 28, 28] (stroke = 255,
resized with Lanczos as in the MAML code) and ``classes``, names like ``background/Greek/character01``;
a JSON manifest beside it lists the classes and the archives' checksums.

Splits (class indices into the cache; rotations by multiples of 90 degrees come later: the sampler adds
rotated classes to meta-training, or with `rotations: per_task` turns each task's classes, benchmarks.py)
  maml  characters shuffled with `split_seed`; the first 1200 are meta-training, of which the last
        100 are validation; the remaining 423 are meta-test (as the MAML code).
  lake  background alphabets for meta-training and validation (100 characters drawn with
        `split_seed` for validation), evaluation alphabets (659 characters) for meta-test.
  On omniglot-small, proportionally: maml keeps 1200/1623 of the 242 characters (179) for
  meta-training and validation, 20 of them for validation, 63 for meta-test; lake holds out the
  three alphabets only in small2 (Japanese_(katakana), Sanskrit, Tagalog: 106 characters) for
  meta-test, and 20 of the other 136 characters for validation.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from PIL import Image

from metalearn.data.download import OMNIGLOT_FILES, fetch, file_digests, open_checked_zip

IMAGE_SIZE = 28
DRAWERS = 20
VARIANTS = {
    "omniglot": ["images_background.zip", "images_evaluation.zip"],
    "omniglot-small": ["images_background_small1.zip", "images_background_small2.zip"],
}
VARIANTS.update({f"{name}-binary": archives for name, archives in list(VARIANTS.items())})
ARCHIVE_SETS = ("omniglot", "omniglot-small")  # what is downloaded; the -binary variants read the same


def characters(variant: str) -> str:
    """The archive set of a variant ('omniglot-binary' -> 'omniglot'): its characters and splits."""
    return variant.removesuffix("-binary")


def resize_mode(variant: str) -> str:
    return "binary" if variant.endswith("-binary") else "lanczos"
SMALL_TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
_SPLIT_SIZES = {  # (meta-train, validation, meta-test) class counts, before rotations
    ("omniglot", "maml"): (1100, 100, 423),
    ("omniglot", "lake"): (864, 100, 659),
    ("omniglot-small", "maml"): (159, 20, 63),
    ("omniglot-small", "lake"): (116, 20, 106),
}


def split_sizes(variant: str, split: str) -> dict[str, int]:
    train, val, test = _SPLIT_SIZES[(characters(variant), split)]
    return {"train": train, "val": val, "test": test}


def download(variant: str, raw_dir: Path, mirror: str | None) -> list[Path]:
    return [fetch(OMNIGLOT_FILES[name], raw_dir, mirror) for name in VARIANTS[variant]]


def _class_name(member: str) -> tuple[str, str] | None:
    """'images_background_small1/Greek/character01/0394_01.png' -> ('background/Greek/character01', file)."""
    parts = member.split("/")
    if len(parts) != 4 or not parts[3].endswith(".png"):
        return None
    top = "evaluation" if parts[0].startswith("images_evaluation") else "background"
    return f"{top}/{parts[1]}/{parts[2]}", parts[3]


def _load_image(data: bytes, resize: str = "lanczos") -> torch.Tensor:
    """uint8 [28, 28], strokes bright on a dark background (as the MAML code's inverted images).
    `resize`: 'lanczos' (grey levels from the 8-bit image) or 'binary' (the MAML code's pixels: nearest
    neighbour on the 1-bit image, 0 or 255; see the module docstring)."""
    # torchvision here, not at the top: importing it costs every process of the pipeline ~1.5 s (torch._dynamo)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = Image.open(io.BytesIO(data))
    if resize == "binary":
        image = image.convert("1").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.NEAREST).convert("L")
    else:
        image = TF.resize(image.convert("L"), [IMAGE_SIZE, IMAGE_SIZE], interpolation=InterpolationMode.LANCZOS)
    return 255 - TF.pil_to_tensor(image)[0]


def prepare(variant: str, archives: list[Path], out: Path) -> dict:
    """Read the archives into ``out`` (a .pt cache) and ``out.with_suffix('.json')`` (manifest)."""
    drawings: dict[str, dict[str, torch.Tensor]] = {}
    for archive in archives:
        with open_checked_zip(archive) as zf:
            for member in sorted(zf.namelist()):
                parsed = _class_name(member)
                if parsed is None:
                    continue
                name, file = parsed
                # The small subsets overlap (Greek, Latin): the same drawing is kept once.
                drawings.setdefault(name, {}).setdefault(file, _load_image(zf.read(member), resize_mode(variant)))
    classes = sorted(drawings)
    incomplete = [c for c in classes if len(drawings[c]) != DRAWERS]
    if incomplete:
        raise ValueError(f"characters without {DRAWERS} drawings in {[a.name for a in archives]}: {incomplete[:5]}")
    images = torch.stack([torch.stack([drawings[c][f] for f in sorted(drawings[c])]) for c in classes])
    manifest = {
        "variant": variant,
        "classes": classes,
        "shape": list(images.shape),
        "archives": {a.name: file_digests(a)["sha256"] for a in archives},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".pt.part")
    torch.save({"images": images, "classes": classes}, tmp)
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load(path: Path) -> tuple[torch.Tensor, list[str]]:
    cache = torch.load(path, weights_only=True)
    return cache["images"], cache["classes"]


def split_classes(classes: list[str], variant: str, split: str, seed: int) -> dict[str, torch.Tensor]:
    """Class indices of the meta-train / validation / meta-test classes (see the module docstring)."""
    n_train, n_val, n_test = _SPLIT_SIZES[(characters(variant), split)]
    if len(classes) != n_train + n_val + n_test:
        raise ValueError(f"{variant} should have {n_train + n_val + n_test} characters, the cache has {len(classes)}")
    generator = torch.Generator().manual_seed(seed)
    if split == "maml":
        order = torch.randperm(len(classes), generator=generator)
        return {"train": order[:n_train].sort().values,
                "val": order[n_train:n_train + n_val].sort().values,
                "test": order[n_train + n_val:].sort().values}
    if characters(variant) == "omniglot":
        is_test = torch.tensor([c.startswith("evaluation/") for c in classes])
    else:
        is_test = torch.tensor([c.split("/")[1] in SMALL_TEST_ALPHABETS for c in classes])
    test = is_test.nonzero().flatten()
    trainval = (~is_test).nonzero().flatten()
    trainval = trainval[torch.randperm(len(trainval), generator=generator)]
    return {"train": trainval[:n_train].sort().values, "val": trainval[n_train:].sort().values, "test": test}
