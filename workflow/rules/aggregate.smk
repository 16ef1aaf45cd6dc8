# Tidy tables from every job's run record, then figures drawn only from those tables.
# Figure captions come from cnnpar.registry (figure_caption); table captions are in report/.


rule tables:
    input:
        records=all_records,
        compare_with=compare_with_files,
    output:
        **{
            name: report(
                f"{TABLES}/{name}.csv",
                caption=f"../report/{name}_table.rst",
                category="Tables",
            )
            for name in TABLE_NAMES
        },
        # the config beside the tables: results/ is a self-contained result set
        config=f"{TABLES}/config.yaml",
    log:
        f"{LOGS}/aggregate/tables.log",
    conda:
        "../../envs/cnnpar.yaml"
    params:
        config_yaml=config_yaml(),
        # resolved against the workdir at start-up; named in the report as the config gives them
        compare_with=[str(path) for _, path in COMPARE_WITH],
        compare_names=[given for given, _ in COMPARE_WITH],
        # the stopping rule: intervals at its per-look level, each headline's target verdict
        precision=[PRECISION.half_width, PRECISION.min_blocks, PRECISION.max_blocks],
    script:
        "../scripts/tables.py"


rule figures:
    input:
        **{name: f"{TABLES}/{name}.csv" for name in TABLE_NAMES},
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
        "cp {input:q} {output:q} 2> {log:q}"
