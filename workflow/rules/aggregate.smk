# Tidy tables from every job's files, then figures drawn only from those tables.


rule tables:
    input:
        tinycnn=job_paths(TINYCNN_DIR, tinycnn_jobs(), "metrics.csv"),
        mosaicnet=expand(f"{MOSAICNET_DIR}/metrics.csv", seed=CLASSIFY["seeds"]),
        classify=job_paths(CLASSIFY_DIR, classify_jobs(), "result.csv"),
        env=env_infos(),
    output:
        train=report(
            f"{TABLES}/train.csv",
            caption="../report/train_table.rst",
            category="Tables",
        ),
        classify=report(
            f"{TABLES}/classify.csv",
            caption="../report/classify_table.rst",
            category="Tables",
        ),
        summary=report(
            f"{TABLES}/summary.csv",
            caption="../report/summary_table.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/aggregate/tables.log",
    conda:
        "../../envs/cnnpar.yaml"
    script:
        "../scripts/tables.py"


rule figures:
    input:
        train=f"{TABLES}/train.csv",
        classify=f"{TABLES}/classify.csv",
        summary=f"{TABLES}/summary.csv",
    output:
        png=[
            report(
                f"{FIGURES}/{stem}.png",
                caption=f"../report/{stem}.rst",
                category="Figures",
            )
            for stem in FIGURE_STEMS
        ],
        svg=figure_files("svg"),
    log:
        f"{LOGS}/aggregate/figures.log",
    conda:
        "../../envs/cnnpar.yaml"
    script:
        "../scripts/figures.py"


rule mask_figure:
    input:
        largest_grid_mask(),
    output:
        report(f"{FIGURES}/mask.png", caption="../report/mask.rst", category="Figures"),
    log:
        f"{LOGS}/aggregate/mask.log",
    conda:
        "../../envs/cnnpar.yaml"
    shell:
        "cp {input} {output} 2> {log}"
