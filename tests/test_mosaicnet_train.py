"""`cnnpar train --model mosaicnet`: a loadable state_dict, metrics, (slow) 98.5% in 2 epochs."""

from __future__ import annotations

import csv

import pytest
import torch

from cnnpar import cli
from cnnpar.nets.mosaicnet import CONV1_FLOPS, FORWARD_FLOPS, N_PARAMETERS, load_mosaicnet
from cnnpar.record import RunRecord
from cnnpar.train import METRIC_FIELDS


def read_metrics(path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_mosaicnet_run_directory_loads(tmp_path):
    out = tmp_path / "mosaic"
    args = ["--train-size", "512", "--test-size", "200", "--epochs", "1", "--threads", "2"]
    code = cli.main(
        ["train", "--model", "mosaicnet", "--engine", "torch", *args, "--out", str(out)]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "model.pt", "run.json"]
    model = load_mosaicnet(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == N_PARAMETERS
    with torch.inference_mode():
        assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and tuple(rows[0]) == METRIC_FIELDS
    run = RunRecord.read(out / "run.json")
    assert run.model == run.params["model"] == "mosaicnet" and run.params["lr"] == 1e-3
    assert run.params["batch_size"] == 64 and run.results["parameters"] == N_PARAMETERS
    assert run.results["flops_per_image"] == 3 * FORWARD_FLOPS - CONV1_FLOPS


@pytest.mark.slow  # seconds: spawns processes or trains
def test_mosaicnet_is_seeded(tmp_path):
    states = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["--train-size", "128", "--test-size", "10", "--epochs", "1", "--seed", "3"]
        assert cli.main(["train", "--model", "mosaicnet", *args, "--out", str(out)]) == 0
        states.append(torch.load(out / "model.pt", weights_only=True))
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])


@pytest.mark.slow
def test_mosaicnet_reaches_98_5_percent_in_two_epochs(tmp_path):
    out = tmp_path / "full"
    code = cli.main(
        ["train", "--model", "mosaicnet", "--engine", "torch", "--epochs", "2", "--threads", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    rows = read_metrics(out / "metrics.csv")
    assert float(rows[-1]["test_acc"]) >= 0.985
