"""GMM parameters, validation, densities and ancestral sampling (see :mod:`dlx_jax.mixture`).

The helpers without a leading underscore that :mod:`dlx_jax.mixture` does not re-export
(``check_params``, ``check_x``, ``float_array``, ``floored``, ...) are shared with the package's
other private modules (``_em``, ``_restarts``); underscored names stay inside their module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_finite, check_nonempty, check_positive_int, is_concrete, require
from dlx_jax._linalg import UNROLL_MAX_D, precision_cholesky


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


# --------------------------------------------------------------------------------------------
# validation helpers


def float_array(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


_BUILD = "build params with init_params or gmm_params_from_covariances"


def check_params(params: GMMParams) -> tuple[int, int]:
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
    if k < 1 or d < 1:
        raise ValueError(
            f"params must have n_components k >= 1 and d >= 1 features, got means of shape {mu}; "
            "build them with init_params(key, x, k=2) or gmm_params_from_covariances"
        )
    if lw != (k,):
        raise ValueError(f"params.log_weights must have shape (k,) = ({k},), got {lw}; {_BUILD}")
    if tril != (k, d, d):
        raise ValueError(
            f"params.scale_tril must have shape (k, d, d) = ({k}, {d}, {d}), got {tril}; {_BUILD}"
        )
    return k, d


def check_x(x: Array, d: int, *, batched: bool, name: str = "x") -> None:
    """Check that ``x`` is ``(n, d)`` (or ``(..., d)`` when ``batched``) and NaN-free if concrete."""
    if batched:
        if x.ndim < 1 or x.shape[-1] != d:
            raise ValueError(
                f"{name} must have shape (..., d) with d = {d} to match the params, got {x.shape}; "
                "pass points with the mixture's number of features"
            )
    elif x.ndim != 2 or x.shape[-1] != d:
        raise ValueError(
            f"{name} must have shape (n, d) with d = {d}, got {x.shape}; reshape it to one row per sample"
        )
    check_finite(name, x, "remove or impute them before fitting")


_EXAMPLES = {"reg_covar": "1e-6", "tol": "1e-3", "floor": "0.0"}


def check_nonneg(value, name: str, *, allow_inf: bool = False) -> None:
    """A (static or traced) hyper-parameter that must be a finite number >= 0 (``tol`` may be inf)."""
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}; pass e.g. {name}=1e-6")
    if is_concrete(value):
        v = float(value)
        if not (v >= 0 and (allow_inf or math.isfinite(v))):
            raise ValueError(
                f"{name} must be >= 0 and finite, got {value}; pass e.g. {name}={_EXAMPLES.get(name, '0.0')}"
            )


def check_param_values(params: GMMParams) -> None:
    """Values of ``params``: finite means and factors, a positive factor diagonal, log-weights not
    NaN or +inf (``-inf``, a zero weight, is allowed). Concrete: raise; traced: ``checked`` mode."""
    fix = "build params with init_params / gmm_params_from_covariances, or check the fit that made them"
    require(
        lambda xp, a: ~xp.any(xp.isnan(a) | (a == xp.inf)),
        params.log_weights,
        f"params.log_weights contains NaN or +inf; {fix}",
    )
    check_finite("params.means", params.means, fix)
    check_finite("params.scale_tril", params.scale_tril, f"{fix} (a singular covariance: increase reg_covar)")
    require(
        lambda xp, a: xp.all(xp.diagonal(a, 0, -2, -1) > 0),
        params.scale_tril,
        "params.scale_tril must have a positive diagonal (lower Cholesky factors); pass "
        "jnp.linalg.cholesky(covariances)",
    )


def dtype_of(*arrays) -> jnp.dtype:
    return jnp.result_type(*[jnp.asarray(a).dtype for a in arrays])


def cast_params(params: GMMParams, dtype) -> GMMParams:
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
    dtype = dtype_of(
        float_array(weights, "weights"),
        float_array(means, "means"),
        float_array(covariances, "covariances"),
    )
    weights, means, covariances = (jnp.asarray(a, dtype) for a in (weights, means, covariances))
    if means.ndim != 2:
        raise ValueError(f"means must have shape (k, d), got {means.shape}; pass one mean row per component")
    k, d = means.shape
    if weights.shape != (k,):
        raise ValueError(
            f"weights must have shape (k,) = ({k},) to match means, got {weights.shape}; pass one weight per "
            "component"
        )
    if covariances.shape != (k, d, d):
        raise ValueError(
            f"covariances must have shape (k, d, d) = ({k}, {d}, {d}), got {covariances.shape}; pass one "
            "d x d matrix per component"
        )
    for name, arr in (("weights", weights), ("means", means), ("covariances", covariances)):
        check_finite(name, arr, f"pass finite {name}")
    if is_concrete(weights, covariances):
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"weights must be >= 0 and sum to 1, got {w.tolist()} (sum {w.sum()}); normalise them "
                "(weights / weights.sum())"
            )
        c = np.asarray(covariances, dtype=np.float64)
        if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=1e-5, atol=1e-8 * max(1.0, np.abs(c).max())):
            raise ValueError("covariances must be symmetric; pass (S + S^T) / 2 for each matrix S")
    scale_tril = jnp.linalg.cholesky(covariances)
    if is_concrete(scale_tril) and not np.all(np.isfinite(np.asarray(scale_tril))):
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
    k, d = check_params(params)
    check_param_values(params)
    x = float_array(x, "x")
    check_x(x, d, batched=True)
    dtype = dtype_of(x, *params)
    lead = x.shape[:-1]
    out = component_log_densities_kn(x.astype(dtype).reshape(-1, d), cast_params(params, dtype))
    return out.T.reshape(*lead, k)


def component_log_densities_kn(x: Float[Array, "n d"], params: GMMParams) -> Float[Array, "k n"]:
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

    Raises:
        ValueError: as :func:`gmm_logpdf`, a negative ``floor``, or no points (the mean over
            none is undefined).
    """
    check_nonneg(floor, "floor")
    log_p = gmm_logpdf(x, params)
    check_nonempty("x", log_p.size, what="points", fix="pass at least one data point")
    return jnp.mean(floored(log_p, floor))


def floored(log_p: Array, floor: float) -> Array:
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
    k, d = check_params(params)
    check_param_values(params)
    check_positive_int("n", n, minimum=0, static=True, fix="pass e.g. n=500")
    key_z, key_eps = jax.random.split(key)
    dtype = params.means.dtype
    labels = jax.random.categorical(key_z, params.log_weights, shape=(n,))
    eps = jax.random.normal(key_eps, (n, d), dtype=dtype)
    samples = params.means[labels] + jnp.einsum("nde,ne->nd", params.scale_tril[labels].astype(dtype), eps)
    return samples, labels
