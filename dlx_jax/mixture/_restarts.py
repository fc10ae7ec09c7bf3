"""Random initialisation and vmapped EM restarts (see :mod:`dlx_jax.mixture`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_positive_int, require
from dlx_jax.mixture._em import (
    EMInfo,
    check_fitted,
    check_max_iter,
    fit_unchecked,
    singular_covariance_message,
)
from dlx_jax.mixture._model import (
    GMMParams,
    check_nonneg,
    check_params,
    check_x,
    float_array,
)

INIT_METHODS = ("random_from_data", "kmeans++")


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

    Raises:
        ValueError: ``x`` not ``(n, d)`` or (concrete) not finite; ``k`` not an int in ``1..n``;
            an unknown ``method``; a negative ``reg_covar``; or (concrete ``x``) a data covariance
            that is not positive definite — constant or collinear features with ``reg_covar=0``.
    """
    x = float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    check_x(x, x.shape[1], batched=False)
    n, d = x.shape
    if not isinstance(k, int | np.integer) or isinstance(k, bool):
        raise ValueError(f"k (n_components) must be an int (static), got {k!r}; pass e.g. k=2")
    if k < 1:
        raise ValueError(f"k (n_components) must be >= 1, got {k}; pass e.g. k=2")
    if k > n:
        raise ValueError(
            f"k = {k} components need at least k samples, got n = {n}; use fewer components or more data"
        )
    if method not in INIT_METHODS:
        raise ValueError(f"method must be one of {INIT_METHODS}, got {method!r}; pick one of them")
    check_nonneg(reg_covar, "reg_covar")
    if method == "random_from_data":
        idx = jax.random.choice(key, n, (k,), replace=False)
        means = x[idx]
    else:
        means = _kmeanspp(key, x, k)
    cov = _data_covariance(x, reg_covar)
    chol = jnp.linalg.cholesky(cov)
    require(
        lambda xp, a: xp.all(xp.isfinite(a)) & xp.all(xp.diagonal(a) > 0),
        chol,
        singular_covariance_message(
            reg_covar,
            "init_params: the data covariance (every initial covariance) is not positive definite",
            "constant or collinear features, or fewer distinct points than features",
        ),
    )
    tril = jnp.broadcast_to(chol, (k, d, d))
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

    Raises:
        ValueError: as :func:`init_params` and :func:`fit`; for concrete inputs, also when every
            restart ended with non-finite parameters (``reg_covar`` too small). A restart that
            fails while others succeed only gets ``final_log_likelihood = -inf``. (``dlx_jax.checked``
            cannot wrap this function: checkify does not support a vmapped ``while_loop``; call it
            eagerly, or check ``jnp.isfinite`` of the result.)
    """
    x = float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}; reshape it to one row per sample")
    check_positive_int("n_init", n_init, static=True, fix="pass e.g. n_init=10")
    # validate once, eagerly where possible (k, shapes, NaN, tol, ...)
    probe = init_params(key, x, k=k, method=method, reg_covar=reg_covar)
    check_params(probe)
    check_max_iter(max_iter)
    check_nonneg(tol, "tol", allow_inf=True)
    check_nonneg(floor, "floor")

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_init))
    inits = jax.vmap(lambda kk: init_params(kk, x, k=k, method=method, reg_covar=reg_covar))(keys)
    params, info = jax.vmap(
        lambda p: fit_unchecked(
            x, p, tol=tol, max_iter=max_iter, reg_covar=reg_covar, floor=floor, axis_name="restart"
        ),
        axis_name="restart",
    )(inits)
    final = info.exact_log_likelihood_trace[jnp.arange(n_init), info.n_iter]
    final = jnp.where(jnp.isnan(final), -jnp.inf, final)
    best = jnp.argmax(final)
    best_params = jax.tree.map(lambda a: a[best], params)
    check_fitted(best_params, reg_covar, f"every one of the {n_init} restarts produced non-finite parameters")
    return best_params, Restarts(params, inits, info, final, best)
