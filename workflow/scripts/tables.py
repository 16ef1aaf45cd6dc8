"""Snakemake script: every job's run record -> the tidy train, classify and summary tables."""

import logging

from cnnpar.study import tables


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    tables.build_tables(
        records=[*smk.input.tinycnn, *smk.input.mosaicnet, *smk.input.classify],
        env_infos=list(smk.input.env),
        train_out=smk.output.train,
        classify_out=smk.output.classify,
        summary_out=smk.output.summary,
    )


main(snakemake)  # noqa: F821 - injected by Snakemake
