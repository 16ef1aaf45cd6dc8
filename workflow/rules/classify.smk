# Classification jobs: one `cnnpar classify` per (mode, workers, grid, batch, seed), using the
# MosaicNet weights trained with the same seed. `threads:` is the worker count so the
# scheduler reserves a core per worker thread or process.


rule classify:
    input:
        weights=f"{MOSAICNET_DIR}/model.pt",
    output:
        result=f"{CLASSIFY_DIR}/result.csv",
        predictions=f"{CLASSIFY_DIR}/predictions.npz",
        mask=f"{CLASSIFY_DIR}/mask.png",
        run=f"{CLASSIFY_DIR}/run.json",
    log:
        f"{LOGS}/classify/mode~{{mode}}/workers~{{workers}}/grid~{{grid}}/batch~{{batch}}/seed~{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/classify/mode~{{mode}}/workers~{{workers}}/grid~{{grid}}/batch~{{batch}}/seed~{{seed}}.tsv"
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.workers)
    resources:
        bench=1,
    params:
        out=lambda wildcards, output: Path(output.result).parent,
        rows=lambda wildcards: parse_grid(wildcards.grid)[0],
        cols=lambda wildcards: parse_grid(wildcards.grid)[1],
        repeats=CLASSIFY["repeats"],
        data=data_args(),
    shell:
        "cnnpar classify --weights {input.weights} --rows {params.rows} --cols {params.cols}"
        " --mode {wildcards.mode} --workers {threads} --batch-size {wildcards.batch}"
        " --seed {wildcards.seed} --repeats {params.repeats} {params.data}"
        " --out {params.out} > {log} 2>&1"
