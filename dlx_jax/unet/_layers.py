"""The UNet's non-convolution layers: the sinusoidal time vector, bilinear x2 upsampling,
2x2 max-pooling, PyTorch's BatchNorm and PyTorch's default initialiser."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_positive_int

__all__ = ["BatchNorm", "max_pool2", "time_embedding", "torch_uniform_init", "upsample_bilinear2x"]


def time_embedding(
    t: Int[Array, " n"] | Float[Array, " n"], dim: int = 100, *, dtype: Any = jnp.float32
) -> Float[Array, "n dim"]:
    r"""The book's sinusoidal time vector.

    .. math:: v_i(t) = \begin{cases} \sin(t / 10000^{i/D}) & i \text{ even} \\
                                     \cos(t / 10000^{i/D}) & i \text{ odd} \end{cases},
              \qquad i = 0, \dots, D-1,

    with the raw step ``t`` (the book's 1-based integer, as a float) and ``D = dim``. The
    frequencies :math:`10000^{-i/D}` are computed in float64 and rounded once to ``dtype``.

    Args:
        t: time steps ``(n,)`` (integers or floats; a scalar gives ``(1, dim)``).
        dim: (static) length ``D`` of the vector.
        dtype: (static) float dtype of the result.

    Returns:
        ``(n, dim)`` array in ``dtype``.

    Raises:
        ValueError: ``t`` has more than one axis or ``dim < 1``.
    """
    check_positive_int("dim", dim, static=True, fix="pass e.g. dim=100 (the book's width)")
    t = jnp.asarray(t)
    if t.ndim > 1:
        raise ValueError(f"t must be a vector of time steps (n,), got shape {t.shape}; flatten it")
    t = jnp.atleast_1d(t).astype(dtype)
    i = np.arange(dim)
    inv_freq = jnp.asarray(10000.0 ** (-i / dim), dtype)
    arg = t[:, None] * inv_freq
    return jnp.where(jnp.asarray(i % 2 == 0), jnp.sin(arg), jnp.cos(arg))


def upsample_bilinear2x(x: Float[Array, "n h w c"]) -> Float[Array, "n 2h 2w c"]:
    r"""Bilinear x2 upsampling with half-pixel centres: PyTorch's ``nn.Upsample(scale_factor=2,
    mode='bilinear')`` (``align_corners=False``) in NHWC.

    Along each spatial axis, output ``o`` samples the input at ``(o + 1/2)/2 - 1/2`` clamped to
    ``[0, L - 1]``, i.e.

    .. math:: y_{2k} = \tfrac34 x_k + \tfrac14 x_{\max(k-1, 0)}, \qquad
              y_{2k+1} = \tfrac34 x_k + \tfrac14 x_{\min(k+1, L-1)},

    applied to the rows and then to the columns (the map is separable and linear; it is computed
    with edge-clamped shifts, no gather).

    Args:
        x: ``(n, h, w, c)``.

    Returns:
        ``(n, 2h, 2w, c)`` in ``x``'s dtype.

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"upsample_bilinear2x expects (n, h, w, c), got shape {jnp.shape(x)}")
    return _upsample_axis(_upsample_axis(x, 1), 2)


def _upsample_axis(x: Array, axis: int) -> Array:
    length = x.shape[axis]
    prev = jnp.concatenate(
        [lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, length - 1, axis=axis)], axis
    )
    nxt = jnp.concatenate(
        [lax.slice_in_dim(x, 1, length, axis=axis), lax.slice_in_dim(x, length - 1, length, axis=axis)], axis
    )
    three_quarters, quarter = jnp.asarray(0.75, x.dtype), jnp.asarray(0.25, x.dtype)
    even = three_quarters * x + quarter * prev
    odd = three_quarters * x + quarter * nxt
    y = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * length
    return y.reshape(shape)


def torch_uniform_init(fan_in: int) -> Callable[..., Array]:
    r"""PyTorch's default ``Linear``/``Conv2d`` initialiser: :math:`U(-1/\sqrt{\text{fan}_\text{in}},
    1/\sqrt{\text{fan}_\text{in}})` for weights and biases alike (``kaiming_uniform_(a=sqrt(5))``).
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init_fn(key: PRNGKeyArray, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init_fn


def max_pool2(x: Float[Array, "n h w c"]) -> Float[Array, "n h/2 w/2 c"]:
    """2x2 max-pooling with stride 2 (``nn.MaxPool2d(2)``); ``h`` and ``w`` must be even."""
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class BatchNorm(nn.Module):
    r"""PyTorch's ``BatchNorm2d`` (NHWC, statistics over ``n, h, w``) of ``z = x + shift``.

    Train mode normalises with the batch mean :math:`\mu` and the *biased* batch variance
    :math:`\sigma^2 = \overline{x^2} - \bar x^2` (both from one pass over the data) and updates the
    running statistics in collection ``batch_stats`` exactly as PyTorch does, with the *unbiased*
    variance (``m = n h w`` values per channel):

    .. math:: \hat\mu \leftarrow (1 - \alpha)\hat\mu + \alpha\mu, \qquad
              \hat\sigma^2 \leftarrow (1 - \alpha)\hat\sigma^2 + \alpha \frac{m}{m - 1}\sigma^2,
              \qquad y = \gamma \frac{z - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,

    with ``momentum`` :math:`\alpha = 0.1` (flax's ``nn.BatchNorm`` would be ``momentum=0.9`` and
    update with the biased variance). Eval mode uses :math:`\hat\mu, \hat\sigma^2` instead.
    Running statistics are not changed during ``init``.

    ``shift`` (a per-channel vector, e.g. the preceding convolution's bias) is folded in without
    materialising ``x + shift``: in train mode it cancels from :math:`z - \mu` and only enters the
    running mean (:math:`\mu_z = \bar x + \text{shift}`, :math:`\sigma_z^2 = \sigma_x^2`); in eval
    mode it moves the affine offset. Same numbers as normalising ``x + shift`` up to rounding; in
    train mode the gradient of ``shift`` is then exactly 0 (analytically it is 0; computed through
    ``x + shift`` it is rounding noise).

    Attributes:
        momentum: PyTorch's momentum (weight of the new batch).
        epsilon: added to the variance.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(
        self, x: Float[Array, "n h w c"], *, train: bool, shift: Float[Array, " c"] | None = None
    ) -> Float[Array, "n h w c"]:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,)).astype(x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,)).astype(x.dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        shift = jnp.zeros((c,), x.dtype) if shift is None else shift.astype(x.dtype)
        if train:
            axes = tuple(range(x.ndim - 1))
            m = math.prod(x.shape[:-1])
            mean = jnp.mean(x, axis=axes)
            var = jnp.maximum(jnp.mean(x * x, axis=axes) - mean * mean, 0.0)
            if not self.is_initializing():
                a = self.momentum
                new_mean = lax.stop_gradient(mean + shift).astype(ra_mean.value.dtype)
                new_var = lax.stop_gradient(var * (m / max(m - 1, 1))).astype(ra_var.value.dtype)
                ra_mean.value = (1 - a) * ra_mean.value + a * new_mean
                ra_var.value = (1 - a) * ra_var.value + a * new_var
        else:
            mean = ra_mean.value.astype(x.dtype) - shift
            var = ra_var.value.astype(x.dtype)
        mul = lax.rsqrt(var + self.epsilon) * scale
        return x * mul + (bias - mean * mul)
