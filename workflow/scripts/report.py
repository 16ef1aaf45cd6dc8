"""Snakemake script: tables + figures + config + environment -> one self-contained report.html."""

import logging

from cnnpar.study import report
from cnnpar.study.tables import TABLE_SCHEMAS


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    report.write_report(
        out=smk.output[0],
        title=smk.params.title,
        tables={name: smk.input[name] for name in TABLE_SCHEMAS},
        figures=[*smk.input.figures, smk.input.mask],
        record=smk.input.record,
        config_yaml=smk.params.config_yaml,
    )


main(snakemake)  # noqa: F821 - injected by Snakemake
