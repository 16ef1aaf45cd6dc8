# Training jobs: `cnnpar train`, the same command a user runs by hand.
# - train_family: one job per paired block and training family (filters, batch, seed) that
#   trains every CPU engine and thread count of the family back to back, in the order
#   cnnpar.study.plan gives (the config's, reversed in even blocks); numba and torch train all
#   their thread counts in one command, the counts taking turns in 0.1-second windows. Each
#   run stops after train.tinycnn.time_budget seconds of timed training;
# - train_gpu: one paired run of a GPU engine per configuration and block;
# - train_tinycnn_full: one full-length run per engine at its largest thread count, for time to
#   accuracy;
# - train_mosaicnet: the classifier's weights.
# shadow "minimal": a job runs in a scratch directory and only a finished job's outputs are
# moved into results/, so an interrupted job never leaves a half-written directory behind.


# (no family job when the config names GPU engines or modes only)
if TRAIN_MEMBERS:

    rule train_family:
        input:
            data=DATA_CHECK,
        output:
            **member_files(TINYCNN_DIR, TRAIN_MEMBERS, TINYCNN_FILES),
        log:
            FAMILY_LOGS["train"],
        benchmark:
            TIMED_BENCHMARKS["train_family"]
        shadow:
            "minimal"
        conda:
            "../../envs/cnnpar.yaml"
        threads: family_threads("train")
        resources:
            bench=1,
            gpu=0,
            tasks=family_tasks("train"),
            cpus_per_task=family_cpus_per_task("train"),
            nodes=family_nodes("train"),
        params:
            script=family_script("train"),
            code=CODE["train"],
        shell:
            "{params.script}"


rule train_gpu:
    input:
        data=DATA_CHECK,
    output:
        **{
            name.split(".")[0]: f"{TINYCNN_DIR}/block~{{block}}/{name}"
            for name in TINYCNN_FILES
        },
    log:
        RUN_LOGS["train", False],
    benchmark:
        TIMED_BENCHMARKS["train_gpu"]
    wildcard_constraints:
        engine=GPU_ENGINE_PATTERN,
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.threads)
    resources:
        bench=1,
        gpu=1,
        tasks=1,
    params:
        script=run_script("train"),
        code=CODE["train"],
    shell:
        "{params.script}"


rule train_tinycnn_full:
    input:
        data=DATA_CHECK,
    output:
        **{name.split(".")[0]: f"{TINYCNN_DIR}/full/{name}" for name in TINYCNN_FILES},
    log:
        RUN_LOGS["train", True],
    benchmark:
        TIMED_BENCHMARKS["train_tinycnn_full"]
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.threads)
    resources:
        bench=1,
        gpu=engine_gpus,
        tasks=rank_tasks,
        nodes=rank_nodes,
    params:
        script=run_script("train", full=True),
        code=CODE["train"],
    shell:
        "{params.script}"


rule train_mosaicnet:
    input:
        DATA_CHECK,
    output:
        **{name.split(".")[0]: f"{MOSAICNET_DIR}/{name}" for name in MOSAICNET_FILES},
    log:
        f"{LOGS}/train/mosaicnet/seed~{{seed}}.log",
    benchmark:
        TIMED_BENCHMARKS["train_mosaicnet"]
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: MOSAICNET["threads"]
    resources:
        bench=1,
        # For cluster executors (the SLURM plugin turns it into sbatch --gpus=1).
        gpu=int(registry.ENGINES[MOSAICNET["engine"]].gpu),
    params:
        code=CODE["mosaicnet"],
        out=lambda wildcards, output: Path(output.model).parent,
        engine=MOSAICNET["engine"],
        epochs=MOSAICNET["epochs"],
        batch_size=MOSAICNET["batch_size"],
        train_size=MOSAICNET["train_size"],
        data=data_source(),
        mirrors=mirror_options(),
        lock=timing_lock(),
        machine=machine_option(),
    shell:
        f"{LOGGED} {{log:q}}"
        " cnnpar train --model mosaicnet --engine {params.engine} --threads {threads}"
        " --epochs {params.epochs} --batch-size {params.batch_size}"
        " --train-size {params.train_size} --seed {wildcards.seed}"
        " --data-source {params.data:q} {params.mirrors} {params.lock:q}"
        " {params.machine} --out {params.out:q}"
