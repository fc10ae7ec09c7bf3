"""The book's diffusion UNet (steps 9-10) as a ``flax.linen`` module, with time and label embeddings.

Architecture (``features = f = 64``, ``time_dim = 100``, 2,167,784 parameters; 2,168,784 with
``num_labels = 10``)::

    t (n,) -> sinusoidal time vector v (n, 100)            [+ mask * label_emb[labels] (n, 100)]
    x (n, 28, 28, 1) -> down1 ConvBlock 1 -> f        = x1 (n, 28, 28, f)
                     -> max-pool 2 -> down2 f -> 2f    = x2 (n, 14, 14, 2f)
                     -> max-pool 2 -> bot1 2f -> 4f         (n,  7,  7, 4f)
                     -> bilinear x2 -> concat [., x2] -> up2 (4f + 2f) -> 2f   (n, 14, 14, 2f)
                     -> bilinear x2 -> concat [., x1] -> up1 (2f + f) -> f     (n, 28, 28, f)
                     -> out conv 1x1 f -> 1 = predicted noise (n, 28, 28, 1)

    ConvBlock(c_in, c_out)(x, v) = [conv3x3 pad 1 -> BatchNorm -> ReLU] x 2 applied to
                                   x + (Linear(c_in) . ReLU . Linear(c_in))(v)[:, None, None, :]

exactly the book's ``UNet``/``UNetCond`` (PyTorch, NCHW) in NHWC: the time vector goes through a
two-layer MLP to ``c_in`` numbers that are added to every pixel of the block's input; skips are
concatenated *after* the upsampled tensor (``torch.cat([x, x2], dim=1)``); BatchNorm has
PyTorch's defaults (momentum 0.1, eps 1e-5, see :class:`BatchNorm`); initialisation is PyTorch's
(:func:`torch_uniform_init`). ``experiments/_torch_unet.py`` is the same model in PyTorch and
the tests load identical weights into both.

Parameters (``params``) and running statistics (``batch_stats``) are separate flax collections;
:func:`make_apply_fn` turns the module into the pure ``apply_fn(params, model_state, x, t, labels,
label_mask, *, train) -> (eps_hat, model_state)`` that the diffusion code and the training loop use.

Labels (classifier-free guidance, step 10) are optional. ``label_mask`` (``(n,)`` bool or float)
switches the label embedding per example, ``v = v_time + mask[:, None] * emb[labels]``, so one
compiled function evaluates conditional and unconditional examples in one batch; ``labels=None``
means every example is unconditional.

Convolution formulations (module attribute ``conv_impl``; all have the same parameters and give
the same numbers up to float rounding; the timings are in ``experiments/benchmarks/diffusion.py``):

* ``"hybrid"`` (default): XLA's convolution for the forward pass and the input gradient, and a
  ``jax.custom_vjp`` kernel gradient computed as GEMMs over chunks of 4 images in a ``lax.scan``
  (:func:`_kernel_grad_rows`). XLA:CPU computes a kernel gradient as a convolution whose operands
  it first transposes to ``(c, h, w, n)``: with the transposes, ~40 % of a ``"lax"`` train step;
  the chunked GEMMs run at matmul speed with cache-sized temporaries (0.6x the time per layer).
  The convolution bias is folded into the following BatchNorm, and the skip concatenation is never
  materialised (the first convolution of ``up2`` / ``up1`` is a sum of one convolution per part).
  The fastest train step measured (~1.2x faster than ``"lax"``); sampling (the forward pass only)
  runs as fast as ``"lax"``.
* ``"lax"``: flax ``nn.Conv`` (``lax.conv_general_dilated``) + bias, ``jnp.concatenate`` for the
  skips, BatchNorm of the biased output — the plain reference formulation the others are tested
  against. Supports forward-mode differentiation (``jax.jvp``, ``jax.hessian``); the custom VJP
  of ``"hybrid"`` is reverse-mode only.
* ``"im2col"``: the 9 shifted views stacked into ``(n h w, 9 c_in)`` and one matmul (slower: the
  patch matrix is 9x the activation and XLA:CPU writes it at copy speed).
* ``"rows"``: the 3 horizontal shifts stacked into ``(n (h+2) w, 3 c_in)``, one matmul with the
  ``(3 c_in, 3 c_out)`` kernel, then the sum of 3 vertically shifted slices (slower than XLA's
  convolution, faster than ``"im2col"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

__all__ = [
    "CONV_IMPLS",
    "DEFAULT_CONV_IMPL",
    "BatchNorm",
    "ConvBlock",
    "UNet",
    "count_params",
    "init",
    "make_apply_fn",
    "time_embedding",
    "torch_uniform_init",
    "upsample_bilinear2x",
]

CONV_IMPLS = ("hybrid", "lax", "im2col", "rows")
DEFAULT_CONV_IMPL = "hybrid"


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
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
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


# --- convolutions ----------------------------------------------------------------------------------


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


class _Conv(nn.Module):
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


def _conv(x: Array, features: int, kernel_size: int, impl: str, name: str) -> Array:
    """``nn.Conv`` (``impl="lax"``, the reference) or :class:`_Conv`, both with PyTorch's init."""
    if impl != "lax":
        return _Conv(features, kernel_size, impl, name=name)(x)
    fan_in = x.shape[-1] * kernel_size * kernel_size
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=kernel_size // 2,
        kernel_init=torch_uniform_init(fan_in),
        bias_init=torch_uniform_init(fan_in),
        name=name,
    )(x)


# --- normalisation ---------------------------------------------------------------------------------


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


# --- the network -----------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    r"""The book's ``ConvBlock``: time MLP added to the input, then [conv3x3 -> BN -> ReLU] x 2.

    .. math:: u = x + (W_2\,\mathrm{relu}(W_1 v + b_1) + b_2)[:, None, None, :], \qquad
              y = \mathrm{relu}(\mathrm{BN}(\mathrm{conv}(\mathrm{relu}(\mathrm{BN}(\mathrm{conv}(u))))))

    With ``conv_impl != "lax"`` the convolution bias is folded into the BatchNorm (see
    :class:`BatchNorm`): one pass less over each activation, same numbers.

    Attributes:
        features: output channels ``c_out``.
        conv_impl: convolution formulation (see the module docstring).
    """

    features: int
    conv_impl: str = DEFAULT_CONV_IMPL

    @nn.compact
    def __call__(
        self, x: Float[Array, "n h w c"], v: Float[Array, "n d"], *, train: bool
    ) -> Float[Array, "n h w o"]:
        parts = x if isinstance(x, tuple) else (x,)
        c = sum(part.shape[-1] for part in parts)
        d = v.shape[-1]
        v = nn.Dense(c, kernel_init=torch_uniform_init(d), bias_init=torch_uniform_init(d), name="mlp1")(v)
        v = nn.Dense(c, kernel_init=torch_uniform_init(c), bias_init=torch_uniform_init(c), name="mlp2")(
            nn.relu(v)
        )
        v = v[:, None, None, :].astype(parts[0].dtype)
        if self.conv_impl == "lax":  # the reference: concatenate, add, nn.Conv + bias, BatchNorm
            x = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            x = x + v
            for i in (1, 2):
                x = nn.relu(
                    BatchNorm(name=f"bn{i}")(_conv(x, self.features, 3, "lax", f"conv{i}"), train=train)
                )
            return x
        starts = np.cumsum([0] + [part.shape[-1] for part in parts])
        x = tuple(part + v[..., a:b] for part, a, b in zip(parts, starts[:-1], starts[1:], strict=True))
        for i in (1, 2):
            y, b = _Conv(self.features, 3, self.conv_impl, add_bias=False, name=f"conv{i}")(x)
            x = nn.relu(BatchNorm(name=f"bn{i}")(y, train=train, shift=b))
        return x


def _max_pool2(x: Array) -> Array:
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class UNet(nn.Module):
    """The book's UNet for noise prediction (see the module docstring for the diagram).

    Attributes:
        channels: image channels (1 for MNIST).
        features: width ``f`` of the first level (levels are ``f, 2f, 4f``; the book: 64).
        time_dim: length of the time vector (the book: 100).
        num_labels: number of classes for the label embedding (``None``: no labels, the book's
            ``UNet``; 10: the book's ``UNetCond``).
        conv_impl: convolution formulation, one of :data:`CONV_IMPLS`.
    """

    channels: int = 1
    features: int = 64
    time_dim: int = 100
    num_labels: int | None = None
    conv_impl: str = DEFAULT_CONV_IMPL

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "n h w c"],
        t: Int[Array, " n"] | Float[Array, " n"],
        labels: Int[Array, " n"] | None = None,
        label_mask: Bool[Array, " n"] | Float[Array, " n"] | None = None,
        *,
        train: bool,
    ) -> Float[Array, "n h w c"]:
        r"""Predicted noise :math:`\hat\epsilon(x_t, t[, y])` for noisy images ``x`` at steps ``t``.

        Args:
            x: noisy images ``(n, h, w, channels)``; ``h`` and ``w`` divisible by 4.
            t: time steps ``(n,)`` (the book's 1-based integers; a scalar is broadcast).
            labels: optional class labels ``(n,)`` in ``0..num_labels-1`` (needs ``num_labels``).
                Checked when concrete; under ``jit`` out-of-range labels are clipped.
            label_mask: optional ``(n,)`` bool or float weight of each example's label embedding:
                1 conditional, 0 unconditional (``None`` with labels: all conditional).
            train: (static) BatchNorm with batch statistics — pass ``mutable=["batch_stats"]`` to
                ``apply`` to get the updated running statistics — or with the running statistics.

        Returns:
            ``(n, h, w, channels)`` in ``x``'s dtype.

        Raises:
            ValueError: a wrong rank or channel count, non-float images, ``h``/``w`` not divisible
                by 4, ``t``/``labels``/``label_mask`` of the wrong shape, labels on a model without
                ``num_labels``, labels out of range (when concrete), ``label_mask`` without labels,
                or an unknown ``conv_impl``.
        """
        x, t, labels, label_mask = self._check(x, t, labels, label_mask)
        v = time_embedding(t, self.time_dim, dtype=x.dtype)
        if self.num_labels is not None:
            table = self.param("label_emb", nn.initializers.normal(1.0), (self.num_labels, self.time_dim))
            if labels is not None:
                # clip: under jit labels cannot be range-checked, and a masked-out example may
                # carry any placeholder label; "fill" would give NaN * 0 = NaN.
                emb = jnp.take(table.astype(x.dtype), labels, axis=0, mode="clip")
                if label_mask is not None:
                    emb = emb * label_mask.astype(x.dtype)[:, None]
                v = v + emb
        f, impl = self.features, self.conv_impl
        x1 = ConvBlock(f, impl, name="down1")(x, v, train=train)
        x2 = ConvBlock(2 * f, impl, name="down2")(_max_pool2(x1), v, train=train)
        h = ConvBlock(4 * f, impl, name="bot1")(_max_pool2(x2), v, train=train)
        # skips go after the upsampled tensor (the book's torch.cat([x, x2], dim=1))
        h = ConvBlock(2 * f, impl, name="up2")((upsample_bilinear2x(h), x2), v, train=train)
        h = ConvBlock(f, impl, name="up1")((upsample_bilinear2x(h), x1), v, train=train)
        return _conv(h, self.channels, 1, impl, "out")

    def _check(self, x, t, labels, label_mask):
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        if jnp.ndim(x) != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"x must be NHWC images (n, h, w, {self.channels}), got shape {jnp.shape(x)}; "
                "add the batch/channel axes (x[None, ..., None])"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"x must be floating point, got dtype {x.dtype}; cast it with .astype(jnp.float32)"
            )
        n, h, w, _ = x.shape
        if h % 4 or w % 4:
            raise ValueError(
                f"image height and width must be divisible by 4 (two 2x poolings), got {h}x{w}; "
                "pad or crop the images (e.g. 28x28 or 32x32)"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (n,))
        if t.shape != (n,):
            raise ValueError(f"t must have shape ({n},) (one step per image), got {t.shape}")
        if labels is None:
            if label_mask is not None:
                raise ValueError("label_mask was given without labels; pass labels too, or neither")
            return x, t, None, None
        if self.num_labels is None:
            raise ValueError(
                "labels were given but the model has no label embedding; build it with "
                "UNet(num_labels=10) or pass labels=None"
            )
        labels = jnp.asarray(labels)
        if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
        if not isinstance(labels, jax.core.Tracer) and labels.size:  # concrete: check on the host
            lo, hi = int(np.min(np.asarray(labels))), int(np.max(np.asarray(labels)))
            if lo < 0 or hi >= self.num_labels:
                raise ValueError(
                    f"labels must lie in 0..{self.num_labels - 1}, got values in {lo}..{hi}; "
                    "mark unconditional examples with label_mask=0 instead of an out-of-range label"
                )
        if label_mask is not None:
            label_mask = jnp.asarray(label_mask)
            if label_mask.shape != (n,):
                raise ValueError(f"label_mask must have shape ({n},), got {label_mask.shape}")
        return x, t, labels, label_mask


# --- helpers ---------------------------------------------------------------------------------------


def init(
    key: PRNGKeyArray, model: UNet, *, image_shape: tuple[int, int, int] = (28, 28, 1)
) -> tuple[dict, dict]:
    r"""Initial ``(params, batch_stats)`` of ``model`` for images of ``image_shape`` (static).

    PyTorch's default initialisation, the same distributions as the modules' own initialisers:
    every ``kernel`` (conv HWIO or dense ``(in, out)``) and the bias beside it
    :math:`\sim U(-1/\sqrt{\text{fan}_\text{in}}, 1/\sqrt{\text{fan}_\text{in}})` with
    ``fan_in = prod(kernel.shape[:-1])``; BatchNorm ``scale = 1``, ``bias = 0``; the label
    embedding :math:`\sim N(0, 1)`; running means 0 and running variances 1.

    The values come from one uniform and one normal draw of ``key`` cut into the parameters in
    sorted-path order, not from ``model.init`` (whose ~80 separate draws take XLA:CPU 10-20 s to
    compile); the shapes are ``model.init``'s (found with :func:`jax.eval_shape`, nothing runs).

    Args:
        key: PRNG key.
        model: the :class:`UNet`.
        image_shape: (static) ``(h, w, channels)`` of the images.

    Returns:
        ``(params, batch_stats)`` dicts, float32.
    """
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    abstract = jax.eval_shape(lambda k, x_, t_: model.init(k, x_, t_, train=False), key, x, t)
    flat = sorted(_flatten(abstract["params"]).items())
    rules = {path: _init_rule(path, leaf.shape, dict(flat)) for path, leaf in flat}
    sizes = {
        kind: sum(math.prod(leaf.shape) for path, leaf in flat if rules[path][0] == kind) for kind in "un"
    }
    key_u, key_n = jax.random.split(key)
    draws = {
        "u": jax.random.uniform(key_u, (sizes["u"],), jnp.float32, -1.0, 1.0),
        "n": jax.random.normal(key_n, (sizes["n"],), jnp.float32),
    }
    # called eagerly, cut on the host (no per-shape compilations); under jit, in the program.
    # Both multiply in float32, so the values are identical.
    xp = jnp if isinstance(draws["u"], jax.core.Tracer) else np
    draws = {kind: draw if xp is jnp else np.asarray(draw) for kind, draw in draws.items()}
    offsets = {"u": 0, "n": 0}
    values = {}
    for path, leaf in flat:
        kind, scale = rules[path]
        if kind in draws:
            size = math.prod(leaf.shape)
            chunk = draws[kind][offsets[kind] : offsets[kind] + size]
            values[path] = (chunk * np.float32(scale)).reshape(leaf.shape)
            offsets[kind] += size
        else:
            values[path] = xp.full(leaf.shape, scale, np.float32)
    stats = {
        path: xp.zeros(leaf.shape, np.float32) if path[-1] == "mean" else xp.ones(leaf.shape, np.float32)
        for path, leaf in _flatten(abstract["batch_stats"]).items()
    }
    if xp is np:
        values = {path: jnp.asarray(v) for path, v in values.items()}
        stats = {path: jnp.asarray(v) for path, v in stats.items()}
    return _unflatten(values), _unflatten(stats)


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, (*prefix, name)))
        else:
            out[(*prefix, name)] = value
    return out


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def _init_rule(path: tuple[str, ...], shape: tuple[int, ...], flat: dict) -> tuple[str, float]:
    """``("u", bound)``, ``("n", std)`` or ``("const", value)`` for one parameter (PyTorch's defaults)."""
    name, module = path[-1], path[-2] if len(path) > 1 else ""
    if name == "label_emb":
        return "n", 1.0
    if module.startswith("bn"):
        return "const", 1.0 if name == "scale" else 0.0
    kernel_shape = shape if name == "kernel" else flat[(*path[:-1], "kernel")].shape
    return "u", 1.0 / math.sqrt(math.prod(kernel_shape[:-1]))


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (2,167,784 for the book's UNet)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def make_apply_fn(model: UNet) -> Callable[..., tuple[Array, dict]]:
    """The model as a pure function of explicit parameters and running statistics.

    Returns:
        ``apply_fn(params, model_state, x, t, labels=None, label_mask=None, *, train)`` returning
        ``(eps_hat, new_model_state)``: ``model_state`` is the ``batch_stats`` dict; in train mode
        BatchNorm uses batch statistics and the running statistics are updated, in eval mode they
        are used and returned unchanged. ``train`` must be static under ``jax.jit``
        (``static_argnames="train"``).
    """

    def apply_fn(params, model_state, x, t, labels=None, label_mask=None, *, train: bool):
        variables = {"params": params, "batch_stats": model_state}
        if train:
            eps_hat, updates = model.apply(
                variables, x, t, labels, label_mask, train=True, mutable=["batch_stats"]
            )
            return eps_hat, updates["batch_stats"]
        return model.apply(variables, x, t, labels, label_mask, train=False), model_state

    return apply_fn
