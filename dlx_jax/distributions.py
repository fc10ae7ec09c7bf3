r"""Normal and multivariate-normal distributions (book steps 1–3): densities, sampling, MLE.

All functions are pure and undecorated: the caller decides what to ``jax.jit`` / ``jax.vmap``.
Dtypes are preserved (float32 in → float32 out, float64 in → float64 out; Python scalars are weak
and follow the arrays; integers are promoted to the default float).

Validation happens at trace time. Shape and rank errors always raise ``ValueError``. Value checks
(finite parameters, ``sigma > 0``, symmetric positive-definite covariance, positive ``scale_tril``
diagonal, NaN or ±inf in data given to an MLE) need concrete numbers: they run when the argument
is a concrete array (eager calls, or constants closed over under ``jit``) and are skipped for
tracers. Under plain ``jit`` a bad value therefore shows up in the result instead of an exception:

* a covariance that is not positive definite, or ``sigma <= 0``, gives NaN (or ±inf);
* a covariance that is **not symmetric** is *not* detected: the Cholesky factorisation reads its
  symmetric part :math:`(\Sigma + \Sigma^\top)/2`, so the result is the (finite) density of that
  matrix — the same convention that makes gradients with respect to ``cov`` symmetric;
* non-finite parameters give NaN or ±inf.

To get these errors inside compiled code, run the function through the opt-in checked mode
``dlx_jax.checked`` (``checked(mvn_logpdf)(x, mean, cov)`` raises ``ValueError`` for every case
above); or validate in the caller (the experiments do).

Multivariate normal with mean :math:`\mu` and covariance :math:`\Sigma = L L^\top` (``L`` the
lower Cholesky factor, ``scale_tril``):

.. math::
    \log \mathcal N(x; \mu, \Sigma) = -\tfrac12 \lVert L^{-1}(x-\mu) \rVert^2
        - \textstyle\sum_i \log L_{ii} - \tfrac d2 \log 2\pi .

No inverse of ``Sigma`` or determinant is ever formed: the triangular inverse of ``L`` (one
triangular solve against the identity) whitens ``x - mu`` for the Mahalanobis term and the
Cholesky diagonal gives :math:`\tfrac12 \log\det\Sigma = \sum_i \log L_{ii}`.
"""

import math

import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.scipy.special import ndtr
from jax.typing import ArrayLike
from jaxtyping import Array, Float, PRNGKeyArray

from dlx_jax._checks import check_finite, check_positive_int, check_shape, is_concrete, require
from dlx_jax._linalg import mahalanobis_sq
from dlx_jax._random import standard_normal

__all__ = [
    "mvn_logpdf",
    "mvn_mle",
    "mvn_pdf",
    "normal_cdf",
    "normal_logpdf",
    "normal_mle",
    "normal_pdf",
    "sample_mvn",
    "sample_normal",
    "scale_tril_from_cov",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --- helpers -------------------------------------------------------------------------------------


def _float_dtype(*values: ArrayLike) -> jnp.dtype:
    """The floating result dtype of ``values`` (weak Python scalars follow the arrays)."""
    dtype = jnp.result_type(*values)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(dtype, 0.0)
    return dtype


def _check_positive(value: ArrayLike, name: str) -> None:
    """``value`` must be finite and > 0 (concrete: raise; traced: a ``checked``-mode check)."""

    def message(arr: np.ndarray | None) -> str:
        got = "" if arr is None else f", got {arr[~(np.isfinite(arr) & (arr > 0))].reshape(-1)[0].item()!r}"
        return (
            f"{name} must be > 0 and finite (a standard deviation){got}; pass a positive {name} "
            f"(e.g. the square root of a variance)"
        )

    require(lambda xp, a: xp.all(xp.isfinite(a) & (a > 0)), value, message)


def _check_finite_param(value: ArrayLike, name: str) -> None:
    check_finite(name, value, f"pass a finite {name} (check how it was computed)")


def _check_finite_data(x: ArrayLike, name: str) -> None:
    check_finite(name, x, "drop or impute those samples before fitting")


def _check_spd(cov: Array, scale_tril: Array) -> None:
    """Under tracing only (concrete values are checked on the host): ``checked``-mode checks that
    ``cov`` is symmetric and its Cholesky factor finite (positive definite)."""
    if is_concrete(cov):
        return
    tol = 1e3 * jnp.finfo(cov.dtype).eps * jnp.maximum(jnp.max(jnp.abs(cov)), 1.0)
    sym = jnp.all(jnp.abs(cov - jnp.swapaxes(cov, -1, -2)) <= tol)
    checkify.debug_check(sym, "cov is not symmetric; pass (cov + cov.T) / 2 or a proper covariance matrix")
    checkify.debug_check(
        jnp.all(jnp.isfinite(jnp.diagonal(scale_tril, 0, -2, -1))),
        "cov is not positive definite (its Cholesky factorisation failed); add a small ridge "
        "(reg_covar * I) to the diagonal or check for collinear features",
    )


def _check_ddof(ddof: int, n: int, what: str) -> None:
    check_positive_int("ddof", ddof, minimum=0, static=True, fix="pass ddof=0 (the MLE) or ddof=1 (unbiased)")
    if n <= ddof:
        raise ValueError(
            f"{what} needs more than ddof={ddof} samples, got n={n}; pass more data or a smaller ddof"
        )


def _check_vector(mean: Array, name: str = "mean") -> int:
    if mean.ndim < 1:
        raise ValueError(
            f"{name} must have shape (..., d) with d >= 1, got a scalar; pass e.g. jnp.atleast_1d({name})"
        )
    return mean.shape[-1]


def scale_tril_from_cov(cov: Float[ArrayLike, "*batch d d"]) -> Float[Array, "*batch d d"]:
    r"""Lower Cholesky factor ``L`` of a covariance, :math:`\Sigma = L L^\top`.

    Broadcasts over leading axes. ``cov`` is symmetrised, :math:`(\Sigma + \Sigma^\top)/2`, before
    factorising (``jnp.linalg.cholesky``'s default), so gradients with respect to it are symmetric.

    Args:
        cov: symmetric positive-definite matrices, shape ``(..., d, d)``.

    Returns:
        ``L`` with the dtype of ``cov`` (float), shape ``(..., d, d)``.

    Raises:
        ValueError: ``cov`` is not ``(..., d, d)``; or, when ``cov`` is concrete, it holds NaN
            or ±inf, is not symmetric or is not positive definite. Under ``jit`` these are not
            checked: a non-positive-definite ``cov`` gives NaN, a non-symmetric one the factor
            of its symmetric part (see the module docstring; ``dlx_jax.checked`` raises instead).
    """
    cov = jnp.asarray(cov)
    cov = cov.astype(_float_dtype(cov))
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must have shape (..., d, d), got {cov.shape}; pass a square covariance matrix")
    concrete = is_concrete(cov)
    if concrete:
        c = np.asarray(cov)
        if not np.isfinite(c).all():
            raise ValueError(
                "cov contains NaN or infinite values; check how the covariance was computed "
                "(e.g. fit it with mvn_mle on finite data)"
            )
        tol = 1e3 * np.finfo(c.dtype).eps * max(float(np.abs(c).max(initial=0.0)), 1.0)
        if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=0.0, atol=tol):
            raise ValueError("cov is not symmetric; pass (cov + cov.T) / 2 or a proper covariance matrix")
    else:
        check_finite("cov", cov, "check how the covariance was computed")
    scale_tril = jnp.linalg.cholesky(cov)
    _check_spd(cov, scale_tril)
    if (
        concrete
        and is_concrete(scale_tril)
        and np.isnan(np.asarray(jnp.diagonal(scale_tril, 0, -2, -1))).any()
    ):
        raise ValueError(
            "cov is not positive definite (its Cholesky factorisation failed); add a small ridge "
            "(reg_covar * I) to the diagonal or check for collinear features"
        )
    return scale_tril


def _resolve_scale_tril(cov: ArrayLike | None, scale_tril: ArrayLike | None, d: int) -> Array:
    if (cov is None) == (scale_tril is None):
        raise ValueError(
            "pass exactly one of cov= or scale_tril= (the lower Cholesky factor of cov); drop the other one"
        )
    if cov is not None:
        cov = jnp.asarray(cov)
        if cov.ndim < 2 or cov.shape[-2:] != (d, d):
            raise ValueError(
                f"cov must have shape (..., {d}, {d}) to match mean/x with d={d}, got {cov.shape}; "
                "pass one d x d covariance per mean"
            )
        return scale_tril_from_cov(cov)
    scale_tril = jnp.asarray(scale_tril)
    scale_tril = scale_tril.astype(_float_dtype(scale_tril))
    if scale_tril.ndim < 2 or scale_tril.shape[-2:] != (d, d):
        raise ValueError(
            f"scale_tril must have shape (..., {d}, {d}) to match mean/x with d={d}, got {scale_tril.shape}; "
            "pass one d x d factor per mean"
        )
    check_finite("scale_tril", scale_tril, "pass jnp.linalg.cholesky(cov) of a finite covariance")
    require(
        lambda xp, a: xp.all(xp.diagonal(a, 0, -2, -1) > 0),
        scale_tril,
        "scale_tril must be lower triangular with a positive diagonal (a Cholesky factor); "
        "pass jnp.linalg.cholesky(cov)",
    )
    return scale_tril


def _broadcast_batch(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return jnp.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"leading (batch) axes {shapes} do not broadcast; add size-1 axes, e.g. x[:, None, :] "
            "against k components"
        ) from None


def _draws_fix(param_shape: tuple[int, ...]) -> str:
    """How to ask for 1000 draws of parameters of batch shape ``param_shape``."""
    return f"pass the number of draws first, e.g. shape={(1000, *param_shape)}"


def _holds(shape: tuple[int, ...], param_shape: tuple[int, ...]) -> bool:
    """True when ``param_shape`` broadcasts to exactly ``shape``."""
    try:
        return jnp.broadcast_shapes(shape, param_shape) == shape
    except ValueError:
        return False


# --- univariate normal ---------------------------------------------------------------------------


def normal_logpdf(
    x: Float[ArrayLike, "..."], mu: Float[ArrayLike, "..."] = 0.0, sigma: Float[ArrayLike, "..."] = 1.0
) -> Float[Array, "..."]:
    r"""Log-density of :math:`\mathcal N(\mu, \sigma^2)`, elementwise with broadcasting.

    .. math:: \log p(x) = -\frac{(x-\mu)^2}{2\sigma^2} - \log\sigma - \tfrac12\log 2\pi

    Args:
        x: points, any shape.
        mu: mean, broadcastable against ``x``.
        sigma: standard deviation (> 0), broadcastable against ``x``.

    Returns:
        Log-densities of the broadcast shape, in the floating dtype of the inputs.

    Raises:
        ValueError: ``sigma <= 0`` or non-finite ``mu``/``sigma`` (checked when concrete; under
            ``jit`` the result is NaN or inf instead, or an error in ``dlx_jax.checked`` mode).
            ``x = ±inf`` is allowed (log-density ``-inf``, as in scipy).
    """
    _check_positive(sigma, "sigma")
    _check_finite_param(mu, "mu")
    dtype = _float_dtype(x, mu, sigma)
    x, mu, sigma = (jnp.asarray(v, dtype) for v in (x, mu, sigma))
    z = (x - mu) / sigma
    return -0.5 * z * z - jnp.log(sigma) - jnp.asarray(0.5 * _LOG_2PI, dtype)


def normal_pdf(
    x: Float[ArrayLike, "..."], mu: Float[ArrayLike, "..."] = 0.0, sigma: Float[ArrayLike, "..."] = 1.0
) -> Float[Array, "..."]:
    r"""Density of :math:`\mathcal N(\mu, \sigma^2)`: ``exp(normal_logpdf(x, mu, sigma))``.

    The book's step 1 formula :math:`\frac{1}{\sqrt{2\pi}\sigma}\exp(-\frac{(x-\mu)^2}{2\sigma^2})`.
    Same broadcasting, dtype and errors as :func:`normal_logpdf`.
    """
    return jnp.exp(normal_logpdf(x, mu, sigma))


def normal_cdf(
    x: Float[ArrayLike, "..."], mu: Float[ArrayLike, "..."] = 0.0, sigma: Float[ArrayLike, "..."] = 1.0
) -> Float[Array, "..."]:
    r"""Normal CDF, :math:`P(X \le x) = \Phi((x-\mu)/\sigma)` for :math:`X \sim \mathcal N(\mu, \sigma^2)`.

    Uses ``jax.scipy.special.ndtr`` (accurate in both tails, unlike ``(1 + erf)/2``). Same
    broadcasting, dtype and errors as :func:`normal_logpdf`; :math:`P(X > b)` is
    ``normal_cdf(-b, -mu, sigma)`` without cancellation.
    """
    _check_positive(sigma, "sigma")
    _check_finite_param(mu, "mu")
    dtype = _float_dtype(x, mu, sigma)
    x, mu, sigma = (jnp.asarray(v, dtype) for v in (x, mu, sigma))
    return ndtr((x - mu) / sigma)


def sample_normal(
    key: PRNGKeyArray,
    mu: Float[ArrayLike, "..."] = 0.0,
    sigma: Float[ArrayLike, "..."] = 1.0,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: jnp.dtype | None = None,
) -> Float[Array, "..."]:
    r"""Draw from :math:`\mathcal N(\mu, \sigma^2)` as :math:`\mu + \sigma\varepsilon` (reparameterised).

    Args:
        key: PRNG key.
        mu: mean.
        sigma: standard deviation (> 0).
        shape: (static) output shape; must broadcast with ``mu`` and ``sigma``. Default: their
            broadcast shape (one draw per parameter).
        dtype: (static) output float dtype; default the dtype of ``mu``/``sigma`` (weak
            Python scalars give the default float).

    Returns:
        Samples of shape ``shape``.

    Raises:
        ValueError: ``shape`` is not a tuple of ints >= 0 or does not broadcast with the
            parameters, or ``sigma <= 0`` or
            non-finite ``mu``/``sigma`` (concrete).
    """
    _check_positive(sigma, "sigma")
    _check_finite_param(mu, "mu")
    dtype = _float_dtype(mu, sigma) if dtype is None else jnp.dtype(dtype)
    mu, sigma = jnp.asarray(mu, dtype), jnp.asarray(sigma, dtype)
    param_shape = jnp.broadcast_shapes(mu.shape, sigma.shape)
    shape = param_shape if shape is None else check_shape("shape", shape, fix=_draws_fix(param_shape))
    if not _holds(shape, param_shape):
        raise ValueError(
            f"shape={shape} does not hold the parameter shape {param_shape}; pass shape=(n, *{param_shape})"
        )
    return mu + sigma * standard_normal(key, shape, dtype)


def normal_mle(
    x: Float[ArrayLike, "..."], *, ddof: int = 0, axis: int = 0
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    r"""Maximum-likelihood fit of a normal.

    .. math::
        \hat\mu = \bar x = \frac1N\sum_n x_n, \qquad
        \hat\sigma^2 = \frac{1}{N-\mathrm{ddof}}\sum_n (x_n-\bar x)^2

    ``ddof=0`` (default) is the true MLE (the book's step 2 divides by N); ``ddof=1`` the
    unbiased variance estimate.

    Args:
        x: samples along ``axis``.
        ddof: (static) delta degrees of freedom, 0 or more.
        axis: (static) the sample axis; other axes are independent fits.

    Returns:
        ``(mu, sigma)`` with ``axis`` removed, in the floating dtype of ``x``.

    Raises:
        ValueError: ``x`` is a scalar, ``axis`` is out of range, ``n <= ddof``, or (concrete)
            ``x`` contains NaN or ±inf.
    """
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    if x.ndim == 0:
        raise ValueError("x must hold samples along an axis, got a scalar; pass an array of shape (n,)")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis={axis} is out of range for x of shape {x.shape}; pass the axis that indexes samples"
        )
    _check_ddof(ddof, x.shape[axis], "normal_mle")
    _check_finite_data(x, "x")
    mu = jnp.mean(x, axis=axis)
    centred = x - jnp.expand_dims(mu, axis)
    var = jnp.sum(centred * centred, axis=axis) / (x.shape[axis] - ddof)
    return mu, jnp.sqrt(var)


# --- multivariate normal -------------------------------------------------------------------------


def mvn_logpdf(
    x: Float[ArrayLike, "*batch d"],
    mean: Float[ArrayLike, "*batch d"],
    cov: Float[ArrayLike, "*batch d d"] | None = None,
    *,
    scale_tril: Float[ArrayLike, "*batch d d"] | None = None,
) -> Float[Array, "*batch"]:
    r"""Log-density of :math:`\mathcal N(\mu, \Sigma)` via Cholesky, broadcasting over leading axes.

    .. math::
        \log p(x) = -\tfrac12 \lVert L^{-1}(x-\mu)\rVert^2 - \sum_i \log L_{ii} - \tfrac d2\log 2\pi,
        \qquad \Sigma = L L^\top

    Leading axes of ``x``, ``mean`` and ``cov``/``scale_tril`` broadcast like numpy, e.g.
    ``mvn_logpdf(x[:, None, :], means, scale_tril=L)`` with ``x (n, d)``, ``means (k, d)``,
    ``L (k, d, d)`` gives the ``(n, k)`` table of a mixture; neither ``x`` nor the factors are
    copied per component/sample before the whitening matmul.

    Args:
        x: points, shape ``(..., d)``.
        mean: mean(s), shape ``(..., d)``.
        cov: covariance(s), shape ``(..., d, d)``, symmetric positive definite. Pass exactly
            one of ``cov`` and ``scale_tril``.
        scale_tril: lower Cholesky factor(s) ``L`` of the covariance, ``(..., d, d)`` with a
            positive diagonal; the upper triangle is ignored. Cheaper when the factor is reused.

    Returns:
        Log-densities of the broadcast batch shape, in the floating dtype of the inputs.

    ``x`` itself is not value-checked: a point at ±inf has log-density ``-inf`` (as in scipy)
    and NaN propagates.

    Raises:
        ValueError: wrong ranks, mismatched ``d`` or non-broadcasting batch axes; both or
            neither of ``cov``/``scale_tril``; and, when concrete, a non-finite ``mean``, a
            non-finite, non-symmetric or non-SPD ``cov`` or a non-finite ``scale_tril`` or one
            with a non-positive diagonal. Under ``jit`` these are not checked: a non-SPD ``cov``
            or a bad ``scale_tril`` gives NaN, a non-symmetric ``cov`` is read as its symmetric
            part :math:`(\Sigma + \Sigma^\top)/2` (a finite density); ``dlx_jax.checked``
            turns each of them into this ``ValueError`` inside compiled code.
    """
    x, mean = jnp.asarray(x), jnp.asarray(mean)
    d = _check_vector(mean)
    _check_finite_param(mean, "mean")
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(
            f"x must have shape (..., d) with d={d} (the mean's last axis), got {x.shape}; pass points with "
            "the mean's number of features (x[:, None] for 1-D data)"
        )
    scale_tril = _resolve_scale_tril(cov, scale_tril, d)
    dtype = _float_dtype(x, mean, scale_tril)
    x, mean, scale_tril = x.astype(dtype), mean.astype(dtype), scale_tril.astype(dtype)
    _broadcast_batch(x.shape[:-1], mean.shape[:-1], scale_tril.shape[:-2])
    maha = mahalanobis_sq(x, mean, scale_tril)
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(scale_tril, 0, -2, -1)), axis=-1)
    return -0.5 * maha - half_logdet - jnp.asarray(0.5 * d * _LOG_2PI, dtype)


def mvn_pdf(
    x: Float[ArrayLike, "*batch d"],
    mean: Float[ArrayLike, "*batch d"],
    cov: Float[ArrayLike, "*batch d d"] | None = None,
    *,
    scale_tril: Float[ArrayLike, "*batch d d"] | None = None,
) -> Float[Array, "*batch"]:
    r"""Density of :math:`\mathcal N(\mu, \Sigma)`: ``exp(mvn_logpdf(...))``.

    The book's step 3 formula
    :math:`\frac{1}{\sqrt{(2\pi)^d|\Sigma|}}\exp(-\tfrac12 (x-\mu)^\top\Sigma^{-1}(x-\mu))`,
    computed without ``inv``/``det``. Same arguments, broadcasting and errors as :func:`mvn_logpdf`.
    """
    return jnp.exp(mvn_logpdf(x, mean, cov, scale_tril=scale_tril))


def sample_mvn(
    key: PRNGKeyArray,
    mean: Float[ArrayLike, "*batch d"],
    cov: Float[ArrayLike, "*batch d d"] | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    scale_tril: Float[ArrayLike, "*batch d d"] | None = None,
) -> Float[Array, "*shape d"]:
    r"""Draw from :math:`\mathcal N(\mu, \Sigma)` as :math:`\mu + L\varepsilon`, standard :math:`\varepsilon`.

    Args:
        key: PRNG key.
        mean: mean(s), ``(..., d)``.
        cov: covariance(s), ``(..., d, d)``; or pass ``scale_tril`` instead (exactly one).
        shape: (static) batch shape of the result; it must hold the broadcast batch shape of
            ``mean`` and the covariance (like ``jax.random.multivariate_normal``), e.g. ``(n,)``
            for ``n`` draws of one distribution. Default: that batch shape (one draw each).
        scale_tril: lower Cholesky factor(s) of the covariance, ``(..., d, d)``.

    Returns:
        Samples of shape ``(*shape, d)`` in the floating dtype of the parameters.

    Raises:
        ValueError: as :func:`mvn_logpdf`, or ``shape`` is not a tuple of ints >= 0 or does not
            hold the parameters' batch shape.
    """
    mean = jnp.asarray(mean)
    d = _check_vector(mean)
    _check_finite_param(mean, "mean")
    scale_tril = _resolve_scale_tril(cov, scale_tril, d)
    dtype = _float_dtype(mean, scale_tril)
    mean, scale_tril = mean.astype(dtype), scale_tril.astype(dtype)
    param_batch = _broadcast_batch(mean.shape[:-1], scale_tril.shape[:-2])
    shape = param_batch if shape is None else check_shape("shape", shape, fix=_draws_fix(param_batch))
    if not _holds(shape, param_batch):
        raise ValueError(
            f"shape={shape} does not hold the parameters' batch shape {param_batch}; "
            f"pass shape=(n, *{param_batch})"
        )
    eps = standard_normal(key, (*shape, d), dtype)
    if scale_tril.ndim == 2:
        return mean + eps @ jnp.tril(scale_tril).T
    return mean + jnp.einsum("...ij,...j->...i", jnp.tril(scale_tril), eps)


def mvn_mle(
    x: Float[ArrayLike, "*batch n d"], *, ddof: int = 0
) -> tuple[Float[Array, "*batch d"], Float[Array, "*batch d d"]]:
    r"""Maximum-likelihood fit of a multivariate normal.

    .. math::
        \hat\mu = \frac1N\sum_n x_n, \qquad
        \hat\Sigma = \frac{1}{N-\mathrm{ddof}}\sum_n (x_n-\hat\mu)(x_n-\hat\mu)^\top

    ``ddof=0`` (default) is the true MLE; ``ddof=1`` matches ``np.cov`` (what the book's step 3
    uses). Leading axes of ``x`` are independent fits.

    Args:
        x: samples, shape ``(..., n, d)``.
        ddof: (static) delta degrees of freedom, 0 or more.

    Returns:
        ``(mean (..., d), cov (..., d, d))``, ``cov`` exactly symmetric, in the dtype of ``x``.

    Raises:
        ValueError: ``x`` has rank < 2, ``n <= ddof``, or (concrete) ``x`` contains NaN or ±inf.
    """
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (n, d), got {x.shape}; for 1-D data use x[:, None] or normal_mle"
        )
    _check_ddof(ddof, x.shape[-2], "mvn_mle")
    _check_finite_data(x, "x")
    mean = jnp.mean(x, axis=-2)
    centred = x - mean[..., None, :]
    cov = jnp.einsum("...ni,...nj->...ij", centred, centred) / (x.shape[-2] - ddof)
    return mean, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
