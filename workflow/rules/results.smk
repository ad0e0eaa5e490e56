# The results table (CSV + Markdown beside the papers' numbers) and the figures of the report.

def _report_plot(path):
    kind = Path(path).stem.rsplit("-", 1)[1]
    bench = Path(path).stem.rsplit("-", 1)[0]
    return report(path, caption=f"../report/{kind}.rst", category=bench,
                  labels={"benchmark": bench, "figure": kind})


AGGREGATE_CMD = cmd("aggregate", evals="{input.evals}", histories="{input.histories}",
                    summary="{output.summary}", plots=pipeline.PLOTS)


rule aggregate:
    input:
        evals=[pipeline.eval_json(*r) for r in RUNS],
        histories=[pipeline.model_dir(*r) + "/history.json" for r in RUNS],
    output:
        summary=report(pipeline.SUMMARY, caption="../report/summary.rst", category="Summary",
                       labels={"table": "summary.csv"}),
        markdown=pipeline.SUMMARY_MD,
        paper_md=pipeline.PAPER_MD,
        paper=report(pipeline.PAPER_CSV, caption="../report/paper.rst", category="Paper vs ours",
                     labels={"table": "paper.csv"}),
        plots=[_report_plot(p) for p in pipeline.plot_files(PLANNED)],
    shell: AGGREGATE_CMD


# Studies (metalearn.studies): experiments beyond the table, one job and one report figure each.
for _study in pipeline.studies(PARAMS):
    rule:
        name: f"study_{_study}"
        input: pipeline.study_sources(PARAMS, _study)
        output:
            table=pipeline.study_outputs(_study)[0],
            figure=report(pipeline.study_outputs(_study)[1], caption=f"../report/{_study}.rst", category="Studies",
                          labels={"study": _study}),
        params:
            study=_study,
            runs=pipeline.study_settings(PARAMS, _study),
        benchmark: pipeline.runtime_file("study", _study)
        threads: JOB_THREADS
        resources: **JOB_RESOURCES
        # A study trains its runs one after another, often the longest job of a profile: it starts
        # first and the other jobs fill the remaining cores beside it (pipeline.train_priority).
        priority: 10
        shell: cmd("study", study="{params.study}", out=pipeline.STUDIES)
