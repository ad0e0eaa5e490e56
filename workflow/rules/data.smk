# Data: archives (checksum-verified, from the official URL or the mirror) -> prepared cache -> episodes.

for _dataset in pipeline.OMNIGLOT_ARCHIVE_SETS:  # ImageNet files come from the user (imagenet.py)
    rule:
        name: f"download_{_dataset.replace('-', '_')}"
        output: pipeline.raw_archives(PARAMS, _dataset)
        params: dataset=_dataset
        priority: pipeline.DATA_PRIORITY  # data first: it unblocks the longest trainings (pipeline.train_priority)
        shell: cmd("download", dataset="{params.dataset}")


rule prepare:
    input: lambda w: pipeline.raw_inputs(PARAMS, w.dataset)
    params: source=lambda w: PARAMS["data"].get(w.dataset)  # data.<dataset> (ImageNet: path, format, files)
    output: pipeline.prepared(PARAMS, "{dataset}")
    priority: pipeline.DATA_PRIORITY
    shell: cmd("prepare", dataset="{wildcards.dataset}")


rule split:
    input: lambda w: pipeline.bench_data(PARAMS, w.benchmark)
    output: pipeline.episodes(PARAMS, "{benchmark}")
    params: settings=lambda w: pipeline.split_settings(PARAMS, w.benchmark)
    priority: pipeline.DATA_PRIORITY
    shell: cmd("split", benchmark="{wildcards.benchmark}")
