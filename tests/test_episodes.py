"""Saved episodes are deterministic and shared; training episodes are sampled by tensor indexing."""
from __future__ import annotations

import torch

from metalearn import benchmarks
from metalearn.config import Benchmark
from metalearn.data import episodes as ep


def test_episode_files_identical_across_reruns_with_same_seed(prepared_small, tmp_path):
    for name in prepared_small["benchmarks"]:
        path = benchmarks.episodes_path(prepared_small, name)
        first = path.read_bytes()
        benchmarks.make_episodes(Benchmark.of(prepared_small, name))
        assert path.read_bytes() == first, name


def test_different_episode_seed_gives_different_episodes(prepared_small):
    bench = dict(prepared_small["benchmarks"]["omniglot-5w1s"])
    a = ep.make_eval_episodes(bench, {"val": 20, "test": 63})
    b = ep.make_eval_episodes({**bench, "episode_seed": bench["episode_seed"] + 1}, {"val": 20, "test": 63})
    assert not torch.equal(a["test"]["classes"], b["test"]["classes"])


def test_saved_episodes_have_distinct_classes_and_drawings(prepared_small):
    bench = prepared_small["benchmarks"]["omniglot-5w1s"]
    saved = ep.load_episodes(benchmarks.episodes_path(prepared_small, "omniglot-5w1s"))
    for split in ("val", "test"):
        classes, drawings = saved[split]["classes"], saved[split]["drawings"]
        assert classes.shape == (bench[f"{split}_tasks"], bench["ways"])
        assert drawings.shape == (bench[f"{split}_tasks"], bench["ways"], bench["shots"] + bench["eval_queries"])
        assert all(len(set(row.tolist())) == bench["ways"] for row in classes)
        assert all(len(set(d.tolist())) == d.numel() for d in drawings.flatten(0, 1))


def test_gather_tasks_shapes_and_labels(prepared_small):
    bench = prepared_small["benchmarks"]["omniglot-5w1s"]
    batches = list(benchmarks.eval_batches(Benchmark.of(prepared_small, "omniglot-5w1s"), "test", torch.device("cpu"), chunk=7))
    tasks = batches[0]
    ways, shots, queries = bench["ways"], bench["shots"], bench["eval_queries"]
    assert tasks.support_x.shape == (7, ways * shots, 1, 28, 28)
    assert tasks.query_x.shape == (7, ways * queries, 1, 28, 28)
    assert tasks.support_x.dtype == torch.float32 and 0 <= tasks.support_x.min() and tasks.support_x.max() <= 1
    assert torch.equal(tasks.support_y[0], torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(tasks.query_y[0], torch.arange(ways).repeat_interleave(queries))
    assert sum(len(b) for b in batches) == bench["test_tasks"]


def test_query_images_are_not_support_images():
    images = torch.arange(3 * 20).view(3, 20, 1, 1).to(torch.uint8).expand(3, 20, 2, 2).contiguous()
    generator = torch.Generator().manual_seed(0)
    tasks = ep.ClassificationSampler(images, ways=3, shots=2, queries=5, generator=generator).sample(10)
    for i in range(10):
        support = set((tasks.support_x[i, :, 0, 0, 0] * 255).round().tolist())
        query = set((tasks.query_x[i, :, 0, 0, 0] * 255).round().tolist())
        assert not support & query


def test_rotations_are_new_classes():
    images = torch.rand(2, 20, 28, 28).mul(255).to(torch.uint8)
    rotated = ep.with_rotations(images)
    assert rotated.shape == (8, 20, 28, 28)
    assert torch.equal(rotated[0], images[0])
    assert torch.equal(rotated[1], torch.rot90(images[0], 1, dims=(-2, -1)))
    assert torch.equal(rotated[4], images[1])


def test_training_sampler_is_reproducible_from_its_generator_state():
    images = torch.rand(30, 20, 28, 28).mul(255).to(torch.uint8)
    generator = torch.Generator().manual_seed(3)
    sampler = ep.ClassificationSampler(images, ways=5, shots=1, queries=2, generator=generator)
    sampler.sample(4)
    state = generator.get_state()
    a = sampler.sample(4)
    generator.set_state(state)
    b = sampler.sample(4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)


def test_sinusoid_tasks_follow_the_maml_paper():
    generator = torch.Generator().manual_seed(0)
    tasks = ep.SinusoidSampler(shots=10, queries=10, generator=generator).sample(500)
    x = torch.cat([tasks.support_x, tasks.query_x], 1)
    y = torch.cat([tasks.support_y, tasks.query_y], 1)
    assert x.shape == (500, 20, 1)
    assert x.min() >= -5 and x.max() <= 5
    amplitude = y.abs().amax(dim=(1, 2))
    assert amplitude.max() <= 5.0 and amplitude.min() > 0


def test_episodes_made_for_other_settings_are_refused(prepared_small):
    import copy

    import pytest

    other = copy.deepcopy(prepared_small)
    other["benchmarks"]["omniglot-5w1s"]["split"] = "lake"
    with pytest.raises(benchmarks.StaleEpisodes, match="metalearn split -b omniglot-5w1s"):
        next(benchmarks.eval_batches(Benchmark.of(other, "omniglot-5w1s"), "test", torch.device("cpu")))
