"""Layers of the seed CNN, each as a ``forward`` that returns ``(y, cache)`` and a ``backward``.

The pattern is the book's: ``forward`` computes the output and keeps what the backward pass needs in a
``cache``; ``backward(dy, cache)`` receives ``dy = dL/dy`` (same shape as ``y``) and returns the
gradient with respect to the inputs (and parameters). Everything is plain numpy, float32 in gives
float32 out, float64 in gives float64 out (the finite-difference tests run in float64).

Layout: images are NHWC ``(N, H, W, C)``; conv kernels are HWIO ``(KH, KW, Cin, Cout)``; dense weights
are ``(D, K)``, so ``y = x @ w + b``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference_numpy.im2col import col2im, conv_output_shape, im2col

__all__ = [
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_naive",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "flatten_backward",
    "flatten_forward",
    "log_softmax",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy",
]

Cache = dict[str, Any]


# --- convolution --------------------------------------------------------------------------------


def _check_conv_args(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"x must be NHWC with shape (N, H, W, C), got shape {x.shape}; "
            "add a channel axis with x[..., None] for grayscale images"
        )
    if w.ndim != 4:
        raise ValueError(f"w must be an HWIO kernel of shape (KH, KW, Cin, Cout), got shape {w.shape}")
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"kernel input channels w.shape[2]={w.shape[2]} must equal image channels x.shape[3]="
            f"{x.shape[3]}; kernels are HWIO (KH, KW, Cin, Cout)"
        )
    if b.shape != (w.shape[3],):
        raise ValueError(f"bias must have shape (Cout,) = ({w.shape[3]},), got {b.shape}")
    conv_output_shape(x.shape[1], x.shape[2], w.shape[0], w.shape[1])


def conv2d_naive(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid, stride-1 convolution by nested loops -- slow, obviously correct: the test oracle.

    ``y[n, i, j, o] = b[o] + sum_{p, q, c} x[n, i+p, j+q, c] * w[p, q, c, o]`` (cross-correlation, as
    in every deep-learning library).

    Args:
        x: ``(N, H, W, Cin)``.
        w: ``(KH, KW, Cin, Cout)``.
        b: ``(Cout,)``.

    Returns:
        ``(N, H-KH+1, W-KW+1, Cout)``.
    """
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    _check_conv_args(x, w, b)
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = np.zeros((n, oh, ow, cout), dtype=np.result_type(x, w, b))
    for s in range(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(cout):
                    acc = b[o]
                    for p in range(kh):
                        for q in range(kw):
                            for c in range(cin):
                                acc = acc + x[s, i + p, j + q, c] * w[p, q, c, o]
                    y[s, i, j, o] = acc
    return y


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Valid, stride-1 convolution as im2col + one matrix product.

    ``cols = im2col(x)`` has shape ``(N*OH*OW, KH*KW*Cin)`` and ``W = w.reshape(KH*KW*Cin, Cout)``, so
    ``Y = cols @ W + b`` has shape ``(N*OH*OW, Cout)`` and is reshaped to ``(N, OH, OW, Cout)``.

    Args:
        x: ``(N, H, W, Cin)``.
        w: ``(KH, KW, Cin, Cout)``.
        b: ``(Cout,)``.

    Returns:
        ``(y, cache)`` with ``y`` of shape ``(N, OH, OW, Cout)``.
    """
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    _check_conv_args(x, w, b)
    n, h, wd, _ = x.shape
    kh, kw, cin, cout = w.shape
    oh, ow = conv_output_shape(h, wd, kh, kw)
    cols = im2col(x, kh, kw)
    w_mat = w.reshape(kh * kw * cin, cout)
    y = cols @ w_mat + b
    cache = {"cols": cols, "w": w, "x_shape": x.shape}
    return y.reshape(n, oh, ow, cout), cache


def conv2d_backward(
    dy: np.ndarray, cache: Cache, *, compute_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Backward of :func:`conv2d_forward`.

    With ``Y = cols @ W + b`` (``Y`` and ``dY`` flattened to ``(N*OH*OW, Cout)``) the matrix chain rule
    gives::

        dW    = cols.T @ dY           -> reshape (KH, KW, Cin, Cout)
        db    = sum over rows of dY   (every output pixel adds b once)
        dcols = dY @ W.T              (N*OH*OW, KH*KW*Cin)
        dx    = col2im(dcols)         (each pixel sums the gradients of all patches it appears in)

    Args:
        dy: ``dL/dy``, shape ``(N, OH, OW, Cout)``.
        cache: from :func:`conv2d_forward`.
        compute_dx: set ``False`` for the first layer, whose input gradient nobody needs (then
            ``dx`` is ``None`` and the col2im is skipped).

    Returns:
        ``(dx, dw, db)`` shaped like ``x``, ``w`` and ``b``.
    """
    cols, w, x_shape = cache["cols"], cache["w"], cache["x_shape"]
    kh, kw, cin, cout = w.shape
    dy_mat = np.asarray(dy).reshape(-1, cout)
    if dy_mat.shape[0] != cols.shape[0]:
        raise ValueError(f"dy has {dy_mat.shape[0]} output pixels, the forward pass produced {cols.shape[0]}")
    dw = (cols.T @ dy_mat).reshape(w.shape)
    db = dy_mat.sum(axis=0)
    dx = None
    if compute_dx:
        dcols = dy_mat @ w.reshape(kh * kw * cin, cout).T
        dx = col2im(dcols, x_shape, kh, kw)
    return dx, dw, db


# --- ReLU ---------------------------------------------------------------------------------------


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """``y = max(x, 0)``. The cache is the mask ``x > 0``."""
    x = np.asarray(x)
    mask = x > 0
    return np.maximum(x, x.dtype.type(0)), {"mask": mask}


def relu_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """``dx = dy * [x > 0]`` -- the derivative at exactly ``x = 0`` is taken as 0 (as in JAX)."""
    dy = np.asarray(dy)
    return np.where(cache["mask"], dy, dy.dtype.type(0))


# --- max pooling --------------------------------------------------------------------------------


def maxpool2d_forward(x: np.ndarray, *, size: int = 2, stride: int = 2) -> tuple[np.ndarray, Cache]:
    """Max pooling over ``size x size`` windows with the given stride (no padding, floor).

    ``OH = (H - size) // stride + 1`` (trailing rows/columns that do not fill a window are dropped,
    e.g. 11 -> 5 for the seed CNN). Instead of a transposed copy of every window, the loop runs over
    the ``size * size`` offsets ``(p, q)`` of a window (4 for 2x2): the elements at offset ``(p, q)`` of
    all windows form one strided view of ``x``, so the max is ``size * size - 1`` elementwise
    ``np.maximum`` calls. The cache keeps ``arg``, the winning offset ``p * size + q`` of each window.

    Ties: when several elements of a window share the maximum, the *first* in row-major ``(p, q)``
    order wins (like ``np.argmax``), and only that element receives the gradient in
    :func:`maxpool2d_backward`.

    Args:
        x: ``(N, H, W, C)``.
        size: window height and width (static).
        stride: step between windows (static).

    Returns:
        ``(y, cache)`` with ``y`` of shape ``(N, OH, OW, C)``.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC with shape (N, H, W, C), got shape {x.shape}")
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be >= 1, got size={size}, stride={stride}")
    n, h, w, c = x.shape
    if size > h or size > w:
        raise ValueError(f"pool size {size} is larger than the image ({h}, {w}); use a smaller size")
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1

    def at(p: int, q: int) -> np.ndarray:  # element (p, q) of every window: a strided (N, OH, OW, C) view
        return x[:, p : p + stride * (oh - 1) + 1 : stride, q : q + stride * (ow - 1) + 1 : stride, :]

    offsets = [(p, q) for p in range(size) for q in range(size)]  # row-major window order
    y = at(0, 0).copy()
    for p, q in offsets[1:]:
        np.maximum(y, at(p, q), out=y)
    # arg = index of the first offset whose element equals the maximum (ties -> first, row-major)
    arg = np.full(y.shape, -1, dtype=np.int8 if size * size < 128 else np.int64)
    for k, (p, q) in enumerate(offsets):
        arg[(arg < 0) & (at(p, q) == y)] = k
    arg[arg < 0] = 0  # only possible when a window holds NaN (then y is NaN and no element equals it)
    cache = {"arg": arg, "x_shape": x.shape, "size": size, "stride": stride}
    return y, cache


def maxpool2d_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """Route each ``dy[n, i, j, c]`` to the (first) maximal element of its window; zeros elsewhere.

    Loops over the ``size * size`` window offsets ``(p, q)``: the pixels at offset ``(p, q)`` of all
    windows form the strided slice ``x[:, p::stride, q::stride]``, and they receive ``dy`` where that
    offset was the argmax. Overlapping windows (``stride < size``) add up correctly because each
    offset's slice has no repeated pixels and offsets are accumulated with ``+=``.
    """
    dy = np.asarray(dy)
    arg, size, stride = cache["arg"], cache["size"], cache["stride"]
    if dy.shape != arg.shape:
        raise ValueError(f"dy must have the pooled shape {arg.shape}, got {dy.shape}")
    n, oh, ow, c = dy.shape
    dx = np.zeros(cache["x_shape"], dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for p in range(size):
        for q in range(size):
            hit = arg == p * size + q
            dx[:, p : p + stride * (oh - 1) + 1 : stride, q : q + stride * (ow - 1) + 1 : stride, :] += (
                np.where(hit, dy, zero)
            )
    return dx


# --- flatten ------------------------------------------------------------------------------------


def flatten_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """``(N, H, W, C) -> (N, H*W*C)`` in C order, i.e. feature index ``(h*W + w)*C + c``."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1), {"x_shape": x.shape}


def flatten_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """Flatten is a reshape, so its backward is the inverse reshape."""
    return np.asarray(dy).reshape(cache["x_shape"])


# --- dropout ------------------------------------------------------------------------------------


def dropout_forward(
    x: np.ndarray,
    *,
    rate: float,
    rng: np.random.Generator | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Cache]:
    """Inverted dropout: ``y = x * mask / (1 - rate)``, with ``mask`` a keep-mask of 0s and 1s.

    Each element is kept with probability ``1 - rate``; dividing by ``1 - rate`` keeps ``E[y] = x``, so
    evaluation needs no rescaling (just skip dropout).

    Args:
        x: any shape.
        rate: drop probability in ``[0, 1)``.
        rng: explicit generator; the mask is ``rng.random(x.shape) >= rate``. Ignored if ``mask`` given.
        mask: explicit keep-mask of ``x``'s shape with values in {0, 1} (then no randomness).

    Returns:
        ``(y, cache)``.

    Raises:
        ValueError: bad ``rate``, a mask of the wrong shape or values, or neither ``rng`` nor ``mask``.
    """
    x = np.asarray(x)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if mask is None:
        if rng is None:
            raise ValueError("dropout_forward needs rng=np.random.default_rng(seed) or an explicit mask=")
        keep = rng.random(x.shape) >= rate
    else:
        keep = np.asarray(mask)
        if keep.shape != x.shape:
            raise ValueError(f"dropout mask must have the input's shape {x.shape}, got {keep.shape}")
        if not np.all((keep == 0) | (keep == 1)):
            raise ValueError("dropout mask must be a keep-mask with values in {0, 1}")
    scaled_mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
    return x * scaled_mask, {"scaled_mask": scaled_mask}


def dropout_backward(dy: np.ndarray, cache: Cache) -> np.ndarray:
    """``dx = dy * mask / (1 - rate)`` -- the same elementwise scale as the forward pass."""
    return np.asarray(dy) * cache["scaled_mask"]


# --- dense --------------------------------------------------------------------------------------


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Affine layer ``y = x @ w + b`` with ``x (N, D)``, ``w (D, K)``, ``b (K,)``."""
    x, w, b = np.asarray(x), np.asarray(w), np.asarray(b)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"dense expects x (N, D) and w (D, K) with matching D, got x {x.shape}, w {w.shape}")
    if b.shape != (w.shape[1],):
        raise ValueError(f"bias must have shape (K,) = ({w.shape[1]},), got {b.shape}")
    return x @ w + b, {"x": x, "w": w}


def dense_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dx = dy @ w.T``, ``dw = x.T @ dy``, ``db = sum_n dy[n]``."""
    dy = np.asarray(dy)
    x, w = cache["x"], cache["w"]
    return dy @ w.T, x.T @ dy, dy.sum(axis=0)


# --- softmax cross-entropy ----------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable ``log softmax(z)_k = z_k - max(z) - log sum_j exp(z_j - max(z))`` over the last axis."""
    z = np.asarray(logits)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    ``L = -(1/N) sum_n log softmax(z_n)[y_n]`` and ``dL/dz_n = (softmax(z_n) - onehot(y_n)) / N``.
    The max-shift inside :func:`log_softmax` makes it safe for large logits.

    Args:
        logits: ``(N, K)`` float.
        labels: ``(N,)`` integer class indices in ``[0, K)``.

    Returns:
        ``(loss, dlogits)``: a 0-d array in the logits' dtype, and ``(N, K)``.
    """
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {z.shape}")
    if y.shape != (z.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integer class indices of shape ({z.shape[0]},), got {y.dtype} {y.shape}; "
            "convert one-hot labels with labels.argmax(-1)"
        )
    k = z.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{y.min()}, {y.max()}]")
    n = z.shape[0]
    logp = log_softmax(z)
    rows = np.arange(n)
    loss = -logp[rows, y].mean(dtype=z.dtype)
    dz = np.exp(logp)
    dz[rows, y] -= 1
    dz /= z.dtype.type(n)
    return np.asarray(loss, dtype=z.dtype), dz
