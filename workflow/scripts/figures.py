"""Snakemake script: the tidy tables -> results/figures/*.png and *.svg."""

import logging
from pathlib import Path

from cnnpar.study import figures


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    figures.draw_all(
        tables={name: smk.input[name] for name in figures.TABLE_SCHEMAS},
        out_dir=Path(smk.output.png[0]).parent,
    )


main(snakemake)  # noqa: F821 - injected by Snakemake
