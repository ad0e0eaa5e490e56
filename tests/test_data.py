"""Downloads are checked and atomic; archives are read safely; Omniglot is prepared and split right."""
from __future__ import annotations

import shutil
import zipfile

import pytest
import torch

from metalearn.data import download as dl
from metalearn.data import omniglot, omniglot_splits

SMALL1 = "images_background_small1.zip"


def test_mirror_archive_passes_official_checksum(tmp_path, mirror):
    path = dl.fetch(dl.OMNIGLOT_FILES[SMALL1], tmp_path / "raw", str(mirror))
    assert dl.file_digests(path)["md5"] == dl.OMNIGLOT_FILES[SMALL1].md5


def test_repacked_full_archive_accepted_by_mirror_sha256sums(tmp_path, mirror):
    """The mirror's full archives are re-packed (not the official md5) but listed in its SHA256SUMS."""
    path = dl.fetch(dl.OMNIGLOT_FILES["images_evaluation.zip"], tmp_path / "raw", str(mirror))
    assert dl.file_digests(path)["md5"] != dl.OMNIGLOT_FILES["images_evaluation.zip"].md5
    assert path.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_or_truncated_archive_fails_checksum_and_leaves_nothing(tmp_path, mirror, damage):
    bad_mirror = tmp_path / "mirror"
    bad_mirror.mkdir()
    data = (mirror / SMALL1).read_bytes()
    data = data[: len(data) // 2] if damage == "truncate" else data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
    (bad_mirror / SMALL1).write_bytes(data)
    shutil.copy(mirror / "SHA256SUMS", bad_mirror / "SHA256SUMS")
    target = tmp_path / "raw"
    with pytest.raises(dl.ChecksumError, match="failed its checksum"):
        dl.fetch(dl.OMNIGLOT_FILES[SMALL1], target, str(bad_mirror))
    assert list(target.iterdir()) == []  # neither the file nor a temporary part is left behind


def test_file_matching_neither_checksum_is_rejected_even_if_listed_elsewhere(tmp_path, mirror):
    bad_mirror = tmp_path / "mirror"
    bad_mirror.mkdir()
    (bad_mirror / SMALL1).write_bytes(b"not a zip")
    (bad_mirror / "SHA256SUMS").write_text(f"{'0' * 64}  {SMALL1}\n")
    with pytest.raises(dl.ChecksumError):
        dl.fetch(dl.OMNIGLOT_FILES[SMALL1], tmp_path / "raw", str(bad_mirror))


def test_corrupt_existing_file_is_replaced(tmp_path, mirror):
    target = tmp_path / "raw"
    target.mkdir()
    (target / SMALL1).write_bytes(b"partial")
    path = dl.fetch(dl.OMNIGLOT_FILES[SMALL1], target, str(mirror))
    assert dl.file_digests(path)["md5"] == dl.OMNIGLOT_FILES[SMALL1].md5


def test_offline_without_mirror_says_how_to_set_one(tmp_path, monkeypatch):
    unreachable = dl.RemoteFile(SMALL1, "http://127.0.0.1:9/" + SMALL1, md5="0" * 32)
    with pytest.raises(dl.DownloadError, match="METALEARN_DATA_MIRROR"):
        dl.fetch(unreachable, tmp_path / "raw", mirror=None)
    assert list((tmp_path / "raw").iterdir()) == []


def test_missing_file_in_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(dl.DownloadError, match="not found in the data mirror"):
        dl.fetch(dl.OMNIGLOT_FILES[SMALL1], tmp_path / "raw", str(tmp_path))


@pytest.mark.parametrize("member", ["../x", "a/../../x", "/etc/x"])
def test_zip_member_outside_target_is_refused(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images_background/Alpha/character01/0001_01.png", b"")
        zf.writestr(member, b"owned")
    with pytest.raises(dl.DownloadError, match="refusing member"):
        omniglot.prepare("omniglot-small", [archive], tmp_path / "out" / "cache.pt")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "x").exists()


def test_prepared_small_omniglot_has_242_characters_and_disjoint_splits(prepared_small):
    from metalearn import benchmarks

    images, classes = omniglot.load(benchmarks.prepared_path(prepared_small, "omniglot-small"))
    assert images.shape == (242, 20, 28, 28) and images.dtype == torch.uint8
    assert len(set(classes)) == 242
    # strokes are bright on a dark background, as in the MAML code
    assert images.float().mean() < 60 and images.max() == 255
    for split in ("maml", "lake"):
        parts = omniglot.split_classes(classes, "omniglot-small", split, seed=1)
        assert {k: len(v) for k, v in parts.items()} == omniglot_splits.split_sizes("omniglot-small", split)
        sets = [set(v.tolist()) for v in parts.values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    lake = omniglot.split_classes(classes, "omniglot-small", "lake", seed=1)
    test_alphabets = {classes[i].split("/")[1] for i in lake["test"].tolist()}
    assert test_alphabets == set(omniglot_splits.SMALL_TEST_ALPHABETS)


@pytest.mark.slow
def test_full_omniglot_prepares_1623_characters_with_the_papers_splits(tmp_path, mirror):
    archives = omniglot.download("omniglot", tmp_path / "raw", str(mirror))
    manifest = omniglot.prepare("omniglot", archives, tmp_path / "omniglot.pt")
    assert manifest["shape"] == [1623, 20, 28, 28]
    classes = manifest["classes"]
    maml = omniglot.split_classes(classes, "omniglot", "maml", seed=1)
    assert [len(maml[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    lake = omniglot.split_classes(classes, "omniglot", "lake", seed=1)
    assert all(classes[i].startswith("evaluation/") for i in lake["test"].tolist())
    assert [len(lake[k]) for k in ("train", "val", "test")] == [864, 100, 659]
