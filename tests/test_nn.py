"""dlx_jax.nn: layers vs naive numpy loops and lax primitives, gradients vs finite differences,
the Dense/MLP containers and their PyTorch-style initialization."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from dlx_jax import nn
from tests.helpers import (
    ATOL_CONV_F32,
    ATOL_F64,
    ATOL_FD,
    ATOL_JIT_F32,
    RTOL_CONV_F32,
    RTOL_F64,
    RTOL_FD,
    RTOL_INIT_STD,
    RTOL_JIT_F32,
    central_difference,
)

# odd shapes: non-square images, batch and channels 1-3, kernels 1x1 .. 3x2
ODD_SHAPES = [  # (n, h, w, c, kh, kw, o)
    (1, 5, 7, 1, 3, 3, 2),
    (2, 9, 6, 2, 2, 3, 3),
    (3, 8, 11, 3, 3, 2, 1),
    (2, 4, 4, 3, 1, 1, 4),
]


def conv_naive(x, w, b):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    y = np.zeros((n, h - kh + 1, wd - kw + 1, o))
    for i in range(h - kh + 1):
        for j in range(wd - kw + 1):
            patch = x[:, i : i + kh, j : j + kw, :]  # (n, kh, kw, c)
            y[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return y + b


def pool_naive(x, size, stride):
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    y = np.empty((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            y[:, i, j] = x[:, i * stride : i * stride + size, j * stride : j * stride + size].max(axis=(1, 2))
    return y


def _rand(seed, *shape, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("impl", nn.CONV_IMPLS)
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_conv2d_matches_naive_loop_and_lax(impl, shape):
    n, h, w, c, kh, kw, o = shape
    x, k, b = _rand(0, n, h, w, c), _rand(1, kh, kw, c, o), _rand(2, o)
    y = nn.conv2d(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), impl=impl)
    assert y.shape == (n, h - kh + 1, w - kw + 1, o)
    np.testing.assert_allclose(
        y, conv_naive(x.astype(np.float64), k, b), rtol=RTOL_CONV_F32, atol=ATOL_CONV_F32
    )
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    np.testing.assert_allclose(y, ref, rtol=RTOL_CONV_F32, atol=ATOL_CONV_F32)


@pytest.mark.parametrize("impl", nn.CONV_IMPLS)
def test_conv2d_grads_match_finite_differences(x64, impl):
    x, k, b = (
        _rand(3, 2, 5, 4, 2, dtype=np.float64),
        _rand(4, 2, 3, 2, 3, dtype=np.float64),
        _rand(5, 3, dtype=np.float64),
    )
    proj = _rand(6, 2, 4, 2, 3, dtype=np.float64)  # random projection -> scalar

    def f(x, k, b):
        return jnp.sum(nn.conv2d(x, k, b, impl=impl) * proj)

    gx, gk, gb = jax.grad(f, argnums=(0, 1, 2))(x, k, b)
    np.testing.assert_allclose(gx, central_difference(lambda v: f(v, k, b), x), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(gk, central_difference(lambda v: f(x, v, b), k), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(gb, central_difference(lambda v: f(x, k, v), b), rtol=RTOL_FD, atol=ATOL_FD)


@pytest.mark.parametrize("impl", nn.CONV_IMPLS)
def test_conv2d_gradients_agree_across_impls(impl):
    x, k = jnp.asarray(_rand(7, 3, 9, 7, 3)), jnp.asarray(_rand(8, 3, 3, 3, 4))
    proj = jnp.asarray(_rand(9, 3, 7, 5, 4))
    g = jax.grad(lambda x, k: jnp.sum(nn.conv2d(x, k, impl=impl) * proj), argnums=(0, 1))(x, k)
    g_lax = jax.grad(lambda x, k: jnp.sum(nn.conv2d(x, k, impl="lax") * proj), argnums=(0, 1))(x, k)
    for a, r in zip(g, g_lax, strict=True):
        np.testing.assert_allclose(a, r, rtol=RTOL_CONV_F32, atol=ATOL_CONV_F32)


@pytest.mark.parametrize("impl", nn.POOL_IMPLS)
@pytest.mark.parametrize("shape", [(1, 5, 7, 1), (2, 6, 9, 2), (3, 11, 11, 3), (2, 26, 26, 3)])
def test_max_pool_matches_naive_loop_and_reduce_window(impl, shape):
    x = _rand(10, *shape)
    y = nn.max_pool2d(jnp.asarray(x), size=2, impl=impl)
    np.testing.assert_array_equal(y, pool_naive(x, 2, 2))  # max is exact
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_reshape_window_sizes(size):
    x = _rand(11, 2, 7, 8, 2)
    np.testing.assert_array_equal(nn.max_pool2d(jnp.asarray(x), size=size), pool_naive(x, size, size))


def test_max_pool_reduce_window_overlapping_stride():
    x = _rand(12, 2, 7, 8, 2)
    y = nn.max_pool2d(jnp.asarray(x), size=3, stride=2, impl="reduce_window")
    np.testing.assert_array_equal(y, pool_naive(x, 3, 2))


def test_max_pool_gradient_goes_to_first_maximum_on_ties():
    # window values: [[1, 3], [3, 0]] -> the first 3 in row-major order gets the gradient
    x = jnp.asarray([[1.0, 3.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
    g = jax.grad(lambda v: jnp.sum(nn.max_pool2d(v) * jnp.asarray([2.0, 5.0]).reshape(1, 1, 2, 1)))(x)
    expected = np.array([[0, 2, 5, 0], [0, 0, 0, 0]], np.float32).reshape(1, 2, 4, 1)
    np.testing.assert_array_equal(g, expected)


def test_max_pool_grads_match_finite_differences(x64):
    x = _rand(13, 2, 7, 6, 2, dtype=np.float64)  # distinct values: no ties, the max is differentiable
    proj = _rand(14, 2, 3, 3, 2, dtype=np.float64)

    def f(v):
        return jnp.sum(nn.max_pool2d(v) * proj)

    np.testing.assert_allclose(jax.grad(f)(x), central_difference(f, x), rtol=RTOL_FD, atol=ATOL_FD)


def test_relu_and_its_derivative_at_zero():
    x = jnp.asarray([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(nn.relu(x), [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(nn.relu(v)))(x), [0.0, 0.0, 1.0])


def test_dense_and_flatten():
    x, w, b = _rand(15, 4, 2, 3, 5), _rand(16, 30, 7), _rand(17, 7)
    flat = nn.flatten(jnp.asarray(x))
    np.testing.assert_array_equal(flat, x.reshape(4, 30))  # C order (h, w, c)
    np.testing.assert_allclose(
        nn.dense(flat, w, b),
        x.reshape(4, 30).astype(np.float64) @ w + b,
        rtol=RTOL_CONV_F32,
        atol=ATOL_CONV_F32,
    )


def test_dense_grads_match_finite_differences(x64):
    x, w, b = (
        _rand(18, 3, 4, dtype=np.float64),
        _rand(19, 4, 2, dtype=np.float64),
        _rand(20, 2, dtype=np.float64),
    )
    proj = _rand(21, 3, 2, dtype=np.float64)

    def f(x, w, b):
        return jnp.sum(nn.dense(x, w, b) * proj)

    gx, gw, gb = jax.grad(f, argnums=(0, 1, 2))(x, w, b)
    np.testing.assert_allclose(gx, central_difference(lambda v: f(v, w, b), x), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(gw, central_difference(lambda v: f(x, v, b), w), rtol=RTOL_FD, atol=ATOL_FD)
    np.testing.assert_allclose(gb, central_difference(lambda v: f(x, w, v), b), rtol=RTOL_FD, atol=ATOL_FD)


def test_dense_broadcasts_over_leading_axes():
    x, w, b = _rand(28, 3, 4, 6), _rand(29, 6, 2), _rand(30, 2)
    y = nn.dense(jnp.asarray(x), w, b)
    assert y.shape == (3, 4, 2)
    for i in range(3):  # == the 2-D layer on each leading slice
        np.testing.assert_allclose(
            y[i], nn.dense(jnp.asarray(x[i]), w, b), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
        )
    np.testing.assert_allclose(y, x.astype(np.float64) @ w + b, rtol=RTOL_CONV_F32, atol=ATOL_CONV_F32)


def test_init_dense_is_pytorch_linear_and_mlp_matches_numpy(key):
    layer = nn.init_dense(key, fan_in=300, fan_out=40)
    assert isinstance(layer, nn.Dense) and layer.w.shape == (300, 40) and layer.b.shape == (40,)
    bound = 1 / np.sqrt(300)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    for v in (np.asarray(layer.w), np.asarray(layer.b)):
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound
    np.testing.assert_allclose(np.asarray(layer.w).std(), bound / np.sqrt(3), rtol=RTOL_INIT_STD)
    assert nn.init_dense(key, fan_in=3, fan_out=2, dtype=jnp.bfloat16).w.dtype == jnp.bfloat16
    p = nn.init_mlp(jax.random.key(1), fan_in=5, hidden=7, fan_out=3)
    assert isinstance(p, nn.MLP) and p.hidden.w.shape == (5, 7) and p.out.w.shape == (7, 3)
    x = _rand(31, 2, 4, 5)
    q = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    expected = np.maximum(x @ q.hidden.w + q.hidden.b, 0.0) @ q.out.w + q.out.b
    out = jax.jit(nn.mlp)(p, jnp.asarray(x))
    assert out.shape == (2, 4, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=RTOL_CONV_F32, atol=ATOL_CONV_F32)
    with pytest.raises(ValueError, match="fan_in must be an integer >= 1"):
        nn.init_dense(key, fan_in=0, fan_out=3)


def test_softmax_cross_entropy_vs_scipy_and_stable(x64):
    logits = _rand(22, 6, 5, dtype=np.float64) * 3
    labels = np.array([0, 4, 2, 2, 1, 3])
    ref = np.mean(logsumexp(logits, axis=1) - logits[np.arange(6), labels])
    np.testing.assert_allclose(nn.softmax_cross_entropy(logits, labels), ref, rtol=RTOL_F64, atol=ATOL_F64)
    big = nn.softmax_cross_entropy(
        jnp.asarray([[1000.0, 0.0], [0.0, 1000.0]], jnp.float32), jnp.asarray([0, 0])
    )
    np.testing.assert_allclose(big, 500.0)  # (0 + 1000) / 2, no overflow
    grad = jax.grad(lambda z: nn.softmax_cross_entropy(z, labels))(logits)
    fd = central_difference(lambda z: nn.softmax_cross_entropy(z, labels), logits)
    np.testing.assert_allclose(grad, fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_dropout_with_mask_and_from_key(key):
    x = jnp.ones((400, 50))
    mask = (np.arange(400 * 50).reshape(400, 50) % 3 == 0).astype(np.float32)
    np.testing.assert_array_equal(nn.dropout(None, x, rate=0.25, mask=mask), mask / 0.75)
    y = nn.dropout(key, x, rate=0.5)
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}
    kept = float(jnp.mean(y > 0))
    assert abs(kept - 0.5) < 0.02  # 20,000 Bernoulli(0.5): sd 0.0035
    np.testing.assert_array_equal(nn.dropout(key, x, rate=0.5), y)  # same key, same mask
    assert not np.array_equal(nn.dropout(jax.random.fold_in(key, 1), x, rate=0.5), y)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved(x64, dtype):
    x = jnp.asarray(_rand(23, 2, 6, 6, 2), dtype)
    w = jnp.asarray(_rand(24, 3, 3, 2, 3))  # float32 kernel is cast to the input dtype
    for impl in nn.CONV_IMPLS:
        assert nn.conv2d(x, w, jnp.zeros(3), impl=impl).dtype == dtype
    for impl in nn.POOL_IMPLS:
        assert nn.max_pool2d(x, impl=impl).dtype == dtype
    assert nn.relu(x).dtype == dtype
    assert nn.dropout(jax.random.key(0), x, rate=0.5).dtype == dtype
    flat = nn.flatten(x)
    assert nn.dense(flat, jnp.ones((72, 3)), jnp.zeros(3)).dtype == dtype
    assert nn.softmax_cross_entropy(flat[:, :4], jnp.asarray([0, 1])).dtype == dtype


def test_jit_equals_eager_and_vmap_equals_loop():
    x, w, b = (
        jnp.asarray(_rand(25, 3, 2, 9, 8, 2)),
        jnp.asarray(_rand(26, 3, 3, 2, 4)),
        jnp.asarray(_rand(27, 4)),
    )

    def f(x):
        return nn.max_pool2d(nn.relu(nn.conv2d(x, w, b)))

    eager = f(x[0])
    np.testing.assert_allclose(jax.jit(f)(x[0]), eager, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    batched = jax.vmap(f)(x)
    for i in range(3):
        np.testing.assert_allclose(batched[i], f(x[i]), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_bad_inputs_raise():
    x, w = jnp.zeros((2, 6, 6, 3)), jnp.zeros((3, 3, 3, 4))
    with pytest.raises(ValueError, match="input channels"):
        nn.conv2d(x, jnp.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"\(n, h, w, c\)"):
        nn.conv2d(jnp.zeros((6, 6, 3)), w)
    with pytest.raises(ValueError, match="larger than"):
        nn.conv2d(jnp.zeros((1, 2, 6, 3)), w)
    with pytest.raises(ValueError, match="bias"):
        nn.conv2d(x, w, jnp.zeros(3))
    with pytest.raises(ValueError, match="impl"):
        nn.conv2d(x, w, impl="fft")
    with pytest.raises(ValueError, match="floating-point"):
        nn.conv2d(x.astype(jnp.int32), w)
    with pytest.raises(ValueError, match="stride == size"):
        nn.max_pool2d(x, size=3, stride=2)
    with pytest.raises(ValueError, match="larger than"):
        nn.max_pool2d(jnp.zeros((1, 1, 6, 3)))
    with pytest.raises(ValueError, match=r"\(d, k\)"):
        nn.dense(jnp.zeros((2, 5)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(d, k\)"):
        nn.dense(jnp.zeros((2, 4)), jnp.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        nn.dropout(jax.random.key(0), x, rate=1.0)
    with pytest.raises(ValueError, match="PRNG key"):
        nn.dropout(None, x)
    with pytest.raises(ValueError, match="mask"):
        nn.dropout(None, x, mask=jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="labels must have shape"):
        nn.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        nn.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros(3))
