# Training jobs: `cnnpar train`, the same command a user runs by hand.
# - train_tinycnn: one paired throughput job per configuration and block, stopped after
#   train.tinycnn.time_budget seconds of timed training (throughput needs seconds, not epochs:
#   its epoch count is only a bound the budget always reaches first);
# - train_tinycnn_interleaved: the same for an engine that switches threads in one process
#   (numba, torch): one job per block trains every thread count for the budget, the counts
#   taking turns in 0.1-second windows, so its speedup compares windows a fraction of a second
#   apart; it writes one run directory per thread count, as separate jobs would;
# - train_tinycnn_full: one full-length run per engine at its largest thread count, for time to
#   accuracy; it runs after the last block;
# - train_mosaicnet: the classifier's weights, before block 1.
# shadow "minimal": a job runs in a scratch directory and only a finished job's outputs are
# moved into results/, so an interrupted job never leaves a half-written directory behind.

TINYCNN_SHELL = (
    f"{LOGGED} {{log:q}}"
    " {params.launch}cnnpar train --model tinycnn --engine {wildcards.engine} {params.layout}"
    " --filters {wildcards.filters} --batch-size {wildcards.batch} --epochs {params.epochs}"
    " --lr {params.lr} --seed {wildcards.seed} --train-size {params.train_size}"
    " --test-size {params.test_size} --shuffle {params.shuffle} --data-source {params.data:q}"
    " {params.mirrors} {params.lock:q} --max-others-share {params.max_others}"
    " --max-probe-change {params.max_probe} {params.machine} --out {params.out:q}"
)
TINYCNN_PARAMS = dict(
    launch=rank_launch,
    layout=train_layout_args,
    lr=TINYCNN["lr"],
    train_size=TINYCNN["train_size"],
    test_size=TINYCNN["test_size"],
    shuffle=str(TINYCNN["shuffle"]).lower(),
    data=data_source(),
    mirrors=mirror_options(),
    lock=timing_lock(),
    max_others=TIMING["max_others_share"],
    max_probe=TIMING["max_probe_change"],
    machine=machine_option(),
)


rule train_tinycnn:
    input:
        data=DATA_CHECK,
        previous=previous_block,
    output:
        **{
            name.split(".")[0]: f"{TINYCNN_DIR}/block~{{block}}/{name}"
            for name in TINYCNN_FILES
        },
    log:
        f"{LOGS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.log",
    benchmark:
        f"{BENCHMARKS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.tsv"
    wildcard_constraints:
        engine=engine_pattern(switches_threads=False),
    priority: block_priority("train")
    group:
        family_group(TRAIN_GROUP)
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
        **TINYCNN_PARAMS,
        out=lambda wildcards, output: Path(output.run).parent,
        epochs=throughput_epochs(),
        budget=TINYCNN["time_budget"],
    shell:
        f"{TINYCNN_SHELL} --block {{wildcards.block}} --time-budget {{params.budget}}"


rule train_tinycnn_interleaved:
    input:
        data=DATA_CHECK,
        previous=previous_block,
    output:
        **{
            f"{name.split('.')[0]}_{t}": f"{TINYCNN_DIR}/block~{{block}}/{name}".replace(
                "{threads}", str(t)
            ).replace(
                "{ranks}", "1"
            )
            for t in interleaved_threads()
            for name in TINYCNN_FILES
        },
    log:
        f"{LOGS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.log".replace(
            "{threads}", "interleaved"
        ).replace("{ranks}", "1"),
    benchmark:
        f"{BENCHMARKS}/train/tinycnn/{TINYCNN_TAIL}/block~{{block}}.tsv".replace(
            "{threads}", "interleaved"
        ).replace("{ranks}", "1")
    wildcard_constraints:
        engine=engine_pattern(switches_threads=True),
    priority: block_priority("train")
    group:
        family_group(TRAIN_GROUP)
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: max(interleaved_threads())
    resources:
        bench=1,
        gpu=0,
        tasks=1,
    params:
        **{
            **TINYCNN_PARAMS,
            "launch": "",
            "layout": f"--ranks 1 --threads {','.join(map(str, interleaved_threads()))}",
        },
        out=interleaved_dir,
        epochs=throughput_epochs(),
        budget=TINYCNN["time_budget"],
    shell:
        f"{TINYCNN_SHELL} --block {{wildcards.block}} --time-budget {{params.budget}}"


rule train_tinycnn_full:
    input:
        data=DATA_CHECK,
        previous=last_block,
    output:
        **{name.split(".")[0]: f"{TINYCNN_DIR}/full/{name}" for name in TINYCNN_FILES},
    log:
        f"{LOGS}/train/tinycnn/{TINYCNN_TAIL}/full.log",
    benchmark:
        f"{BENCHMARKS}/train/tinycnn/{TINYCNN_TAIL}/full.tsv"
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
        **TINYCNN_PARAMS,
        out=lambda wildcards, output: Path(output.run).parent,
        epochs=TINYCNN["epochs"],
    shell:
        TINYCNN_SHELL


rule train_mosaicnet:
    input:
        DATA_CHECK,
    output:
        **{name.split(".")[0]: f"{MOSAICNET_DIR}/{name}" for name in MOSAICNET_FILES},
    log:
        f"{LOGS}/train/mosaicnet/seed~{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/mosaicnet/seed~{{seed}}.tsv"
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
