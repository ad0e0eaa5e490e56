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
  background-alphabets
        the 30 background alphabets only (images_background; the 20 evaluation alphabets are never
        read, so they stay unseen), split by alphabet: every alphabet holding at least
        EVAL_ALPHABET_MIN (20) characters may be drawn for meta-test or validation; they are shuffled
        with `split_seed`, the first 6 are meta-test, the next 4 validation, and the other 16, with the
        four alphabets of fewer than 20 characters (Blackfoot, Ojibwe, Inuktitut, Tagalog: too small for
        a 20-way task within one alphabet), meta-training: 20 / 4 / 6 alphabets. On omniglot-small
        (8 alphabets, all background) the same rule with 4 / 2 / 2 (Tagalog always meta-training).
        For the benchmarks' within-alphabet tasks (`within_alphabet: true`: every episode's classes
        from one alphabet, benchmarks.py); split_seed 1's partition: docs/adapt.md.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from PIL import Image

from metalearn.data.download import OMNIGLOT_FILES, fetch, file_digests, open_checked_zip
from metalearn.data.omniglot_splits import (SMALL_TEST_ALPHABETS, SPLIT_SIZES, VARIANTS, alphabet_of,
                                            background_alphabets, characters, partition_alphabets)

IMAGE_SIZE = 28
DRAWERS = 20


def resize_mode(variant: str) -> str:
    return "binary" if variant.endswith("-binary") else "lanczos"


def alphabet_offsets(names: list[str]) -> tuple[list[str], torch.Tensor]:
    """(alphabets, offsets [alphabets + 1]) of a part's classes, which come grouped by alphabet (sorted
    names): alphabet i holds classes offsets[i]:offsets[i + 1]."""
    alphabets, offsets = [], []
    for i, name in enumerate(names):
        alphabet = alphabet_of(name)
        if not alphabets or alphabets[-1] != alphabet:
            if alphabet in alphabets:
                raise ValueError(f"the classes of alphabet {alphabet} are not together")
            alphabets.append(alphabet)
            offsets.append(i)
    return alphabets, torch.tensor(offsets + [len(names)])


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
    if split == "background-alphabets":
        return _split_background_alphabets(classes, variant, seed)
    n_train, n_val, n_test = SPLIT_SIZES[(characters(variant), split)]
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


def _split_background_alphabets(classes: list[str], variant: str, seed: int) -> dict[str, torch.Tensor]:
    """Class indices of each part of `partition_alphabets`, in name order (grouped by alphabet); the
    evaluation alphabets' classes are in none."""
    expected = background_alphabets(variant)
    found: dict[str, int] = {}
    for name in classes:
        if name.startswith("background/"):
            found[alphabet_of(name)] = found.get(alphabet_of(name), 0) + 1
    if found != expected:
        differ = sorted(a for a in set(found) | set(expected) if found.get(a) != expected.get(a))
        raise ValueError(f"{variant}: the cache's background alphabets differ from images_background's at {differ[:5]} "
                         "(characters per alphabet); prepare the data again (`metalearn prepare`)")
    parts = partition_alphabets(variant, seed)
    where = {alphabet: part for part, names in parts.items() for alphabet in names}
    order = sorted(range(len(classes)), key=lambda i: classes[i])
    return {part: torch.tensor([i for i in order if classes[i].startswith("background/")
                                and where[alphabet_of(classes[i])] == part], dtype=torch.long)
            for part in ("train", "val", "test")}
