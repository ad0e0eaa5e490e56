# The benchmark's DAG: download -> prepare -> split episodes -> train (benchmark x algorithm x seed)
# -> evaluate -> aggregate (tables + figures). Configuration: params.yaml only; the profile comes from
# params.yaml, --config profile=NAME, or a Snakemake profile (profiles/<name>/config.yaml).
# `snakemake --report results/report.html` builds the HTML report of the last run.
include: "workflow/rules/common.smk"

report: "workflow/report/workflow.rst"


rule all:
    input: pipeline.SUMMARY, pipeline.SUMMARY_MD, pipeline.PAPER_MD, pipeline.plot_files(PLANNED),
           [f for study in pipeline.studies(PLANNED) for f in pipeline.study_outputs(study)]


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/results.smk"
