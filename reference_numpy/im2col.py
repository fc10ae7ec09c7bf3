"""im2col / col2im: turning a convolution into one matrix product.

A "valid", stride-1 convolution of an NHWC image ``x`` of shape ``(N, H, W, C)`` with an HWIO kernel
``w`` of shape ``(KH, KW, C, Cout)`` computes, for every output pixel ``(n, i, j)`` and channel ``o``::

    y[n, i, j, o] = sum_{p, q, c} x[n, i + p, j + q, c] * w[p, q, c, o],
    0 <= i < OH = H - KH + 1,   0 <= j < OW = W - KW + 1.

The sum only touches one ``KH x KW x C`` patch of ``x``. If we write every patch as one row of a
matrix -- this is *im2col* ("image to columns") -- the whole convolution becomes a single matrix
product::

    cols = im2col(x, KH, KW)                    # (N*OH*OW, KH*KW*C)
    y    = cols @ w.reshape(KH*KW*C, Cout)     # (N*OH*OW, Cout) -> reshape (N, OH, OW, Cout)

The patch rows are laid out in ``(p, q, c)`` order, which is exactly the C-order of the HWIO kernel's
first three axes, so ``w.reshape(-1, Cout)`` needs no transpose.

*col2im* is the adjoint (transpose) of im2col: it takes a matrix with one row per patch and adds every
entry back to the pixel it was copied from. Pixels covered by several patches receive the sum of all
their contributions, which is exactly the chain rule for ``dL/dx`` in the conv backward pass.

Efficiency: im2col uses :func:`numpy.lib.stride_tricks.as_strided` to build a *view* of shape
``(N, OH, OW, KH, KW, C)`` onto ``x`` without copying; the final ``reshape`` makes the one copy that
the matmul needs. col2im loops over the ``KH * KW`` kernel offsets only (9 for a 3x3 kernel), each
iteration adding a whole ``(N, OH, OW, C)`` slab at once.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["col2im", "conv_output_shape", "im2col", "patches"]


def conv_output_shape(h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
    """Spatial output size ``(OH, OW) = (H - KH + 1, W - KW + 1)`` of a valid, stride-1 convolution.

    Raises:
        ValueError: if the kernel is larger than the image or not positive.
    """
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got kh={kh}, kw={kw}")
    if kh > h or kw > w:
        raise ValueError(
            f"kernel ({kh}, {kw}) is larger than the image ({h}, {w}); a valid convolution needs "
            "kh <= H and kw <= W (pad the image or use a smaller kernel)"
        )
    return h - kh + 1, w - kw + 1


def _check_nhwc(x: np.ndarray, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be an NHWC array of shape (N, H, W, C), got shape {x.shape}; "
            "add a channel axis with x[..., None] for grayscale images"
        )


def patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Read-only strided *view* of all ``kh x kw`` patches of ``x`` (no copy).

    Args:
        x: images, shape ``(N, H, W, C)``.
        kh: kernel height.
        kw: kernel width.

    Returns:
        View of shape ``(N, OH, OW, KH, KW, C)`` with ``view[n, i, j, p, q, c] = x[n, i+p, j+q, c]``.
        Moving one step along ``i`` or ``p`` both move one row in ``x``, hence the repeated strides.
    """
    x = np.asarray(x)
    _check_nhwc(x)
    n, h, w, c = x.shape
    oh, ow = conv_output_shape(h, w, kh, kw)
    sn, sh, sw, sc = x.strides
    return as_strided(x, shape=(n, oh, ow, kh, kw, c), strides=(sn, sh, sw, sh, sw, sc), writeable=False)


def im2col(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Unfold every ``kh x kw`` patch of ``x`` into one row (valid padding, stride 1).

    Args:
        x: images, shape ``(N, H, W, C)``, any float dtype (preserved).
        kh: kernel height.
        kw: kernel width.

    Returns:
        ``cols`` of shape ``(N*OH*OW, KH*KW*C)``, rows ordered ``(n, i, j)`` and columns ordered
        ``(p, q, c)``: ``cols[(n*OH + i)*OW + j, (p*KW + q)*C + c] = x[n, i+p, j+q, c]``.
    """
    view = patches(x, kh, kw)
    n, oh, ow, _, _, c = view.shape
    return view.reshape(n * oh * ow, kh * kw * c)  # the one copy


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kh: int, kw: int) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add patch rows back onto an image of shape ``x_shape``.

    For any ``x`` and ``cols`` of matching shapes, ``<im2col(x), cols> == <x, col2im(cols)>``. In the conv
    backward pass, ``cols = dL/d(im2col(x))`` and the result is ``dL/dx``: a pixel that appears in
    several patches collects the sum of the gradients of all its copies.

    Args:
        cols: shape ``(N*OH*OW, KH*KW*C)``, laid out as :func:`im2col` returns.
        x_shape: ``(N, H, W, C)`` of the image the patches came from.
        kh: kernel height.
        kw: kernel width.

    Returns:
        Array of shape ``x_shape`` and dtype ``cols.dtype``.
    """
    cols = np.asarray(cols)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (N, H, W, C), got {tuple(x_shape)}")
    n, h, w, c = (int(s) for s in x_shape)
    oh, ow = conv_output_shape(h, w, kh, kw)
    expected = (n * oh * ow, kh * kw * c)
    if cols.shape != expected:
        raise ValueError(
            f"cols must have shape (N*OH*OW, KH*KW*C) = {expected} for x_shape {tuple(x_shape)} and "
            f"kernel ({kh}, {kw}), got {cols.shape}"
        )
    cols6 = cols.reshape(n, oh, ow, kh, kw, c)
    x = np.zeros((n, h, w, c), dtype=cols.dtype)
    for p in range(kh):  # KH*KW iterations, each adds a whole (N, OH, OW, C) slab
        for q in range(kw):
            x[:, p : p + oh, q : q + ow, :] += cols6[:, :, :, p, q, :]
    return x
