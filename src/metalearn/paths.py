"""Where the pipeline's data files lie below ``data.root`` (all produced by the pipeline steps,
versioned by DVC), known without importing torch: the workflow plans its jobs with these.

  raw/omniglot/<archive>.zip            download
  raw/<miniimagenet|tieredimagenet>/    mini-/tiered-ImageNet files (metalearn.data.imagenet_files)
  prepared/<dataset>.pt (+ .json)       prepare
  episodes/<benchmark>.pt               split (validation and test episodes)
"""
from __future__ import annotations

from pathlib import Path


def raw_dir(params: dict) -> Path:
    """The Omniglot archives' folder."""
    return Path(params["data"]["root"]) / "raw" / "omniglot"


def prepared_path(params: dict, dataset: str) -> Path:
    return Path(params["data"]["root"]) / "prepared" / f"{dataset}.pt"


def episodes_path(params: dict, bench_name: str) -> Path:
    return Path(params["data"]["root"]) / "episodes" / f"{bench_name}.pt"
