# Classification jobs: `cnnpar classify`, the same command a user runs by hand.
# - classify_family: one job per paired block and classification family (grid, batch, seed)
#   that runs every CPU mode and worker count of the family back to back, in the order
#   cnnpar.study.plan gives (the config's, reversed in even blocks);
# - classify_gpu: one paired run of a GPU mode per configuration and block;
# - classify_full: one classification of the whole mosaic per grid and seed, without a time
#   budget (the paired runs classify what classify.time_budget allows), in mode threads at the
#   widest worker count: the report's mask and the accuracy over every cell. It is timed like
#   the others, but has no block, so no ratio pairs it.


# (no family job when the config names GPU engines or modes only)
if CLASSIFY_MEMBERS:

    rule classify_family:
        input:
            weights=f"{MOSAICNET_DIR}/model.pt",
        output:
            **member_files(CLASSIFY_DIR, CLASSIFY_MEMBERS, CLASSIFY_FILES),
        log:
            FAMILY_LOGS["classify"],
        benchmark:
            TIMED_BENCHMARKS["classify_family"]
        shadow:
            "minimal"
        conda:
            "../../envs/cnnpar.yaml"
        threads: family_threads("classify")
        resources:
            bench=1,
            gpu=0,
            tasks=family_tasks("classify"),
            cpus_per_task=family_cpus_per_task("classify"),
            nodes=family_nodes("classify"),
        params:
            script=family_script("classify"),
            code=CODE["classify"],
        shell:
            "{params.script}"


rule classify_gpu:
    input:
        weights=f"{MOSAICNET_DIR}/model.pt",
    output:
        **{
            name.split(".")[0]: f"{CLASSIFY_DIR}/block~{{block}}/{name}"
            for name in CLASSIFY_FILES
        },
    log:
        RUN_LOGS["classify", False],
    benchmark:
        TIMED_BENCHMARKS["classify_gpu"]
    wildcard_constraints:
        mode=GPU_MODE_PATTERN,
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.workers)
    resources:
        bench=1,
        gpu=1,
        tasks=1,
    params:
        script=run_script("classify"),
        code=CODE["classify"],
    shell:
        "{params.script}"


rule classify_full:
    input:
        weights=f"{MOSAICNET_DIR}/model.pt",
    output:
        **{name.split(".")[0]: f"{CLASSIFY_FULL_DIR}/{name}" for name in CLASSIFY_FILES},
    log:
        RUN_LOGS["classify", True],
    benchmark:
        TIMED_BENCHMARKS["classify_full"]
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: CLASSIFY_FULL_THREADS
    resources:
        bench=1,
        gpu=0,
        tasks=1,
    params:
        script=run_script("classify", full=True),
        code=CODE["classify"],
    shell:
        "{params.script}"
