"""EM for Gaussian mixtures: E-step, M-step and the ``lax.while_loop`` fit (see :mod:`dlx_jax.mixture`)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dlx_jax._linalg import cholesky_unrolled
from dlx_jax.mixture._model import (
    GMMParams,
    cast_params,
    check_nonneg,
    check_params,
    check_x,
    component_log_densities_kn,
    dtype_of,
    float_array,
    floored,
)


class EMInfo(NamedTuple):
    """What :func:`fit` records about a run of EM (a pytree; batched under ``vmap``).

    Attributes:
        log_likelihood_trace: ``(max_iter + 1,)`` the objective (mean of ``log(p(x) + floor)``)
            at the initial parameters, then after each update; NaN after the last update.
        exact_log_likelihood_trace: ``(max_iter + 1,)`` the same for the exact mean
            log-likelihood (``floor = 0``); equal to the first when ``floor == 0``.
        n_iter: number of EM updates done.
        converged: whether ``|Δ objective| < tol`` stopped the loop (rather than ``max_iter``).
    """

    log_likelihood_trace: Float[Array, " t"]
    exact_log_likelihood_trace: Float[Array, " t"]
    n_iter: Int[Array, ""]
    converged: Bool[Array, ""]


# --------------------------------------------------------------------------------------------
# EM


def _e_step(x: Array, params: GMMParams) -> tuple[Array, Array]:
    """``(log_resp (k, n), log p(x) (n,))`` for ``(n, d)`` data, in ``(k, n)`` layout."""
    joint = component_log_densities_kn(x, params) + params.log_weights[:, None]
    log_p = _logsumexp_rows(joint)
    return joint - log_p, log_p


def _logsumexp_rows(a: Float[Array, "k n"]) -> Float[Array, " n"]:
    """``logsumexp(a, axis=0)`` for a short leading axis, as ``k`` elementwise row operations.

    XLA on CPU reduces over a short leading axis roughly 10-30x slower than it adds rows
    elementwise, and this reduction was most of the E-step. The maximum is subtracted first, so
    it is as stable as ``logsumexp``; ``a`` is finite here (log-densities of finite parameters).
    """
    top = a[0]
    for row in range(1, a.shape[0]):
        top = jnp.maximum(top, a[row])
    total = jnp.exp(a[0] - top)
    for row in range(1, a.shape[0]):
        total = total + jnp.exp(a[row] - top)
    return top + jnp.log(total)


def e_step(x: Float[ArrayLike, "n d"], params: GMMParams) -> Float[Array, "n k"]:
    """E-step: log responsibilities ``log γ_ij = log φ_j + log N(x_i; μ_j, Σ_j) - log p(x_i)``.

    Broadcasts over leading axes of ``x``.

    Args:
        x: ``(n, d)`` data.
        params: current parameters.

    Returns:
        ``(n, k)`` log responsibilities (each row ``logsumexp``-s to 0).
    """
    k, d = check_params(params)
    x = float_array(x, "x")
    check_x(x, d, batched=True)
    dtype = dtype_of(x, *params)
    lead = x.shape[:-1]
    log_resp = _e_step(x.astype(dtype).reshape(-1, d), cast_params(params, dtype))[0]
    return log_resp.T.reshape(*lead, k)


def m_step(
    x: Float[ArrayLike, "n d"], log_resp: Float[ArrayLike, "n k"], *, reg_covar: float = 1e-6
) -> GMMParams:
    """M-step: weighted maximum-likelihood parameters given responsibilities ``γ = exp(log_resp)``.

    .. math::
        N_j = \\textstyle\\sum_i γ_{ij} + 10\\epsilon, \\quad φ_j = N_j / \\sum_l N_l, \\quad
        μ_j = \\tfrac{1}{N_j} \\sum_i γ_{ij} x_i, \\quad
        Σ_j = \\tfrac{1}{N_j} \\sum_i γ_{ij} (x_i - μ_j)(x_i - μ_j)^T + \\text{reg\\_covar}\\, I.

    The ``10ε`` (machine epsilon, as in scikit-learn) keeps an empty component finite; its
    covariance is then ``reg_covar · I``, so keep ``reg_covar > 0`` unless every component is
    guaranteed data.

    All sums come from one matrix product ``γᵀ F`` with the per-sample features
    ``F = [1, x - x̄, (x - x̄)(x - x̄)ᵀ]`` (unique entries), and
    ``Σ_j = E_γ[(x - x̄)(x - x̄)ᵀ] - (μ_j - x̄)(μ_j - x̄)ᵀ``. Centring on the data mean ``x̄`` keeps
    the subtraction benign: it costs about ``log10(max_j (1 + |μ_j - x̄|²/σ_j²))`` digits —
    nothing that matters in float64 (scikit-learn agrees to ~1e-12), about 1-2 of float32's 7
    digits for well-separated clusters.

    Args:
        x: ``(n, d)`` data.
        log_resp: ``(n, k)`` log responsibilities.
        reg_covar: non-negative ridge added to every covariance diagonal.

    Returns:
        The new :class:`GMMParams` in the common dtype of ``x`` and ``log_resp``.
    """
    x = float_array(x, "x")
    log_resp = float_array(log_resp, "log_resp")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    if log_resp.ndim != 2 or log_resp.shape[0] != x.shape[0]:
        raise ValueError(f"log_resp must have shape (n, k) with n = {x.shape[0]}, got {log_resp.shape}")
    check_nonneg(reg_covar, "reg_covar")
    dtype = dtype_of(x, log_resp)
    return _m_step(x.astype(dtype), log_resp.astype(dtype).T, reg_covar)


def _moment_features(x: Array) -> tuple[Array, Array]:
    """``(x̄, F)`` with ``F = [1 | x - x̄ | (x - x̄)_a (x - x̄)_b for a <= b]``, shape ``(n, 1 + d + d(d+1)/2)``.

    The data does not change during EM, so :func:`fit` builds ``F`` once and every M-step is then
    one ``(k, n) @ (n, 1 + d + d(d+1)/2)`` product.
    """
    d = x.shape[-1]
    xbar = jnp.mean(x, axis=0)
    xc = x - xbar
    rows, cols = np.triu_indices(d)
    feats = jnp.concatenate([jnp.ones_like(xc[:, :1]), xc, xc[:, rows] * xc[:, cols]], axis=1)
    return xbar, feats


def _m_step(x: Array, log_resp: Array, reg_covar, features: tuple[Array, Array] | None = None) -> GMMParams:
    """M-step from ``(k, n)`` log responsibilities via the moments of the data about its mean."""
    d = x.shape[-1]
    dtype = x.dtype
    xbar, feats = _moment_features(x) if features is None else features
    resp = jnp.exp(log_resp)
    stats = resp @ feats  # (k, 1 + d + d(d+1)/2): N_j, Σ γ (x - x̄), Σ γ (x - x̄)(x - x̄)ᵀ
    nk = stats[:, 0] + 10 * jnp.finfo(dtype).eps
    shift = stats[:, 1 : 1 + d] / nk[:, None]  # μ_j - x̄
    pos = np.zeros((d, d), dtype=np.int64)  # column of F holding (x - x̄)_a (x - x̄)_b
    rows, cols = np.triu_indices(d)
    pos[rows, cols] = pos[cols, rows] = 1 + d + np.arange(rows.size)
    second = stats[:, pos]  # (k, d, d), symmetric by construction (a gather, no scatter)
    cov = second / nk[:, None, None] - shift[:, :, None] * shift[:, None, :]
    cov = cov + jnp.asarray(reg_covar, dtype) * jnp.eye(d, dtype=dtype)
    scale_tril = cholesky_unrolled(cov)
    log_weights = jnp.log(nk) - jnp.log(jnp.sum(nk))
    return GMMParams(log_weights, xbar + shift, scale_tril)


def em_step(x: Float[ArrayLike, "n d"], params: GMMParams, *, reg_covar: float = 1e-6) -> GMMParams:
    """One EM update: ``m_step(x, e_step(x, params))``.

    Args:
        x: ``(n, d)`` data.
        params: current parameters.
        reg_covar: non-negative ridge added to every covariance diagonal.

    Returns:
        The updated parameters (never lower mean log-likelihood, up to ``reg_covar``).
    """
    return m_step(x, e_step(x, params), reg_covar=reg_covar)


def fit(
    x: Float[ArrayLike, "n d"],
    init_params: GMMParams,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    floor: float = 0.0,
) -> tuple[GMMParams, EMInfo]:
    """Fit a GMM by EM inside ``lax.while_loop``.

    Starting at ``init_params`` with objective ``ℓ_0 = mean_i log(p(x_i) + floor)``, each update
    does an M-step on the current responsibilities, then an E-step at the new parameters, which
    gives ``ℓ_t`` and the next responsibilities (one E-step per update). The loop stops after
    update ``t`` when ``|ℓ_t - ℓ_{t-1}| < tol`` (converged) or ``t = max_iter``. This is the book's
    loop. scikit-learn's ``GaussianMixture(tol=tol)`` applies the same test with ``floor = 0``
    but does one more M-step after it (its ``n_iter_`` is ours + 1 and its ``lower_bound_`` is our
    final ``ℓ``).

    Args:
        x: ``(n, d)`` data.
        init_params: initial parameters (cast to the dtype of ``x``).
        tol: non-negative convergence threshold on the change of the objective; 0 runs
            ``max_iter`` updates.
        max_iter: (static) maximum number of updates, >= 1; sets the trace length.
        reg_covar: non-negative ridge added to every covariance diagonal.
        floor: (static) the objective's floor (see :func:`mean_log_likelihood`); only the
            stopping test and ``log_likelihood_trace`` depend on it, not the updates.

    Returns:
        ``(params, info)``: the parameters after the last update and an :class:`EMInfo`.
    """
    k, d = check_params(init_params)
    x = float_array(x, "x")
    check_x(x, d, batched=False)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1 (static), got {max_iter!r}")
    check_nonneg(tol, "tol")
    check_nonneg(reg_covar, "reg_covar")
    check_nonneg(floor, "floor")
    if x.shape[0] < k:
        raise ValueError(
            f"k = {k} components need at least k samples, got n = {x.shape[0]}; use fewer components"
        )
    params = cast_params(init_params, x.dtype)
    return fit_unchecked(x, params, tol=tol, max_iter=max_iter, reg_covar=reg_covar, floor=floor)


def fit_unchecked(x, params, *, tol, max_iter, reg_covar, floor):
    """The ``lax.while_loop`` of :func:`fit` on checked, same-dtype arguments (also vmapped by
    :func:`dlx_jax.mixture.fit_restarts`)."""
    dtype = x.dtype
    features = _moment_features(x)
    log_resp, log_p = _e_step(x, params)
    exact = jnp.mean(log_p)
    obj = jnp.mean(floored(log_p, floor))
    nan_trace = jnp.full((max_iter + 1,), jnp.nan, dtype)
    trace = nan_trace.at[0].set(obj)
    exact_trace = nan_trace.at[0].set(exact)
    tol = jnp.asarray(tol, dtype)

    def cond(state):
        t, _, _, _, _, _, converged = state
        return (t < max_iter) & ~converged

    def body(state):
        t, params, log_resp, prev, trace, exact_trace, _ = state
        params = _m_step(x, log_resp, reg_covar, features)
        log_resp, log_p = _e_step(x, params)
        obj = jnp.mean(floored(log_p, floor))
        t = t + 1
        at_t = jnp.arange(max_iter + 1) == t  # a select, not a scatter: cheap under vmap
        trace = jnp.where(at_t, obj, trace)
        exact_trace = jnp.where(at_t, jnp.mean(log_p), exact_trace)
        return t, params, log_resp, obj, trace, exact_trace, jnp.abs(obj - prev) < tol

    state = (jnp.asarray(0, jnp.int32), params, log_resp, obj, trace, exact_trace, jnp.asarray(False))
    t, params, _, _, trace, exact_trace, converged = lax.while_loop(cond, body, state)
    return params, EMInfo(trace, exact_trace, t, converged)
