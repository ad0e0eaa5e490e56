"""mini-ImageNet and tiered-ImageNet: where their files are, without torch (the workflow plans with
these; metalearn.data.imagenet reads the files into the prepared cache).

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
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metalearn.data.download import ChecksumError, DownloadError, RemoteFile, data_mirror, fetch

DATASETS = ("miniimagenet", "tieredimagenet")
SPLITS = ("train", "val", "test")
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
