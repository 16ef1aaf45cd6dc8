# cnnpar: how CNN training and inference on MNIST scale across engines and parallelism.
# The workflow lives in workflow/Snakefile (the catalog layout); this file lets `snakemake` run
# from the repository root, e.g.  snakemake --cores 2  or  snakemake --profile profiles/slurm


include: "workflow/Snakefile"


# Snakemake drops the default target an included file sets, so name it again here.
smk.set_default_target(workflow, "all")
