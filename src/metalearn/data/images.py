"""How a benchmark's images reach the network: the preprocessing record that travels with a model
(train.py saves it; `metalearn adapt` reads a user's images by it, as the training data were read)."""
from __future__ import annotations

from metalearn.data import imagenet, imagenet_files, omniglot

OMNIGLOT = {"channels": 1, "size": omniglot.IMAGE_SIZE, "invert": True, "resize": "lanczos"}
OMNIGLOT_BINARY = {**OMNIGLOT, "resize": "binary"}  # the -binary data sets (omniglot.py): pixels 0 or 255
IMAGENET = {"channels": 3, "size": imagenet.IMAGE_SIZE, "invert": False, "resize": "bicubic"}


def preprocessing_for(settings: dict) -> dict | None:
    """How a benchmark's images reach the network (saved with the model); None: not an image task."""
    if settings.get("task") == "omniglot":
        return dict(OMNIGLOT_BINARY if omniglot.resize_mode(settings.get("dataset", "omniglot")) == "binary" else OMNIGLOT)
    if settings.get("task") in imagenet_files.DATASETS:
        return dict(IMAGENET)
    return None
