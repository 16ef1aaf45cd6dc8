"""Weights from elsewhere: the original project's `mnist-cnn.pth` (one `nn.Sequential` named
`network` with MosaicNet's layers), training checkpoints, whole pickled models, and files that
do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnpar.cli import main
from cnnpar.nets.mosaicnet import MosaicNet, WeightsError, load_mosaicnet, load_weights


class OriginalCNN(nn.Module):
    """The network as the original project defines it: MosaicNet's layers in MosaicNet's order,
    in one `nn.Sequential`, so its state_dict names them network.0 ... network.11."""

    def __init__(self, conv2_kernel: int = 5) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=conv2_kernel, padding=conv2_kernel // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[OriginalCNN, Path]:
    """Seeded original-project weights saved as that project saves them."""
    torch.manual_seed(1)
    model = OriginalCNN().eval()
    path = tmp_path_factory.mktemp("original") / "mnist-cnn.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _renamed(model: OriginalCNN) -> dict[str, torch.Tensor]:
    """The same tensors under MosaicNet's names."""
    return dict(zip(MosaicNet().state_dict(), model.state_dict().values(), strict=True))


def test_the_original_projects_weights_load_by_position(
    original: tuple[OriginalCNN, Path],
) -> None:
    model, path = original
    net, note = load_weights(path)
    assert note == (
        f"weights {path}: mapped its 10 tensors by position to MosaicNet's names "
        "(network.0.weight -> features.0.weight, ...; shapes match layer by layer)"
    )
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    reference = MosaicNet().eval()
    reference.load_state_dict(_renamed(model))
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


@pytest.mark.slow  # seconds: spawns processes or trains
def test_classify_with_the_original_projects_weights(
    original: tuple[OriginalCNN, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same predictions as MosaicNet's own file with the same tensors, and one line that
    says the names were mapped (also kept in the run record)."""
    model, path = original
    own = tmp_path / "model.pt"
    torch.save(_renamed(model), own)
    preds = {}
    for name, weights in (("original", path), ("own", own)):
        argv = ["classify", f"--weights={weights}", "--rows=6", "--cols=7", "--seed=3"]
        argv += [f"--timing-lock={tmp_path / 'lock'}", f"--out={tmp_path / name}"]
        assert main(argv) == 0
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if line.startswith("cnnpar: note:")]
        assert "Traceback" not in err
        assert len(notes) == (name == "original"), err
        if notes:
            assert notes[0].startswith(f"cnnpar: note: weights {path}: mapped its 10 tensors")
        preds[name] = np.load(tmp_path / name / "predictions.npz")["pred"]
        record = json.loads((tmp_path / name / "run.json").read_text())
        assert (record["results"]["weights_note"] is None) == (name == "own")
    np.testing.assert_array_equal(preds["original"], preds["own"])


def test_a_checkpoint_dict_is_unwrapped(original: tuple[OriginalCNN, Path], tmp_path: Path):
    model, _ = original
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "loss": 0.1}, path)
    net, note = load_weights(path)
    assert note is not None and "took its 'model_state_dict' entry and mapped its 10" in note
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    own = tmp_path / "own.pt"
    torch.save({"state_dict": MosaicNet().state_dict()}, own)
    assert load_weights(own)[1] == f"weights {own}: took its 'state_dict' entry"


def test_mosaicnets_own_names_in_another_order_are_matched_by_name(tmp_path: Path) -> None:
    state = MosaicNet().state_dict()
    path = tmp_path / "reversed.pt"
    torch.save(dict(reversed(state.items())), path)
    net, note = load_weights(path)
    assert note is None
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, state[name])


def _save(obj: object, tmp_path: Path, name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_files_that_do_not_fit_name_the_first_mismatch(tmp_path: Path) -> None:
    path = _save(OriginalCNN(conv2_kernel=3).state_dict(), tmp_path)
    with pytest.raises(WeightsError) as info:
        load_mosaicnet(path)
    assert str(info.value) == (
        f"{path} does not fit MosaicNet: tensor 3 'network.3.weight' is (32, 16, 3, 3), "
        "MosaicNet's features.3.weight is (32, 16, 5, 5)"
    )
    state = OriginalCNN().state_dict()
    state.pop("network.11.bias")
    with pytest.raises(WeightsError) as info:
        load_mosaicnet(_save(state, tmp_path))
    assert str(info.value).endswith(
        "it has 9 tensors, MosaicNet 10; the first missing is classifier.5.bias (10,)"
    )
    state = {**OriginalCNN().state_dict(), "network.13.weight": torch.zeros(10)}
    with pytest.raises(WeightsError) as info:
        load_mosaicnet(_save(state, tmp_path))
    assert str(info.value).endswith(
        "it has 11 tensors, MosaicNet 10; the first extra is 'network.13.weight'"
    )
    with pytest.raises(WeightsError) as info:
        load_mosaicnet(_save({"epoch": 3, "optimizer": "adam"}, tmp_path))
    assert str(info.value) == (
        f"{path} holds a dict of 'epoch', 'optimizer', not a state_dict of tensors; "
        "save model.state_dict()"
    )


def test_a_whole_pickled_model_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(OriginalCNN(), tmp_path, "whole.pth")
    argv = ["classify", f"--weights={path}", "--rows=2", "--cols=2", f"--out={tmp_path / 'o'}"]
    argv.append(f"--timing-lock={tmp_path / 'lock'}")  # not waiting for others' timed runs
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cnnpar classify: error: {path} holds a pickled test_weights.OriginalCNN (a whole "
        "model saved with torch.save(model)?), which cnnpar does not load since unpickling "
        "can run any code; save model.state_dict() instead\n"
    )
    assert not (tmp_path / "o").exists()


def test_classify_refuses_a_mismatch_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(OriginalCNN(conv2_kernel=3).state_dict(), tmp_path, "mnist-cnn.pth")
    argv = ["classify", f"--weights={path}", "--rows=2", "--cols=2", f"--out={tmp_path / 'o'}"]
    argv.append(f"--timing-lock={tmp_path / 'lock'}")  # not waiting for others' timed runs
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"cnnpar classify: error: {path} does not fit MosaicNet: tensor 3 'network.3.weight' "
        "is (32, 16, 3, 3), MosaicNet's features.3.weight is (32, 16, 5, 5)\n"
    )
