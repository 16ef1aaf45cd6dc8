# One self-contained HTML page: figures embedded, tables, the config and the environment.


rule report:
    input:
        train=f"{TABLES}/train.csv",
        classify=f"{TABLES}/classify.csv",
        summary=f"{TABLES}/summary.csv",
        figures=figure_files("png"),
        mask=f"{FIGURE_DIR}/mask.png",
        env=report_env_info,
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
