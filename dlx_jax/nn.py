"""Pure neural-network layers: conv2d, max_pool2d, dense and MLPs, relu, dropout, softmax cross-entropy.

Every function is undecorated and side-effect free (callers ``jax.jit``), acts on a batch
and preserves the input dtype. Images are NHWC, conv weights HWIO ``(kh, kw, c_in, c_out)``,
dense weights ``(d_in, d_out)`` — the layout ``reference_numpy`` uses, so parameters move between
the two unchanged.

**Argument convention.** A layer *operation* takes the input first and its weights as arrays,
``conv2d(x, w, b)``, ``dense(x, w, b)`` (like ``lax.conv_general_dilated`` and the oracle's
``layers.*_forward(x, w, b)``). A *network* given as a pytree of weights takes that pytree first,
``mlp(p, x)`` — like the models built on these layers (``cnn.apply(params, x)``,
``vae.encode(params, x)``). Weight containers are NamedTuples: :class:`Dense` ``(w, b)`` and
:class:`MLP` ``(hidden, out)``, initialised like PyTorch's ``nn.Linear`` (:func:`init_dense`,
:func:`init_mlp`).

Convolution formulations (``impl=``):

* ``"im2col"`` (default): the ``kh * kw`` shifted views of the input are cut with static slices,
  concatenated on the channel axis into patches ``(n, oh, ow, kh * kw * c)`` and multiplied with
  the reshaped kernel in one matmul; XLA differentiates that into matmuls and padded adds
  (col2im). Best when ``kh * kw * c`` is small (the first layer, ``c = 1``): there XLA's own
  convolution is memory-bound and its kernel gradient is ~3x slower.
* ``"lax"``: :func:`jax.lax.conv_general_dilated` (XLA's convolution). Best for many input
  channels (the second layer, ``c = 32``), where it runs near matmul speed.
* ``"auto"``: ``"im2col"`` when ``kh * kw * c <= AUTO_IM2COL_MAX_K`` else ``"lax"`` — the fastest
  single jitted train step of the seed CNN, but see the warning below.

Warning: inside a ``lax.scan``/``while_loop`` body (a compiled epoch) XLA:CPU (jax 0.10.2) runs
``"lax"`` convolutions of the seed CNN's second layer ~15x slower than outside a loop (measured
1.56 s vs 0.10 s per step), so the default is ``"im2col"``, which is fast in both places.
* ``"patches"``: :func:`jax.lax.conv_general_dilated_patches` + one matmul (slow on CPU; kept
  for the benchmark).

All agree to float rounding. On CPU the largest cost of the plain formulation is not the
convolution but ``lax.reduce_window`` max pooling, whose ``select_and_scatter`` gradient is slow;
the default pooling below avoids it (see ``experiments/benchmarks/cnn.py`` for the timings).

Max pooling (``impl=``): ``"reshape"`` (default) crops to a multiple of the window (floor
mode), reshapes into windows and keeps a running maximum over the window elements in row-major
order where a later element wins only if strictly larger: the gradient goes to exactly the
first maximal element (the ``reference_numpy`` tie rule), and everything is elementwise;
``"reduce_window"`` uses :func:`jax.lax.reduce_window` (any stride, XLA's tie rule).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_class_labels, check_float, check_nonempty, check_positive_int, check_sizes

__all__ = [
    "AUTO_IM2COL_MAX_K",
    "CONV_IMPLS",
    "MLP",
    "POOL_IMPLS",
    "Dense",
    "conv2d",
    "dense",
    "dropout",
    "flatten",
    "init_dense",
    "init_mlp",
    "max_pool2d",
    "mlp",
    "relu",
    "softmax_cross_entropy",
]

CONV_IMPLS = ("auto", "im2col", "lax", "patches")
# "auto" uses im2col up to this patch length kh*kw*c (3x3 kernels on <= 3 channels), lax above.
AUTO_IM2COL_MAX_K = 32
POOL_IMPLS = ("reshape", "reduce_window")


def conv2d(
    x: Float[Array, "n h w c"],
    w: Float[Array, "kh kw c o"],
    b: Float[Array, " o"] | None = None,
    *,
    impl: str = "im2col",
) -> Float[Array, "n oh ow o"]:
    r"""2-D cross-correlation, stride 1, 'valid' padding, NHWC input and HWIO kernel.

    .. math:: y_{n,i,j,o} = b_o + \sum_{p<k_h} \sum_{q<k_w} \sum_{c} x_{n,i+p,j+q,c}\, w_{p,q,c,o},

    with ``oh = h - kh + 1`` and ``ow = w - kw + 1``. Acts on a batch.

    Args:
        x: input images ``(n, h, w, c)``.
        w: kernel ``(kh, kw, c, o)`` (HWIO).
        b: optional bias ``(o,)``.
        impl: (static) ``"im2col"`` (default: slices + concatenate + matmul), ``"auto"``
            (``"im2col"`` for short patches, else ``"lax"``), ``"lax"`` (XLA's convolution) or
            ``"patches"`` (``lax.conv_general_dilated_patches`` + matmul).

    Returns:
        ``(n, oh, ow, o)`` in the input dtype.

    Raises:
        ValueError: wrong ranks, channel mismatch, a kernel larger than the image, a bias of the
            wrong length, non-float input or an unknown ``impl``.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"impl must be one of {CONV_IMPLS}, got {impl!r}; pick one of them")
    if jnp.ndim(x) != 4 or jnp.ndim(w) != 4:
        raise ValueError(
            f"conv2d expects x (n, h, w, c) and w (kh, kw, c, o); got shapes {jnp.shape(x)} and "
            f"{jnp.shape(w)}; add the batch/channel axes (x[None, ..., None])"
        )
    check_float("x", x)
    n, h, wd, c = x.shape
    kh, kw, ci, co = w.shape
    if ci != c:
        raise ValueError(
            f"kernel expects {ci} input channels but x has {c} (x {x.shape}, w {w.shape}); "
            "kernels are HWIO (kh, kw, c_in, c_out)"
        )
    if kh > h or kw > wd:
        raise ValueError(f"kernel {kh}x{kw} is larger than the {h}x{wd} image; use a smaller kernel")
    if b is not None and jnp.shape(b) != (co,):
        raise ValueError(
            f"bias must have shape ({co},) to match w {w.shape}, got {jnp.shape(b)}; pass one bias per "
            "output channel"
        )
    w = w.astype(x.dtype)
    oh, ow = h - kh + 1, wd - kw + 1
    if impl == "auto":
        impl = "im2col" if kh * kw * c <= AUTO_IM2COL_MAX_K else "lax"
    if impl == "lax":
        y = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    elif impl == "patches":
        # feature order of the patches is (c, kh, kw)
        cols = lax.conv_general_dilated_patches(
            x, (kh, kw), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        wm = jnp.transpose(w, (2, 0, 1, 3)).reshape(c * kh * kw, co)
        y = jnp.dot(cols.reshape(n * oh * ow, c * kh * kw), wm).reshape(n, oh, ow, co)
    else:
        # (n, oh, ow, kh*kw*c) with feature order (kh, kw, c) == HWIO row-major
        cols = jnp.concatenate(
            [x[:, p : p + oh, q : q + ow, :] for p in range(kh) for q in range(kw)], axis=-1
        )
        y = jnp.dot(cols.reshape(n * oh * ow, kh * kw * c), w.reshape(kh * kw * c, co)).reshape(n, oh, ow, co)
    if b is not None:
        y = y + b.astype(x.dtype)
    return y


def max_pool2d(
    x: Float[Array, "n h w c"], *, size: int = 2, stride: int | None = None, impl: str = "reshape"
) -> Float[Array, "n oh ow c"]:
    r"""Max pooling over ``size x size`` windows, 'valid' (floor) output size.

    .. math:: y_{n,i,j,c} = \max_{p,q<\text{size}} x_{n,\,i s+p,\,j s+q,\,c},
       \qquad oh = \lfloor (h - \text{size}) / s \rfloor + 1.

    Gradient (``impl="reshape"``): all of it goes to the *first* maximal element of each window
    in row-major (p, q) order — ties, e.g. several zeros after a ReLU, are not split. This is
    the rule ``reference_numpy.layers.maxpool2d_backward`` follows. ``"reduce_window"`` uses
    XLA's ``select_and_scatter`` gradient.

    Args:
        x: ``(n, h, w, c)``.
        size: (static) window side.
        stride: (static) step; ``None`` means ``size``. ``impl="reshape"`` needs ``stride == size``.
        impl: (static) ``"reshape"`` (default) or ``"reduce_window"``.

    Returns:
        ``(n, oh, ow, c)`` in the input dtype.

    Raises:
        ValueError: wrong rank, a window larger than the image, a bad stride or ``impl``.
    """
    stride = size if stride is None else stride
    if impl not in POOL_IMPLS:
        raise ValueError(f"impl must be one of {POOL_IMPLS}, got {impl!r}; pick one of them")
    if jnp.ndim(x) != 4:
        raise ValueError(
            f"max_pool2d expects x of shape (n, h, w, c), got {jnp.shape(x)}; add the batch/channel axes "
            "(x[None, ..., None])"
        )
    check_positive_int("size", size, static=True, fix="pass e.g. size=2")
    check_positive_int("stride", stride, static=True, fix="pass e.g. stride=2, or None for stride = size")
    n, h, w, c = x.shape
    if size > h or size > w:
        raise ValueError(f"pool window {size} is larger than the {h}x{w} input; use a smaller size")
    if impl == "reduce_window":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), "VALID")
    if stride != size:
        raise ValueError(
            f'impl="reshape" needs stride == size (got {stride} != {size}); use impl="reduce_window"'
        )
    oh, ow = h // size, w // size
    win = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    # running "first maximum": a later element wins only if strictly larger, so ties keep the
    # earlier one and the gradient of each `where` flows to exactly one element.
    y = win[:, :, 0, :, 0, :]
    for p in range(size):
        for q in range(size):
            if p or q:
                v = win[:, :, p, :, q, :]
                y = jnp.where(v > y, v, y)
    return y


def relu(x: Float[Array, "*dims"]) -> Float[Array, "*dims"]:
    r"""Rectified linear unit :math:`\max(x, 0)`, elementwise; derivative 0 at ``x = 0``."""
    return jnp.where(x > 0, x, jnp.zeros((), x.dtype))


def flatten(x: Float[Array, "n ..."]) -> Float[Array, "n d"]:
    """Flatten all but the batch axis in C order (for NHWC: ``(h, w, c)`` order); an empty batch
    gives ``(0, h*w*c)``."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def dense(
    x: Float[Array, "*n d"], w: Float[Array, "d k"], b: Float[Array, " k"] | None = None
) -> Float[Array, "*n k"]:
    r"""Affine layer :math:`y = x W + b` over the last axis of ``x`` (broadcasts over leading axes).

    Raises:
        ValueError: ``w`` is not 2-D or its input width does not match ``x``'s last axis, or
            ``x`` is not floating point (the weights are cast to ``x``'s dtype).
    """
    check_float("x", x)
    if jnp.ndim(x) < 1 or jnp.ndim(w) != 2 or jnp.shape(x)[-1] != w.shape[0]:
        raise ValueError(
            f"dense expects x (..., d) and w (d, k); got {jnp.shape(x)} and {jnp.shape(w)}; "
            "flatten the input first (e.g. x.reshape(len(x), -1))"
        )
    if b is not None and jnp.shape(b) != (w.shape[1],):
        raise ValueError(
            f"bias must have shape ({w.shape[1]},) to match w {jnp.shape(w)}, got {jnp.shape(b)}; "
            "pass one bias per output unit"
        )
    y = jnp.dot(x, w.astype(x.dtype))
    return y if b is None else y + b.astype(x.dtype)


class Dense(NamedTuple):
    """Weights of one affine layer ``y = x @ w + b`` (apply with ``dense(x, p.w, p.b)``)."""

    w: Float[Array, "d k"]
    b: Float[Array, " k"]


class MLP(NamedTuple):
    """A one-hidden-layer perceptron ``x → relu(x W1 + b1) → W2 + b2`` (no output activation)."""

    hidden: Dense
    out: Dense


def init_dense(key: PRNGKeyArray, *, fan_in: int, fan_out: int, dtype=jnp.float32) -> Dense:
    r"""PyTorch's ``nn.Linear`` initialization: ``w, b ~ U(-1/√fan_in, 1/√fan_in)``.

    Args:
        key: PRNG key (split into the weight and bias draws).
        fan_in: (static) input width ``d``.
        fan_out: (static) output width ``k``.
        dtype: (static) parameter dtype.

    Raises:
        ValueError: a size is < 1.
    """
    check_sizes(fan_in=fan_in, fan_out=fan_out)
    key_w, key_b = jax.random.split(key)
    bound = 1.0 / math.sqrt(fan_in)
    w = jax.random.uniform(key_w, (fan_in, fan_out), dtype, minval=-bound, maxval=bound)
    b = jax.random.uniform(key_b, (fan_out,), dtype, minval=-bound, maxval=bound)
    return Dense(w, b)


def init_mlp(key: PRNGKeyArray, *, fan_in: int, hidden: int, fan_out: int, dtype=jnp.float32) -> MLP:
    """An :class:`MLP` ``fan_in → hidden → fan_out`` with :func:`init_dense` layers.

    Args:
        key: PRNG key (split once per layer).
        fan_in: (static) input width.
        hidden: (static) hidden units.
        fan_out: (static) output width.
        dtype: (static) parameter dtype.
    """
    key_hidden, key_out = jax.random.split(key)
    return MLP(
        init_dense(key_hidden, fan_in=fan_in, fan_out=hidden, dtype=dtype),
        init_dense(key_out, fan_in=hidden, fan_out=fan_out, dtype=dtype),
    )


def mlp(p: MLP, x: Float[Array, "*n d"]) -> Float[Array, "*n k"]:
    """``relu(x W1 + b1) W2 + b2`` (pre-activation output); broadcasts over leading axes of ``x``."""
    return dense(relu(dense(x, p.hidden.w, p.hidden.b)), p.out.w, p.out.b)


def dropout(
    key: PRNGKeyArray | None,
    x: Float[Array, "*dims"],
    *,
    rate: float = 0.5,
    mask: Array | None = None,
) -> Float[Array, "*dims"]:
    r"""Inverted dropout :math:`y = x \odot m / (1 - r)`, keep-mask :math:`m \sim \text{Bernoulli}(1 - r)`.

    Args:
        key: PRNG key for the keep-mask (ignored when ``mask`` is given; may then be ``None``).
        x: activations.
        rate: (static) drop probability in ``[0, 1)``.
        mask: optional keep-mask of ``x``'s shape with values in {0, 1}; then no randomness.

    Returns:
        ``x``'s shape and dtype.

    Raises:
        ValueError: ``rate`` outside ``[0, 1)``, a mask of the wrong shape, or neither key nor mask.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"dropout rate must be in [0, 1), got {rate}; pass e.g. rate=0.5 (0 disables dropout)"
        )
    if mask is None:
        if key is None:
            raise ValueError(
                "dropout needs a PRNG key or an explicit keep-mask; pass key=jax.random.key(seed)"
            )
        mask = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    elif jnp.shape(mask) != x.shape:
        raise ValueError(
            f"dropout mask must have the activations' shape {x.shape}, got {jnp.shape(mask)}; "
            "pass one keep-flag per activation"
        )
    return x * (mask.astype(x.dtype) / jnp.asarray(1.0 - rate, x.dtype))


def softmax_cross_entropy(logits: Float[Array, "n k"], labels: Int[Array, " n"]) -> Float[Array, ""]:
    r"""Mean softmax cross-entropy with integer labels, computed in log space.

    .. math:: L = -\frac1n \sum_i \Big(z_{i,y_i} - \log\sum_k e^{z_{i,k}}\Big)

    Labels must lie in ``0..k-1``. That is checked when ``labels`` is concrete. Under ``jit`` it
    cannot be: a label ``>= k`` then gives a NaN loss and a negative label silently picks class
    ``k + label`` (a wrong, finite loss); run through ``dlx_jax.checked`` to get the error inside
    compiled code.

    Raises:
        ValueError: logits not 2-D or not floating, labels not ``(n,)`` integers, ``n = 0`` (a
            mean over no examples), or (concrete) labels outside ``0..k-1``.
    """
    if jnp.ndim(logits) != 2:
        raise ValueError(
            f"logits must be (n, k), got shape {jnp.shape(logits)}; pass one row of class scores per example"
        )
    check_float("logits", logits)
    check_class_labels(labels, n=logits.shape[0], num_classes=logits.shape[1])
    check_nonempty("logits", logits.shape[0])
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.mean(log_z - picked)
