"""Tasks within one alphabet (#36): split background-alphabets (data/omniglot.py), `within_alphabet`
episodes (data/episodes.py, benchmarks.py), the params checks, and the heads profile's benchmarks run
through split / train / evaluate at 2 iterations. Answers known independently: the archives' own
folder names, the class names of every drawn class, and rotations by torch.rot90."""
from __future__ import annotations

import copy
import json
import shutil
import zipfile
from collections import Counter

import pytest
import torch
import yaml

from conftest import MIRROR, ROOT, write_params
from metalearn import benchmarks, paths, records
from metalearn.cli import main
from metalearn.config import Benchmark, ConfigError, apply_profile, validate
from metalearn.data import episodes as ep
from metalearn.data import omniglot, omniglot_splits


def archive_alphabets(name: str) -> dict[str, int]:
    """{alphabet: characters} read from an archive's folder names."""
    characters = set()
    with zipfile.ZipFile(MIRROR / name) as zf:
        for member in zf.namelist():
            parts = member.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                characters.add((parts[1], parts[2]))
    return dict(Counter(alphabet for alphabet, _ in characters))


def test_the_alphabet_tables_are_the_archives(mirror):
    assert omniglot_splits.BACKGROUND_ALPHABETS == archive_alphabets("images_background.zip")
    small = {**archive_alphabets("images_background_small1.zip"), **archive_alphabets("images_background_small2.zip")}
    assert omniglot_splits.background_alphabets("omniglot-small") == small
    assert omniglot_splits.background_alphabets("omniglot-small-binary") == small


@pytest.mark.parametrize("variant", ["omniglot", "omniglot-small", "omniglot-binary"])
def test_partition_is_disjoint_background_only_sized_and_deterministic(variant, mirror):
    evaluation = set(archive_alphabets("images_evaluation.zip"))
    alphabets = omniglot_splits.background_alphabets(variant)
    counts = {"omniglot": (20, 4, 6), "omniglot-small": (4, 2, 2)}[omniglot_splits.characters(variant)]
    seen = []
    for seed in range(5):
        parts = omniglot_splits.partition_alphabets(variant, seed)
        assert parts == omniglot_splits.partition_alphabets(variant, seed)  # by seed alone
        train, val, test = (set(parts[k]) for k in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == counts
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(alphabets) and not (train | val | test) & evaluation
        assert all(alphabets[a] >= omniglot_splits.EVAL_ALPHABET_MIN for a in val | test)  # 20-way tasks fit
        assert {a for a, n in alphabets.items() if n < omniglot_splits.EVAL_ALPHABET_MIN} <= train
        sizes = omniglot_splits.split_sizes(variant, "background-alphabets", seed)
        assert sizes == {k: sum(alphabets[a] for a in parts[k]) for k in parts}
        seen.append(parts)
    assert any(p != seen[0] for p in seen[1:])  # the seed matters
    with pytest.raises(ValueError, match="split_seed"):
        omniglot_splits.split_sizes(variant, "background-alphabets")


def test_split_seed_1_is_the_documented_partition():
    parts = omniglot_splits.partition_alphabets("omniglot", 1)
    assert parts["test"] == ["Alphabet_of_the_Magi", "Braille", "Gujarati", "Hebrew", "Korean", "Latin"]
    assert parts["val"] == ["Arcadian", "Asomtavruli_(Georgian)", "Japanese_(katakana)", "Tifinagh"]
    assert omniglot_splits.split_sizes("omniglot", "background-alphabets", 1) == {"train": 614, "val": 168, "test": 182}


def test_split_classes_leaves_out_the_evaluation_alphabets():
    """On the full set's class list (names only): each part is its alphabets' characters, in name order,
    and no class of images_evaluation is in any."""
    names = sorted([f"background/{a}/character{i + 1:02d}" for a, n in omniglot_splits.BACKGROUND_ALPHABETS.items()
                    for i in range(n)] + [f"evaluation/Angelic/character{i + 1:02d}" for i in range(20)])
    parts = omniglot.split_classes(names, "omniglot", "background-alphabets", 1)
    alphabets = omniglot_splits.partition_alphabets("omniglot", 1)
    for part, index in parts.items():
        picked = [names[i] for i in index.tolist()]
        assert picked == sorted(picked) and all(n.startswith("background/") for n in picked)
        assert sorted({omniglot_splits.alphabet_of(n) for n in picked}) == alphabets[part]
        assert len(picked) == omniglot_splits.split_sizes("omniglot", "background-alphabets", 1)[part]
        found, offsets = omniglot.alphabet_offsets(picked)
        assert found == alphabets[part]
        assert offsets.diff().tolist() == [omniglot_splits.BACKGROUND_ALPHABETS[a] for a in found]
    with pytest.raises(ValueError, match="prepare the data again"):
        omniglot.split_classes(names[1:], "omniglot", "background-alphabets", 1)


def test_alphabet_episodes_draw_distinct_classes_of_one_eligible_alphabet():
    sizes = torch.tensor([3, 8, 5, 20, 4])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    alphabet_of_class = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    classes, drawings = ep.draw_alphabet_episodes(2000, offsets, 20, 5, 3, torch.Generator().manual_seed(0))
    assert classes.shape == (2000, 5) and drawings.shape == (2000, 5, 3)
    owners = alphabet_of_class[classes]
    assert (owners == owners[:, :1]).all()  # one alphabet per episode
    assert all(len(set(row.tolist())) == 5 for row in classes)  # distinct classes
    assert set(owners[:, 0].tolist()) == {1, 2, 3}  # only alphabets of at least 5 classes, each drawn
    assert all(len(set(row.tolist())) == 3 for row in drawings.flatten(0, 1))
    again = ep.draw_alphabet_episodes(2000, offsets, 20, 5, 3, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], classes) and torch.equal(again[1], drawings)
    with pytest.raises(ValueError, match="largest alphabet holds 20"):
        ep.draw_alphabet_episodes(1, offsets, 20, 21, 2, torch.Generator())


def test_rotated_alphabets_are_new_alphabets_of_one_rotation():
    images = torch.randint(0, 255, (7, 2, 28, 28), dtype=torch.uint8)
    offsets = torch.tensor([0, 3, 7])
    rotated, rotated_offsets = ep.rotated_alphabets(images, offsets)
    assert rotated_offsets.tolist() == [0, 3, 7, 10, 14, 17, 21, 24, 28]
    for k in range(4):
        for a in range(2):
            group = rotated[rotated_offsets[2 * k + a]:rotated_offsets[2 * k + a + 1]]
            assert torch.equal(group, torch.rot90(images[offsets[a]:offsets[a + 1]], k, dims=(-2, -1)))


# -- the heads profile's benchmarks on the small subsets ------------------------------------------

def small_heads_params(tmp_path, iterations: int = 2) -> dict:
    """The heads profile on omniglot-small (all 8 of its alphabets are background ones: 4 / 2 / 2),
    CI-sized, data below tmp_path."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = apply_profile(raw, "heads")
    params["data"] = {"root": str(tmp_path / "data"), "mirror": str(MIRROR)}
    for bench in params["benchmarks"].values():
        bench.update(dataset="omniglot-small", val_tasks=4, test_tasks=6, eval_queries=2)
        bench["train"] = {"meta_batch": 2, "meta_lr": 0.001, "iterations": iterations, "checkpoint_every": iterations,
                          "log_every": 1}
    return validate(params)


@pytest.fixture(scope="module")
def small_heads(tmp_path_factory, mirror) -> dict:
    """small_heads_params with the prepared omniglot-small cache and both benchmarks' saved episodes."""
    root = tmp_path_factory.mktemp("heads")
    params = small_heads_params(root)
    archives = omniglot.download("omniglot-small", paths.raw_dir(params), str(mirror))
    omniglot.prepare("omniglot-small", archives, benchmarks.prepared_path(params, "omniglot-small"))
    for name in params["benchmarks"]:
        benchmarks.make_episodes(Benchmark.of(params, name))
    return copy.deepcopy(params)


def test_every_saved_and_sampled_episode_is_within_one_alphabet_of_its_part(small_heads):
    params = small_heads
    _, names = omniglot.load(benchmarks.prepared_path(params, "omniglot-small"))
    for bench_name, bench in params["benchmarks"].items():
        parts = omniglot.split_classes(names, "omniglot-small", "background-alphabets", bench["split_seed"])
        alphabets = omniglot_splits.partition_alphabets("omniglot-small", bench["split_seed"])
        saved = benchmarks.read_current_episodes(Benchmark.of(params, bench_name), benchmarks.episode_settings(bench))
        assert saved["settings"]["within_alphabet"] is True
        for split in ("val", "test"):
            part = [names[i] for i in parts[split].tolist()]
            for row in saved[split]["classes"]:
                owners = {omniglot_splits.alphabet_of(part[c]) for c in row.tolist()}
                assert len(owners) == 1 and owners <= set(alphabets[split])
                assert len(set(row.tolist())) == bench["ways"]
        # meta-training: the sampler's tasks are gathered from one (possibly rotated) alphabet's classes
        sampler = benchmarks.train_sampler(Benchmark.of(params, bench_name), torch.Generator().manual_seed(3), torch.device("cpu"))
        assert isinstance(sampler, ep.AlphabetSampler) and len(sampler.offsets) == 4 * len(alphabets["train"]) + 1
        classes, drawings = ep.draw_alphabet_episodes(8, sampler.offsets, 20, bench["ways"], 2,
                                                      torch.Generator().manual_seed(3))
        tasks = sampler.sample(8)
        assert torch.equal(tasks.support_x, ep.gather_tasks(sampler.images, classes, drawings, 1).support_x)
        group = torch.bucketize(classes, sampler.offsets, right=True) - 1
        assert (group == group[:, :1]).all()
        if bench["ways"] == 20:  # Tagalog (17 characters) and its rotations are too small for 20 ways
            tagalog = alphabets["train"].index("Tagalog")
            assert not ({tagalog + k * len(alphabets["train"]) for k in range(4)} & set(group[:, 0].tolist()))


def test_the_keys_are_checked_and_errors_name_them(tmp_path):
    params = small_heads_params(tmp_path)
    cases = [({"ways": 23}, "omniglot-alphabet-20w1s.ways: 23 ways within one alphabet"),
             ({"split": "maml"}, "omniglot-alphabet-20w1s.within_alphabet: tasks within one alphabet need split "
                                 "background-alphabets"),
             ({"rotations": "per_task"}, "omniglot-alphabet-20w1s.rotations: per_task")]
    for change, message in cases:
        broken = copy.deepcopy(params)
        broken["benchmarks"]["omniglot-alphabet-20w1s"].update(change)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            validate(broken)
    broken = copy.deepcopy(params)
    broken["benchmarks"]["omniglot-alphabet-20w1s"]["split"] = "alphabets"
    with pytest.raises(ConfigError, match="omniglot-alphabet-20w1s.split"):
        validate(broken)
    sinusoid = apply_profile(yaml.safe_load((ROOT / "params.yaml").read_text()), "default")
    sinusoid["benchmarks"]["sinusoid"]["within_alphabet"] = True
    with pytest.raises(ConfigError, match="sinusoid.within_alphabet: not allowed"):
        validate(sinusoid)
    # 20 ways within one alphabet on the full set: every validation and test alphabet holds 20 or more
    full = copy.deepcopy(params)
    full["benchmarks"]["omniglot-alphabet-20w1s"]["dataset"] = "omniglot"
    validate(full)


def test_split_train_evaluate_two_iterations_and_a_5_way_model_on_20_way_episodes(small_heads, tmp_path, capsys):
    """The CLI on the heads profile's benchmarks (omniglot-small, 2 iterations): split, train maml and
    protomaml, evaluate with each head; a 5-way model on the 20-way benchmark's episodes. The plain
    evaluation also scores the benchmark's `eval_heads`: each entry equals its own `--head` run; the
    records keep them and `verify` re-derives them (and catches a changed one)."""
    params = copy.deepcopy(small_heads)
    data = tmp_path / "data"
    shutil.copytree(small_heads["data"]["root"], data)
    params["data"]["root"] = str(data)
    path = write_params(tmp_path / "params.yaml", params)
    base = ["--params", str(path)]
    assert main(["split", *base, "-b", "omniglot-alphabet-20w1s"]) == 0
    results = {}
    for bench, algorithm in (("omniglot-alphabet-5w1s", "maml"), ("omniglot-alphabet-20w1s", "maml"),
                             ("omniglot-alphabet-20w1s", "protomaml"), ("omniglot-alphabet-5w1s", "protomaml")):
        out = tmp_path / "models" / bench / algorithm / "seed0"
        assert main(["train", *base, "-b", bench, "-a", algorithm, "--out", str(out), "--device", "cpu"]) == 0
        for head in (None, "trained", "zero", "proto"):
            if algorithm == "protomaml" and head in ("trained", "zero"):
                assert main(["evaluate", *base, "--model", str(out / "model.pt"), "--out", str(tmp_path / "x.json"),
                             "--head", head, "--device", "cpu"]) == 2
                assert "sets its head from the support set" in capsys.readouterr().err
                continue
            json_out = (tmp_path / "evals" / bench / algorithm / "seed0.json" if head is None
                        else tmp_path / "eval" / f"{bench}-{algorithm}-{head}.json")
            assert main(["evaluate", *base, "--model", str(out / "model.pt"), "--out", str(json_out), "--device", "cpu"]
                        + ([] if head is None else ["--head", head])) == 0
            results[bench, algorithm, head] = json.loads(json_out.read_text())
    for (bench, algorithm, head), result in results.items():
        assert result["benchmark"] == bench and result["episodes"] == 6 and 0 <= result["mean"] <= 100
        assert result["head"] == ("proto" if algorithm == "protomaml" else head or "trained")
    assert results["omniglot-alphabet-20w1s", "maml", None]["per_episode"] == \
        results["omniglot-alphabet-20w1s", "maml", "trained"]["per_episode"]
    # the 5-way model on the 20-way within-alphabet episodes: zero and proto heads (auto: proto), not trained
    model = tmp_path / "models" / "omniglot-alphabet-5w1s" / "maml" / "seed0" / "model.pt"
    for head, expected in (("proto", "proto"), ("zero", "zero"), (None, "proto")):
        out = tmp_path / "eval" / f"5w-on-20w-{head}.json"
        assert main(["evaluate", *base, "--model", str(model), "--out", str(out), "--benchmark",
                     "omniglot-alphabet-20w1s", "--device", "cpu"] + ([] if head is None else ["--head", head])) == 0
        result = json.loads(out.read_text())
        assert (result["benchmark"], result["ways"], result["head"]) == ("omniglot-alphabet-20w1s", 20, expected)
        assert (result["model_benchmark"], result["model_ways"]) == ("omniglot-alphabet-5w1s", 5)
    assert main(["evaluate", *base, "--model", str(model), "--out", str(tmp_path / "x.json"), "--benchmark",
                 "omniglot-alphabet-20w1s", "--head", "trained", "--device", "cpu"]) == 2
    # Proto-MAML trained at 5 ways on the 20-way episodes: its head built for 20 classes in each episode
    proto_model = tmp_path / "models" / "omniglot-alphabet-5w1s" / "protomaml" / "seed0" / "model.pt"
    assert main(["evaluate", *base, "--model", str(proto_model), "--out", str(tmp_path / "eval" / "5w-protomaml-on-20w-proto.json"),
                 "--benchmark", "omniglot-alphabet-20w1s", "--device", "cpu"]) == 0
    across = json.loads((tmp_path / "eval" / "5w-protomaml-on-20w-proto.json").read_text())
    assert (across["ways"], across["head"], across["episodes"]) == (20, "proto", 6)
    assert "the trained head has 5 outputs" in capsys.readouterr().err
    # the plain evaluation's `eval_heads` entries: each the same numbers as its own --head (--benchmark) run
    for (bench, algorithm, head), result in results.items():
        if head is not None:
            continue
        entries = {(e["head"], e["benchmark"]): e for e in result["heads"]}
        assert list(entries) == [(h.partition("@")[0], h.partition("@")[2] or bench)
                                 for h in params["benchmarks"][bench]["eval_heads"]]
        for (asked, on), entry in entries.items():
            if algorithm == "protomaml" and asked in ("trained", "zero"):
                assert "sets its head from the support set" in entry["refused"]
                continue
            if on == bench:
                alone = results[bench, algorithm, asked]
            else:
                other = f"5w-on-20w-{asked}.json" if algorithm == "maml" else f"5w-protomaml-on-20w-{asked}.json"
                alone = json.loads((tmp_path / "eval" / other).read_text())
            assert (entry["policy"], entry["per_episode"], entry["mean"]) == (alone["head"], alone["per_episode"], alone["mean"])
            assert entry["curve"][-1]["mean"] == entry["mean"]  # eval_curve: step 0 (the prototype classifier) too
    # records keep the heads; verify re-derives them, and names a changed one
    recorded = tmp_path / "recorded"
    written = records.write_records(params, recorded, tmp_path / "models", tmp_path / "evals", runtimes=None,
                                    log=lambda s: None)
    assert len(written) == 4
    assert all(not c.problems for c in records.verify(recorded, path, log=lambda s: None)), "verify failed"
    record_file = recorded / "heads" / "omniglot-alphabet-5w1s" / "maml" / "seed0" / "record.json"
    record = json.loads(record_file.read_text())
    record["evaluation"]["heads"][-1]["mean"] += 1.0
    record_file.write_text(json.dumps(record))
    [check] = records.verify(recorded, path, only=["heads/omniglot-alphabet-5w1s/maml/seed0"], log=lambda s: None)
    assert any("head proto on omniglot-alphabet-20w1s, mean: re-derived" in p for p in check.problems), check.problems


def test_eval_heads_are_checked_naming_the_key(tmp_path):
    params = small_heads_params(tmp_path)
    cases = [("omniglot-alphabet-5w1s", ["proto@omniglot-5w1s"], "omniglot-alphabet-5w1s.eval_heads: 'omniglot-5w1s' "
              "is not a benchmark of this profile"),
             ("omniglot-alphabet-5w1s", ["best"], "omniglot-alphabet-5w1s.eval_heads"),
             ("omniglot-alphabet-20w1s", ["zero", "zero"], "omniglot-alphabet-20w1s.eval_heads")]
    for bench, heads, message in cases:
        broken = copy.deepcopy(params)
        broken["benchmarks"][bench]["eval_heads"] = heads
        with pytest.raises(ConfigError, match=message):
            validate(broken)
    sinusoid = apply_profile(yaml.safe_load((ROOT / "params.yaml").read_text()), "default")
    sinusoid["benchmarks"]["sinusoid"]["eval_heads"] = ["proto"]
    with pytest.raises(ConfigError, match="sinusoid.eval_heads: output heads are for classification"):
        validate(sinusoid)


def test_the_pipeline_evaluates_on_the_eval_heads_episodes_and_trains_without_them():
    """The evaluation job reads every benchmark its heads score on and reruns when its heads change;
    the training's settings (and so its checkpoint's hash) do not see evaluation-only keys; a profile
    without them keeps the evaluation's params slice as it was (no rerun of existing evaluations)."""
    from test_workflow import pipeline

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    heads = pipeline.load_config(raw, "heads")
    five, twenty = "omniglot-alphabet-5w1s", "omniglot-alphabet-20w1s"
    assert pipeline.eval_episodes(heads, five) == [pipeline.episodes(heads, five), pipeline.episodes(heads, twenty)]
    assert pipeline.eval_episodes(heads, twenty) == [pipeline.episodes(heads, twenty)]
    settings = pipeline.eval_settings(heads, five)
    assert settings["scored_on"] == {twenty: pipeline.split_settings(heads, twenty)}
    assert settings["eval_heads"] == heads["benchmarks"][five]["eval_heads"] and settings["eval_curve"] is True
    without = copy.deepcopy(raw)
    for bench in (five, twenty):
        for key in ("eval_heads", "eval_curve"):
            without["profiles"]["heads"]["benchmarks"][bench].pop(key, None)
    without = pipeline.load_config(without, "heads")
    assert pipeline.train_settings(heads, five, "maml", 0) == pipeline.train_settings(without, five, "maml", 0)
    quick = pipeline.load_config(raw, "quick")
    assert all(pipeline.eval_settings(quick, b) == pipeline.split_settings(quick, b) for b in quick["benchmarks"])
