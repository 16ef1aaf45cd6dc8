# cnnpar: how CNN training and inference on MNIST scale across engines and parallelism.
#
#   snakemake --cores 2 --profile profiles/default                     # config/config.yaml
#   snakemake --cores 8 --profile profiles/default --configfile config/full.yaml
#
# config -> validate -> one job per sweep combination -> tidy tables -> figures -> report.html

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    engine="[a-z]+(-[a-z]+)?",
    mode="[a-z]+",
    threads="[1-9][0-9]*",
    workers="[1-9][0-9]*",
    filters="[1-9][0-9]*",
    batch="[1-9][0-9]*",
    seed="[0-9]+",
    grid="[1-9][0-9]*x[1-9][0-9]*",


localrules:
    all,
    mask_figure,


rule all:
    default_target: True
    input:
        final_outputs(),


onsuccess:
    print(f"\ncnnpar: report written to {Path(REPORT_HTML).resolve()}")
