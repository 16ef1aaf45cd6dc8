# Tidy tables from every job's run record, then figures drawn only from those tables.
# Figure captions come from cnnpar.registry (figure_caption); table captions are in report/.


rule tables:
    input:
        tinycnn=tinycnn_records,
        mosaicnet=mosaicnet_records,
        classify=classify_records,
        env=env_infos,
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
                f"{FIGURE_DIR}/{figure_id}.png",
                caption=figure_caption(figure_id),
                category="Figures",
            )
            for figure_id in FIGURE_IDS
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
        largest_grid_mask,
    output:
        report(
            f"{FIGURE_DIR}/mask.png",
            caption=figure_caption("mask"),
            category="Figures",
        ),
    log:
        f"{LOGS}/aggregate/mask.log",
    conda:
        "../../envs/cnnpar.yaml"
    shell:
        "cp {input} {output} 2> {log}"
