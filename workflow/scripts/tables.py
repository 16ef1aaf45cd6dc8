"""Snakemake script: every job's run record -> the tidy tables."""

import logging

from cnnpar.measure.stopping import Precision
from cnnpar.study import tables


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    tables.build_tables(
        records=list(smk.input.records),
        out={name: smk.output[name] for name in tables.TABLE_SCHEMAS},
        config=(smk.output.config, smk.params.config_yaml),
        compare_with=smk.params.compare_with,
        compare_names=smk.params.compare_names,
        precision=Precision(*smk.params.precision),
    )


main(snakemake)  # noqa: F821 - injected by Snakemake
