"""Omniglot's facts, without torch: its variants and their archives, its background alphabets and the
class counts of every split (metalearn.data.omniglot's docstring says how each split is drawn). The
configuration's checks (metalearn.config) and the workflow's planning read these; the images and the
class indices are metalearn.data.omniglot's.
"""
from __future__ import annotations

VARIANTS = {
    "omniglot": ["images_background.zip", "images_evaluation.zip"],
    "omniglot-small": ["images_background_small1.zip", "images_background_small2.zip"],
}
VARIANTS.update({f"{name}-binary": archives for name, archives in list(VARIANTS.items())})
ARCHIVE_SETS = ("omniglot", "omniglot-small")  # what is downloaded; the -binary variants read the same


def characters(variant: str) -> str:
    """The archive set of a variant ('omniglot-binary' -> 'omniglot'): its characters and splits."""
    return variant.removesuffix("-binary")


SMALL_TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
SPLIT_SIZES = {  # (meta-train, validation, meta-test) class counts, before rotations
    ("omniglot", "maml"): (1100, 100, 423),
    ("omniglot", "lake"): (864, 100, 659),
    ("omniglot-small", "maml"): (159, 20, 63),
    ("omniglot-small", "lake"): (116, 20, 106),
}


# The background alphabets and their numbers of characters (images_background.zip; tests/test_alphabet_split.py
# checks them against the archives). The small subsets hold 8 of them, whole.
BACKGROUND_ALPHABETS = {
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
    "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
    "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43,
    "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
    "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42,
    "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
}
SMALL_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit", "Tagalog")
EVAL_ALPHABET_MIN = 20  # characters an alphabet needs to be drawn for validation or meta-test (20-way tasks)
ALPHABET_SPLIT = {"omniglot": {"val": 4, "test": 6}, "omniglot-small": {"val": 2, "test": 2}}  # alphabets


def alphabet_of(name: str) -> str:
    """'background/Greek/character01' -> 'Greek'."""
    return name.split("/")[1]


def background_alphabets(variant: str) -> dict[str, int]:
    """The background alphabets a variant holds: {name: characters}."""
    if characters(variant) == "omniglot":
        return dict(BACKGROUND_ALPHABETS)
    return {name: BACKGROUND_ALPHABETS[name] for name in SMALL_ALPHABETS}


def torch_randperm(n: int, seed: int) -> list[int]:
    """torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist(), without torch: the
    CPU generator is a Mersenne Twister (MT19937) seeded with the seed's low 32 bits (the reference
    init_genrand), and randperm on the CPU swaps position i with i + (next 32-bit output mod (n - i)),
    i = 0 .. n - 2 (ATen's randperm_cpu, for n below 2**32 / 20). Python's `random` is the same MT19937:
    only its seeding differs, so the state is set as torch's. tests/test_planning_without_torch.py
    compares it with torch's for many sizes and seeds: the partitions are torch's, as they always were,
    and checking params.yaml (every profile, every Snakemake start) needs no torch."""
    import random

    state = [seed & 0xFFFFFFFF]
    for j in range(1, 624):
        state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + j) & 0xFFFFFFFF)
    generator = random.Random()
    generator.setstate((3, (*state, 624), None))  # 624: the next draw twists the whole state first, as torch's
    order = list(range(n))
    for i in range(n - 1):
        z = i + generator.getrandbits(32) % (n - i)
        order[i], order[z] = order[z], order[i]
    return order


def partition_alphabets(variant: str, seed: int) -> dict[str, list[str]]:
    """split background-alphabets: {'train', 'val', 'test'} -> sorted alphabet names (metalearn.data.omniglot's
    docstring). Depends on the variant and the seed only (no data read), deterministic: the eligible
    alphabets in the order of torch's seeded permutation (torch_randperm)."""
    alphabets = background_alphabets(variant)
    eligible = sorted(a for a, n in alphabets.items() if n >= EVAL_ALPHABET_MIN)
    small = sorted(a for a, n in alphabets.items() if n < EVAL_ALPHABET_MIN)
    counts = ALPHABET_SPLIT[characters(variant)]
    order = torch_randperm(len(eligible), seed)
    shuffled = [eligible[i] for i in order]
    n_test, n_val = counts["test"], counts["val"]
    return {"train": sorted(shuffled[n_test + n_val:] + small), "val": sorted(shuffled[n_test:n_test + n_val]),
            "test": sorted(shuffled[:n_test])}


def split_sizes(variant: str, split: str, seed: int | None = None) -> dict[str, int]:
    """Characters (classes before rotations) of each part; background-alphabets' depend on `seed`."""
    if split == "background-alphabets":
        if seed is None:
            raise ValueError("split background-alphabets: the sizes depend on split_seed; pass it")
        alphabets = background_alphabets(variant)
        return {part: sum(alphabets[a] for a in names) for part, names in partition_alphabets(variant, seed).items()}
    train, val, test = SPLIT_SIZES[(characters(variant), split)]
    return {"train": train, "val": val, "test": test}


def within_alphabet_problems(key: str, bench: dict) -> list[str]:
    """params.yaml's checks of an Omniglot benchmark with `within_alphabet` (config.check_semantics)."""
    if not bench.get("within_alphabet"):
        return []
    if bench["split"] != "background-alphabets":
        return [f"{key}.within_alphabet: tasks within one alphabet need split background-alphabets (whole "
                f"alphabets held out, none of images_evaluation), not {bench['split']!r}"]
    problems = []
    if bench.get("rotations") == "per_task":
        problems.append(f"{key}.rotations: per_task turns each class of a task its own way; within one alphabet "
                        "rotations are whole new alphabets (`classes`, the default)")
    alphabets = background_alphabets(bench["dataset"])
    parts = partition_alphabets(bench["dataset"], bench["split_seed"])
    smallest = min((alphabets[a], a) for part in ("val", "test") for a in parts[part])
    largest = max(alphabets[a] for a in parts["train"])
    if bench["ways"] > smallest[0]:
        problems.append(f"{key}.ways: {bench['ways']} ways within one alphabet, but validation/test alphabet "
                        f"{smallest[1]} of split background-alphabets (split_seed {bench['split_seed']}) holds "
                        f"{smallest[0]} characters; use at most {smallest[0]} ways")
    elif bench["ways"] > largest:
        problems.append(f"{key}.ways: {bench['ways']} ways within one alphabet, but no meta-training alphabet "
                        f"holds more than {largest} characters")
    return problems
