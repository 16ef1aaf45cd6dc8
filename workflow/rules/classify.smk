# Classification jobs: one `cnnpar classify` per configuration and paired block.


rule classify:
    input:
        weights=f"{MOSAICNET_DIR}/model.pt",
        previous=previous_block,
    output:
        **{
            name.split(".")[0]: f"{CLASSIFY_DIR}/block~{{block}}/{name}"
            for name in CLASSIFY_FILES
        },
    log:
        f"{LOGS}/classify/{CLASSIFY_TAIL}/block~{{block}}.log",
    benchmark:
        f"{BENCHMARKS}/classify/{CLASSIFY_TAIL}/block~{{block}}.tsv"
    priority: block_priority("classify")
    group:
        family_group(CLASSIFY_GROUP)
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.workers)
    resources:
        bench=1,
        gpu=mode_gpus,
        tasks=rank_tasks,
        nodes=rank_nodes,
    params:
        out=lambda wildcards, output: Path(output.result).parent,
        launch=rank_launch,
        layout=classify_layout_args,
        rows=lambda wildcards: parse_grid(wildcards.grid)[0],
        cols=lambda wildcards: parse_grid(wildcards.grid)[1],
        repeats=CLASSIFY["repeats"],
        data=data_source(),
        mirrors=mirror_options(),
        lock=timing_lock(),
        max_others=TIMING["max_others_share"],
        max_probe=TIMING["max_probe_change"],
        machine=machine_option(),
    shell:
        f"{LOGGED} {{log:q}}"
        " {params.launch}cnnpar classify --weights {input.weights:q} --rows {params.rows} --cols {params.cols}"
        " --mode {wildcards.mode} {params.layout} --batch-size {wildcards.batch}"
        " --seed {wildcards.seed} --repeats {params.repeats} --data-source {params.data:q}"
        " {params.mirrors}"
        " --block {wildcards.block} {params.lock:q}"
        " --max-others-share {params.max_others} --max-probe-change {params.max_probe}"
        " {params.machine} --out {params.out:q}"
