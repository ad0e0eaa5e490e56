# One training job per benchmark x algorithm x seed, then its evaluation on the saved test episodes.
# `params:` holds only the job's own slice of params.yaml, so a change reruns exactly the jobs it affects.

TRAIN_CMD = cmd("train", benchmark="{wildcards.benchmark}", algorithm="{wildcards.algorithm}",
                seed="{wildcards.seed}",
                model_dir=pipeline.model_dir("{wildcards.benchmark}", "{wildcards.algorithm}", "{wildcards.seed}"))


rule train:
    input:
        data=lambda w: pipeline.bench_data(PARAMS, w.benchmark),
        code=lambda w: pipeline.train_sources(PARAMS, w.benchmark, w.algorithm),
    output:
        model=pipeline.model_dir("{benchmark}", "{algorithm}", "{seed}") + "/model.pt",
        history=pipeline.model_dir("{benchmark}", "{algorithm}", "{seed}") + "/history.json",
    params:
        run=lambda w: pipeline.train_settings(PARAMS, w.benchmark, w.algorithm, w.seed),
    benchmark: pipeline.runtime_file("train", "{benchmark}", "{algorithm}", "seed{seed}")
    priority: lambda w: pipeline.train_priority(PARAMS, w.benchmark, w.algorithm)
    threads: JOB_THREADS
    resources: **JOB_RESOURCES
    shell: TRAIN_CMD


rule evaluate:
    input:
        model=rules.train.output.model,
        episodes=lambda w: pipeline.eval_episodes(PARAMS, w.benchmark),
        data=lambda w: pipeline.eval_data(PARAMS, w.benchmark),
    output: pipeline.eval_json("{benchmark}", "{algorithm}", "{seed}")
    params: settings=lambda w: pipeline.eval_settings(PARAMS, w.benchmark)
    benchmark: pipeline.runtime_file("evaluate", "{benchmark}", "{algorithm}", "seed{seed}")
    threads: JOB_THREADS
    resources: **JOB_RESOURCES
    shell: cmd("evaluate", model="{input.model}", out="{output}")
