"""Snakemake script: tables + figures + config + environment -> one self-contained report.html."""

import logging

from cnnpar.study import report


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    report.write_report(
        out=smk.output[0],
        title=smk.params.title,
        train_csv=smk.input.train,
        classify_csv=smk.input.classify,
        summary_csv=smk.input.summary,
        figures=[*smk.input.figures, smk.input.mask],
        env_json=smk.input.env,
        config_yaml=smk.params.config_yaml,
    )


main(snakemake)  # noqa: F821 - injected by Snakemake
