"""The shared definition: shapes, seeded init, FLOPs and data order."""

from __future__ import annotations

import numpy as np
import pytest

from cnnpar.nets.tinycnn import spec
from cnnpar.nets.tinycnn.torch_engine import TinyCNN


@pytest.mark.parametrize("filters", [1, 8, 32])
def test_shapes_match_torch_modules(filters):
    params = spec.init_params(filters, seed=0)
    model = TinyCNN(filters)
    torch_shapes = {
        "conv_w": model.conv.weight.shape,
        "conv_b": model.conv.bias.shape,
        "fc_w": model.fc.weight.shape,
        "fc_b": model.fc.bias.shape,
    }
    for key in spec.PARAM_KEYS:
        assert params[key].dtype == np.float32
        assert params[key].shape == tuple(torch_shapes[key])
    assert spec.n_parameters(filters) == sum(p.numel() for p in model.parameters())
    assert spec.check_params(params) == filters


def test_init_is_seeded_and_he_scaled():
    a, b, c = (spec.init_params(8, seed) for seed in (7, 7, 8))
    for key in spec.PARAM_KEYS:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["conv_w"], c["conv_w"])
    big = spec.init_params(64, seed=0)
    assert big["conv_w"].std() == pytest.approx(np.sqrt(2 / 9), rel=0.1)
    assert big["fc_w"].std() == pytest.approx(np.sqrt(2 / (169 * 64)), rel=0.05)
    assert not big["conv_b"].any() and not big["fc_b"].any()


def test_flops_per_image():
    # forward: conv 2·26²·9·F + fc 2·10·169·F; backward adds conv dW and fc dW + dx.
    assert spec.flops_per_image(1, training=False) == 12_168 + 3_380
    assert spec.flops_per_image(8) == 8 * (2 * 12_168 + 3 * 3_380)
    assert spec.flops_per_image(32) == 4 * spec.flops_per_image(8)


def test_bytes_per_image_counts_the_compulsory_traffic():
    # F = 1: x 784, pooled 169, logits 10 floats per image; P = 9 + 1 + 1,690 + 10 = 1,710.
    assert spec.layer_floats(1) == (784, 169, 10)
    # inference: x read, pooled written and read, logits written; weights read once per batch
    assert spec.bytes_per_image(1, batch_size=1, training=False) == 4 * (784 + 2 * 169 + 10 + 1710)
    assert spec.bytes_per_image(1, batch_size=10, training=False) == 4 * (784 + 338 + 10 + 171)
    # training, F = 8, B = 32: x read twice (1,568); pooled written, read twice, its gradient
    # written and read (5 × 1,352 = 6,760); logits and their gradient written and read (40);
    # weights and gradients read and written once per step (4 × 13,610 / 32 = 1,701.25)
    assert spec.n_parameters(8) == 13_610
    assert spec.bytes_per_image(8, batch_size=32) == 4 * (1_568 + 6_760 + 40 + 1_701.25)
    assert spec.bytes_per_image(8, batch_size=32) == 40_277.0
    # one step touches x, pooled and logits of the batch, their gradients, weights + gradients
    assert spec.working_set_bytes(8, 32) == 4 * (32 * (784 + 1_352 + 10 + 1_352 + 10) + 2 * 13_610)
    assert spec.working_set_bytes(8, 32, training=False) == 4 * (32 * 2_146 + 13_610)


def test_epoch_order():
    np.testing.assert_array_equal(spec.epoch_order(5, 0, 1, shuffle=False), np.arange(5))
    np.testing.assert_array_equal(spec.epoch_order(5, 3, 1, shuffle=False), np.arange(5))
    first = spec.epoch_order(1000, 0, seed=1, shuffle=True)
    np.testing.assert_array_equal(first, spec.epoch_order(1000, 0, seed=1, shuffle=True))
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    assert not np.array_equal(first, spec.epoch_order(1000, 1, seed=1, shuffle=True))
    assert not np.array_equal(first, spec.epoch_order(1000, 0, seed=2, shuffle=True))


def test_batch_bounds_keep_the_final_partial_batch():
    assert list(spec.batch_bounds(70, 32)) == [(0, 32), (32, 64), (64, 70)]
    assert list(spec.batch_bounds(64, 32)) == [(0, 32), (32, 64)]
    assert spec.n_steps(70, 32) == 3
    with pytest.raises(ValueError):
        list(spec.batch_bounds(10, 0))
