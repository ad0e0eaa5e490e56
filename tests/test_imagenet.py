"""mini-ImageNet and tiered-ImageNet on tiny generated files in each format (no real ImageNet here):
the files are read exactly, the splits keep their classes, episodes are deterministic, MAML trains,
untrusted pickles run no code, and missing data stops a command with the files and settings to fix."""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from metalearn import benchmarks
from metalearn.cli import main as cli
from metalearn.config import Benchmark, validate
from metalearn.data import episodes as ep
from metalearn.data import imagenet, imagenet_files
from metalearn.data.download import MIRROR_ENV, ChecksumError
from metalearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"train": 5, "val": 3, "test": 3}  # tiny stand-ins for 64/16/20 and 351/97/160
PER_CLASS = 25
TIERED_SIZES = {"train": [25, 20, 30, 22, 27], "val": [21, 26, 24], "test": [23, 20, 28]}  # differ, as in tiered
MINI_PICKLE = {"train": "train", "val": "validation", "test": "test"}


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)  # the Omniglot mirror of the other tests


def wnids(split: str, n: int) -> list[str]:
    base = {"train": 1000000, "val": 2000000, "test": 3000000}[split]
    return [f"n{base + 7 * c:08d}" for c in range(n)][::-1]  # reversed: the cache must sort them


def encoded(image: torch.Tensor, format: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(out, format=format, **options)
    return out.getvalue()


def decoded(data: bytes) -> torch.Tensor:
    return TF.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))


def random_images(n: int, seed: int, height: int = 84, width: int = 84) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def make_mini_pickles(folder) -> dict[str, dict[str, torch.Tensor]]:
    """The shared cache files; returns {split: {wnid: images [n, 3, 84, 84]}}. Classes interleaved in
    image_data, so the reader must follow class_dict."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for s, split in enumerate(imagenet.SPLITS):
        names, n = wnids(split, CLASSES[split]), CLASSES[split]
        images = random_images(n * PER_CLASS, seed=s)
        truth[split] = {name: images[c::n] for c, name in enumerate(names)}
        cache = {"image_data": images.permute(0, 2, 3, 1).numpy(),
                 "class_dict": {name: list(range(c, n * PER_CLASS, n)) for c, name in enumerate(names)}}
        (folder / f"mini-imagenet-cache-{MINI_PICKLE[split]}.pkl").write_bytes(pickle.dumps(cache, protocol=4))
    return truth


def make_mini_csv(folder) -> dict[str, dict[str, torch.Tensor]]:
    """Ravi & Larochelle's csv files over JPEGs of another size (100x90), most in images/, the test
    split in <split>/<label>/ as MAML's proc_images.py leaves them; returns the decoded originals."""
    truth = {}
    for s, split in enumerate(imagenet.SPLITS):
        names = wnids(split, CLASSES[split])
        rows, truth[split] = ["filename,label"], {}
        for c, name in enumerate(names):
            images = random_images(4, seed=100 * s + c, height=90, width=100)  # 4 per class: JPEG is slow
            originals = []
            for i, image in enumerate(images):
                filename = f"{name}{i:08d}.jpg"
                where = folder / split / name if split == "test" else folder / "images"
                where.mkdir(parents=True, exist_ok=True)
                data = encoded(image, "JPEG", quality=90)
                (where / filename).write_bytes(data)
                originals.append(decoded(data))
                rows.append(f"{filename},{name}")
            truth[split][name] = torch.stack(originals)
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return truth


def make_tiered(folder, numpy1_names: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """{split}_images_png.pkl (PNG bytes as uint8 arrays, classes interleaved) and {split}_labels.pkl.
    Written with protocol 2 and numpy 1's module names, as the shared (Python 2 era) files are."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for s, split in enumerate(imagenet.SPLITS):
        sizes, names = TIERED_SIZES[split], wnids(split, len(TIERED_SIZES[split]))
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
        labels = labels[np.random.default_rng(s).permutation(len(labels))]
        images = random_images(len(labels), seed=10 + s)
        pngs = [np.frombuffer(encoded(image, "PNG"), dtype=np.uint8) for image in images]
        truth[split] = {name: images[torch.from_numpy(labels == c)] for c, name in enumerate(names)}
        record = {"label_specific": labels, "label_general": labels // 2,
                  "label_specific_str": names, "label_general_str": ["g0", "g1", "g2"]}
        for name, obj in ((f"{split}_images_png.pkl", pngs), (f"{split}_labels.pkl", record)):
            data = pickle.dumps(obj, protocol=2)
            if numpy1_names:  # protocol 2 names globals as text lines, so this is a faithful rename
                data = data.replace(b"numpy._core.", b"numpy.core.")
            (folder / name).write_bytes(data)
    return truth


def imagenet_params(tmp_path, dataset: str, source: dict | None = None, /, **bench_overrides) -> dict:
    bench = {"task": dataset, "model": "conv4-maxpool", "dataset": dataset, "ways": 3, "shots": 1,
             "queries": 2, "eval_queries": 3, "val_tasks": 4, "test_tasks": 6, "episode_seed": 0,
             "train": {"meta_batch": 2, "meta_lr": 0.001, "iterations": 2, "checkpoint_every": 1, "log_every": 1},
             "algorithms": {"maml": {"inner_lr": 0.01, "inner_steps": 1, "test_inner_steps": 2}},
             **bench_overrides}
    data = {"root": str(tmp_path / "data"), "mirror": None}
    if source is not None:
        data[dataset] = source
    return validate({"data": data, "seeds": [0], "benchmarks": {f"{dataset}-3w1s": bench}})


def prepared(params: dict, dataset: str) -> dict:
    imagenet.prepare(imagenet_files.download(params, dataset), benchmarks.prepared_path(params, dataset))
    return imagenet.load(benchmarks.prepared_path(params, dataset))


def assert_cache_holds(cache: dict, truth: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every split holds exactly its classes, sorted by name, each with its images in file order."""
    for split in imagenet.SPLITS:
        part = cache[split]
        assert part["classes"] == sorted(truth[split])
        assert part["images"].dtype == torch.uint8 and part["images"].shape[1:] == (3, 84, 84)
        for c, name in enumerate(part["classes"]):
            assert torch.equal(part["images"][part["offsets"][c]:part["offsets"][c + 1]], truth[split][name]), name


# -- each format is read exactly --------------------------------------------------------------------


def test_mini_imagenet_pickle_cache_holds_each_splits_classes_and_images_exactly(tmp_path):
    truth = make_mini_pickles(tmp_path / "files")
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "files")})
    cache = prepared(params, "miniimagenet")
    assert_cache_holds(cache, truth)
    assert {s: len(cache[s]["classes"]) for s in imagenet.SPLITS} == CLASSES
    assert all(torch.equal(cache[s]["offsets"], torch.arange(CLASSES[s] + 1) * PER_CLASS) for s in imagenet.SPLITS)
    manifest = benchmarks.prepared_path(params, "miniimagenet").with_suffix(".json").read_text()
    assert '"format": "pickle"' in manifest and hashlib.sha256(
        (tmp_path / "files" / "mini-imagenet-cache-train.pkl").read_bytes()).hexdigest() in manifest


def test_mini_imagenet_csv_reads_both_folder_layouts_and_resizes_to_84(tmp_path):
    truth = make_mini_csv(tmp_path / "files")
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "files"), "format": "csv"},
                             queries=1, eval_queries=2)
    resized = {split: {name: TF.resize(images, [84, 84], interpolation=InterpolationMode.BICUBIC, antialias=True)
                       for name, images in classes.items()} for split, classes in truth.items()}
    cache = prepared(params, "miniimagenet")
    assert_cache_holds(cache, resized)


def test_csv_image_missing_from_both_layouts_is_named(tmp_path):
    make_mini_csv(tmp_path / "files")
    lost = sorted((tmp_path / "files" / "images").iterdir())[0]
    lost.unlink()
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "files")})
    with pytest.raises(imagenet.MissingData, match=lost.name):
        prepared(params, "miniimagenet")


def test_tiered_imagenet_png_pickles_give_classes_of_different_sizes_exactly(tmp_path):
    truth = make_tiered(tmp_path / "files")
    params = imagenet_params(tmp_path, "tieredimagenet", {"path": str(tmp_path / "files")})
    cache = prepared(params, "tieredimagenet")
    assert_cache_holds(cache, truth)  # PNG is lossless: decoded images equal the originals
    for split in imagenet.SPLITS:
        sizes = [len(truth[split][name]) for name in sorted(truth[split])]
        assert cache[split]["offsets"].diff().tolist() == sizes


def test_files_in_the_data_mirror_are_found(tmp_path, monkeypatch):
    truth = make_mini_pickles(tmp_path / "mirror" / "miniimagenet")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    params = imagenet_params(tmp_path, "miniimagenet")
    assert imagenet_files.locate(params, "miniimagenet").folder == tmp_path / "mirror" / "miniimagenet"
    assert_cache_holds(prepared(params, "miniimagenet"), truth)


# -- downloads and untrusted pickles ----------------------------------------------------------------


def test_configured_urls_are_downloaded_and_verified(tmp_path):
    truth = make_mini_pickles(tmp_path / "server")
    files = {p.name: {"url": p.as_uri(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted((tmp_path / "server").iterdir())}
    params = imagenet_params(tmp_path, "miniimagenet", {"files": files})
    assert_cache_holds(prepared(params, "miniimagenet"), truth)
    assert sorted(p.name for p in imagenet_files.raw_dir(params, "miniimagenet").iterdir()) == sorted(files)

    files["mini-imagenet-cache-test.pkl"]["sha256"] = "0" * 64
    params = imagenet_params(tmp_path / "other", "miniimagenet", {"files": files})
    with pytest.raises(ChecksumError, match="mini-imagenet-cache-test.pkl"):
        imagenet_files.download(params, "miniimagenet")
    assert not (imagenet_files.raw_dir(params, "miniimagenet") / "mini-imagenet-cache-test.pkl").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a hostile pickle does: call any function on load
        return (open, (str(self.marker), "w"))


def test_pickles_that_ask_for_any_other_class_or_function_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    hostile = {"image_data": np.zeros((1, 84, 84, 3), np.uint8), "class_dict": {"n0": [0]}, "x": _RunsCode(marker)}
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps(hostile))
    with pytest.raises(imagenet.UnsafePickle, match="refusing io.open"):
        imagenet.load_pickle(path)
    assert not marker.exists()
    # numpy arrays (numpy 1 or 2 names, any protocol), scalars, dicts, lists, strings and bytes load
    plain = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": [np.int64(3), b"png", "s", 1.5, (1, 2)]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps(plain, protocol=protocol))
        loaded = imagenet.load_pickle(path)
        assert np.array_equal(loaded["a"], plain["a"]) and loaded["b"] == plain["b"]


# -- missing data: stopped before any work, with the files, the folder and the setting ---------------


def test_missing_files_error_names_the_files_the_folder_and_the_settings(tmp_path):
    params = imagenet_params(tmp_path, "miniimagenet")
    with pytest.raises(imagenet.MissingData) as error:
        imagenet_files.locate(params, "miniimagenet")
    message = str(error.value)
    for expected in ("mini-imagenet-cache-train.pkl", "train.csv", str(imagenet_files.raw_dir(params, "miniimagenet")),
                     "data.miniimagenet.path", "data.miniimagenet.files", "docs/data.md"):
        assert expected in message, expected

    params = imagenet_params(tmp_path, "tieredimagenet", {"path": str(tmp_path / "nowhere")})
    with pytest.raises(imagenet.MissingData, match="train_images_png.pkl.*test_labels.pkl") as error:
        imagenet_files.locate(params, "tieredimagenet")
    assert str(tmp_path / "nowhere") in str(error.value)


def test_cli_prepare_stops_before_any_work_when_one_data_set_is_missing(tmp_path, capsys):
    import yaml

    make_mini_pickles(tmp_path / "mini")
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "mini")})
    tiered = imagenet_params(tmp_path, "tieredimagenet", {"path": str(tmp_path / "no-tiered")})
    params["data"]["tieredimagenet"] = tiered["data"]["tieredimagenet"]
    params["benchmarks"].update(tiered["benchmarks"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli(["prepare", "--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err
    assert "train_images_png.pkl" in err and "data.tieredimagenet.path" in err
    assert not (tmp_path / "data" / "prepared").exists()  # mini-ImageNet was not prepared either

    params["data"].pop("tieredimagenet")
    params["benchmarks"] = {k: v for k, v in params["benchmarks"].items() if k.startswith("mini")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli(["prepare", "--params", str(tmp_path / "params.yaml")]) == 0
    assert benchmarks.prepared_path(params, "miniimagenet").exists()


def test_unprepared_data_is_a_clear_error_at_split(tmp_path):
    params = imagenet_params(tmp_path, "miniimagenet")
    with pytest.raises(imagenet.MissingData, match="metalearn prepare --dataset miniimagenet"):
        benchmarks.make_episodes(Benchmark.of(params, "miniimagenet-3w1s"))


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    ({"ways": 17}, "benchmarks.miniimagenet-3w1s.ways"),  # mini-ImageNet's validation split has 16 classes
    ({"shots": 5, "eval_queries": 596}, "benchmarks.miniimagenet-3w1s.eval_queries"),
    ({"split": "maml"}, "benchmarks.miniimagenet-3w1s.split"),
    ({"model": "conv4"}, "benchmarks.miniimagenet-3w1s.model"),
    ({"dataset": "tieredimagenet"}, "benchmarks.miniimagenet-3w1s.dataset"),
])
def test_config_rejects_impossible_imagenet_benchmarks_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        imagenet_params(tmp_path, "miniimagenet", **overrides)


@pytest.mark.parametrize("source, key", [
    ({"files": {n: {"url": "https://example.org/" + n} for n in imagenet_files.FORMATS["miniimagenet"]["pickle"]}},
     "data.miniimagenet.files.mini-imagenet-cache-test.pkl: give its sha256"),
    ({"files": {"mini-imagenet-cache-train.pkl": {"url": "u", "sha256": "0" * 64}}}, "data.miniimagenet.files"),
    ({"format": "tiff"}, "data.miniimagenet.format"),
    ({"folder": "x"}, "data.miniimagenet.folder: unknown key"),
])
def test_config_rejects_bad_data_sources_naming_the_key(tmp_path, source, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        imagenet_params(tmp_path, "miniimagenet", source)


def test_the_paper_profile_configures_imagenet_benchmarks_with_the_maml_settings():
    from metalearn.config import load_params

    params = load_params(ROOT / "params.yaml", "paper")
    mini = params["benchmarks"]["miniimagenet-5w1s"]
    assert (mini["model"], mini["ways"], mini["shots"], mini["queries"], mini["train"]["meta_batch"]) == (
        "conv4-maxpool", 5, 1, 15, 4)
    assert mini["algorithms"]["maml"] == {"inner_lr": 0.01, "inner_steps": 5, "test_inner_steps": 10,
                                          # the MAML code's inner loss and test batches (tests/test_protocols.py)
                                          "inner_loss": "sum_over_shots", "eval_query_batch": "shots"}
    assert any(name.startswith("tieredimagenet") for name in params["benchmarks"])
    for profile in ("default", "quick"):  # the data are not available everywhere
        assert not any("imagenet" in name for name in load_params(ROOT / "params.yaml", profile)["benchmarks"])


# -- episodes and training --------------------------------------------------------------------------


def test_pool_episodes_draw_distinct_classes_and_images_within_each_class():
    sizes = torch.tensor([3, 9, 5, 4, 7])
    classes, drawings = ep.draw_pool_episodes(200, sizes, ways=3, per_class=3, generator=torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 3 for row in classes)
    assert bool((drawings < sizes[classes].unsqueeze(-1)).all())
    assert all(len(set(d.tolist())) == 3 for d in drawings.flatten(0, 1))
    # every image of the largest class gets drawn: the draw is not truncated to the smallest size
    assert set(drawings[classes == 1].flatten().tolist()) == set(range(9))
    # equal sizes: the very episodes of the Omniglot sampler
    a = ep.draw_pool_episodes(10, torch.full((6,), 20), 4, 5, torch.Generator().manual_seed(1))
    b = ep.draw_episodes(10, 6, 20, 4, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="holds only 3"):
        ep.draw_pool_episodes(1, sizes, ways=2, per_class=4, generator=torch.Generator())


def test_saved_episodes_are_deterministic_and_give_the_right_tasks(tmp_path):
    truth = make_tiered(tmp_path / "files")
    params = imagenet_params(tmp_path, "tieredimagenet", {"path": str(tmp_path / "files")})
    prepared(params, "tieredimagenet")
    path = benchmarks.make_episodes(Benchmark.of(params, "tieredimagenet-3w1s"))
    first = path.read_bytes()
    assert benchmarks.make_episodes(Benchmark.of(params, "tieredimagenet-3w1s")).read_bytes() == first
    batches = list(benchmarks.eval_batches(Benchmark.of(params, "tieredimagenet-3w1s"), "test", torch.device("cpu"), chunk=4))
    assert [len(b) for b in batches] == [4, 2]
    tasks = batches[0]
    assert tasks.support_x.shape == (4, 3 * 1, 3, 84, 84) and tasks.query_x.shape == (4, 3 * 3, 3, 84, 84)
    assert torch.equal(tasks.query_y[0], torch.arange(3).repeat_interleave(3))
    # each image is one of its episode class's images, and no query image is a support image
    saved = ep.load_episodes(path)["test"]
    names = sorted(truth["test"])
    for way in range(3):
        pool = truth["test"][names[saved["classes"][0, way]]].float() / 255
        picked = torch.cat([tasks.support_x[0, way:way + 1], tasks.query_x[0, 3 * way:3 * way + 3]])
        index = [int(torch.nonzero((pool == image).flatten(1).all(1))[0]) for image in picked]
        assert index == saved["drawings"][0, way].tolist()
        assert len(set(index)) == 4


def test_benchmark_larger_than_the_prepared_data_is_refused_naming_the_key(tmp_path):
    make_mini_pickles(tmp_path / "files")
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "files")}, ways=4)
    prepared(params, "miniimagenet")
    with pytest.raises(ConfigError, match=r"benchmarks\.miniimagenet-3w1s\.ways: 4 ways .* val split has 3"):
        benchmarks.make_episodes(Benchmark.of(params, "miniimagenet-3w1s"))


def test_training_sampler_is_reproducible_and_draws_from_the_training_split(tmp_path):
    truth = make_mini_pickles(tmp_path / "files")
    params = imagenet_params(tmp_path, "miniimagenet", {"path": str(tmp_path / "files")})
    prepared(params, "miniimagenet")
    generator = torch.Generator().manual_seed(0)
    sampler = benchmarks.train_sampler(Benchmark.of(params, "miniimagenet-3w1s"), generator, torch.device("cpu"))
    state = generator.get_state()
    a = sampler.sample(3)
    generator.set_state(state)
    b = sampler.sample(3)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert a.support_x.shape == (3, 3, 3, 84, 84) and a.query_x.shape == (3, 6, 3, 84, 84)
    train_images = torch.cat(list(truth["train"].values())).float().div(255).flatten(1)
    for image in a.query_x.flatten(0, 1):
        assert bool((train_images == image.flatten()).all(1).any())


def test_maml_meta_trains_and_evaluates_on_a_prepared_fixture(tmp_path):
    from metalearn.evaluate import evaluate
    from metalearn.train import train

    make_tiered(tmp_path / "files")
    params = imagenet_params(tmp_path, "tieredimagenet", {"path": str(tmp_path / "files")})
    prepared(params, "tieredimagenet")
    benchmarks.make_episodes(Benchmark.of(params, "tieredimagenet-3w1s"))
    model = train(Benchmark.of(params, "tieredimagenet-3w1s"), "maml", 0, tmp_path / "run", device="cpu", log=lambda s: None)
    saved = torch.load(model, weights_only=True)
    assert saved["iterations"] == 2
    torch.manual_seed(0)  # the initialisation train() starts from (seed 0)
    initial = benchmarks.build_objective(params["benchmarks"]["tieredimagenet-3w1s"]).model.state_dict()
    assert any(not torch.equal(saved["state_dict"][f"model.{k}"], v) for k, v in initial.items()), \
        "meta-training changed no parameter"
    result = evaluate(params, model, device="cpu", log=lambda s: None)
    assert result["episodes"] == 6 and 0 <= result["mean"] <= 100


# -- through the pipeline ---------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_trains_and_evaluates_mini_imagenet_and_names_missing_files_before_any_job(tmp_path):
    """Snakemake on a project whose only benchmark is mini-ImageNet (the generated pickles): prepare,
    split, a few training iterations, evaluation, the results row. Then, with the files gone, the
    dry run stops while building the DAG, naming the files expected and the setting to change."""
    import csv
    import shutil
    import subprocess

    import yaml
    from test_workflow import SNAKEMAKE, copy_project, workflow_env

    make_mini_pickles(tmp_path / "files")
    project = copy_project(tmp_path / "project")
    bench = imagenet_params(tmp_path, "miniimagenet")["benchmarks"]["miniimagenet-3w1s"]
    params = {"profile": "default", "data": {"root": "data", "mirror": None,
                                             "miniimagenet": {"path": str(tmp_path / "files")}},
              "seeds": [0], "benchmarks": {"miniimagenet-3w1s": bench}, "profiles": {"default": {}}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in workflow_env(project).items() if k != MIRROR_ENV}

    def snakemake(*args):
        return subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=project, env=env, capture_output=True, text=True)

    run = snakemake()
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    (row,) = list(csv.DictReader(open(project / "results" / "summary.csv")))
    assert (row["benchmark"], row["algorithm"], row["ways"], row["shots"], row["episodes"]) == \
        ("miniimagenet-3w1s", "maml", "3", "1", "6")
    assert torch.load(project / "models/miniimagenet-3w1s/maml/seed0/model.pt", weights_only=True)["iterations"] == 2

    params["data"]["miniimagenet"]["path"] = str(tmp_path / "nowhere")  # a colleague's clone, no files yet
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for produced in ("data", "models", "results"):
        shutil.rmtree(project / produced)
    dry = snakemake("-n")
    out = dry.stdout + dry.stderr
    assert dry.returncode != 0
    assert "mini-imagenet-cache-train.pkl" in out and "data.miniimagenet.path" in out, out[-3000:]
    assert "rule train" not in out and "Job stats" not in out


def test_every_algorithm_of_the_paper_profile_takes_a_meta_step_on_the_84x84_conv4():
    """The paper profile configures every implemented algorithm on the ImageNet benchmarks; each builds
    on the max-pooling conv4 (32 filters) and takes a finite meta-step on 84x84 RGB tasks."""
    from metalearn.algorithms import ALGORITHMS, build_algorithm
    from metalearn.config import load_params
    from metalearn.tasks import TaskBatch

    paper = load_params(ROOT / "params.yaml", "paper")["benchmarks"]
    # (Reptile: a baseline of the Leap/WarpGrad multi-shot protocol, metalearn/alphabets/, not of these tables)
    # (Proto-MAML: Meta-Dataset's, not a row of these tables)
    meta_learners = ({name for name, cls in ALGORITHMS.items() if not getattr(cls, "baseline", False)}
                     - {"reptile", "protomaml", "foprotomaml"})
    for name in ("miniimagenet-5w1s", "miniimagenet-5w5s", "tieredimagenet-5w1s", "tieredimagenet-5w5s"):
        assert set(paper[name]["algorithms"]) == meta_learners, name
    bench = paper["miniimagenet-5w1s"]
    x = torch.rand(1, 10, 3, 84, 84, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5).repeat(2).expand(1, -1)
    tasks = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    for algorithm, hparams in sorted(bench["algorithms"].items()):
        torch.manual_seed(0)
        objective = benchmarks.build_objective(bench)
        short = {**hparams, "inner_steps": 1, "test_inner_steps": 1, "cg_steps": 1, "snapshots": 1}
        algo = build_algorithm(algorithm, objective.model, objective, short)
        metrics = algo.meta_step(tasks)
        grads = [p.grad for p in algo.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads) and np.isfinite(metrics["loss"]), algorithm
