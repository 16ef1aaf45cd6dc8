"""What a classification run produces: the tidy result rows, the run directory and the
console summary."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnpar import io
from cnnpar.classify.config import RESULT_FILES, ClassifyConfig
from cnnpar.measure.environment import environment
from cnnpar.measure.interference import Interference
from cnnpar.measure.machine import this_machine
from cnnpar.measure.timing import Measurement
from cnnpar.mosaic import Mosaic, render_mask, write_png
from cnnpar.nets.mosaicnet import FLOPS_PER_IMAGE, bytes_per_image, working_set_bytes
from cnnpar.record import Parallelism, RunRecord
from cnnpar.registry import MODES


@dataclass
class Classification:
    """A run's result. It classified the mosaic's cells [0, n): all of them, or with a time
    budget whole batches from cell 0 (`classified`); `label`, `pred` and `confidence` hold
    those n cells, and repeat i classified `repeat_cells[i]` of them."""

    config: ClassifyConfig
    mosaic: Mosaic
    images: np.ndarray  # (10000, 28, 28) uint8 test digits, for the mask
    label: np.ndarray  # (n,) uint8 true test label per classified cell
    pred: np.ndarray  # (n,) uint8
    confidence: np.ndarray  # (n,) float32 softmax max
    startup_s: float
    measurement: Measurement
    cpu_s: list[float]  # CPU seconds per repeat, summed over classifying processes
    repeat_cells: list[int]  # cells classified per repeat (the mosaic's, without a budget)
    threads: dict[str, int | None]  # effective counts inside one classifying process
    processes: int
    malloc: str
    load: dict[str, bool | int]  # oversubscribed, cpus_available (limits.oversubscription)
    interference: Interference | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific results (ranks mode)
    weights_note: str | None = None  # how weights saved under other names were mapped
    machine_cpus: int | None = None  # ranks mode: the job's CPUs on rank 0's node

    @property
    def classified(self) -> int:
        """Cells the run classified, [0, n) of the mosaic."""
        return len(self.pred)

    @property
    def accuracy(self) -> float:
        """The share of the classified cells labelled right."""
        return float(np.mean(self.pred == self.label))

    @property
    def rate(self) -> float:
        """cells/s: the mosaic over the median repeat's seconds; with a time budget, the cells
        classified over the timed seconds."""
        m = self.measurement
        if self.config.time_budget is None:
            return self.mosaic.cells / m.median
        return sum(self.repeat_cells) / sum(m.samples)

    @property
    def parallelism(self) -> Parallelism:
        torch_threads = self.threads.get("torch_threads") or 1
        # More processes than CPUs (a taskset-confined run) take turns: they are worth no more
        # cores than the CPUs they may use.
        cores = self.processes * int(torch_threads)
        cpus = int(self.load.get("cpus_available") or cores)  # on this (rank 0's) machine
        hosts = {rank.get("host") for rank in self.extra.get("ranks", [])}
        return Parallelism(
            requested=self.config.cores,
            effective=cores if len(hosts) > 1 else min(cores, cpus),
            processes=self.processes,
            threads=dict(self.threads),
        )

    def result_rows(self) -> list[dict[str, Any]]:
        """One row per timed repeat: the contract columns, then the context. `cells` is the
        mosaic's, `cells_classified` the repeat's (fewer when a time budget cut it short), and
        `cells_per_s` their rate; `end_to_end_cells_per_s` is what a fresh run classifying the
        whole mosaic once at that rate would see."""
        c, m = self.config, self.measurement
        rows = []
        cells = self.mosaic.cells
        timed = zip(m.samples, self.cpu_s, self.repeat_cells, strict=True)
        for repeat, (classify_s, cpu_s, done) in enumerate(timed, 1):
            whole_s = classify_s * (cells / done)  # the repeat's seconds for a whole pass
            rows.append(
                {
                    "mode": c.mode,
                    "workers": c.workers,
                    "batch_size": c.batch_size,
                    "rows": c.rows,
                    "cols": c.cols,
                    "cells": cells,
                    "cells_classified": done,
                    "distinct_digits": self.mosaic.distinct_digits,
                    "startup_s": self.startup_s,
                    "classify_s": classify_s,
                    "total_s": self.startup_s + classify_s,
                    "cells_per_s": done / classify_s,
                    # What one fresh run classifying once would see: start-up included.
                    "end_to_end_cells_per_s": cells / (self.startup_s + whole_s),
                    "accuracy": self.accuracy,
                    # CPU time is what co-tenants on a shared machine cannot inflate much.
                    "classify_cpu_s": cpu_s,
                    "processes": self.processes,
                    **self.threads,
                    "backend": c.resolved_backend,
                    "device": c.device,
                    "malloc": self.malloc,
                    "with_replacement": self.mosaic.with_replacement,
                    "seed": c.seed,
                    "repeat": repeat,
                    "repeats": len(m.samples),
                    "classify_median_s": m.median,
                    "classify_iqr_s": m.iqr,
                }
            )
        return rows

    def record(self, mask_shape: tuple[int, ...]) -> RunRecord:
        return run_record(
            self.config,
            self.parallelism,
            results={
                "cells": self.mosaic.cells,
                # the cells predictions.npz, the mask and the accuracy cover: [0, n)
                "cells_classified": self.classified,
                "repeat_cells": list(self.repeat_cells),
                "distinct_digits": self.mosaic.distinct_digits,
                "with_replacement": self.mosaic.with_replacement,
                "accuracy": self.accuracy,
                "startup_s": self.startup_s,
                "classify": self.measurement.summary(),
                "flops_per_image": FLOPS_PER_IMAGE,
                # the traffic an inference batch must move, for the roofline's intensity
                "bytes_per_image": bytes_per_image(self.config.batch_size, training=False),
                "working_set_bytes": working_set_bytes(self.config.batch_size, training=False),
                "malloc": self.malloc,
                "mask_shape": list(mask_shape),
                "weights_note": self.weights_note,
                **self.load,
                **self.extra,
            },
            interference=self.interference,
            machine_cpus=self.machine_cpus,
        )


def run_record(
    config: ClassifyConfig,
    parallelism: Parallelism,
    results: dict,
    interference: Interference | None = None,
    machine_cpus: int | None = None,
) -> RunRecord:
    """The run record of a classification run with `config`; `machine_cpus` (ranks mode) is
    the CPUs the job may use on rank 0's node, for the machine identity."""
    params = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in asdict(config).items()
        # how it was guarded and where, not what ran
        if k not in ("out", "timing_lock", "limits", "rank_timeout", "machine_label")
    }
    params.update(
        grid=config.grid, backend=config.resolved_backend, requested_backend=config.backend
    )
    return RunRecord(
        command="classify",
        model="mosaicnet",
        params=params,
        parallelism=parallelism,
        results=results,
        outputs=list(RESULT_FILES),
        environment=environment().as_dict(),
        interference=interference,
        # a ranked run's identity is the node as the job may use it, not rank 0's share
        machine=this_machine(config.machine_label, cpus=machine_cpus),
    )


def write_outputs(result: Classification, out: str | os.PathLike[str]) -> RunRecord:
    """The run directory `out`, whole or not at all (io.run_directory): predictions.npz,
    result.csv, mask.png, then run.json."""
    with io.run_directory(out) as tmp:
        return _write_files(result, tmp)


def _write_files(result: Classification, out: Path) -> RunRecord:
    # The classified cells [0, n), in mosaic order: index says which digit each one shows.
    io.write_npz(
        out / "predictions.npz",
        index=result.mosaic.index[: result.classified],
        label=result.label,
        pred=result.pred,
        confidence=result.confidence,
    )
    io.write_csv(out / "result.csv", result.result_rows())
    mask = render_mask(result.mosaic, result.images, result.pred == result.label, result.confidence)
    write_png(out / "mask.png", mask)
    record = result.record(mask.shape)
    record.write(out)  # last: its presence means the directory is complete
    return record


def summary_lines(result: Classification) -> Iterator[str]:
    """The original study's printout (mode, workers, items, runtime, accuracy) plus throughput."""
    c, m, mosaic = result.config, result.measurement, result.mosaic
    threads = result.threads.get("torch_threads")
    shape = (
        f"{c.ranks} rank{'s' if c.ranks > 1 else ''}"
        if MODES[c.mode].ranks
        else f"{c.workers} worker{'s' if c.workers > 1 else ''}"
    )
    yield (
        f"mode: {c.mode} ({shape}, "
        f"{result.processes} process{'es' if result.processes > 1 else ''} × "
        f"{threads} torch thread{'s' if threads != 1 else ''}, backend {c.resolved_backend}, "
        f"batch size {c.batch_size})"
    )
    yield f"workers: {c.workers}"
    source = (
        f"sampled with replacement from the test digits, {mosaic.distinct_digits:,} distinct"
        if mosaic.with_replacement
        else f"{mosaic.distinct_digits:,} distinct test digits"
    )
    if c.time_budget is None:
        yield f"total items classified: {mosaic.cells:,} ({c.rows}x{c.cols} mosaic, {source})"
    else:
        yield (
            f"total items classified: {result.classified:,} of {mosaic.cells:,} "
            f"({c.rows}x{c.cols} mosaic, {source}); {sum(result.repeat_cells):,} in "
            f"{sum(m.samples):.3f} s over {len(m.samples)} timed repeat(s), time budget "
            f"{c.time_budget:g} s"
        )
    spread = f" (median of {len(m.samples)}, IQR {m.iqr:.3f} s)" if len(m.samples) > 1 else ""
    yield (
        f"total runtime: {result.startup_s + m.median:.3f} s = start-up {result.startup_s:.3f} s "
        f"+ classify {m.median:.3f} s{spread}"
    )
    some = " (the classified cells)" if result.classified < mosaic.cells else ""
    yield f"accuracy: {100 * result.accuracy:.2f}% on test digits{some}"
    yield f"throughput: {result.rate:,.0f} cells/s"
