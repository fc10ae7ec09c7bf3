"""Checks of the numpy oracle itself: im2col conv vs nested loops, col2im adjointness, every backward
vs central finite differences in float64, Adam vs hand arithmetic and optax, a short real training run."""

from __future__ import annotations

import ast
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import logsumexp

import reference_numpy as rn
from reference_numpy import cnn, layers
from reference_numpy.im2col import col2im, im2col, patches
from tests.helpers import (
    ATOL_ADAM_OPTAX_F32,
    ATOL_F64,
    ATOL_FD,
    ATOL_REFNP_F32_GRADS,
    ATOL_REFNP_F32_VALUES,
    RTOL_ADAM_HAND,
    RTOL_ADAM_HAND_DIGITS,
    RTOL_ADAM_OPTAX_F32,
    RTOL_F32,
    RTOL_F64,
    RTOL_FD,
    RTOL_REFNP_F32_GRADS,
    central_difference,
)

ROOT = Path(__file__).resolve().parents[1]

# (N, H, W, Cin, KH, KW, Cout): non-square images, batch and channels 1-3, kernels 1-3 (also non-square)
CONV_SHAPES = [
    (1, 5, 7, 1, 3, 3, 2),
    (2, 6, 4, 3, 1, 3, 1),
    (3, 4, 5, 2, 2, 2, 3),
    (2, 3, 3, 3, 3, 3, 2),
    (1, 7, 5, 2, 3, 1, 3),
]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- im2col / conv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_im2col_conv_matches_naive_loops(shape):
    n, h, w, cin, kh, kw, cout = shape
    rng = _rng(1)
    x, wt, b = rng.normal(size=(n, h, w, cin)), rng.normal(size=(kh, kw, cin, cout)), rng.normal(size=cout)
    y, _ = layers.conv2d_forward(x, wt, b)
    ref = layers.conv2d_naive(x, wt, b)
    assert y.shape == (n, h - kh + 1, w - kw + 1, cout)
    np.testing.assert_allclose(y, ref, rtol=RTOL_F64, atol=ATOL_F64)


def test_naive_conv_matches_hand_example():
    # 1x3x3x1 image, 2x2 kernel of ones: each output is the sum of a 2x2 block, plus bias 0.5.
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    y = layers.conv2d_naive(x, np.ones((2, 2, 1, 1)), np.array([0.5]))
    np.testing.assert_array_equal(y[0, :, :, 0], [[8.5, 12.5], [20.5, 24.5]])


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_im2col_layout_matches_definition(shape):
    n, h, w, c, kh, kw, _ = shape
    x = _rng(2).normal(size=(n, h, w, c))
    cols = im2col(x, kh, kw)
    oh, ow = h - kh + 1, w - kw + 1
    assert cols.shape == (n * oh * ow, kh * kw * c)
    for s in range(n):
        for i in range(oh):
            for j in range(ow):
                np.testing.assert_array_equal(
                    cols[(s * oh + i) * ow + j], x[s, i : i + kh, j : j + kw, :].ravel()
                )


def test_im2col_handles_non_contiguous_input_and_preserves_dtype():
    base = _rng(3).normal(size=(2, 3, 6, 5)).astype(np.float32)
    x = base.transpose(0, 3, 2, 1)[:, ::-1]  # (2, 5, 6, 3), negative and permuted strides
    cols = im2col(x, 2, 3)
    np.testing.assert_array_equal(cols, im2col(np.ascontiguousarray(x), 2, 3))
    assert cols.dtype == np.float32
    assert np.shares_memory(patches(x, 2, 3), x)  # the patch view is no copy


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_col2im_is_adjoint_of_im2col(shape):
    n, h, w, c, kh, kw, _ = shape
    rng = _rng(4)
    x = rng.normal(size=(n, h, w, c))
    cols = rng.normal(size=((n * (h - kh + 1) * (w - kw + 1)), kh * kw * c))
    lhs = np.sum(im2col(x, kh, kw) * cols)
    rhs = np.sum(x * col2im(cols, x.shape, kh, kw))
    np.testing.assert_allclose(lhs, rhs, rtol=RTOL_F64)


def test_col2im_counts_patch_overlaps():
    # col2im of all-ones counts how many patches cover each pixel: 1 at corners, KH*KW in the middle.
    counts = col2im(np.ones((1 * 3 * 3, 9)), (1, 5, 5, 1), 3, 3)[0, :, :, 0]
    expected = np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1])
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv_backward_matches_finite_differences(shape):
    n, h, w, cin, kh, kw, cout = shape
    rng = _rng(5)
    x, wt, b = rng.normal(size=(n, h, w, cin)), rng.normal(size=(kh, kw, cin, cout)), rng.normal(size=cout)
    r = rng.normal(size=(n, h - kh + 1, w - kw + 1, cout))  # L = <conv(x), r>, so dL/dy = r

    def loss(x_, w_, b_):
        return np.sum(layers.conv2d_forward(x_, w_, b_)[0] * r)

    _, cache = layers.conv2d_forward(x, wt, b)
    dx, dw, db = layers.conv2d_backward(r, cache)
    np.testing.assert_allclose(
        dx, central_difference(lambda v: loss(v, wt, b), x), rtol=RTOL_FD, atol=ATOL_FD
    )
    np.testing.assert_allclose(
        dw, central_difference(lambda v: loss(x, v, b), wt), rtol=RTOL_FD, atol=ATOL_FD
    )
    np.testing.assert_allclose(
        db, central_difference(lambda v: loss(x, wt, v), b), rtol=RTOL_FD, atol=ATOL_FD
    )
    dx_none, dw2, _ = layers.conv2d_backward(r, cache, compute_dx=False)
    assert dx_none is None
    np.testing.assert_array_equal(dw2, dw)


def test_conv_preserves_float32():
    rng = _rng(6)
    x = rng.normal(size=(2, 5, 6, 2)).astype(np.float32)
    wt, b = rng.normal(size=(3, 3, 2, 4)).astype(np.float32), np.zeros(4, np.float32)
    y, cache = layers.conv2d_forward(x, wt, b)
    dx, dw, db = layers.conv2d_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float32)}
    np.testing.assert_allclose(
        y,
        layers.conv2d_naive(x.astype(float), wt.astype(float), b),
        rtol=RTOL_F32,
        atol=ATOL_REFNP_F32_VALUES,
    )


# --- ReLU / max-pool / flatten / dropout / dense -------------------------------------------------------


def _away_from_zero(rng, shape, gap=1e-2):
    """Normal values with |x| >= gap, so a finite-difference step never crosses the ReLU kink."""
    v = rng.normal(size=shape)
    return np.where(np.abs(v) < gap, np.sign(v + 1e-300) * gap, v)


def test_relu_backward_matches_finite_differences():
    rng = _rng(7)
    x, r = _away_from_zero(rng, (3, 4, 5, 2)), rng.normal(size=(3, 4, 5, 2))
    y, cache = layers.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    fd = central_difference(lambda v: np.sum(layers.relu_forward(v)[0] * r), x)
    np.testing.assert_allclose(layers.relu_backward(r, cache), fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_relu_derivative_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0], dtype=np.float32)
    _, cache = layers.relu_forward(x)
    dx = layers.relu_backward(np.ones(3, np.float32), cache)
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0])
    assert dx.dtype == np.float32


@pytest.mark.parametrize(
    ("shape", "size", "stride"),
    [((2, 6, 8, 3), 2, 2), ((1, 11, 11, 2), 2, 2), ((2, 7, 5, 1), 3, 2), ((1, 5, 6, 2), 2, 1)],
)
def test_maxpool_forward_and_backward(shape, size, stride):
    rng = _rng(8)
    # distinct values at least 1e-3 apart: no ties, so a 1e-6 step never changes the argmax
    x = rng.permutation(np.prod(shape)).reshape(shape) * 1e-3 + rng.uniform(0, 1e-4, size=shape)
    y, cache = layers.maxpool2d_forward(x, size=size, stride=stride)
    n, h, w, c = shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    ref = np.empty((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            ref[:, i, j, :] = x[:, i * stride : i * stride + size, j * stride : j * stride + size, :].max(
                axis=(1, 2)
            )
    np.testing.assert_array_equal(y, ref)
    r = rng.normal(size=y.shape)
    fd = central_difference(lambda v: np.sum(layers.maxpool2d_forward(v, size=size, stride=stride)[0] * r), x)
    np.testing.assert_allclose(layers.maxpool2d_backward(r, cache), fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_maxpool_floor_shape_of_seed_cnn():
    y, _ = layers.maxpool2d_forward(np.zeros((1, 11, 11, 64), np.float32))
    assert y.shape == (1, 5, 5, 64) and y.dtype == np.float32


def test_maxpool_ties_send_gradient_to_first_maximum_in_row_major_order():
    # one 2x2 window per case; the documented rule: the first maximal element (row-major) gets dy
    windows = {
        "all equal": [[1.0, 1.0], [1.0, 1.0]],
        "bottom row tie": [[0.0, 0.0], [2.0, 2.0]],
        "diagonal tie": [[0.0, 3.0], [3.0, 0.0]],
    }
    expected = {
        "all equal": [[5.0, 0.0], [0.0, 0.0]],
        "bottom row tie": [[0.0, 0.0], [5.0, 0.0]],
        "diagonal tie": [[0.0, 5.0], [0.0, 0.0]],
    }
    for name, win in windows.items():
        x = np.array(win).reshape(1, 2, 2, 1)
        y, cache = layers.maxpool2d_forward(x)
        assert y.item() == np.max(win)
        dx = layers.maxpool2d_backward(np.full((1, 1, 1, 1), 5.0), cache)
        np.testing.assert_array_equal(dx[0, :, :, 0], expected[name], err_msg=name)


def test_maxpool_overlapping_windows_accumulate():
    # stride 1, a single global max at the centre of a 3x3 image: it wins all four 2x2 windows
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 1.0
    _, cache = layers.maxpool2d_forward(x, size=2, stride=1)
    dx = layers.maxpool2d_backward(np.ones((1, 2, 2, 1)), cache)
    assert dx[0, 1, 1, 0] == 4.0 and dx.sum() == 4.0


def test_flatten_is_c_order_and_backward_inverts():
    x = np.arange(2 * 2 * 3 * 4.0).reshape(2, 2, 3, 4)
    y, cache = layers.flatten_forward(x)
    assert y.shape == (2, 24)
    assert y[1, (1 * 3 + 2) * 4 + 3] == x[1, 1, 2, 3]  # feature index (h*W + w)*C + c
    np.testing.assert_array_equal(layers.flatten_backward(y, cache), x)


def test_dropout_with_fixed_mask_forward_and_finite_differences():
    rng = _rng(9)
    x, r = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    mask = rng.integers(0, 2, size=(4, 6))
    y, cache = layers.dropout_forward(x, rate=0.5, mask=mask)
    np.testing.assert_array_equal(y, x * mask * 2.0)
    fd = central_difference(lambda v: np.sum(layers.dropout_forward(v, rate=0.5, mask=mask)[0] * r), x)
    np.testing.assert_allclose(layers.dropout_backward(r, cache), fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_dropout_with_rng_keeps_expected_fraction_and_is_reproducible():
    x = np.ones((200, 500), np.float32)
    y, _ = layers.dropout_forward(x, rate=0.3, rng=_rng(10))
    assert y.dtype == np.float32
    assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / 0.7)}
    keep = np.mean(y > 0)
    assert abs(keep - 0.7) < 4 * math.sqrt(0.7 * 0.3 / y.size)  # 4 binomial standard errors
    np.testing.assert_array_equal(y, layers.dropout_forward(x, rate=0.3, rng=_rng(10))[0])
    np.testing.assert_array_equal(layers.dropout_forward(x, rate=0.0, rng=_rng(10))[0], x)


def test_dense_backward_matches_finite_differences():
    rng = _rng(11)
    x, w, b, r = rng.normal(size=(3, 5)), rng.normal(size=(5, 4)), rng.normal(size=4), rng.normal(size=(3, 4))
    y, cache = layers.dense_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w + b, rtol=RTOL_F64)
    dx, dw, db = layers.dense_backward(r, cache)

    def loss(x_, w_, b_):
        return np.sum(layers.dense_forward(x_, w_, b_)[0] * r)

    np.testing.assert_allclose(dx, central_difference(lambda v: loss(v, w, b), x), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(dw, central_difference(lambda v: loss(x, v, b), w), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(db, central_difference(lambda v: loss(x, w, v), b), rtol=RTOL_FD, atol=ATOL_FD)


# --- softmax cross-entropy -----------------------------------------------------------------------------


def test_softmax_cross_entropy_value_and_gradient():
    rng = _rng(12)
    z, y = rng.normal(size=(5, 4)) * 3, np.array([0, 3, 1, 1, 2])
    loss, dz = layers.softmax_cross_entropy(z, y)
    ref = np.mean(logsumexp(z, axis=1) - z[np.arange(5), y])
    np.testing.assert_allclose(loss, ref, rtol=RTOL_F64)
    np.testing.assert_allclose(
        layers.log_softmax(z), scipy_log_softmax(z, axis=1), rtol=RTOL_F64, atol=ATOL_F64
    )
    fd = central_difference(lambda v: layers.softmax_cross_entropy(v, y)[0], z)
    np.testing.assert_allclose(dz, fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_softmax_cross_entropy_is_stable_for_huge_logits_and_keeps_float32():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss, dz = layers.softmax_cross_entropy(z, np.array([1, 2]))
    assert loss.dtype == np.float32 and dz.dtype == np.float32
    np.testing.assert_allclose(loss, (1e4 + math.log(3)) / 2, rtol=RTOL_F32)
    np.testing.assert_allclose(
        dz, [[0.5, -0.5, 0.0], [1 / 6, 1 / 6, -1 / 3]], rtol=RTOL_F32, atol=ATOL_REFNP_F32_VALUES
    )


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 5, 5, 3))
    with pytest.raises(ValueError, match=r"NHWC"):
        layers.conv2d_forward(np.zeros((5, 5, 3)), np.zeros((3, 3, 3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"input channels"):
        layers.conv2d_forward(x, np.zeros((3, 3, 2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"bias must have shape \(Cout,\) = \(2,\)"):
        layers.conv2d_forward(x, np.zeros((3, 3, 3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match=r"larger than the image"):
        im2col(x, 6, 2)
    with pytest.raises(ValueError, match=r"cols must have shape"):
        col2im(np.zeros((4, 4)), (2, 5, 5, 3), 3, 3)
    with pytest.raises(ValueError, match=r"pool size 6 is larger"):
        layers.maxpool2d_forward(x, size=6, stride=2)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        layers.dropout_forward(x, rate=1.0, rng=_rng())
    with pytest.raises(ValueError, match=r"needs rng="):
        layers.dropout_forward(x, rate=0.5)
    with pytest.raises(ValueError, match=r"values in \{0, 1\}"):
        layers.dropout_forward(x, rate=0.5, mask=np.full(x.shape, 2.0))
    with pytest.raises(ValueError, match=r"mask must have the input's shape"):
        layers.dropout_forward(x, rate=0.5, mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"matching D"):
        layers.dense_forward(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        layers.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"integer class indices"):
        layers.softmax_cross_entropy(np.zeros((2, 3)), np.zeros((2, 3)))
    params = cnn.init_params(_rng())
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        cnn.forward(params, np.zeros((2, 28, 28), np.float32), train=False)
    with pytest.raises(ValueError, match=r"floating point"):
        cnn.forward(params, np.zeros((2, 28, 28, 1), np.uint8), train=False)
    with pytest.raises(ValueError, match=r"flattened features 2304 != dense input size 1600"):
        cnn.forward(params, np.zeros((1, 32, 32, 1), np.float32), train=False)
    with pytest.raises(ValueError, match=r"needs rng="):
        cnn.forward(params, np.zeros((1, 28, 28, 1), np.float32), train=True)
    with pytest.raises(ValueError, match=r"np.random.Generator"):
        cnn.init_params(0)
    with pytest.raises(ValueError, match=r"lr > 0"):
        rn.Adam(lr=-1.0)


# --- the CNN ---------------------------------------------------------------------------------------------


def test_init_params_layout_count_and_glorot_limits():
    params = cnn.init_params(_rng(13))
    assert cnn.count_params(params) == 34_826
    shapes = {k: {kk: vv.shape for kk, vv in v.items()} for k, v in params.items()}
    assert shapes == {
        "conv1": {"w": (3, 3, 1, 32), "b": (32,)},
        "conv2": {"w": (3, 3, 32, 64), "b": (64,)},
        "dense": {"w": (1600, 10), "b": (10,)},
    }
    for name, fan_in, fan_out in [("conv1", 9, 288), ("conv2", 288, 576), ("dense", 1600, 10)]:
        w, limit = params[name]["w"], math.sqrt(6 / (fan_in + fan_out))
        assert w.dtype == np.float32 and params[name]["b"].dtype == np.float32
        assert np.all(np.abs(w) <= limit) and np.abs(w).max() > 0.95 * limit
        assert abs(w.std() - limit / math.sqrt(3)) < 0.1 * limit  # U(-a, a) has std a/sqrt(3)
        np.testing.assert_array_equal(params[name]["b"], 0.0)
    same = cnn.init_params(_rng(13))
    np.testing.assert_array_equal(same["conv2"]["w"], params["conv2"]["w"])


def _tiny_problem(seed: int = 14, n: int = 2, dtype=np.float64):
    rng = _rng(seed)
    params = cnn.init_params(rng)
    for layer in params.values():  # non-zero biases so their gradients are exercised too
        layer["b"] = rng.normal(scale=0.1, size=layer["b"].shape)
    params = {k: {kk: vv.astype(dtype) for kk, vv in v.items()} for k, v in params.items()}
    x = rng.uniform(size=(n, 28, 28, 1)).astype(dtype)
    y = rng.integers(0, 10, size=n)
    mask = rng.integers(0, 2, size=(n, 1600))
    return params, x, y, mask


def _with_leaf(params, name, key, value):
    return {
        k: {kk: (value if (k, kk) == (name, key) else vv) for kk, vv in v.items()} for k, v in params.items()
    }


def test_network_loss_and_grads_match_finite_differences_in_float64():
    params, x, y, mask = _tiny_problem()
    loss, grads, logits = cnn.loss_and_grads(params, x, y, dropout_mask=mask)
    assert logits.shape == (2, 10) and logits.dtype == np.float64 and np.isfinite(loss)

    def loss_at(name, key, value):  # forward only: the same train-mode loss without the backward pass
        logits_, _ = cnn.forward(_with_leaf(params, name, key, value), x, train=True, dropout_mask=mask)
        return float(layers.softmax_cross_entropy(logits_, y)[0])

    h = 1e-6
    rng = _rng(15)
    for name in ("conv1", "conv2", "dense"):
        for key in ("w", "b"):
            p, g = params[name][key], grads[name][key]
            assert g.shape == p.shape and g.dtype == np.float64
            # (a) directional derivatives along unit-norm random directions (whole leaf at once); unit
            # norm keeps each pre-activation's change ~1e-6 * 1e-2, far from any ReLU kink
            for _ in range(2):
                d = rng.normal(size=p.shape)
                d /= np.linalg.norm(d)
                fd = (loss_at(name, key, p + h * d) - loss_at(name, key, p - h * d)) / (2 * h)
                np.testing.assert_allclose(
                    np.sum(g * d), fd, rtol=RTOL_FD, atol=ATOL_FD, err_msg=f"{name}.{key}"
                )
            # (b) a few single coordinates, including the largest-gradient one
            flat = [int(np.argmax(np.abs(g))), *rng.choice(p.size, size=3, replace=False).tolist()]
            for i in flat:
                e = np.zeros(p.size)
                e[i] = h
                e = e.reshape(p.shape)
                fd = (loss_at(name, key, p + e) - loss_at(name, key, p - e)) / (2 * h)
                np.testing.assert_allclose(
                    g.ravel()[i], fd, rtol=RTOL_FD, atol=ATOL_FD, err_msg=f"{name}.{key}[{i}]"
                )


def test_network_float32_in_float32_out_and_close_to_float64():
    p64, x64, y, mask = _tiny_problem(n=3)
    p32 = {k: {kk: vv.astype(np.float32) for kk, vv in v.items()} for k, v in p64.items()}
    loss32, g32, logits32 = cnn.loss_and_grads(p32, x64.astype(np.float32), y, dropout_mask=mask)
    loss64, g64, logits64 = cnn.loss_and_grads(p64, x64, y, dropout_mask=mask)
    assert loss32.dtype == logits32.dtype == np.float32
    assert all(v.dtype == np.float32 for layer in g32.values() for v in layer.values())
    np.testing.assert_allclose(logits32, logits64, rtol=RTOL_F32, atol=ATOL_REFNP_F32_VALUES)
    np.testing.assert_allclose(loss32, loss64, rtol=RTOL_F32)
    for name in g64:
        for key in g64[name]:
            np.testing.assert_allclose(
                g32[name][key], g64[name][key], rtol=RTOL_REFNP_F32_GRADS, atol=ATOL_REFNP_F32_GRADS
            )


def test_dropout_mask_of_ones_at_rate_zero_equals_eval_mode():
    params, x, _, _ = _tiny_problem(n=2, dtype=np.float32)
    eval_logits, _ = cnn.forward(params, x, train=False)
    train_logits, _ = cnn.forward(params, x, train=True, dropout_mask=np.ones((2, 1600)), rate=0.0)
    np.testing.assert_array_equal(train_logits, eval_logits)
    dropped, _ = cnn.forward(params, x, train=True, dropout_mask=np.zeros((2, 1600)))
    np.testing.assert_allclose(dropped, np.broadcast_to(params["dense"]["b"], (2, 10)))


def test_predict_is_batch_size_independent():
    params, x, _, _ = _tiny_problem(n=7, dtype=np.float32)
    logits, _ = cnn.forward(params, x, train=False)
    np.testing.assert_array_equal(cnn.predict(params, x, batch_size=3), logits.argmax(-1))
    np.testing.assert_array_equal(cnn.predict(params, x, batch_size=3), cnn.predict(params, x))


# --- Adam -----------------------------------------------------------------------------------------------


def test_adam_two_steps_by_hand():
    opt = rn.Adam(lr=0.1)
    params = {"p": np.array([1.0, -2.0])}
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 0.3])
    state = opt.init(params)
    p1, s1 = opt.update({"p": g1}, state, params)
    # step 1: m_hat = g1, v_hat = g1^2, so the step is lr * sign(g1) (up to eps)
    np.testing.assert_allclose(p1["p"], [0.9, -1.9], rtol=RTOL_ADAM_HAND)
    np.testing.assert_allclose(s1.m["p"], [0.05, -0.1], rtol=RTOL_F64)
    np.testing.assert_allclose(s1.v["p"], [0.00025, 0.001], rtol=RTOL_F64)
    p2, s2 = opt.update({"p": g2}, s1, p1)
    m2 = np.array([0.9 * 0.05 + 0.1 * 0.1, 0.9 * -0.1 + 0.1 * 0.3])  # [0.055, -0.06]
    v2 = np.array([0.999 * 0.00025 + 0.001 * 0.01, 0.999 * 0.001 + 0.001 * 0.09])  # [0.00025975, 0.001089]
    m_hat, v_hat = m2 / (1 - 0.9**2), v2 / (1 - 0.999**2)
    np.testing.assert_allclose(s2.m["p"], [0.055, -0.06], rtol=RTOL_F64)
    np.testing.assert_allclose(s2.v["p"], [0.00025975, 0.001089], rtol=RTOL_F64)
    np.testing.assert_allclose(
        p2["p"], [0.9, -1.9] - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=RTOL_ADAM_HAND
    )
    np.testing.assert_allclose(
        p2["p"], [0.9 - 0.0803046, -1.9 + 0.0427848], rtol=RTOL_ADAM_HAND_DIGITS
    )  # digits by hand
    assert (s1.count, s2.count) == (1, 2)
    np.testing.assert_array_equal(params["p"], [1.0, -2.0])  # pure: the inputs are untouched
    np.testing.assert_array_equal(state.m["p"], 0.0)


def test_adam_matches_optax_over_twenty_steps_in_float32():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    rng = _rng(16)
    params = {
        "a": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
        "b": rng.normal(size=5).astype(np.float32),
    }
    opt, tx = rn.Adam(1e-3), optax.adam(1e-3)
    state, tx_state = opt.init(params), tx.init(params)
    ref = params
    for _ in range(20):
        grads = {
            "a": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
            "b": rng.normal(size=5).astype(np.float32),
        }
        params, state = opt.update(grads, state, params)
        updates, tx_state = tx.update(grads, tx_state, ref)
        ref = optax.apply_updates(ref, updates)
    assert params["b"].dtype == np.float32
    np.testing.assert_allclose(
        params["a"]["w"], np.asarray(ref["a"]["w"]), rtol=RTOL_ADAM_OPTAX_F32, atol=ATOL_ADAM_OPTAX_F32
    )
    np.testing.assert_allclose(
        params["b"], np.asarray(jnp.asarray(ref["b"])), rtol=RTOL_ADAM_OPTAX_F32, atol=ATOL_ADAM_OPTAX_F32
    )


# --- training --------------------------------------------------------------------------------------------


def _read_idx_gz(path: Path) -> np.ndarray:
    """Minimal IDX reader (independent of dlx_jax.data): big-endian header, then uint8 payload."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _embedded_digits():
    data = ROOT / "dlx_jax" / "_datasets"
    images = _read_idx_gz(data / "mnist5k-images-idx3-ubyte.gz")
    labels = _read_idx_gz(data / "mnist5k-labels-idx1-ubyte.gz").astype(np.int64)
    return images.astype(np.float32)[..., None] / 255.0, labels


def test_training_on_embedded_digits_reduces_loss_and_learns():
    x, y = _embedded_digits()
    assert x.shape[1:] == (28, 28, 1) and y.shape == (x.shape[0],)
    rng = _rng(17)
    order = rng.permutation(len(x))
    train_idx, test_idx, probe = order[:600], order[600:900], order[:200]
    params0 = cnn.init_params(rng)

    def probe_loss(p):  # dropout off: rate 0 keeps every unit
        return float(cnn.loss_and_grads(p, x[probe], y[probe], rng=_rng(0), rate=0.0)[0])

    params, history = rn.fit(
        params0,
        x[train_idx],
        y[train_idx],
        epochs=2,
        batch_size=32,
        rng=rng,
        x_test=x[test_idx],
        y_test=y[test_idx],
        progress=False,
        optimizer=rn.Adam(2e-3),
    )
    assert set(history) == {"train_loss", "test_accuracy", "epoch_seconds"}
    assert all(len(v) == 2 for v in history.values())
    loss0, loss1 = probe_loss(params0), probe_loss(params)
    assert history["train_loss"][1] < history["train_loss"][0] < loss0  # loss0 ~ log(10) = 2.30
    assert loss1 < 0.4 * loss0  # observed ~0.44 / 2.32
    assert history["test_accuracy"][-1] > 0.7  # observed ~0.8 after 38 steps; chance is 0.1
    assert history["test_accuracy"][-1] == rn.evaluate(params, x[test_idx], y[test_idx])
    assert params0["conv1"]["w"] is not params["conv1"]["w"] and cnn.count_params(params) == 34_826


def test_train_epoch_keeps_last_partial_batch_and_reports_progress():
    params, x, _, _ = _tiny_problem(n=10, dtype=np.float32)
    y = np.arange(10) % 10

    class Bar:
        def __init__(self):
            self.steps = 0

        def update(self, k):
            self.steps += k

        def set_postfix(self, **kwargs):
            self.last = kwargs

    opt, bar = rn.Adam(), Bar()
    _, state, mean_loss = rn.train_epoch(
        params, opt.init(params), x, y, batch_size=4, rng=_rng(18), optimizer=opt, progress=bar
    )
    assert state.count == 3 and bar.steps == 3  # 4 + 4 + 2
    assert np.isfinite(mean_loss) and "loss" in bar.last


# --- the oracle stays independent ------------------------------------------------------------------------


def test_reference_numpy_never_imports_jax_or_dlx_jax():
    for path in (ROOT / "reference_numpy").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"jax", "jaxlib", "dlx_jax", "flax", "optax", "torch"}, (
                    f"{path.name}: {name}"
                )
