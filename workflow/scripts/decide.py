"""Snakemake script: the paired records of blocks 1..N -> stop, or run block N + 1."""

import logging

from cnnpar.measure.stopping import Precision
from cnnpar.study import stop


def main(smk) -> None:
    logging.basicConfig(filename=smk.log[0], level=logging.INFO, force=True)
    precision = Precision(smk.params.half_width, smk.params.min_blocks, smk.params.max_blocks)
    stop.write_decision(list(smk.input.records), precision, int(smk.wildcards.block),
                        smk.output.decision)  # fmt: skip


main(snakemake)  # noqa: F821 - injected by Snakemake
