"""EM for Gaussian mixtures: E-step, M-step and the ``lax.while_loop`` fit (see :mod:`dlx_jax.mixture`)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dlx_jax._checks import check_positive_int, is_concrete, require
from dlx_jax._linalg import UNROLL_MAX_D, cholesky_unrolled
from dlx_jax.mixture._model import (
    GMMParams,
    cast_params,
    check_nonneg,
    check_param_values,
    check_params,
    check_x,
    component_log_densities_kn,
    dtype_of,
    float_array,
    floored,
)

# The moment formula Σ_j = E_γ[(x - x̄)(x - x̄)ᵀ] - (μ_j - x̄)(μ_j - x̄)ᵀ cancels: its rounding error
# is a few machine epsilons of E_γ[(x - x̄)²] per entry (more for long sums). A covariance is
# trusted only while every Cholesky pivot (the variance of feature i given the features before it)
# exceeds this many epsilons of E_γ[(x_i - x̄_i)²]; below that (a component collapsed onto
# duplicate points far from x̄, or onto a line) the M-step recomputes the covariances centred on the
# new means, as scikit-learn always does.
_MOMENT_RESOLUTION_EPS = 1e4
# The centred covariances are still only known to a few epsilons of their own size: a component
# stretched along a line (e.g. a cluster plus one far outlier) has a smallest eigenvalue below that
# resolution, and a ridge of reg_covar = 1e-6 can be smaller than float32 rounding of entries ~30.
# The fallback therefore adds this many epsilons of d * trace(Σ_j) to the diagonal as well when
# reg_covar > 0 (~1e-15 relative in float64); reg_covar = 0 means no ridge at all, so a singular
# covariance is then reported (check_fitted) rather than regularised.
_CENTRED_JITTER_EPS = 4.0
# With reg_covar = 0 a component is singular to working precision, and reported as such, when a
# standard deviation (Cholesky pivot) is within this many epsilons of the largest |mean| (a
# collapse onto identical points) or a conditional variance within this many epsilons of the
# component's largest variance (a collapse onto a line or plane).
_SINGULAR_ULPS = 100.0


def singular_covariance_message(reg_covar, what: str, cause: str | None = None) -> str:
    """The one wording of "a covariance became singular", naming ``reg_covar`` and its fix."""
    got = f"reg_covar={float(reg_covar):g}" if is_concrete(reg_covar) else "this reg_covar"
    cause = cause or (
        "a covariance became singular (a component collapsed onto duplicate points or onto fewer "
        "than d + 1 points)"
    )
    return (
        f"{what} with {got}: {cause}; increase reg_covar, e.g. reg_covar=1e-6 (more for data on a "
        "large scale), or use fewer components"
    )


def check_fitted(params: GMMParams, reg_covar, what: str) -> None:
    """EM results must be finite with positive Cholesky diagonals. Concrete: raise ``ValueError``
    naming ``reg_covar``; traced: a ``dlx_jax.checked``-mode check (plain ``jit`` returns NaN)."""
    message = singular_covariance_message(reg_covar, what)
    for arr in params:
        require(lambda xp, a: xp.all(xp.isfinite(a)), arr, message)
    require(lambda xp, a: xp.all(xp.diagonal(a, 0, -2, -1) > 0), params.scale_tril, message)
    # Without a ridge, a covariance that is singular in exact arithmetic (a component collapsed onto
    # identical or collinear points) comes out of float rounding as a tiny, possibly positive-definite
    # matrix: scikit-learn's Cholesky fails there, ours may not. Report it as singular.
    if is_concrete(reg_covar, *params):
        if float(reg_covar) == 0 and _singular(np, params.means, params.scale_tril):
            raise ValueError(message)
    else:
        singular = _singular(jnp, params.means, params.scale_tril)
        checkify.debug_check(~(singular & (jnp.asarray(reg_covar) == 0)), message)


def _singular(xp, means, tril):
    """Some covariance is singular to working precision: a standard deviation (Cholesky pivot) below
    ``_SINGULAR_ULPS`` epsilons of the largest ``|mean|``, or a variance below that many epsilons of
    the component's largest variance."""
    eps = xp.finfo(tril.dtype).eps
    pivots = xp.diagonal(tril, 0, -2, -1)
    largest = xp.max(xp.sum(tril * tril, axis=-1), axis=-1, keepdims=True)  # max_i Σ_ii per component
    tiny_sd = pivots <= _SINGULAR_ULPS * eps * xp.max(xp.abs(means))
    tiny_var = pivots * pivots <= _SINGULAR_ULPS * eps * largest
    return bool(xp.any(tiny_sd | tiny_var)) if xp is np else xp.any(tiny_sd | tiny_var)


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

    Raises:
        ValueError: shapes, or (concrete) non-finite data or parameters.
    """
    k, d = check_params(params)
    check_param_values(params)
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

    Raises:
        ValueError: shapes, a negative or non-finite ``reg_covar``, (concrete) non-finite ``x``
            or NaN in ``log_resp``; and, for concrete inputs, a singular covariance in the result
            (``reg_covar`` too small; under ``jit`` the result is NaN instead).
    """
    x = float_array(x, "x")
    log_resp = float_array(log_resp, "log_resp")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    if log_resp.ndim != 2 or log_resp.shape[0] != x.shape[0] or log_resp.shape[1] < 1:
        raise ValueError(
            f"log_resp must have shape (n, k) with n = {x.shape[0]} and k >= 1, got {log_resp.shape}; "
            "pass the output of e_step(x, params)"
        )
    check_x(x, x.shape[1], batched=False)
    require(
        lambda xp, a: ~xp.any(xp.isnan(a)),
        log_resp,
        "log_resp contains NaN; pass the output of e_step(x, params) for finite parameters",
    )
    check_nonneg(reg_covar, "reg_covar")
    dtype = dtype_of(x, log_resp)
    params = _m_step(x.astype(dtype), log_resp.astype(dtype).T, reg_covar)
    check_fitted(params, reg_covar, "the M-step produced non-finite parameters")
    return params


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


def _m_step(
    x: Array,
    log_resp: Array,
    reg_covar,
    features: tuple[Array, Array] | None = None,
    axis_name: str | None = None,
) -> GMMParams:
    """M-step from ``(k, n)`` log responsibilities via the moments of the data about its mean.

    When the moment formula has lost its digits (a Cholesky pivot below ``_MOMENT_RESOLUTION_EPS``
    epsilons of the second moment about ``x̄``, or a failed Cholesky) the covariances are
    recomputed centred on the new means (:func:`_centred_covariances`) inside ``lax.cond``: that
    branch runs only when needed, so well-behaved fits pay one comparison. Under ``vmap`` a
    batched predicate would turn ``cond`` into a select that always computes both; with
    ``axis_name`` (the vmapped axis, as in ``fit_restarts``) the predicate is reduced over the
    batch instead, and each member still takes exactly the covariances its own fit would.
    """
    d = x.shape[-1]
    dtype = x.dtype
    xbar, feats = _moment_features(x) if features is None else features
    resp = jnp.exp(log_resp)
    stats = resp @ feats  # (k, 1 + d + d(d+1)/2): N_j, Σ γ (x - x̄), Σ γ (x - x̄)(x - x̄)ᵀ
    nk = stats[:, 0] + 10 * jnp.finfo(dtype).eps
    shift = stats[:, 1 : 1 + d] / nk[:, None]  # μ_j - x̄
    means = xbar + shift
    pos = np.zeros((d, d), dtype=np.int64)  # column of F holding (x - x̄)_a (x - x̄)_b
    rows, cols = np.triu_indices(d)
    pos[rows, cols] = pos[cols, rows] = 1 + d + np.arange(rows.size)
    second = stats[:, pos] / nk[:, None, None]  # (k, d, d), symmetric by construction (a gather)
    cov = second - shift[:, :, None] * shift[:, None, :]
    ridge = jnp.asarray(reg_covar, dtype) * jnp.eye(d, dtype=dtype)
    scale_tril = cholesky_unrolled(cov + ridge)
    floor = _MOMENT_RESOLUTION_EPS * jnp.finfo(dtype).eps * jnp.diagonal(second, 0, -2, -1)
    pivots = jnp.square(jnp.diagonal(scale_tril, 0, -2, -1))  # NaN where the factorisation failed
    resolved = jnp.all(pivots >= floor)
    unresolved = ~resolved
    if axis_name is not None:
        unresolved = lax.psum(unresolved.astype(jnp.int32), axis_name) > 0

    def centred() -> Array:
        cov = _centred_covariances(x, resp, nk, means)
        trace = jnp.where(jnp.asarray(reg_covar) > 0, jnp.trace(cov, axis1=-2, axis2=-1), 0)
        jitter = (
            (_CENTRED_JITTER_EPS * d * jnp.finfo(dtype).eps) * trace[:, None, None] * jnp.eye(d, dtype=dtype)
        )
        exact = cholesky_unrolled(cov + jitter + ridge)
        return jnp.where(resolved, scale_tril, exact)

    scale_tril = lax.cond(unresolved, centred, lambda: scale_tril)
    log_weights = jnp.log(nk) - jnp.log(jnp.sum(nk))
    return GMMParams(log_weights, means, scale_tril)


def _centred_covariances(x: Array, resp: Array, nk: Array, means: Array) -> Array:
    """``Σ_j = (1/N_j) Σ_i γ_ji (x_i - μ_j)(x_i - μ_j)ᵀ`` from ``(k, n)`` responsibilities (two-pass:
    no cancellation), written out per entry for ``d <= UNROLL_MAX_D``."""
    k, d = means.shape
    if d > UNROLL_MAX_D:
        dev = x[None, :, :] - means[:, None, :]
        return jnp.einsum("kn,kna,knb->kab", resp, dev, dev) / nk[:, None, None]
    xt = x.T
    dev = [xt[a][None, :] - means[:, a, None] for a in range(d)]  # d arrays (k, n)
    entries: dict[tuple[int, int], Array] = {}
    for a in range(d):
        for b in range(a + 1):
            entries[a, b] = entries[b, a] = jnp.sum(resp * dev[a] * dev[b], axis=1) / nk
    return jnp.stack([jnp.stack([entries[a, b] for b in range(d)], axis=-1) for a in range(d)], axis=-2)


def em_step(x: Float[ArrayLike, "n d"], params: GMMParams, *, reg_covar: float = 1e-6) -> GMMParams:
    """One EM update: ``m_step(x, e_step(x, params))``.

    Args:
        x: ``(n, d)`` data.
        params: current parameters.
        reg_covar: non-negative ridge added to every covariance diagonal.

    Returns:
        The updated parameters (never lower mean log-likelihood, up to ``reg_covar``).

    Raises:
        ValueError: as :func:`e_step` and :func:`m_step`.
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

    Raises:
        ValueError: shapes; bad ``tol``/``max_iter``/``reg_covar``/``floor``; ``n < k``;
            (concrete) non-finite data or initial parameters; and, for concrete inputs, fitted
            parameters that are not finite — a covariance became singular because ``reg_covar``
            is too small (e.g. ``reg_covar=0`` with duplicate points), like scikit-learn's error.
            Under ``jit`` values are not checked: test ``jnp.isfinite`` on the result, or wrap
            the call with ``dlx_jax.checked`` to get this error from compiled code.
    """
    k, d = check_params(init_params)
    check_param_values(init_params)
    x = float_array(x, "x")
    check_x(x, d, batched=False)
    check_max_iter(max_iter)
    check_nonneg(tol, "tol", allow_inf=True)
    check_nonneg(reg_covar, "reg_covar")
    check_nonneg(floor, "floor")
    if x.shape[0] < k:
        raise ValueError(
            f"k = {k} components need at least k samples, got n = {x.shape[0]}; use fewer components "
            "or more data"
        )
    params = cast_params(init_params, x.dtype)
    params, info = fit_unchecked(x, params, tol=tol, max_iter=max_iter, reg_covar=reg_covar, floor=floor)
    check_fitted(params, reg_covar, "EM produced non-finite parameters")
    return params, info


def check_max_iter(max_iter: int) -> None:
    check_positive_int("max_iter", max_iter, fix="pass e.g. max_iter=100", static=True)


def fit_unchecked(x, params, *, tol, max_iter, reg_covar, floor, axis_name=None):
    """The ``lax.while_loop`` of :func:`fit` on checked, same-dtype arguments (also vmapped by
    :func:`dlx_jax.mixture.fit_restarts`, which names the vmapped axis ``axis_name``)."""
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
        params = _m_step(x, log_resp, reg_covar, features, axis_name)
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
