"""`metalearn`: one subcommand per pipeline step (the Snakemake rules call these).

  metalearn download  [--dataset D]          fetch and verify the archives (official URL or mirror)
  metalearn prepare   [--dataset D]          archives -> compact uint8 cache + manifest
  metalearn split     [--benchmark B]        save the validation/test episodes
  metalearn train     -b B -a A [--seed S]   meta-train (resumes from its checkpoint)
  metalearn evaluate  --model M --out J      score a model on the saved test episodes (--head, --benchmark)
  metalearn aggregate EVAL.json... --out CSV results table (+ Markdown beside it)
  metalearn study mtnet --out DIR            MT-net study: adapted units vs degree, MSE vs inner lr
  metalearn study protocols --out DIR        protocol study: validation accuracy per iteration and CPU-second
  metalearn adapt --model M --support DIR --query DIR --out CSV
                                             adapt a trained model to your own classes (metalearn.adapt)
  metalearn runtimes [--dir D] [--out CSV]   per-job runtimes of a pipeline run (metalearn.runtimes)
  metalearn record                           records of a finished run: results/recorded/ (metalearn.records)
  metalearn verify [--only PATTERN...]       re-derive every record's numbers; exit 1 on a difference
  metalearn pages [--check]                  the results pages from the records (metalearn.pages)

Every subcommand takes --params (default params.yaml) and --profile, and validates them first.

Exit codes: 0 done; 1 the work failed (a download, a diverged training, a full disk, ...); 2 bad input
(a setting, file or flag, named in the message with what to do); 3 a bug in metalearn (traceback);
75 a training slice ended on purpose (--time-limit, METALEARN_STOP_AT, SIGTERM or SIGUSR1): its
checkpoint is written, no model; the same command again resumes it (docs/cluster.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
from pathlib import Path

from metalearn import allocator, benchmarks, families, paths
from metalearn.config import Benchmark, load_params
from metalearn.data.download import data_mirror
from metalearn.errors import BadInput, ConfigError
from metalearn.data.omniglot_splits import VARIANTS as OMNIGLOT_VARIANTS

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUG = 1, 2, 3
EXIT_SLICE_ENDED = 75  # sysexits' EX_TEMPFAIL: "try again later", which resumes
STOP_AT_VARIABLE = "METALEARN_STOP_AT"  # a deadline (seconds since the epoch) for every training: make TIME_LIMIT=


# -- flags and outputs, checked before any work ----------------------------------------------------

def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _seed(text: str) -> int:
    value = _nonnegative_int(text)
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{value} is too large for a seed; give 0 to {2**32 - 1}")
    return value


def _device(text: str) -> str:
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; give auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" and device.type != "mps":
        raise argparse.ArgumentTypeError(f"{text!r}: metalearn runs on cpu or cuda devices")
    return text


def check_writable(path: str | Path, flag: str, folder: bool = False) -> None:
    """Fail before any work when an output cannot be written where it is asked for."""
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists():
        if folder != path.is_dir():
            raise BadInput(f"{flag} {path}: exists as a {'file' if folder else 'folder'}; give a {kind} path")
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise BadInput(f"{flag} {path}: not writable; choose another {kind} or fix its permissions")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"{flag} {path}: {parent} is a file, so no {kind} can be made below it; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: cannot create it, {parent} is not writable; choose another {kind}")


LOCK_NAME = ".training.lock"  # in a training's --out folder while it trains (training_lock)


@contextlib.contextmanager
def training_lock(folder: Path):
    """Hold an exclusive lock on a training's output folder while it trains: a second training into
    the same folder, started meanwhile, is refused (BadInput, exit 2) instead of both writing one
    checkpoint and model. fcntl.flock on ``<folder>/.training.lock``, which holds the holder's process
    id: the kernel releases the lock when the process ends, however it ends (a killed training's lock
    file stays, unlocked, and the next training takes it); at a normal end the file is removed, and
    the folders made for the training with it when nothing else was written to them."""
    import fcntl

    folder = Path(folder)
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise BadInput(f"--out {folder}: another training is writing there"
                           + (f" (process {holder})" if holder.isdigit() else "")
                           + "; wait for it to end, or give another --out") from None
        try:  # the file locked must still be the one at `path` (not one its holder removed meanwhile)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while locked: a training waiting on it retries on the new file
        os.close(fd)
        for created in made:  # deepest first; a folder with anything in it stays
            try:
                created.rmdir()
            except OSError:
                break


def duration(text: str) -> float:
    """Seconds of a duration: 90, 90s, 45m, 2h, 1d, or h:mm:ss / mm:ss as SLURM writes them."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if ":" in text:
            parts = [float(part) for part in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            seconds = sum(part * 60 ** power for power, part in enumerate(reversed(parts)))
        elif text[-1:].lower() in units:
            seconds = float(text[:-1]) * units[text[-1].lower()]
        else:
            seconds = float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; give e.g. 90s, 45m, 2h or 1:30:00") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite duration")
    return seconds


def _stop_at_from_environment() -> float | None:
    text = os.environ.get(STOP_AT_VARIABLE)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{STOP_AT_VARIABLE}={text!r}: not a time in seconds since the epoch "
                       "(set it through `make reproduce TIME_LIMIT=2h`, or unset it)") from None


def _datasets(params: dict, requested: str | None) -> list[str]:
    if requested:
        return [requested]
    return sorted({b["dataset"] for b in params["benchmarks"].values()
                   if b["task"] in ("omniglot", "miniimagenet", "tieredimagenet")})


def _check_imagenet_files(params: dict, datasets: list[str]) -> None:
    """mini-/tiered-ImageNet have no official download: a missing file stops the command before any
    work starts, with the files expected and the setting to change."""
    from metalearn.data import imagenet_files

    for dataset in datasets:
        if dataset in imagenet_files.DATASETS:
            imagenet_files.locate(params, dataset)


def _check_data_writable(params: dict, *folders: Path) -> None:
    """The data folders a command writes (prepared caches, saved episodes), checked before it computes
    anything. (Downloads are not: they write only the archives that are missing, each atomically.)"""
    for folder in folders:
        check_writable(folder, f"data.root ({params['data']['root']}):", folder=True)


def _check_prepared(params: dict, names: list[str]) -> None:
    """The prepared image caches these benchmarks read, checked before any work: a missing or
    unreadable one is a BadFile naming it and the command that writes it (the check loads the cache
    memory-mapped: its index, not its images)."""
    import torch

    from metalearn.errors import BadFile

    for dataset in sorted({params["benchmarks"][n]["dataset"] for n in names if "dataset" in params["benchmarks"][n]}):
        path = benchmarks.prepared_path(params, dataset)
        make = f"`metalearn prepare --dataset {dataset}`"
        if not path.is_file():
            raise BadFile(f"{path}: no prepared {dataset} images; run {make} first")
        try:
            cache = torch.load(path, mmap=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- torch raises several types for truncated or foreign files
            raise BadFile(f"{path}: not a readable prepared cache (truncated or foreign; torch.load: "
                          f"{type(exc).__name__}); run {make} to write it again") from None
        if not (isinstance(cache, dict)
                and ({"images", "classes"} <= set(cache) or {"train", "val", "test"} <= set(cache))):
            raise BadFile(f"{path}: not a prepared image cache; run {make} to write it again")


def cmd_download(params: dict, args) -> None:
    from metalearn.data import imagenet_files, omniglot

    datasets = _datasets(params, args.dataset)
    _check_imagenet_files(params, datasets)
    for dataset in datasets:
        if dataset in imagenet_files.DATASETS:
            source = imagenet_files.download(params, dataset)
            print(f"{dataset}: {source.format} files in {source.folder}", file=sys.stderr)
            continue
        for path in omniglot.download(dataset, paths.raw_dir(params), data_mirror(params)):
            print(f"verified {path}", file=sys.stderr)


def cmd_prepare(params: dict, args) -> None:
    from metalearn.data import imagenet, imagenet_files, omniglot

    datasets = _datasets(params, args.dataset)
    _check_imagenet_files(params, datasets)
    _check_data_writable(params, *[benchmarks.prepared_path(params, d).parent for d in datasets[:1]])
    for dataset in datasets:
        if dataset in imagenet_files.DATASETS:
            manifest = imagenet.prepare(imagenet_files.download(params, dataset), benchmarks.prepared_path(params, dataset))
            print(f"prepared {dataset}: {manifest['classes_per_split']} classes (train/val/test), "
                  f"{manifest['images']} images -> {benchmarks.prepared_path(params, dataset)}", file=sys.stderr)
            continue
        archives = omniglot.download(dataset, paths.raw_dir(params), data_mirror(params))
        manifest = omniglot.prepare(dataset, archives, benchmarks.prepared_path(params, dataset))
        print(f"prepared {dataset}: {manifest['shape'][0]} characters x {manifest['shape'][1]} drawings "
              f"-> {benchmarks.prepared_path(params, dataset)}", file=sys.stderr)


def cmd_split(params: dict, args) -> None:
    names = [args.benchmark] if args.benchmark else sorted(params["benchmarks"])
    chosen = [Benchmark.of(params, name) for name in names]  # an unknown name: ConfigError naming those there are
    _check_data_writable(params, *[bench.episodes_path.parent for bench in chosen[:1]])
    _check_prepared(params, names)
    for bench in chosen:  # saved episodes, test sequences, alphabets or RL test tasks (metalearn.families)
        path = families.family(bench.settings).make_episodes(bench)
        print(f"episodes of {bench.name} -> {path}", file=sys.stderr)


def cmd_train(params: dict, args) -> None:
    out = Path(args.out) if args.out else Path("models") / args.benchmark / args.algorithm / f"seed{args.seed}"
    bench = Benchmark.of(params, args.benchmark)  # ConfigError for an unknown -b
    bench.algorithm(args.algorithm)  # ... or -a
    check_writable(out, "--out", folder=True)
    _check_prepared(params, [args.benchmark])
    _slice(args)
    # the family's loop: episodes (metalearn.train), continual, alphabets, RL (TRPO); metalearn.families
    train = families.family(bench.settings).train
    with training_lock(out):  # every family's loop, one training per folder at a time
        if not args.track:
            path = train(bench, args.algorithm, args.seed, out, device=args.device)
        else:
            from metalearn import tracking

            with tracking.training_run(bench, args.algorithm, args.seed, args.device) as run:
                path = train(bench, args.algorithm, args.seed, out, device=args.device, tracker=run)
                tracking.log_model(run, path)
    print(f"model -> {path}", file=sys.stderr)


def evaluation_provenance(params: dict, bench_name: str, device: str) -> dict:
    """What an evaluation file records beside its numbers: the contents digest of the episodes it
    scored (the file `metalearn split` wrote; `make verify` rebuilds and compares it) and provenance."""
    from metalearn import provenance
    from metalearn.train import pick_device

    return {"episodes_digest": provenance.file_content_digest(benchmarks.episodes_path(params, bench_name)),
            "provenance": provenance.collect(pick_device(device))}


def _slice(args) -> None:
    """A training's planned stop: --time-limit from now, or the pipeline's deadline, and the signals."""
    import time

    from metalearn.train import STOP

    STOP.stop_at(_stop_at_from_environment())
    if args.time_limit is not None:
        STOP.stop_at(time.time() + args.time_limit)
    STOP.catch_signals()


def cmd_evaluate(params: dict, args) -> None:
    from metalearn.evaluate import check_inputs, evaluate, write_json

    check_writable(args.out, "--out")
    # the model file, and its fit to the benchmark (its own, or --benchmark's)
    saved = check_inputs(params, Path(args.model), args.steps, args.head, args.benchmark)
    from metalearn.config import eval_heads

    scored = args.benchmark or saved["config"]["benchmark"]
    _check_prepared(params, [scored] + sorted({o for _, o in eval_heads(params["benchmarks"][scored]) if o}))
    result = evaluate(params, Path(args.model), split=args.split, device=args.device, steps=args.steps,
                      head=args.head, benchmark=args.benchmark)
    result.update(evaluation_provenance(params, result["benchmark"], args.device))
    if args.head is None and args.benchmark is None and args.steps is None and args.split == "test" and (
            "eval_heads" in params["benchmarks"][result["benchmark"]]):
        from metalearn.evaluate import evaluate_heads

        result["heads"] = evaluate_heads(params, Path(args.model), saved, device=args.device)
    write_json(result, Path(args.out))
    if args.track:
        from metalearn import tracking

        tracking.log_evaluation(params, Path(args.model), result, Path(args.out))
    print(f"{result['benchmark']}/{result['algorithm']}/seed{result['seed']}: {result['metric']} "
          f"{result['mean']:.3f} +- {result['ci95']:.3f} over {result['episodes']} episodes -> {args.out}",
          file=sys.stderr)


def cmd_aggregate(params: dict, args) -> None:
    from metalearn.aggregate import aggregate

    plots = Path(args.plots) if args.plots else None
    check_writable(args.out, "--out")
    check_writable(Path(args.out).with_suffix(".md"), "--out (its .md)")
    for beside in ("paper.md", "paper.csv"):  # paper vs ours, written beside the table
        check_writable(Path(args.out).with_name(beside), f"--out (the {beside} beside it)")
    if plots is not None:
        check_writable(plots, "--plots", folder=True)
    table = aggregate([Path(p) for p in args.inputs], Path(args.out),
                      histories=[Path(p) for p in args.histories], plots_dir=plots,
                      settings=params["benchmarks"])
    print(table, file=sys.stderr)
    if args.track:
        from metalearn import tracking
        from metalearn.aggregate import read_evaluation, summarise

        results = [read_evaluation(Path(p)) for p in args.inputs]
        files = [Path(args.out), Path(args.out).with_suffix(".md"), Path(args.out).with_name("paper.md"),
                 Path(args.out).with_name("paper.csv")] + sorted(plots.glob("*.png") if plots else [])
        tracking.log_summary(params, summarise(results), results, files)


def cmd_study(params: dict, args) -> None:
    from metalearn.studies import run_study

    if not (params.get("studies") or {}).get(args.study):
        raise ConfigError(f"studies.{args.study}: not configured in {args.params} (profile {params.get('profile')})")
    check_writable(args.out, "--out", folder=True)
    _slice(args)
    run_study(params, args.study, Path(args.out), device=args.device)


def cmd_adapt(params: dict | None, args) -> None:
    from metalearn.adapt import adapt
    from metalearn.train import read_model_file

    text = str(args.model)
    if "://" not in text and not text.startswith(("runs:/", "models:/")) and Path(text).exists():
        read_model_file(Path(text) / "model.pt" if Path(text).is_dir() else Path(text))  # BadFile, named
    check_writable(args.out, "--out")
    result = adapt(args.model, Path(args.support), Path(args.query), steps=args.steps, head=args.head,
                   device=args.device)  # warnings (e.g. an image too small to carry a drawing) on stderr
    result.write_csv(Path(args.out))
    scored = "" if result.accuracy is None else f"; accuracy {100 * result.accuracy:.1f}%"
    print(f"{result.info['algorithm']} ({result.info['benchmark']}, {result.info['trained_ways']} ways), "
          f"{len(result.classes)} classes, {result.head} head, {result.steps} steps: {len(result.files)} "
          f"predictions -> {args.out}{scored}", file=sys.stderr)


def cmd_runtimes(params: None, args) -> None:
    import csv

    from metalearn.runtimes import format_runtimes, read_runtimes, write_runtimes

    folder = Path(args.dir)
    if not folder.is_dir():
        raise BadInput(f"--dir {folder}: no such folder; it is written by the pipeline's jobs "
                       "(run `make reproduce` first)")
    check_writable(args.out, "--out")
    try:
        rows = read_runtimes(folder)
    except (KeyError, ValueError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(f"--dir {folder}: holds .tsv files that are not the pipeline's runtime files "
                       f"(<step>/<benchmark>/<algorithm>/seed<S>.tsv or study/<name>.tsv, as Snakemake's "
                       f"`benchmark:` writes them; {type(exc).__name__}: {exc}); give the folder the pipeline "
                       "writes (results/runtimes)") from None
    write_runtimes(rows, Path(args.out))
    print(format_runtimes(rows), file=sys.stderr)


def cmd_record(params: dict, args) -> None:
    from metalearn.records import write_records
    from metalearn.study_records import write_study_records

    check_writable(args.out, "--out", folder=True)
    written = write_records(params, Path(args.out), Path(args.models), Path(args.evals), Path(args.runtimes))
    written += write_study_records(params, Path(args.studies), Path(args.out))
    print(f"{len(written)} records of profile {params.get('profile')} -> {args.out}; "
          "`metalearn pages` regenerates the results pages", file=sys.stderr)


class VerifyFailed(Exception):
    pass


def cmd_verify(params: dict, args) -> None:
    import time

    from metalearn.records import TOLERANCE, record_files, verify
    from metalearn.study_records import matching_study_records, verify_studies

    if args.timing:
        check_writable(args.timing, "--timing")
    start = time.perf_counter()
    root = Path(args.records)
    checks = verify(root, Path(args.params), args.only, device=args.device) \
        if record_files(root, args.only) or not matching_study_records(root, args.only) else []
    checks += verify_studies(root, Path(args.params), args.only, device=args.device)
    if args.timing:
        from metalearn.records import write_timing

        write_timing(Path(args.timing), len(checks), time.perf_counter() - start, args.only)
    failed = [c.name for c in checks if c.problems]
    if failed:
        raise VerifyFailed(f"{len(failed)} of {len(checks)} records do not re-derive: {', '.join(failed)}")
    unfinished = sum(any(note.startswith("in progress") for note in c.notes) for c in checks)
    print(f"all {len(checks) - unfinished} finished records re-derived (metrics within {TOLERANCE:g} relative)"
          + (f"; {unfinished} in progress, nothing to re-derive yet" if unfinished else ""), file=sys.stderr)


def cmd_pages(params: dict, args) -> None:
    from metalearn import pages

    files = pages.generate(Path(args.records))
    if args.check:
        outdated = pages.stale(files)
        if outdated:
            raise VerifyFailed(f"generated pages differ from the records: {', '.join(map(str, outdated))}; "
                               "run `make pages` (metalearn pages) and commit them")
        print(f"{len(files)} generated pages match the records", file=sys.stderr)
        return
    pages.write(files)
    print(f"wrote {', '.join(map(str, files))}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    from metalearn.head_policies import HEAD_POLICIES

    top = argparse.ArgumentParser(prog="metalearn", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="configuration file (default: params.yaml)")
    common.add_argument("--profile", default=None, help="overlay from params.yaml's profiles (default: its `profile`)")
    tracked = argparse.ArgumentParser(add_help=False)
    tracked.add_argument("--track", action="store_true",
                         help="log to MLflow (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", parents=[common], help="fetch and verify the data archives")
    p.add_argument("--dataset", choices=[*OMNIGLOT_VARIANTS, "miniimagenet", "tieredimagenet"])
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", parents=[common], help="build the compact image cache")
    p.add_argument("--dataset", choices=[*OMNIGLOT_VARIANTS, "miniimagenet", "tieredimagenet"])
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("split", parents=[common], help="save validation and test episodes")
    p.add_argument("--benchmark", "-b")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", parents=[common, tracked], help="meta-train one algorithm on one benchmark")
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--algorithm", "-a", required=True)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", help="output folder (default models/<benchmark>/<algorithm>/seed<seed>)")
    p.add_argument("--device", default="auto", type=_device, help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--time-limit", type=duration, default=None,
                   help="stop after this long (e.g. 2h, 45m, 1:30:00) at an iteration's end with a checkpoint "
                        "and exit code 75; the same command resumes (SIGTERM/SIGUSR1 do the same)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common, tracked], help="score a trained model on the saved episodes")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--steps", type=_nonnegative_int, default=None,
                   help="adaptation steps (default: the algorithm's test steps)")
    p.add_argument("--head", default=None, choices=HEAD_POLICIES,
                   help="classification: where the output layer starts before the steps (docs/adapt.md): the "
                        "trained head, zero, or set from the support features (proto); default auto: trained at "
                        "the training's number of classes, else as metalearn adapt picks")
    p.add_argument("--benchmark", "-b", default=None,
                   help="score on this benchmark's saved episodes instead of the model's own (classification; "
                        "only ways and within_alphabet may differ; the head is then zero or proto)")
    p.add_argument("--device", default="auto", type=_device)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("aggregate", parents=[common, tracked], help="results table from evaluation files")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--histories", nargs="*", default=[], help="the runs' history.json (training curves)")
    p.add_argument("--plots", help="folder for the figures (metalearn.report)")
    p.add_argument("--out", default="results/summary.csv")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("study", parents=[common], help="run a study of params.yaml's `studies` (metalearn.studies)")
    p.add_argument("study", choices=["mtnet", "protocols"])
    p.add_argument("--out", default="results/studies")
    p.add_argument("--device", default="auto", type=_device)
    p.add_argument("--time-limit", type=duration, default=None,
                   help="stop after this long (e.g. 2h, 45m, 1:30:00) at an iteration's end with a checkpoint "
                        "and exit code 75; the same command resumes (SIGTERM/SIGUSR1 do the same)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("adapt", help="adapt a trained model to your own classes and classify images")
    p.add_argument("--model", required=True, help="model.pt (or its folder) or an MLflow URI: runs:/<run id>/model")
    p.add_argument("--support", required=True, help="folder with one subfolder of a few images per class")
    p.add_argument("--query", required=True, help="folder of images to classify (in class subfolders: accuracy too)")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--steps", type=_nonnegative_int, default=None,
                   help="adaptation steps (default: the algorithm's test steps)")
    p.add_argument("--head", default="auto", choices=HEAD_POLICIES,
                   help="output layer: trained head, zero-initialised, or set from the support features (proto); "
                        "auto: trained at the training's number of classes, else proto (docs/adapt.md)")
    p.add_argument("--device", default="auto", type=_device)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("runtimes", help="per-job runtimes of a pipeline run (Snakemake's benchmark files)")
    p.add_argument("--dir", default="results/runtimes", help="the jobs' benchmark files (default: results/runtimes)")
    p.add_argument("--out", default="results/runtimes.csv")
    p.set_defaults(func=cmd_runtimes)

    p = sub.add_parser("record", parents=[common], help="records of a finished pipeline run (results/recorded/)")
    p.add_argument("--out", default="results/recorded", help="the records' root (default: results/recorded)")
    p.add_argument("--models", default="models")
    p.add_argument("--evals", default="results/eval")
    p.add_argument("--runtimes", default="results/runtimes")
    p.add_argument("--studies", default="results/studies", help="the studies' outputs (metalearn study --out)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("verify", parents=[common], help="re-derive every recorded number from its model and seeds")
    p.add_argument("--records", default="results/recorded")
    p.add_argument("--only", nargs="*", default=None,
                   help="patterns on <profile>/<benchmark>/<algorithm>/seed<S> or "
                        "<profile>/studies/<study>/<run>/<algorithm>, e.g. 'default/sinusoid/*'")
    p.add_argument("--device", default="cpu", type=_device)
    p.add_argument("--timing", help="write how long it took to this CSV (bench/results/verify.csv: shown in "
                                    "docs/results/bench.md)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pages", parents=[common], help="the results pages from the records (docs/results/)")
    p.add_argument("--records", default="results/recorded")
    p.add_argument("--check", action="store_true", help="fail when a committed page differs from the records")
    p.set_defaults(func=cmd_pages)
    return top


def as_given(message: str, args) -> str:
    """A message in the terms of this command line: "params.yaml" is the settings file given with
    --params (a message may come from any module, which knows the settings but not their file), and a
    command it suggests for rebuilding data (`metalearn split -b B`, ...) takes the same --params and
    --profile, so that it rebuilds the file this command reads."""
    given = getattr(args, "params", None)
    extra = ""
    if given is not None and Path(given) != Path("params.yaml"):
        message = re.sub(r"(?<![\w./-])params\.yaml(?![\w-])", lambda _: str(given), message)
        extra += f" --params {given}"
    if getattr(args, "profile", None):
        extra += f" --profile {args.profile}"
    if extra:
        message = re.sub(r"`metalearn (download|prepare|split)((?: [^`]*)?)`",
                         lambda m: f"`metalearn {m[1]}{m[2]}{extra}`", message)
    return message


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the one place where expected failures become a message and an exit code
    (see the module's docstring). Only a bug shows a traceback."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed its message (a bad flag names itself) or --help
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    allocator.tune()  # malloc keeps the meta-steps' blocks for reuse (metalearn/allocator.py)
    import torch

    from metalearn.head_policies import AdaptError
    from metalearn.benchmarks import StaleEpisodes
    from metalearn.data.download import DownloadError
    from metalearn.train import SliceEnded, TrainingDiverged

    def error(message: str, code: int) -> int:
        print(f"metalearn {args.command}: error: {as_given(message, args)}", file=sys.stderr)
        return code

    try:
        # adapt needs no params.yaml (the model file carries its settings), nor runtimes (files only)
        params = None if args.command in ("adapt", "runtimes") else load_params(args.params, args.profile)
        args.func(params, args)
    except (BadInput, AdaptError, StaleEpisodes) as exc:  # ConfigError, BadFile: bad input
        return error(str(exc), EXIT_BAD_INPUT)
    except (DownloadError, TrainingDiverged, VerifyFailed) as exc:
        return error(str(exc), EXIT_FAILED)
    except SliceEnded as exc:
        print(f"metalearn {args.command}: {exc}", file=sys.stderr)
        return EXIT_SLICE_ENDED
    except (MemoryError, torch.OutOfMemoryError) as exc:
        return error(f"out of memory ({str(exc).splitlines()[0] if str(exc) else 'MemoryError'}); use a smaller "
                     "meta_batch, fewer shots/queries, or another device", EXIT_FAILED)
    except OSError as exc:  # the machine, not the code: disk full, permissions, ...
        return error(f"{exc}" + (f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc) else ""),
                     EXIT_FAILED)
    except KeyboardInterrupt:
        return error("interrupted", 130)
    except Exception:  # noqa: BLE001 -- anything else is a bug: show it, and ask for a report
        traceback.print_exc()
        return error("this is a bug in metalearn, not a problem with your input: please report it with "
                     "the command line and the traceback above", EXIT_BUG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
