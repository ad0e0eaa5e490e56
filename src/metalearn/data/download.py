"""Checked downloads: official URL or a mirror, checksum verified, written atomically, safe unzip.

A file from the official location must match the official checksum. A file from a mirror must
match the official checksum or the mirror's own ``SHA256SUMS`` (a mirror may hold re-packed
archives). Anything else is deleted and reported; nothing unchecked is ever left at the target path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

MIRROR_ENV = "METALEARN_DATA_MIRROR"


def data_mirror(params: dict) -> str | None:
    """The data mirror: METALEARN_DATA_MIRROR if set, else data.mirror."""
    return os.environ.get(MIRROR_ENV) or params["data"].get("mirror")


class DownloadError(RuntimeError):
    pass


class ChecksumError(DownloadError):
    pass


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str  # the official checksum
    sha256: str | None = None  # official sha256 where known


OMNIGLOT_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
OMNIGLOT_FILES = {
    f.name: f
    for f in [
        RemoteFile("images_background.zip", OMNIGLOT_BASE + "images_background.zip",
                   md5="68d2efa1b9178cc56df9314c21c6e718"),
        RemoteFile("images_evaluation.zip", OMNIGLOT_BASE + "images_evaluation.zip",
                   md5="6b91aef0f799c5bb55b94e3f2daec811"),
        RemoteFile("images_background_small1.zip", OMNIGLOT_BASE + "images_background_small1.zip",
                   md5="e704a628b5459e08445c13499850abc4",
                   sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
        RemoteFile("images_background_small2.zip", OMNIGLOT_BASE + "images_background_small2.zip",
                   md5="b75a71a51d3b13f821f212756fe481fd",
                   sha256="3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    ]
}


def file_digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def matches_official(digests: dict[str, str], remote: RemoteFile) -> bool:
    return digests["md5"] == remote.md5 or (remote.sha256 is not None and digests["sha256"] == remote.sha256)


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in {"http", "https", "ftp", "file"}


def _copy_from(location: str, dest: Path) -> None:
    """Copy a local path or URL to `dest` (a temporary file)."""
    if _is_url(location):
        try:
            with urllib.request.urlopen(location, timeout=60) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(f"could not download {location}: {exc}") from exc
    else:
        shutil.copyfile(location, dest)


def _mirror_sums(mirror: str) -> dict[str, str]:
    """The mirror's SHA256SUMS, {file name: sha256}; empty if it has none."""
    location = _join(mirror, "SHA256SUMS")
    try:
        if _is_url(location):
            with urllib.request.urlopen(location, timeout=30) as response:
                text = response.read().decode()
        else:
            text = Path(location).read_text()
    except (OSError, urllib.error.URLError):
        return {}
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if _is_url(base) else str(Path(base) / name)


def fetch(remote: RemoteFile, target_dir: Path, mirror: str | None = None) -> Path:
    """Ensure `target_dir/remote.name` exists and is verified; return its path.

    With a mirror, the file comes from there (no network); otherwise from the official URL.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / remote.name
    if target.exists():
        digests = file_digests(target)
        allowed = {remote.sha256} | ({_mirror_sums(mirror).get(remote.name)} if mirror else set())
        if matches_official(digests, remote) or digests["sha256"] in allowed - {None}:
            return target
        target.unlink()  # a corrupt leftover: fetch it again

    source = _join(mirror, remote.name) if mirror else remote.url
    if mirror and not _is_url(mirror) and not Path(source).exists():
        raise DownloadError(f"{remote.name} not found in the data mirror {mirror!r} "
                            f"(set by data.mirror or {MIRROR_ENV})")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=target_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _copy_from(source, tmp)
        except DownloadError as exc:
            if mirror:
                raise
            raise DownloadError(
                f"{exc}\nThis machine seems to be offline. Put the Omniglot archives in a folder and point "
                f"the data mirror at it: `export {MIRROR_ENV}=/path/to/folder` or `data.mirror` in params.yaml."
            ) from exc
        digests = file_digests(tmp)
        ok = matches_official(digests, remote)
        if not ok and mirror:
            ok = digests["sha256"] == _mirror_sums(mirror).get(remote.name)
        if not ok:
            expected = f"official md5 {remote.md5}" + (" or the mirror's SHA256SUMS entry" if mirror else "")
            raise ChecksumError(
                f"{remote.name} from {source} failed its checksum (md5 {digests['md5']}, sha256 "
                f"{digests['sha256']}; expected {expected}). The file was discarded; it is corrupt or truncated.")
        os.replace(tmp, target)  # atomic: the target is either absent or complete and verified
    finally:
        tmp.unlink(missing_ok=True)
    return target


def open_checked_zip(archive: Path) -> zipfile.ZipFile:
    """Open `archive`, refusing it if any member would land outside the folder it is unpacked into
    (``../x``, absolute paths): such an archive is malformed or hostile, whoever reads it."""
    zf = zipfile.ZipFile(archive)
    for name in zf.namelist():
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            zf.close()
            raise DownloadError(f"{archive.name}: refusing member {name!r}, which would land outside "
                                f"the target folder")
    return zf

