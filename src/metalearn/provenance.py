"""Where a result came from: the code's commit, the software, the machine, the command and the date.

Training writes it into model.pt and evaluation into its JSON; `metalearn record` copies both into
the committed record (metalearn.records). `content_digest` hashes saved episodes by their contents,
so that a file rebuilt from its seeds can be compared with the one a record was evaluated on.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPOSITORY = Path(__file__).resolve().parents[2]  # src/metalearn/ -> the checkout (when installed editable)
# the paths whose edits change results: a record made with uncommitted edits to them says so
CODE_PATHS = ("src", "workflow", "params.yaml", "Snakefile")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict:
    """The commit of the checkout the package runs from and whether its code had uncommitted edits
    (None: not a git checkout, e.g. an installed wheel)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--", *CODE_PATHS))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict:
    """The device a job ran on: CPU model, cores and torch threads; the GPU's name where it used one."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    found = {"device": device.type, "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
    return found


def collect(device: torch.device | str | None = None) -> dict:
    """This process's provenance: code version, software, machine, command, date (UTC) and the
    process's CPU seconds so far (all its threads)."""
    return {**code_version(), "torch": str(torch.__version__), "python": platform.python_version(),
            **machine(device), "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "process_cpu_seconds": round(time.process_time(), 3)}


def stamp() -> dict:
    """The commit (12 digits, -dirty with uncommitted edits), date and machine of a measurement's row
    (bench/results/*.csv)."""
    version = code_version()
    return {"commit": (version["commit"] or "unknown")[:12] + ("-dirty" if version["dirty"] else ""),
            "date": datetime.date.today().isoformat(), "machine": f"{cpu_model()} ({os.cpu_count()} cores)"}


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=str):
            digest.update(json.dumps(str(key)).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"list {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())


def content_digest(value: Any) -> str:
    """sha256 of a nested structure of tensors, dicts, lists and plain values: equal for equal contents,
    whatever file container or dict order held them."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def file_content_digest(path: Path) -> str:
    """content_digest of a torch file of plain data (episodes, test tasks)."""
    return content_digest(torch.load(Path(path), map_location="cpu", weights_only=True))
