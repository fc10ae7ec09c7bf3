"""3x3 'same' convolutions in several formulations with one parameter layout (see the package
docstring), and the convolution module the UNet's blocks use."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from dlx_jax.unet._layers import torch_uniform_init

__all__ = ["CONV_IMPLS", "DEFAULT_CONV_IMPL", "KERNEL_GRAD_CHUNK", "Conv", "conv"]

CONV_IMPLS = ("hybrid", "lax", "im2col", "rows")
DEFAULT_CONV_IMPL = "hybrid"


def _pad1(x: Array) -> Array:
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _conv3x3_lax(x: Array, kernel: Array) -> Array:
    """XLA's convolution, exactly the call ``nn.Conv(padding=1)`` makes."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv3x3_im2col(x: Array, kernel: Array) -> Array:
    n, h, w, c = x.shape
    xp = _pad1(x)
    # (n, h, w, 9, c) with the 9 taps in (p, q) row-major order == HWIO row-major
    cols = jnp.stack([xp[:, p : p + h, q : q + w, :] for p in range(3) for q in range(3)], axis=-2)
    return jnp.dot(cols.reshape(n * h * w, 9 * c), kernel.reshape(9 * c, -1)).reshape(n, h, w, -1)


def _conv3x3_rows(x: Array, kernel: Array) -> Array:
    n, h, w, c = x.shape
    o = kernel.shape[-1]
    xp = _pad1(x)
    cols = jnp.stack([xp[:, :, q : q + w, :] for q in range(3)], axis=-2)  # (n, h+2, w, 3, c)
    km = kernel.transpose(1, 2, 0, 3).reshape(3 * c, 3 * o)  # (p, q, c, o) -> ((q, c), (p, o))
    z = jnp.dot(cols.reshape(-1, 3 * c), km).reshape(n, h + 2, w, 3, o)
    return z[:, 0:h, :, 0, :] + z[:, 1 : h + 1, :, 1, :] + z[:, 2 : h + 2, :, 2, :]


# images per lax.scan step in the kernel gradient of "hybrid": small enough that the shifted copies
# of one chunk stay in cache, large enough that each GEMM is efficient (measured: 4 beats 1, 8, 16).
KERNEL_GRAD_CHUNK = 4


def _kernel_grad_rows(x: Array, g: Array) -> Array:
    r"""Kernel gradient of a 3x3 'same' convolution as batch-chunked GEMMs.

    .. math:: \frac{\partial L}{\partial W_{p,q,c,o}} = \sum_{n,i,j} \tilde x_{n,i+p,j+q,c}\, g_{n,i,j,o}

    For each chunk of images, ``cols[n, r, j, (q, c)] = x_pad[n, r, j + q, c]`` (3 horizontal shifts)
    and ``d3[n, r, j, (p, o)] = g[n, r - p, j, o]`` (3 vertical shifts, zero outside) give every
    ``(p, q)`` block at once: ``cols^T @ d3`` is ``((q, c), (p, o))``. The chunks are summed in a
    ``lax.scan`` so the shifted copies never exist for the whole batch.
    """
    n, h, w, c = x.shape
    o = g.shape[-1]
    chunk = max(d for d in range(1, KERNEL_GRAD_CHUNK + 1) if n % d == 0)
    xs = x.reshape(n // chunk, chunk, h, w, c)
    gs = g.reshape(n // chunk, chunk, h, w, o)

    def body(acc, xg):
        xb, gb = xg
        xp = _pad1(xb)
        cols = jnp.stack([xp[:, :, q : q + w, :] for q in range(3)], axis=-2).reshape(-1, 3 * c)
        gp = jnp.pad(gb, ((0, 0), (2, 2), (0, 0), (0, 0)))
        d3 = jnp.stack([gp[:, 2 - p : 2 - p + h + 2] for p in range(3)], axis=-2).reshape(-1, 3 * o)
        return acc + lax.dot_general(cols, d3, (((0,), (0,)), ((), ()))), None

    acc, _ = lax.scan(body, jnp.zeros((3 * c, 3 * o), x.dtype), (xs, gs))
    return acc.reshape(3, c, 3, o).transpose(2, 0, 1, 3)


@jax.custom_vjp
def _conv3x3_hybrid(x: Array, kernel: Array) -> Array:
    return _conv3x3_lax(x, kernel)


def _hybrid_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _conv3x3_lax(x, kernel), (x, kernel)


def _hybrid_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    dx = jax.vjp(lambda x_: _conv3x3_lax(x_, kernel), x)[1](g)[0]
    return dx, _kernel_grad_rows(x, g).astype(kernel.dtype)


_conv3x3_hybrid.defvjp(_hybrid_fwd, _hybrid_bwd)

_CONVS = {"im2col": _conv3x3_im2col, "rows": _conv3x3_rows, "hybrid": _conv3x3_hybrid}


class Conv(nn.Module):
    """Stride-1 'same' convolution with ``nn.Conv``'s parameters (``kernel`` HWIO, ``bias``).

    The input may be a tuple of arrays that the convolution reads as if concatenated on the
    channel axis (``conv(concat(parts)) = sum_i conv(part_i, kernel[:, :, slice_i])``), so the
    UNet's skip concatenation is never materialised. With ``add_bias=False`` it returns ``(y,
    bias)`` so that a following BatchNorm can fold the bias in (see :class:`BatchNorm`).
    """

    features: int
    kernel_size: int
    impl: str
    add_bias: bool = True

    @nn.compact
    def __call__(self, x: Array | tuple[Array, ...]) -> Array | tuple[Array, Array]:
        parts = x if isinstance(x, tuple) else (x,)
        dtype = parts[0].dtype
        c = sum(part.shape[-1] for part in parts)
        k = self.kernel_size
        fan_in = c * k * k
        kernel = self.param("kernel", torch_uniform_init(fan_in), (k, k, c, self.features)).astype(dtype)
        bias = self.param("bias", torch_uniform_init(fan_in), (self.features,)).astype(dtype)
        y, start = None, 0
        for part in parts:
            kp = kernel[:, :, start : start + part.shape[-1], :]
            start += part.shape[-1]
            yp = jnp.dot(part, kp[0, 0]) if k == 1 else _CONVS[self.impl](part, kp)
            y = yp if y is None else y + yp
        return y + bias if self.add_bias else (y, bias)


def conv(x: Array, features: int, kernel_size: int, impl: str, name: str) -> Array:
    """``nn.Conv`` (``impl="lax"``, the reference) or :class:`Conv`, both with PyTorch's init."""
    if impl != "lax":
        return Conv(features, kernel_size, impl, name=name)(x)
    fan_in = x.shape[-1] * kernel_size * kernel_size
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=kernel_size // 2,
        kernel_init=torch_uniform_init(fan_in),
        bias_init=torch_uniform_init(fan_in),
        name=name,
    )(x)
