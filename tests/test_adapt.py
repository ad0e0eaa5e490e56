"""`metalearn adapt`: a trained model on the user's own folders of images (metalearn.adapt)."""
from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import quick_params
from metalearn import adapt as ad
from metalearn import head_policies as hp
from metalearn import benchmarks
from metalearn.algorithms import ALGORITHMS
from metalearn.cli import main
from metalearn.config import Benchmark, Run
from metalearn.data import imagenet, omniglot
from metalearn.data.images import IMAGENET, OMNIGLOT, preprocessing_for
from metalearn.train import build, run_config, train

SMALL_ARCHIVES = omniglot.VARIANTS["omniglot-small"]


# -- helpers: real Omniglot drawings as folders, model files ---------------------------------------

def omniglot_pngs(mirror: Path, characters: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    """The PNG files (name, bytes) of `characters` ('background/Greek/character01') in the archives."""
    found: dict[str, dict[str, bytes]] = {c: {} for c in characters}
    for archive in SMALL_ARCHIVES:
        with zipfile.ZipFile(mirror / archive) as zf:
            for member in zf.namelist():
                parsed = omniglot._class_name(member)
                if parsed and parsed[0] in found:
                    found[parsed[0]].setdefault(parsed[1], zf.read(member))
    return {c: sorted(files.items()) for c, files in found.items()}


def write_task(root: Path, pngs: dict[str, list[tuple[str, bytes]]], shots: int, queries: int) -> tuple[Path, Path]:
    """support/<class>/ with the first `shots` drawings, query/<class>/ with the next `queries`."""
    for character, files in pngs.items():
        name = character.replace("/", "_")
        for folder, chosen in (("support", files[:shots]), ("query", files[shots:shots + queries])):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            for file, data in chosen:
                (root / folder / name / file).write_bytes(data)
    return root / "support", root / "query"


def save_untrained(params: dict, bench: str, algorithm: str, path: Path) -> Path:
    """A model file as train.py writes it, from a freshly initialised algorithm (no training)."""
    algo = build(Run.of(Benchmark.of(params, bench), algorithm, 0), torch.device("cpu"))
    config = run_config(params, bench, algorithm, 0)
    torch.save({"format": 1, "config": config, "state_dict": algo.state_dict(), "train_seconds": 0.0,
                "iterations": 0, "preprocessing": preprocessing_for(config["settings"])}, path)
    return path


def image_folder(root: Path, layout: dict[str, int], make) -> Path:
    """root/<class>/<i>.png for each class in `layout` ({class: count}), images from make(class, i)."""
    for name, count in layout.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            make(name, i).save(root / name / f"{i}.png")
    return root


def drawing(name: str, i: int) -> Image.Image:
    """A random binary 'drawing' (dark strokes on white, as Omniglot's files) of any size."""
    rng = np.random.default_rng(zlib.crc32(f"{name}/{i}".encode()))
    pixels = np.where(rng.random((50, 60)) < 0.15, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L")


@pytest.fixture(scope="module")
def untrained_omniglot(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("untrained")
    params = quick_params(root)
    return params, save_untrained(params, "omniglot-5w1s", "maml", root / "model.pt")


# -- preprocessing: as the training data ----------------------------------------------------------

def test_a_drawing_from_a_folder_equals_its_training_cache_entry(prepared_small, mirror):
    images, classes = omniglot.load(benchmarks.prepared_path(prepared_small, "omniglot-small"))
    character = classes[7]
    (file, data), *_ = omniglot_pngs(mirror, [character])[character]
    path = Path(prepared_small["data"]["root"]) / "one.png"
    path.write_bytes(data)
    pixels, colour = ad.read_image(path, OMNIGLOT)
    assert not colour and pixels.shape == (1, 28, 28)
    # the cache holds the drawings in file order; this is the first
    assert torch.equal((pixels[0] * 255).round().to(torch.uint8), images[7, 0])


def test_light_strokes_on_dark_reach_the_model_as_dark_strokes_do(tmp_path, mirror):
    (file, data), *_ = next(iter(omniglot_pngs(mirror, ["background/Greek/character01"]).values()))
    (tmp_path / "a.png").write_bytes(data)
    ImageOps.invert(Image.open(tmp_path / "a.png").convert("L")).save(tmp_path / "b.png")
    dark_strokes, _ = ad.read_image(tmp_path / "a.png", OMNIGLOT)
    light_strokes, _ = ad.read_image(tmp_path / "b.png", OMNIGLOT)
    assert dark_strokes[0, 0, 0] == 0  # background dark, as in training
    assert (dark_strokes - light_strokes).abs().max() <= 1 / 255  # Lanczos rounding at most


def test_imagenet_models_read_any_image_as_their_training_data(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    pixels, colour = ad.read_image(tmp_path / "photo.jpg", IMAGENET)
    expected = imagenet._decode((tmp_path / "photo.jpg").read_bytes(), "photo").float() / 255
    assert colour and pixels.shape == (3, 84, 84) and torch.equal(pixels, expected)


def test_preprocessing_is_saved_with_the_model_and_derived_for_older_files(prepared_small, tmp_path):
    assert preprocessing_for({"task": "omniglot"}) == {"channels": 1, "size": 28, "invert": True,
                                                          "resize": "lanczos"}
    assert preprocessing_for({"task": "miniimagenet"})["channels"] == 3
    assert preprocessing_for({"task": "sinusoid"}) is None
    path = train(Benchmark.of(prepared_small, "sinusoid"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    assert "preprocessing" in torch.load(path, weights_only=True)  # None for a regression model


# -- the head policy ------------------------------------------------------------------------------

def test_other_ways_get_a_zero_head_and_keep_every_other_meta_parameter(untrained_omniglot):
    _, path = untrained_omniglot
    saved = torch.load(path, weights_only=True)
    assert hp.head_policy(saved, 7, "auto") == "proto"  # auto at another number of classes (docs/adapt.md)
    algo, policy = hp.adapted_algorithm(saved, 7, "zero", "cpu")
    assert policy == "zero"
    state = algo.state_dict()
    assert state["model.head.weight"].shape == (7, 64) and not state["model.head.weight"].any()
    assert state["model.head.bias"].shape == (7,) and not state["model.head.bias"].any()
    for key, value in saved["state_dict"].items():
        if key not in hp.HEAD:
            assert torch.equal(state[key], value), key
    same, policy = hp.adapted_algorithm(saved, 5, "auto", "cpu")
    assert policy == "trained" and torch.equal(same.state_dict()["model.head.weight"],
                                               saved["state_dict"]["model.head.weight"])
    with pytest.raises(hp.AdaptError, match="trained head has 5 outputs"):
        hp.adapted_algorithm(saved, 7, "trained", "cpu")


def test_a_zero_head_predicts_uniformly_before_adaptation(untrained_omniglot):
    _, path = untrained_omniglot
    algo, _ = hp.adapted_algorithm(torch.load(path, weights_only=True), 9, "zero", "cpu")
    x, y = torch.rand(18, 1, 28, 28), torch.arange(9).repeat(2)
    probabilities = ad.adapt_and_predict(algo, (x, y), x, steps=0)
    assert torch.allclose(probabilities, torch.full((18, 9), 1 / 9))
    adapted = ad.adapt_and_predict(algo, (x, y), x, steps=3)
    assert (adapted.argmax(-1) == y).float().mean() > 0.5  # the steps learn the head from the support


@pytest.mark.parametrize("algorithm, shaped", [("metasgd", "alpha.head"), ("tnet", "transform.4"),
                                               ("mtnet", "zeta.4")])
def test_algorithms_with_class_shaped_meta_parameters_refuse_other_ways(tmp_path, algorithm, shaped):
    params = quick_params(tmp_path)
    saved = torch.load(save_untrained(params, "omniglot-5w1s", algorithm, tmp_path / "m.pt"), weights_only=True)
    assert hp.head_policy(saved, 6, "auto") == ("zero" if algorithm in ("tnet", "mtnet") else "proto")  # T after the head
    with pytest.raises(hp.AdaptError, match=f"meta-learned .*{shaped}.* for 5 classes; it cannot adapt to 6"):
        hp.adapted_algorithm(saved, 6, "auto", "cpu")
    hp.adapted_algorithm(saved, 5, "zero", "cpu")  # the same number of classes works, with either head


# Every algorithm that can learn image classes: the oracle's inputs are a sinusoid's parameters.
IMAGE_ALGORITHMS = sorted(name for name, cls in ALGORITHMS.items() if not getattr(cls, "sees_task_parameters", False))


@pytest.mark.parametrize("algorithm", IMAGE_ALGORITHMS)
def test_every_algorithm_adapts_through_the_interface(tmp_path, algorithm):
    """Each algorithm's own adapt + predict, from folders to a CSV (untrained: only shapes checked,
    plus agreement with calling the interface directly)."""
    params = quick_params(tmp_path)
    if algorithm not in params["benchmarks"]["omniglot-5w1s"]["algorithms"]:  # paper profile only (warpmaml, ...)
        from conftest import ROOT
        from metalearn.config import load_params

        configured = load_params(ROOT / "params.yaml", "paper")["benchmarks"]["omniglot-5w1s"]["algorithms"]
        # the pretrained baseline runs on sinusoids only in params.yaml (Reptile: in metalearn/alphabets/'s
        # protocol): MAML's steps here
        takes_steps = algorithm == "reptile" or getattr(ALGORITHMS[algorithm], "head_from_support", False)
        fallback = {"inner_lr": 0.4, "test_inner_steps": 3, **({"inner_steps": 1} if takes_steps else {})}
        paper = configured.get(algorithm, fallback)
        params = quick_params(tmp_path, benchmarks={"omniglot-5w1s": {"algorithms": {
            algorithm: {k: v for k, v in paper.items() if k != "iterations"}}}})
    path = save_untrained(params, "omniglot-5w1s", algorithm, tmp_path / "m.pt")
    layout = {f"c{i}": 2 for i in range(5)}
    support = image_folder(tmp_path / "support", layout, drawing)
    query = image_folder(tmp_path / "query", layout, lambda c, i: drawing(c, i + 10))
    result = ad.adapt(path, support, query, steps=2, device="cpu")
    own_head = "proto" if getattr(ALGORITHMS[algorithm], "head_from_support", False) else "trained"  # protomaml
    assert len(result.files) == 10 and result.classes == list(layout) and result.head == own_head
    algo, _ = hp.adapted_algorithm(torch.load(path, weights_only=True), 5, own_head, "cpu")
    sx, _ = ad.read_images(sorted(support.rglob("*.png")), OMNIGLOT)
    qx, _ = ad.read_images(sorted(query.rglob("*.png")), OMNIGLOT)
    direct = ad.adapt_and_predict(algo, (sx, torch.arange(5).repeat_interleave(2)), qx, steps=2)
    assert result.predicted == direct.argmax(-1).tolist()
    assert result.probability == pytest.approx(direct.max(-1).values.tolist(), abs=1e-6)


# -- clear errors ---------------------------------------------------------------------------------

def test_folder_and_image_errors_say_what_is_wrong(untrained_omniglot, tmp_path):
    _, path = untrained_omniglot
    support = image_folder(tmp_path / "support", {"a": 1, "b": 1}, drawing)
    query = image_folder(tmp_path / "query", {"a": 1}, drawing)

    (support / "c").mkdir()
    with pytest.raises(hp.AdaptError, match=r"class folder .*c is empty"):
        ad.adapt(path, support, query, device="cpu")
    (support / "c").rmdir()

    (support / "b" / "notes.png").write_text("not an image")
    with pytest.raises(hp.AdaptError, match=r"notes.png: not a readable image"):
        ad.adapt(path, support, query, device="cpu")
    (support / "b" / "notes.png").unlink()

    image_folder(query, {"z": 1}, drawing)
    with pytest.raises(hp.AdaptError, match=r"query classes \['z'\] have no support images"):
        ad.adapt(path, support, query, device="cpu")

    with pytest.raises(hp.AdaptError, match="at least 2"):
        ad.adapt(path, image_folder(tmp_path / "one", {"a": 2}, drawing), tmp_path / "query" / "a", device="cpu")

    drawing("x", 0).save(support / "loose.png")
    with pytest.raises(hp.AdaptError, match="outside class folders"):
        ad.adapt(path, support, query, device="cpu")


def test_image_kinds_that_do_not_match_the_model_are_refused(untrained_omniglot, tmp_path):
    params, path = untrained_omniglot
    support = image_folder(tmp_path / "support", {"a": 1, "b": 1}, drawing)
    query = tmp_path / "query"
    query.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(query / "photo.png")
    with pytest.raises(hp.AdaptError, match=r"trained on grayscale drawings, but 1 image\(s\) are in colour"):
        ad.adapt(path, support, query, device="cpu")
    # a gray picture stored as RGB is still gray
    drawing("q", 0).convert("RGB").save(query / "photo.png")
    assert len(ad.adapt(path, support, query, device="cpu").files) == 1

    # an ImageNet-style model file: 3 channels, 84x84 (built directly: no mini-ImageNet data here)
    saved = torch.load(path, weights_only=True)
    settings = {**saved["config"]["settings"], "task": "miniimagenet", "model": "conv4-maxpool"}
    objective = benchmarks.build_objective(settings)
    algo = ALGORITHMS["maml"](objective.model, objective, saved["config"]["hparams"])
    rgb_model = tmp_path / "rgb.pt"
    torch.save({**saved, "config": {**saved["config"], "settings": settings}, "state_dict": algo.state_dict(),
                "preprocessing": preprocessing_for(settings)}, rgb_model)
    with pytest.raises(hp.AdaptError, match="trained on colour photos, but all 3 images are grayscale"):
        ad.adapt(rgb_model, support, query, device="cpu")


# -- MLflow model URIs ------------------------------------------------------------------------------

def test_an_mlflow_run_uri_resolves_to_its_logged_model(untrained_omniglot, tmp_path, monkeypatch):
    import mlflow

    _, path = untrained_omniglot
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("adapt", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(path), "model")  # as tracking.log_model does
    local = ad.resolve_model(f"runs:/{run.info.run_id}/model", tmp_path / "download")
    assert local.name == "model.pt" and local.read_bytes() == path.read_bytes()
    with pytest.raises(hp.AdaptError, match="cannot fetch"):
        ad.resolve_model("runs:/0123456789abcdef/model", tmp_path / "download2")


# -- end to end: a briefly trained MAML on new Omniglot characters ------------------------------

@pytest.mark.slow
def test_briefly_trained_maml_classifies_new_characters_from_folders(prepared_small, mirror, tmp_path, capsys):
    """MAML trained for a short run on omniglot-small, then `metalearn adapt` on meta-test characters
    (never seen in training), arranged as folders of the archives' PNGs: 5 ways, 1 shot, far above
    the 20% of chance; 20 ways (the prototype head, auto's choice, and a zero head) above its 5%."""
    iterations = 150
    params = quick_params(Path(prepared_small["data"]["root"]).parent, benchmarks={"omniglot-5w1s": {
        "train": {"meta_batch": 8, "iterations": iterations, "checkpoint_every": iterations, "log_every": 50}}})
    model = train(Benchmark.of(params, "omniglot-5w1s"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)

    bench = params["benchmarks"]["omniglot-5w1s"]
    _, classes = omniglot.load(benchmarks.prepared_path(params, "omniglot-small"))
    test_split = omniglot.split_classes(classes, "omniglot-small", bench["split"], bench["split_seed"])["test"]
    order = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(0))
    characters = [classes[i] for i in test_split[order[:20]]]
    pngs = omniglot_pngs(mirror, characters)

    accuracies = []
    for episode in range(3):  # three 5-way episodes: distinct characters, 1 shot, 10 queries each
        chosen = {c: pngs[c] for c in characters[5 * episode:5 * episode + 5]}
        support, query = write_task(tmp_path / f"episode{episode}", chosen, shots=1, queries=10)
        out = tmp_path / f"predictions{episode}.csv"
        assert main(["adapt", "--model", str(model), "--support", str(support), "--query", str(query),
                     "--out", str(out), "--device", "cpu"]) == 0
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 50 and set(rows[0]) == {"file", "predicted", "probability", "label", "correct"}
        assert all(0.2 <= float(r["probability"]) <= 1 for r in rows)  # the top of 5 probabilities
        accuracies.append(sum(r["predicted"] == r["label"] for r in rows) / len(rows))
        assert f"accuracy {100 * accuracies[-1]:.1f}%" in capsys.readouterr().err
    assert sum(accuracies) / 3 > 0.6, accuracies

    support, query = write_task(tmp_path / "twenty", pngs, shots=1, queries=5)
    result = ad.adapt(model, support, query, steps=10, device="cpu")
    assert result.head == "proto" and len(result.classes) == 20  # auto at another number of classes
    assert result.accuracy > 0.2, result.accuracy  # chance: 5%
    zero = ad.adapt(model, support, query, steps=10, head="zero", device="cpu")
    assert zero.head == "zero" and zero.accuracy > 0.2, zero.accuracy
