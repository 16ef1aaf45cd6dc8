# One self-contained HTML page: figures embedded, tables, the config and the environment.


rule report:
    input:
        **{name: f"{TABLES}/{name}.csv" for name in TABLE_NAMES},
        figures=figure_files("png"),
        mask=f"{FIGURE_DIR}/mask.png",
        record=report_record,
    output:
        report(REPORT_HTML, caption="../report/report_html.rst", category="Report"),
    log:
        f"{LOGS}/report/report.log",
    conda:
        "../../envs/cnnpar.yaml"
    params:
        title=config["report"]["title"],
        config_yaml=config_yaml(),
    script:
        "../scripts/report.py"
