"""The official settings, written once (protocols.yaml): read by tests/test_protocols.py, which checks
every entry against the resolved profiles, and by `metalearn pages`, which writes the tables of
docs/protocols.md from them.

    load()                      the sections, each entry with its section's profiles, benchmarks,
                                algorithms and repository filled in; an entry without a source, a
                                deviation without its why, or a note that does not exist is refused
    mismatches(entries, params) "profile benchmark.key = value, expected ..." for every drift
    markdown(sections)          the generated block of docs/protocols.md
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from metalearn.config import read_yaml
from metalearn.errors import ConfigError

PATH = Path(__file__).with_name("protocols.yaml")
INHERITED = ("profiles", "benchmarks", "algorithms", "repo")
FIELDS = {"key", "official", "source", "paper", "ours", "why", "note", "history", "if_configured", *INHERITED}
# what the code does where params.yaml leaves a key out (each default is pinned by its own test)
ABSENT = {"batch_norm": "affine", "head_init": "xavier", "rotations": "classes", "stroke": "bright",
          "mlp_init": "pytorch", "inner_loss": "mean", "eval_query_batch": "all", "eval_curve": False}
BEGIN = "<!-- BEGIN generated: protocol tables (metalearn pages) -->"
END = "<!-- END generated: protocol tables (metalearn pages) -->"


def source_problems(entry: dict, repositories: dict) -> list[str]:
    """Why the entry's source does not name the official code (or, where none exists, the paper)."""
    source = entry.get("source")
    if not isinstance(source, dict) or not source:
        return ["no source"]
    if "paper" in source:
        return [] if source.get("at") else ["a paper source without its place (`at`)"]
    problems = [f"source without `{field}`" for field in ("file", "at", "what") if not source.get(field)]
    repo = source.get("repo") or entry.get("repo")
    if repo not in repositories:
        problems.append(f"source repository {repo!r} is not one of `repositories` {sorted(repositories)}")
    return problems


def entry_problems(entry: dict, repositories: dict, root: Path) -> list[str]:
    problems = [f"unknown field {k!r}" for k in entry if k not in FIELDS]
    problems += [f"without `{k}`" for k in ("key", "official", "profiles") if k not in entry]
    problems += source_problems(entry, repositories)
    if "ours" in entry and not entry.get("why"):
        problems.append("a deviation (`ours`) without its one-line `why`")
    if entry.get("note") and not (root / entry["note"]).is_file():
        problems.append(f"note {entry['note']} does not exist")
    if "paper" in entry and not (isinstance(entry["paper"], dict) and {"value", "at"} <= set(entry["paper"])):
        problems.append("`paper` needs the text's `value` and its place `at`")
    return problems


def load(path: Path = PATH, root: Path | None = None) -> dict:
    """protocols.yaml with each entry's inherited fields filled in; ConfigError naming every bad entry."""
    data = read_yaml(path, what="the official settings")
    root = Path(path).resolve().parents[2] if root is None else root
    repositories = data.get("repositories") or {}
    problems = []
    for section in data["sections"]:
        for n, entry in enumerate(section["entries"]):
            for field in INHERITED:
                if field not in entry and field in section:
                    entry[field] = section[field]
            problems += [f"{section['title']!r} entry {n + 1} ({entry.get('key')}): {p}"
                         for p in entry_problems(entry, repositories, root)]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return data


def entries(data: dict) -> list[dict]:
    return [entry for section in data["sections"] for entry in section["entries"]]


def lookup(settings: dict, key: str) -> Any:
    """The value at a dotted key of a benchmark's (or the top-level) settings; ABSENT's default, or
    None, where a part is missing."""
    value: Any = settings
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT.get(key.rsplit(".", 1)[-1])
        value = value[part]
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    return a == b


def mismatches(items: list[dict], resolved: dict[str, dict]) -> list[str]:
    """Every place where a profile's resolved settings differ from the entry's expected value (ours for
    a deviation, else the official one); `resolved`: profile name -> load_params(..., profile)."""
    wrong = []
    for entry in items:
        expected = entry["ours"] if "ours" in entry else entry["official"]
        for profile in entry["profiles"]:
            params = resolved[profile]
            places = [(profile, None, params)]
            if entry.get("benchmarks"):
                places = []
                for name in entry["benchmarks"]:
                    if name not in params["benchmarks"]:
                        wrong.append(f"{profile}: no benchmark {name} (entry {entry['key']})")
                        continue
                    places.append((profile, name, params["benchmarks"][name]))
            for _, bench_name, settings in places:
                keys = [entry["key"]]
                if entry.get("algorithms"):
                    configured = settings.get("algorithms", {})
                    missing = [a for a in entry["algorithms"] if a not in configured]
                    if missing and not entry.get("if_configured"):
                        wrong.append(f"{profile} {bench_name}: algorithms {missing} not configured (entry {entry['key']})")
                    keys = [f"algorithms.{a}.{entry['key']}" for a in entry["algorithms"] if a in configured]
                for key in keys:
                    value = lookup(settings, key)
                    if not same(value, expected):
                        where = f"{bench_name}.{key}" if bench_name else key
                        wrong.append(f"{profile} {where} = {value!r}, expected {expected!r} "
                                     f"({'ours: ' + entry['why'] if 'ours' in entry else 'official'}; "
                                     f"{cite(entry)})")
    return wrong


def cite(entry: dict) -> str:
    source = entry["source"]
    if "paper" in source:
        return f"{source['paper']} {source['at']}"
    return f"{source.get('repo') or entry['repo']} {source['file']}:{source['at']}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:.4g}`"
    if isinstance(value, (int, list)) or value is None:
        return f"`{value}`"
    return f"`{value}`" if " " not in str(value) else str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(data: dict) -> str:
    """The tables of docs/protocols.md: one per section, a row per entry."""
    lines = [f"Generated from `src/metalearn/protocols.yaml` ({len(entries(data))} entries; "
             "`tests/test_protocols.py` checks each against the resolved profiles). The official code as read: " +
             ", ".join(f"{repo}@{rev}" for repo, rev in data["repositories"].items()) + ". A row whose *ours* "
             "column holds a value is a deviation, with its reason; *paper text* is the paper's value where its "
             "text states another.", ""]
    for section in data["sections"]:
        lines += [f"### {section['title']}", "",
                  f"Profiles: {', '.join(section['profiles'])}" +
                  (f"; benchmarks: {', '.join(f'`{b}`' for b in section['benchmarks'])}" if section.get("benchmarks") else "")
                  + (f"; algorithms: {', '.join(section['algorithms'])}" if section.get("algorithms") else "") + ".", "", "| setting | official | source | paper text | ours |", "|---|---|---|---|---|"]
        for entry in section["entries"]:
            setting = f"`{entry['key']}`"
            if entry.get("algorithms") and entry.get("algorithms") != section.get("algorithms"):
                setting = f"{', '.join(entry['algorithms'])}: {setting}"
            if entry.get("benchmarks") != section.get("benchmarks"):
                setting += " (" + (", ".join(entry["benchmarks"]) if entry.get("benchmarks") else "top level") + ")"
            source = entry["source"]
            where = (f"{source['paper']}, {source['at']}" if "paper" in source else
                     f"{source.get('repo') or entry['repo']} `{source['file']}`:{source['at']}: {source['what']}")
            if entry.get("history"):
                where += f". History: {entry['history']}"
            paper = f"{_value(entry['paper']['value'])} ({entry['paper']['at']})" if entry.get("paper") else ""
            ours = "the same"
            if "ours" in entry:
                ours = f"{_value(entry['ours'])}: {entry['why']}"
                if entry.get("note"):
                    ours += f" ([{Path(entry['note']).stem}]({Path(entry['note']).relative_to('docs')}))"
            elif entry.get("why"):
                ours = f"the same: {entry['why']}"
            lines.append("| " + " | ".join(_cell(c) for c in (setting, _value(entry["official"]), where, paper, ours)) + " |")
        lines.append("")
    return "\n".join(lines)


def with_tables(page: str, block: str) -> str:
    if BEGIN not in page or END not in page:
        raise ValueError(f"docs/protocols.md lacks the markers {BEGIN!r} and {END!r}")
    before, rest = page.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{block}{END}{after}"
