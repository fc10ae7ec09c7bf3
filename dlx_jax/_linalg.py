"""Small-matrix linear algebra written out entry by entry, shared by distributions and mixture.

For ``d <= UNROLL_MAX_D`` the Cholesky factor, the inverse factor and the Mahalanobis form are
spelled out per matrix entry on the batch axes, so XLA fuses each into a few vectorised loops over
the batch instead of one LAPACK call per tiny matrix or a triangular solve with millions of
right-hand sides (both slow on CPU). Larger ``d`` falls back to LAPACK / matrix products.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float

__all__ = ["UNROLL_MAX_D", "cholesky_unrolled", "mahalanobis_sq", "precision_cholesky"]

# Up to this many features the kernels below are unrolled; above it they use LAPACK / matmuls.
UNROLL_MAX_D = 16


def cholesky_unrolled(cov: Float[Array, "*k d d"]) -> Float[Array, "*k d d"]:
    """Lower Cholesky factor; NaN where ``cov`` is not positive definite (like ``jnp.linalg.cholesky``).

    For ``d <= UNROLL_MAX_D`` the Cholesky-Banachiewicz recurrence is written out entry by entry
    on the batch axes, which XLA fuses into a few vectorised loops; this beats one LAPACK call per
    matrix for the many tiny matrices of batched restarts. Larger ``d`` uses LAPACK.
    """
    d = cov.shape[-1]
    if d > UNROLL_MAX_D:
        return jnp.linalg.cholesky(cov)
    entries: dict[tuple[int, int], Array] = {}
    for i in range(d):
        for j in range(i + 1):
            acc = cov[..., i, j]
            for m in range(j):
                acc = acc - entries[i, m] * entries[j, m]
            entries[i, j] = jnp.sqrt(acc) if i == j else acc / entries[j, j]
    zero = jnp.zeros_like(cov[..., 0, 0])
    rows = [jnp.stack([entries[i, j] if j <= i else zero for j in range(d)], axis=-1) for i in range(d)]
    return jnp.stack(rows, axis=-2)


def precision_cholesky(scale_tril: Float[Array, "k d d"]) -> Float[Array, "k d d"]:
    """``U_j = L_j^{-T}`` for every component (upper triangular, ``Σ_j^{-1} = U_j U_jᵀ``).

    Forward substitution ``L X = I`` (never a general inverse); written out entry by entry for
    ``d <= UNROLL_MAX_D``, else one batched ``solve_triangular``.
    """
    d = scale_tril.shape[-1]
    if d > UNROLL_MAX_D:
        eye = jnp.broadcast_to(jnp.eye(d, dtype=scale_tril.dtype), scale_tril.shape)
        return jnp.swapaxes(solve_triangular(scale_tril, eye, lower=True), -1, -2)
    inv: dict[tuple[int, int], Array] = {}  # inv[i, j] = (L^{-1})_{ij}, i >= j
    for j in range(d):
        inv[j, j] = 1.0 / scale_tril[..., j, j]
        for i in range(j + 1, d):
            acc = scale_tril[..., i, j] * inv[j, j]
            for m in range(j + 1, i):
                acc = acc + scale_tril[..., i, m] * inv[m, j]
            inv[i, j] = -acc / scale_tril[..., i, i]
    zero = jnp.zeros_like(scale_tril[..., 0, 0])
    # U = (L^{-1})^T: U[a, b] = inv[b, a] for b >= a
    rows = [jnp.stack([inv[b, a] if b >= a else zero for b in range(d)], axis=-1) for a in range(d)]
    return jnp.stack(rows, axis=-2)


def mahalanobis_sq(
    x: Float[Array, "*bx d"], mean: Float[Array, "*bm d"], scale_tril: Float[Array, "*bl d d"]
) -> Float[Array, "*batch"]:
    r"""Squared Mahalanobis distance :math:`\lVert L^{-1}(x-\mu)\rVert^2` over the broadcast batch.

    With :math:`U = L^{-T}` (:func:`precision_cholesky`, one small triangular inverse per factor)
    and :math:`\delta = x - \mu`, the whitened vector is :math:`y_j = \sum_{i \le j} \delta_i U_{ij}`.
    For ``d <= UNROLL_MAX_D`` the ``d(d+1)/2`` products are written out on the broadcast batch
    axes of ``x``, ``mean`` and ``scale_tril``, so XLA evaluates the whole distance in one fused
    pass over ``x`` (no ``(..., d)`` intermediate, no per-component copy of ``x``). Larger ``d``
    whitens with one batched matrix product.
    """
    d = scale_tril.shape[-1]
    prec = precision_cholesky(scale_tril)
    if d > UNROLL_MAX_D:
        y = jnp.einsum("...i,...ij->...j", x - mean, prec)
        return jnp.sum(y * y, axis=-1)
    dev = [x[..., i] - mean[..., i] for i in range(d)]
    total = None
    for j in range(d):
        y = dev[0] * prec[..., 0, j]
        for i in range(1, j + 1):
            y = y + dev[i] * prec[..., i, j]
        total = y * y if total is None else total + y * y
    return total
