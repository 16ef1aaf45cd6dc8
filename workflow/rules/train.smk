# Training jobs: one `cnnpar train` per sweep combination, the same command a user runs by hand.
# shadow "minimal": a job runs in a scratch directory and only a finished job's outputs are
# moved into results/, so an interrupted job never leaves a half-written directory behind.


rule train_tinycnn:
    input:
        DATA_CHECK,
    output:
        metrics=f"{TINYCNN_DIR}/metrics.csv",
        run=f"{TINYCNN_DIR}/run.json",
        weights_init=f"{TINYCNN_DIR}/weights_init.npz",
        weights_final=f"{TINYCNN_DIR}/weights_final.npz",
    log:
        f"{LOGS}/train/tinycnn/engine~{{engine}}/threads~{{threads}}/filters~{{filters}}/batch~{{batch}}/seed~{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/tinycnn/engine~{{engine}}/threads~{{threads}}/filters~{{filters}}/batch~{{batch}}/seed~{{seed}}.tsv"
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.threads)
    resources:
        bench=1,
    params:
        out=lambda wildcards, output: Path(output.metrics).parent,
        epochs=TINYCNN["epochs"],
        lr=TINYCNN["lr"],
        train_size=TINYCNN["train_size"],
        test_size=TINYCNN["test_size"],
        shuffle=str(TINYCNN["shuffle"]).lower(),
        data=data_args(),
    shell:
        "cnnpar train --model tinycnn --engine {wildcards.engine} --threads {threads}"
        " --filters {wildcards.filters} --batch-size {wildcards.batch} --epochs {params.epochs}"
        " --lr {params.lr} --seed {wildcards.seed} --train-size {params.train_size}"
        " --test-size {params.test_size} --shuffle {params.shuffle} {params.data}"
        " --out {params.out} > {log} 2>&1"


rule train_mosaicnet:
    input:
        DATA_CHECK,
    output:
        model=f"{MOSAICNET_DIR}/model.pt",
        metrics=f"{MOSAICNET_DIR}/metrics.csv",
        run=f"{MOSAICNET_DIR}/run.json",
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
        # For cluster executors (the SLURM plugin turns it into sbatch --gpus=1). It depends on
        # the config, not on a wildcard, so profiles/slurm cannot compute it.
        gpu=int(MOSAICNET["engine"] == "torch-cuda"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        engine=MOSAICNET["engine"],
        epochs=MOSAICNET["epochs"],
        batch_size=MOSAICNET["batch_size"],
        train_size=MOSAICNET["train_size"],
        data=data_args(),
    shell:
        "cnnpar train --model mosaicnet --engine {params.engine} --threads {threads}"
        " --epochs {params.epochs} --batch-size {params.batch_size}"
        " --train-size {params.train_size} --seed {wildcards.seed} {params.data}"
        " --out {params.out} > {log} 2>&1"
