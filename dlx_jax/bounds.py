"""The pieces of variational bounds: pixel likelihoods, diagonal Gaussians, KL, the IWAE log-mean-exp.

Shared by :mod:`dlx_jax.vae` and :mod:`dlx_jax.hvae` (and re-exported from :mod:`dlx_jax.vae`, where
users of the VAE look for them). Everything is in **nats**, acts on the last axis and broadcasts over
any leading axes (written ``*n``); dtypes are preserved.

* Pixel likelihoods from decoder logits ``ℓ`` (the decoder's sigmoid outputs
  :math:`\\lambda = \\sigma(\\ell)` are the parameters), selected by ``likelihood=`` in
  :data:`LIKELIHOODS`:

  - ``"bernoulli"``:
    :math:`\\log p(x|z) = \\sum_i x_i \\log \\lambda_i + (1-x_i)\\log(1-\\lambda_i)`, a true
    log-probability for *binarized* data ``x ∈ {0, 1}`` (see :func:`binarize`);
  - ``"continuous_bernoulli"``: the same plus the normalizer :math:`\\log C(\\lambda)` of the
    continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), a true log-density for ``x ∈ [0, 1]``.

  Both are computed from logits with ``softplus``, never ``log(sigmoid)``. Pixels must lie in
  ``[0, 1]``: that is checked when ``x`` is concrete (0-255 images would give a log-likelihood
  of hundreds of thousands of nats, or ±inf); under ``jit`` only in ``dlx_jax.checked`` mode.
* Diagonal Gaussians: :func:`diag_normal_log_pdf`, the closed-form :func:`gaussian_kl` to
  :math:`\\mathcal N(m, I)`, and :func:`posterior_log_pdf_from_noise`, the density of a
  reparameterised draw from its noise.
* :func:`iwae_from_log_weights`: :math:`\\log \\frac1k \\sum_i w_i` from ``k`` log importance weights,
  the bound of Burda et al. (2016),

  .. math::
      \\mathcal L_k(x) = \\mathbb E\\Big[\\log \\frac1k \\sum_{i=1}^k \\frac{p(x, z_i)}{q(z_i|x)}\\Big]
      \\;\\ge\\; \\mathrm{ELBO}(x) = \\mathbb E_{q(z|x)}[\\log p(x|z)] - \\mathrm{KL}(q(z|x)\\,\\|\\,p(z)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from dlx_jax._checks import check_broadcast, check_float, check_unit_interval

__all__ = [
    "LIKELIHOODS",
    "bernoulli_log_likelihood",
    "binarize",
    "continuous_bernoulli_log_norm",
    "diag_normal_log_pdf",
    "gaussian_kl",
    "iwae_from_log_weights",
    "log_likelihood",
    "posterior_log_pdf_from_noise",
]

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
_LOG_2PI = math.log(2.0 * math.pi)


# --- pixel likelihoods ---------------------------------------------------------------------------


def bernoulli_log_likelihood(logits: Float[Array, "*n d"], x: Float[Array, "*n d"]) -> Float[Array, "*n"]:
    """Bernoulli log-likelihood from logits, summed over the last axis.

    .. math::
        \\sum_i x_i \\log\\sigma(\\ell_i) + (1-x_i)\\log(1-\\sigma(\\ell_i))
        = \\sum_i x_i\\ell_i - \\mathrm{softplus}(\\ell_i)

    A log-probability in nats for ``x ∈ {0, 1}``; broadcasts ``logits`` against ``x``.

    Raises:
        ValueError: ``logits`` and ``x`` do not broadcast, or (concrete) ``x`` outside ``[0, 1]``.
    """
    check_pixels(logits, x)
    return _bernoulli(logits, x)


def _bernoulli(logits: Array, x: Array) -> Array:
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


def check_pixels(logits: Array, x: Array) -> None:
    """``x`` (pixels in ``[0, 1]``) must broadcast against the decoder ``logits``."""
    check_float("logits", logits)
    check_broadcast(logits=jnp.shape(logits), x=jnp.shape(x))
    check_unit_interval("x", x)


def continuous_bernoulli_log_norm(logits: Float[Array, "*n d"]) -> Float[Array, "*n d"]:
    """Elementwise :math:`\\log C(\\lambda)` of the continuous Bernoulli, :math:`\\lambda = \\sigma(\\ell)`.

    .. math::
        C(\\lambda) = \\frac{2\\,\\mathrm{artanh}(1 - 2\\lambda)}{1 - 2\\lambda}
        = \\frac{\\ell}{\\tanh(\\ell/2)},

    evaluated as :math:`\\log|\\ell| - \\log\\tanh(|\\ell|/2)` and, for :math:`|\\ell| < 10^{-2}`, by its
    Taylor series :math:`\\log 2 + \\ell^2/12 - \\ell^4/720`.
    """
    a = jnp.abs(logits)
    small = a < 1e-2
    safe = jnp.where(small, 1.0, a)
    exact = jnp.log(safe) - jnp.log(jnp.tanh(0.5 * safe))
    a2 = jnp.square(a)
    taylor = math.log(2.0) + a2 / 12.0 - jnp.square(a2) / 720.0
    return jnp.where(small, taylor, exact)


def log_likelihood(
    logits: Float[Array, "*n d"], x: Float[Array, "*n d"], *, likelihood: str = "bernoulli"
) -> Float[Array, "*n"]:
    """``log p(x | z)`` in nats from decoder logits, for ``likelihood`` (static) in :data:`LIKELIHOODS`.

    Raises:
        ValueError: an unknown ``likelihood``, ``logits`` and ``x`` that do not broadcast, or
            (concrete) ``x`` outside ``[0, 1]``.
    """
    check_likelihood(likelihood)
    check_pixels(logits, x)
    return log_likelihood_unchecked(logits, x, likelihood)


def check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r} is not one of {LIKELIHOODS}; pick one of them")


def log_likelihood_unchecked(logits: Array, x: Array, likelihood: str) -> Array:
    """:func:`log_likelihood` without the argument checks (callers checked ``x`` once already)."""
    ll = _bernoulli(logits, x)
    if likelihood == "continuous_bernoulli":
        ll = ll + jnp.sum(continuous_bernoulli_log_norm(logits), axis=-1)
    return ll


def binarize(x: Float[Array, "*n d"], threshold: float = 0.5) -> Float[Array, "*n d"]:
    """Static binarization ``x > threshold`` as ``x``'s dtype (for the Bernoulli likelihood).

    Raises:
        ValueError: ``threshold`` outside ``(0, 1)``, or (concrete) ``x`` outside ``[0, 1]`` (a
            0-255 image would binarize to all ones).
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}; pass e.g. threshold=0.5")
    check_unit_interval("x", x)
    return (x > threshold).astype(x.dtype)


# --- diagonal Gaussians --------------------------------------------------------------------------


def gaussian_kl(
    mu: Float[Array, "*n z"], logvar: Float[Array, "*n z"], prior_mean: Float[Array, "*n z"] | float = 0.0
) -> Float[Array, "*n"]:
    """Closed-form KL divergence of a diagonal Gaussian from :math:`\\mathcal N(m, I)`.

    .. math::
        \\mathrm{KL} = \\tfrac12 \\sum_j \\big(\\sigma_j^2 + (\\mu_j - m_j)^2 - 1 - \\log \\sigma_j^2\\big)

    Args:
        mu: means ``μ``.
        logvar: log variances ``log σ²`` (same shape).
        prior_mean: the prior mean ``m`` (0 for the standard normal prior; the HVAE's ``ẑ``).

    Returns:
        KL in nats, summed over the last axis.

    Raises:
        ValueError: ``mu`` and ``logvar`` differ in shape.
    """
    if jnp.shape(mu) != jnp.shape(logvar):
        raise ValueError(
            f"mu {jnp.shape(mu)} and logvar {jnp.shape(logvar)} must have the same shape; pass the two "
            "heads of one encoder"
        )
    check_broadcast(mu=jnp.shape(mu), prior_mean=jnp.shape(prior_mean))
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu - prior_mean) - 1.0 - logvar, axis=-1)


def diag_normal_log_pdf(
    z: Float[Array, "*n z"],
    mu: Float[Array, "*n z"] | float = 0.0,
    logvar: Float[Array, "*n z"] | float = 0.0,
) -> Float[Array, "*n"]:
    """:math:`\\log \\mathcal N(z; \\mu, \\mathrm{diag}\\,e^{\\log\\sigma^2})`, summed over the last axis.

    Raises:
        ValueError: ``z``, ``mu`` and ``logvar`` do not broadcast.
    """
    check_broadcast(z=jnp.shape(z), mu=jnp.shape(mu), logvar=jnp.shape(logvar))
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mu) * jnp.exp(-logvar), axis=-1)


def posterior_log_pdf_from_noise(
    logvar: Float[Array, "*n z"], eps: Float[Array, "*n z"]
) -> Float[Array, "*n"]:
    """:math:`\\log \\mathcal N(z; \\mu, \\sigma^2)` at a reparameterised draw
    :math:`z = \\mu + \\sigma\\varepsilon`.

    Since :math:`z - \\mu = \\sigma\\varepsilon`, the density needs only ``logvar`` and ``eps``:
    :math:`-\\tfrac12 \\sum_j (\\log 2\\pi + \\log\\sigma_j^2 + \\varepsilon_j^2)`.

    Raises:
        ValueError: ``logvar`` and ``eps`` do not broadcast.
    """
    check_broadcast(logvar=jnp.shape(logvar), eps=jnp.shape(eps))
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(eps), axis=-1)


# --- importance weighting ------------------------------------------------------------------------


def iwae_from_log_weights(log_w: Float[Array, "k *n"]) -> Float[Array, "*n"]:  # noqa: UP037, F821
    """:math:`\\log \\frac1k \\sum_i w_i` from ``k`` log weights on axis 0: ``logsumexp - log k``.

    Raises:
        ValueError: ``log_w`` is a scalar or has no weights (``k = 0``).
    """
    if jnp.ndim(log_w) < 1 or jnp.shape(log_w)[0] < 1:
        raise ValueError(
            f"log_w must have shape (k, ...) with k >= 1 importance samples on axis 0, got "
            f"{jnp.shape(log_w)}; pass at least one log weight per example"
        )
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])
