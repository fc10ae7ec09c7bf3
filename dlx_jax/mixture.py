"""Gaussian mixture models and EM (book steps 4-5), as pure functions.

A ``k``-component GMM in ``d`` dimensions has density

.. math::  p(x) = \\sum_{j=1}^k \\phi_j \\, \\mathcal N(x; \\mu_j, \\Sigma_j).

Parameters are stored as :class:`GMMParams` — log-weights, means and the lower Cholesky factors
``L_j`` of the covariances (``Σ_j = L_j L_jᵀ``) — so that every density is computed in log space
with one triangular inverse per component and a single matrix product for all components and
samples:

.. math::  \\log \\mathcal N(x; \\mu_j, \\Sigma_j) = -\\tfrac12 \\lVert L_j^{-1}(x - \\mu_j) \\rVert^2
           - \\textstyle\\sum_i \\log (L_j)_{ii} - \\tfrac d2 \\log 2\\pi.

EM (:func:`e_step`, :func:`m_step`, :func:`em_step`, :func:`fit`) follows the book and
``sklearn.mixture.GaussianMixture(covariance_type="full")``; :func:`fit` iterates inside
``lax.while_loop`` and :func:`fit_restarts` fits ``n_init`` random initialisations in one compiled
call with ``vmap``.

Validation: shapes and ranks are checked at trace time. Value checks (NaN in the data, weights
that do not sum to one, covariances that are not symmetric positive definite, ``k > n``) need
concrete arrays: they run when the input is not a ``jax.core.Tracer`` (eager calls, and the
arguments of a jitted function *before* it is jitted, e.g. in the experiment layer) and are
skipped under ``jit``/``vmap``.

Every function preserves the floating dtype of its inputs (float32 in, float32 out; float64 in,
float64 out). Functions are undecorated: the caller jits them (``max_iter``, ``n``, ``k``,
``n_init``, ``method`` and ``floor`` are static).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from dlx_jax._linalg import UNROLL_MAX_D, cholesky_unrolled, precision_cholesky

__all__ = [
    "EMInfo",
    "GMMParams",
    "Restarts",
    "component_log_densities",
    "e_step",
    "em_step",
    "fit",
    "fit_restarts",
    "gmm_logpdf",
    "gmm_params_from_covariances",
    "init_params",
    "m_step",
    "mean_log_likelihood",
    "sample_gmm",
]

INIT_METHODS = ("random_from_data", "kmeans++")


class GMMParams(NamedTuple):
    """Parameters of a full-covariance Gaussian mixture (a pytree).

    Attributes:
        log_weights: ``(k,)`` log mixing weights ``log φ_j`` (``logsumexp`` = 0).
        means: ``(k, d)`` component means ``μ_j``.
        scale_tril: ``(k, d, d)`` lower Cholesky factors ``L_j`` with ``Σ_j = L_j L_jᵀ``.
    """

    log_weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    scale_tril: Float[Array, "k d d"]

    @property
    def weights(self) -> Float[Array, " k"]:
        """Mixing weights ``φ = exp(log_weights)``."""
        return jnp.exp(self.log_weights)

    @property
    def covariances(self) -> Float[Array, "k d d"]:
        """Covariance matrices ``Σ_j = L_j L_jᵀ``."""
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)


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


class Restarts(NamedTuple):
    """Every restart of :func:`fit_restarts` (leading axis ``n_init``) and the winner's index.

    Attributes:
        params: :class:`GMMParams` with a leading ``n_init`` axis: each restart's fitted params.
        init: :class:`GMMParams` with a leading ``n_init`` axis: each restart's initial params.
        info: :class:`EMInfo` with a leading ``n_init`` axis.
        final_log_likelihood: ``(n_init,)`` exact mean log-likelihood of each fitted model
            (``-inf`` where a restart produced NaN).
        best: index of the restart with the highest ``final_log_likelihood``.
    """

    params: GMMParams
    init: GMMParams
    info: EMInfo
    final_log_likelihood: Float[Array, " r"]
    best: Int[Array, ""]


# --------------------------------------------------------------------------------------------
# validation helpers


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _float_array(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_params(params: GMMParams) -> tuple[int, int]:
    """Check ranks and shapes of ``params``; return ``(k, d)``."""
    if not isinstance(params, GMMParams):
        raise ValueError(
            f"params must be a GMMParams, got {type(params).__name__}; "
            "build one with gmm_params_from_covariances(weights, means, covariances)"
        )
    lw, mu, tril = (jnp.shape(a) for a in params)
    if len(mu) != 2:
        raise ValueError(f"params.means must have shape (k, d), got {mu}; pass one mean row per component")
    k, d = mu
    if lw != (k,):
        raise ValueError(f"params.log_weights must have shape (k,) = ({k},), got {lw}")
    if tril != (k, d, d):
        raise ValueError(f"params.scale_tril must have shape (k, d, d) = ({k}, {d}, {d}), got {tril}")
    return k, d


def _check_x(x: Array, d: int, *, batched: bool, name: str = "x") -> None:
    """Check that ``x`` is ``(n, d)`` (or ``(..., d)`` when ``batched``) and NaN-free if concrete."""
    if batched:
        if x.ndim < 1 or x.shape[-1] != d:
            raise ValueError(
                f"{name} must have shape (..., d) with d = {d} to match the params, got {x.shape}"
            )
    elif x.ndim != 2 or x.shape[-1] != d:
        raise ValueError(
            f"{name} must have shape (n, d) with d = {d}, got {x.shape}; reshape it to one row per sample"
        )
    if _is_concrete(x) and x.size and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them before fitting")


def _check_nonneg(value, name: str) -> None:
    if _is_concrete(value) and not float(value) >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _dtype_of(*arrays) -> jnp.dtype:
    return jnp.result_type(*[jnp.asarray(a).dtype for a in arrays])


def _cast_params(params: GMMParams, dtype) -> GMMParams:
    return GMMParams(*(jnp.asarray(a, dtype) for a in params))


# --------------------------------------------------------------------------------------------
# parameters and densities


def gmm_params_from_covariances(
    weights: Float[ArrayLike, " k"],
    means: Float[ArrayLike, "k d"],
    covariances: Float[ArrayLike, "k d d"],
) -> GMMParams:
    """Build :class:`GMMParams` from weights, means and covariance matrices.

    ``log_weights = log φ`` and ``scale_tril = cholesky(Σ)``.

    Args:
        weights: ``(k,)`` non-negative mixing weights summing to one.
        means: ``(k, d)`` component means.
        covariances: ``(k, d, d)`` symmetric positive-definite covariance matrices.

    Returns:
        The parameters, in the common floating dtype of the inputs.

    Raises:
        ValueError: wrong shapes; and, for concrete inputs, weights that are negative or do not
            sum to one, or a covariance that is not symmetric positive definite.
    """
    dtype = _dtype_of(
        _float_array(weights, "weights"),
        _float_array(means, "means"),
        _float_array(covariances, "covariances"),
    )
    weights, means, covariances = (jnp.asarray(a, dtype) for a in (weights, means, covariances))
    if means.ndim != 2:
        raise ValueError(f"means must have shape (k, d), got {means.shape}")
    k, d = means.shape
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape (k,) = ({k},) to match means, got {weights.shape}")
    if covariances.shape != (k, d, d):
        raise ValueError(f"covariances must have shape (k, d, d) = ({k}, {d}, {d}), got {covariances.shape}")
    if _is_concrete(weights, covariances):
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"weights must be >= 0 and sum to 1, got {w.tolist()} (sum {w.sum()}); normalise them"
            )
        c = np.asarray(covariances, dtype=np.float64)
        if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=1e-5, atol=1e-8 * max(1.0, np.abs(c).max())):
            raise ValueError("covariances must be symmetric; pass (S + S^T) / 2")
    scale_tril = jnp.linalg.cholesky(covariances)
    if _is_concrete(scale_tril) and not np.all(np.isfinite(np.asarray(scale_tril))):
        bad = np.nonzero(~np.isfinite(np.asarray(scale_tril)).all(axis=(-1, -2)))[0].tolist()
        raise ValueError(
            f"covariance(s) {bad} are not symmetric positive definite (Cholesky failed); "
            "add a small ridge to the diagonal (reg_covar) or check the matrix"
        )
    with np.errstate(divide="ignore"):
        log_weights = jnp.log(weights)
    return GMMParams(log_weights, means, scale_tril)


def component_log_densities(x: Float[ArrayLike, "*n d"], params: GMMParams) -> Float[Array, "*n k"]:
    """Log-densities ``log N(x; μ_j, Σ_j)`` of every component, broadcast over leading axes of ``x``.

    With ``U_j = L_j^{-T}`` (upper triangular, ``Σ_j^{-1} = U_j U_jᵀ``; one triangular solve per
    component) and ``y_j = (x - μ_j) U_j``,

    .. math:: \\log \\mathcal N(x; \\mu_j, \\Sigma_j) = -\\tfrac12 \\lVert y_j \\rVert^2
              - \\textstyle\\sum_i \\log (L_j)_{ii} - \\tfrac d2 \\log 2\\pi.

    For ``d <= UNROLL_MAX_D`` the ``d(d+1)/2`` products of ``y`` are written out so XLA fuses the
    whole computation into one pass over ``x`` for all components (no ``(n, k, d)`` intermediate);
    for larger ``d`` one batched product. Both subtract the mean before multiplying (no
    cancellation).

    Args:
        x: ``(..., d)`` points.
        params: the mixture (only means and scale_tril are used).

    Returns:
        ``(..., k)`` log-densities in the common dtype of ``x`` and ``params``.
    """
    k, d = _check_params(params)
    x = _float_array(x, "x")
    _check_x(x, d, batched=True)
    dtype = _dtype_of(x, *params)
    lead = x.shape[:-1]
    out = _component_log_densities_kn(x.astype(dtype).reshape(-1, d), _cast_params(params, dtype))
    return out.T.reshape(*lead, k)


def _component_log_densities_kn(x: Float[Array, "n d"], params: GMMParams) -> Float[Array, "k n"]:
    """Component log-densities in ``(k, n)`` layout (samples on the fast axis: vectorises well,
    also under ``vmap`` over restarts)."""
    k, d = params.means.shape
    means, tril = params.means, params.scale_tril
    prec = precision_cholesky(tril)  # (k, d, d) = U_j, upper triangular
    if d <= UNROLL_MAX_D:
        xt = x.T  # (d, n)
        dev = [xt[i][None, :] - means[:, i, None] for i in range(d)]  # d arrays of shape (k, n)
        maha = jnp.zeros((k, x.shape[0]), x.dtype)
        for j in range(d):
            y = dev[0] * prec[:, 0, j, None]
            for i in range(1, j + 1):
                y = y + dev[i] * prec[:, i, j, None]
            maha = maha + y * y
    else:
        y = jnp.einsum("knd,kde->kne", x[None, :, :] - means[:, None, :], prec)  # (k, n, d)
        maha = jnp.sum(y * y, axis=-1)
    half_log_det = jnp.sum(jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * (maha + d * math.log(2 * math.pi)) - half_log_det[:, None]


def gmm_logpdf(x: Float[ArrayLike, "*n d"], params: GMMParams) -> Float[Array, "*n"]:
    """Mixture log-density ``log p(x) = logsumexp_j (log φ_j + log N(x; μ_j, Σ_j))``.

    Broadcasts over the leading axes of ``x``.

    Args:
        x: ``(..., d)`` points.
        params: the mixture.

    Returns:
        ``(...)`` log-densities in the common dtype of ``x`` and ``params``.
    """
    comp = component_log_densities(x, params)
    return logsumexp(comp + params.log_weights.astype(comp.dtype), axis=-1)


def mean_log_likelihood(
    x: Float[ArrayLike, "n d"], params: GMMParams, *, floor: float = 0.0
) -> Float[Array, ""]:
    """Mean log-likelihood ``(1/n) Σ_i log(p(x_i) + floor)``.

    ``floor = 0`` (the default) is the exact mean log-likelihood, the quantity EM increases.
    ``floor > 0`` reproduces the book's objective ``np.mean(np.log(p + 1e-8))``, computed stably
    as ``logaddexp(log p, log floor)`` so it is exact even where ``p`` underflows.

    Args:
        x: ``(n, d)`` data (any leading axes are averaged together).
        params: the mixture.
        floor: (static) non-negative constant added to the density inside the log.

    Returns:
        A scalar in the common dtype of ``x`` and ``params``.
    """
    _check_nonneg(floor, "floor")
    return jnp.mean(_floored(gmm_logpdf(x, params), floor))


def _floored(log_p: Array, floor: float) -> Array:
    if floor == 0:
        return log_p
    return jnp.logaddexp(log_p, jnp.asarray(math.log(floor), log_p.dtype))


def sample_gmm(
    key: PRNGKeyArray, params: GMMParams, *, n: int
) -> tuple[Float[Array, "n d"], Int[Array, " n"]]:
    """Ancestral sampling: ``z ~ Categorical(φ)``, then ``x = μ_z + L_z ε`` with ``ε ~ N(0, I)``.

    Args:
        key: PRNG key.
        params: the mixture.
        n: (static) number of samples.

    Returns:
        ``(samples, labels)``: ``(n, d)`` samples in the dtype of ``params.means`` and the
        ``(n,)`` component index each sample was drawn from.
    """
    k, d = _check_params(params)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (static), got {n!r}")
    key_z, key_eps = jax.random.split(key)
    dtype = params.means.dtype
    labels = jax.random.categorical(key_z, params.log_weights, shape=(n,))
    eps = jax.random.normal(key_eps, (n, d), dtype=dtype)
    samples = params.means[labels] + jnp.einsum("nde,ne->nd", params.scale_tril[labels].astype(dtype), eps)
    return samples, labels


# --------------------------------------------------------------------------------------------
# EM


def _e_step(x: Array, params: GMMParams) -> tuple[Array, Array]:
    """``(log_resp (k, n), log p(x) (n,))`` for ``(n, d)`` data, in ``(k, n)`` layout."""
    joint = _component_log_densities_kn(x, params) + params.log_weights[:, None]
    log_p = logsumexp(joint, axis=0)
    return joint - log_p, log_p


def e_step(x: Float[ArrayLike, "n d"], params: GMMParams) -> Float[Array, "n k"]:
    """E-step: log responsibilities ``log γ_ij = log φ_j + log N(x_i; μ_j, Σ_j) - log p(x_i)``.

    Broadcasts over leading axes of ``x``.

    Args:
        x: ``(n, d)`` data.
        params: current parameters.

    Returns:
        ``(n, k)`` log responsibilities (each row ``logsumexp``-s to 0).
    """
    k, d = _check_params(params)
    x = _float_array(x, "x")
    _check_x(x, d, batched=True)
    dtype = _dtype_of(x, *params)
    lead = x.shape[:-1]
    log_resp = _e_step(x.astype(dtype).reshape(-1, d), _cast_params(params, dtype))[0]
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
    x = _float_array(x, "x")
    log_resp = _float_array(log_resp, "log_resp")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    if log_resp.ndim != 2 or log_resp.shape[0] != x.shape[0]:
        raise ValueError(f"log_resp must have shape (n, k) with n = {x.shape[0]}, got {log_resp.shape}")
    _check_nonneg(reg_covar, "reg_covar")
    dtype = _dtype_of(x, log_resp)
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
    k, d = _check_params(init_params)
    x = _float_array(x, "x")
    _check_x(x, d, batched=False)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1 (static), got {max_iter!r}")
    _check_nonneg(tol, "tol")
    _check_nonneg(reg_covar, "reg_covar")
    _check_nonneg(floor, "floor")
    if x.shape[0] < k:
        raise ValueError(
            f"k = {k} components need at least k samples, got n = {x.shape[0]}; use fewer components"
        )
    params = _cast_params(init_params, x.dtype)
    return _fit(x, params, tol=tol, max_iter=max_iter, reg_covar=reg_covar, floor=floor)


def _fit(x, params, *, tol, max_iter, reg_covar, floor):
    dtype = x.dtype
    features = _moment_features(x)
    log_resp, log_p = _e_step(x, params)
    exact = jnp.mean(log_p)
    obj = jnp.mean(_floored(log_p, floor))
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
        obj = jnp.mean(_floored(log_p, floor))
        t = t + 1
        at_t = jnp.arange(max_iter + 1) == t  # a select, not a scatter: cheap under vmap
        trace = jnp.where(at_t, obj, trace)
        exact_trace = jnp.where(at_t, jnp.mean(log_p), exact_trace)
        return t, params, log_resp, obj, trace, exact_trace, jnp.abs(obj - prev) < tol

    state = (jnp.asarray(0, jnp.int32), params, log_resp, obj, trace, exact_trace, jnp.asarray(False))
    t, params, _, _, trace, exact_trace, converged = lax.while_loop(cond, body, state)
    return params, EMInfo(trace, exact_trace, t, converged)


# --------------------------------------------------------------------------------------------
# initialisation and restarts


def _data_covariance(x: Array, reg_covar) -> Array:
    n, d = x.shape
    xc = x - jnp.mean(x, axis=0)
    return xc.T @ xc / n + jnp.asarray(reg_covar, x.dtype) * jnp.eye(d, dtype=x.dtype)


def init_params(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n d"],
    *,
    k: int,
    method: str = "random_from_data",
    reg_covar: float = 1e-6,
) -> GMMParams:
    """A random initialisation: uniform weights, every covariance = the data covariance.

    Means are ``k`` distinct data points drawn uniformly (``"random_from_data"``, like
    scikit-learn's ``init_params="random_from_data"``) or by k-means++ seeding (``"kmeans++"``:
    each next mean is a data point drawn with probability proportional to its squared distance to
    the nearest mean chosen so far).

    Args:
        key: PRNG key.
        x: ``(n, d)`` data.
        k: (static) number of components, ``1 <= k <= n``.
        method: (static) ``"random_from_data"`` or ``"kmeans++"``.
        reg_covar: non-negative ridge added to the covariance diagonal.

    Returns:
        :class:`GMMParams` in the dtype of ``x``.
    """
    x = _float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    _check_x(x, x.shape[1], batched=False)
    n, d = x.shape
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int with 1 <= k <= n = {n}, got {k!r}; use fewer components")
    if method not in INIT_METHODS:
        raise ValueError(f"method must be one of {INIT_METHODS}, got {method!r}")
    _check_nonneg(reg_covar, "reg_covar")
    if method == "random_from_data":
        idx = jax.random.choice(key, n, (k,), replace=False)
        means = x[idx]
    else:
        means = _kmeanspp(key, x, k)
    cov = _data_covariance(x, reg_covar)
    tril = jnp.broadcast_to(jnp.linalg.cholesky(cov), (k, d, d))
    log_weights = jnp.full((k,), -math.log(k), x.dtype)
    return GMMParams(log_weights, means, tril)


def _kmeanspp(key, x, k):
    n, d = x.shape
    keys = jax.random.split(key, k)
    first = x[jax.random.randint(keys[0], (), 0, n)]
    means = jnp.zeros((k, d), x.dtype).at[0].set(first)
    dist = jnp.sum((x - first) ** 2, axis=-1)

    def body(j, carry):
        means, dist = carry
        # probability ∝ squared distance; uniform if every point coincides with a mean
        logits = jnp.where(jnp.sum(dist) > 0, jnp.log(dist), jnp.zeros_like(dist))
        new = x[jax.random.categorical(keys[j], logits)]
        return means.at[j].set(new), jnp.minimum(dist, jnp.sum((x - new) ** 2, axis=-1))

    means, _ = lax.fori_loop(1, k, body, (means, dist))
    return means


def fit_restarts(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n d"],
    *,
    k: int,
    n_init: int,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    floor: float = 0.0,
    method: str = "random_from_data",
) -> tuple[GMMParams, Restarts]:
    """Fit ``n_init`` random initialisations in one ``vmap``-ed EM and keep the best.

    Restart ``i`` starts from ``init_params(jax.random.fold_in(key, i), x, k=k, method=method)``
    and runs :func:`fit`; under ``vmap`` the while loop runs until every restart has stopped,
    finished restarts are frozen, so each restart's result equals its own single :func:`fit`.
    The best restart has the highest exact final mean log-likelihood.

    Args:
        key: PRNG key.
        x: ``(n, d)`` data.
        k: (static) number of components.
        n_init: (static) number of restarts, >= 1.
        tol: convergence threshold (see :func:`fit`).
        max_iter: (static) maximum updates per restart.
        reg_covar: ridge on covariance diagonals (used for the initial covariances too).
        floor: (static) objective floor (see :func:`mean_log_likelihood`).
        method: (static) initialisation method of :func:`init_params`.

    Returns:
        ``(best_params, restarts)``: the winning parameters and a :class:`Restarts` record.
    """
    x = _float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    if not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be an int >= 1 (static), got {n_init!r}")
    # validate once, eagerly where possible (k, shapes, NaN, tol, ...)
    probe = init_params(key, x, k=k, method=method, reg_covar=reg_covar)
    _check_params(probe)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1 (static), got {max_iter!r}")
    _check_nonneg(tol, "tol")
    _check_nonneg(floor, "floor")

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_init))
    inits = jax.vmap(lambda kk: init_params(kk, x, k=k, method=method, reg_covar=reg_covar))(keys)
    params, info = jax.vmap(
        lambda p: _fit(x, p, tol=tol, max_iter=max_iter, reg_covar=reg_covar, floor=floor)
    )(inits)
    final = info.exact_log_likelihood_trace[jnp.arange(n_init), info.n_iter]
    final = jnp.where(jnp.isnan(final), -jnp.inf, final)
    best = jnp.argmax(final)
    best_params = jax.tree.map(lambda a: a[best], params)
    return best_params, Restarts(params, inits, info, final, best)
