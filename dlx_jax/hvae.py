"""Hierarchical VAE with two latent levels (book step 8), as pure functions on weight pytrees.

The book's model (``hidden_dim`` 100, both latents 20 wide):

* inference ``q(z1|x) = N(μ1, σ1²)`` (``encoder1``, ``d → h`` ReLU ``→ (μ1, log σ1²)``) and
  ``q(z2|z1) = N(μ2, σ2²)`` (``encoder2``, ``z → h`` ReLU ``→ (μ2, log σ2²)``);
* generation ``p(z2) = N(0, I)``, ``p(z1|z2) = N(ẑ, I)`` with ``ẑ = decoder2(z2)`` (``z → h`` ReLU
  ``→ z``, linear output) and ``p(x|z1)`` from ``decoder1`` (``z → h`` ReLU ``→ d``, sigmoid).

The book's loss (one draw of ``z1``, then of ``z2`` given it; ``B`` examples)

.. math::
    L = \\frac1B \\sum_b \\Big[\\lVert x - \\hat x\\rVert^2
        - \\sum_j (1 + \\log\\sigma_{2j}^2 - \\mu_{2j}^2 - \\sigma_{2j}^2)
        - \\sum_j (1 + \\log\\sigma_{1j}^2 - (\\mu_{1j} - \\hat z_j)^2 - \\sigma_{1j}^2)\\Big]

is ``MSE + 2 KL(q(z2|z1) ‖ p(z2)) + 2 KL(q(z1|x) ‖ p(z1|z2))`` with both KLs in closed form. The
ELBO and IWAE in nats (:func:`elbo`, :func:`iwae_bound`) use the full Monte Carlo weights

.. math::
    \\log w = \\log p(x|z_1) + \\log p(z_1|z_2) + \\log p(z_2) - \\log q(z_1|x) - \\log q(z_2|z_1),

with the pixel likelihoods of :mod:`dlx_jax.bounds`, as in :mod:`dlx_jax.vae` (Bernoulli on binarized
data by default).
Functions broadcast over leading axes of ``x`` (``*n``); dtypes are preserved.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dlx_jax import nn
from dlx_jax._checks import check_flat_pixels, check_nonempty, check_num_samples, check_sizes
from dlx_jax.bounds import (
    check_likelihood,
    diag_normal_log_pdf,
    gaussian_kl,
    iwae_from_log_weights,
    log_likelihood_unchecked,
    posterior_log_pdf_from_noise,
)
from dlx_jax.vae import GaussianEncoder, gaussian_encoder, init_gaussian_encoder

__all__ = [
    "HVAEParams",
    "book_loss",
    "decode",
    "elbo",
    "encode",
    "init_params",
    "iwae_bound",
    "log_importance_weights",
    "reconstruct",
    "sample",
]


class HVAEParams(NamedTuple):
    """Weights of the two-level VAE, named as in the book."""

    encoder1: GaussianEncoder  # q(z1 | x)
    encoder2: GaussianEncoder  # q(z2 | z1)
    decoder1: nn.MLP  # logits of p(x | z1)
    decoder2: nn.MLP  # mean ẑ of p(z1 | z2) = N(ẑ, I)


def init_params(
    key: PRNGKeyArray, *, input_dim: int = 784, hidden_dim: int = 100, latent_dim: int = 20, dtype=jnp.float32
) -> HVAEParams:
    """Initial weights (PyTorch ``nn.Linear`` initialization) of the book's hierarchical VAE.

    Args:
        key: PRNG key.
        input_dim: (static) ``d`` pixels.
        hidden_dim: (static) ``h`` hidden units of every MLP (book: 100).
        latent_dim: (static) ``z``, width of both ``z1`` and ``z2`` (book: 20).
        dtype: (static) parameter dtype.
    """
    check_sizes(input_dim=input_dim, hidden_dim=hidden_dim, latent_dim=latent_dim)
    k = jax.random.split(key, 14)

    def enc(k0, k1, k2, d_in):
        return init_gaussian_encoder(
            (k0, k1, k2), input_dim=d_in, hidden_dim=hidden_dim, latent_dim=latent_dim, dtype=dtype
        )

    def dec(k0, k1, d_out):
        return nn.MLP(
            nn.init_dense(k0, fan_in=latent_dim, fan_out=hidden_dim, dtype=dtype),
            nn.init_dense(k1, fan_in=hidden_dim, fan_out=d_out, dtype=dtype),
        )

    return HVAEParams(
        encoder1=enc(k[0], k[1], k[2], input_dim),
        encoder2=enc(k[3], k[4], k[5], latent_dim),
        decoder1=dec(k[6], k[7], input_dim),
        decoder2=dec(k[8], k[9], latent_dim),
    )


def encode(params: HVAEParams, x: Float[Array, "*n d"]) -> tuple[Float[Array, "*n z"], Float[Array, "*n z"]]:
    """``(μ1, log σ1²)`` of ``q(z1|x)`` (the first-level code, e.g. for a latent scatter plot)."""
    return gaussian_encoder(params.encoder1, x)


def decode(params: HVAEParams, z1: Float[Array, "*n z"]) -> Float[Array, "*n d"]:
    """:math:`\\hat x = \\mathrm{sigmoid}(\\mathrm{decoder1}(z_1))`."""
    return jax.nn.sigmoid(nn.mlp(params.decoder1, z1))


def _draw(key: PRNGKeyArray, mu: Array, logvar: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    eps = jax.random.normal(key, shape, dtype=mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps, eps


def book_loss(key: PRNGKeyArray, params: HVAEParams, x: Float[Array, "*n d"]) -> Float[Array, ""]:
    """The book's HVAE loss (module docstring), averaged over the leading axes of ``x``.

    Args:
        key: PRNG key, split into the draws of ``z1`` and ``z2``.
        params: HVAE weights.
        x: flattened images in ``[0, 1]``, ``(B, d)``.

    Raises:
        ValueError: ``x`` is not ``(..., d)`` floats, or (concrete) holds values outside ``[0, 1]``
            (under ``jit`` only in ``dlx_jax.checked`` mode); an empty batch (the mean over
            no examples is undefined).
    """
    check_flat_pixels(x, params.encoder1.hidden.w.shape[0])
    check_nonempty("x", math.prod(jnp.shape(x)[:-1]))
    key1, key2 = jax.random.split(key)
    mu1, logvar1 = gaussian_encoder(params.encoder1, x)
    z1, _ = _draw(key1, mu1, logvar1, mu1.shape)
    mu2, logvar2 = gaussian_encoder(params.encoder2, z1)
    z2, _ = _draw(key2, mu2, logvar2, mu2.shape)
    z_hat = nn.mlp(params.decoder2, z2)
    x_hat = decode(params, z1)
    per_example = (
        jnp.sum(jnp.square(x - x_hat), axis=-1)
        + 2.0 * gaussian_kl(mu2, logvar2)
        + 2.0 * gaussian_kl(mu1, logvar1, z_hat)
    )
    return jnp.mean(per_example)


def log_importance_weights(
    key: PRNGKeyArray,
    params: HVAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int,
    likelihood: str = "bernoulli",
) -> Float[Array, "k *n"]:  # noqa: UP037, F821 (a jaxtyping shape)
    """Log weights :math:`\\log p(x, z_1, z_2) - \\log q(z_1, z_2 | x)` for ``k`` joint draws.

    Args:
        key: PRNG key, split into the draws of ``z1`` and ``z2`` (each ``(k, *n, z)``).
        params: HVAE weights.
        x: data, ``(*n, d)``.
        num_samples: (static) ``k``.
        likelihood: (static) see :func:`dlx_jax.vae.log_likelihood`.

    Returns:
        ``(k, *n)`` log weights in nats.
    """
    check_num_samples(num_samples)
    check_likelihood(likelihood)
    check_flat_pixels(x, params.encoder1.hidden.w.shape[0])
    key1, key2 = jax.random.split(key)
    mu1, logvar1 = gaussian_encoder(params.encoder1, x)
    z1, eps1 = _draw(key1, mu1, logvar1, (num_samples, *mu1.shape))
    mu2, logvar2 = gaussian_encoder(params.encoder2, z1)
    z2, eps2 = _draw(key2, mu2, logvar2, mu2.shape)
    z_hat = nn.mlp(params.decoder2, z2)
    log_px = log_likelihood_unchecked(nn.mlp(params.decoder1, z1), x, likelihood)
    log_p = log_px + diag_normal_log_pdf(z1, z_hat) + diag_normal_log_pdf(z2)
    log_q = posterior_log_pdf_from_noise(logvar1, eps1) + posterior_log_pdf_from_noise(logvar2, eps2)
    return log_p - log_q


def elbo(
    key: PRNGKeyArray,
    params: HVAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int = 1,
    likelihood: str = "bernoulli",
) -> Float[Array, "*n"]:
    """Per-example ELBO in nats: the mean of ``num_samples`` (static) log weights.

    ``iwae_bound(key, ..., num_samples=1) == elbo(key, ..., num_samples=1)``.
    """
    return jnp.mean(
        log_importance_weights(key, params, x, num_samples=num_samples, likelihood=likelihood), axis=0
    )


def iwae_bound(
    key: PRNGKeyArray,
    params: HVAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int,
    likelihood: str = "bernoulli",
) -> Float[Array, "*n"]:
    """Importance-weighted bound ``logsumexp(log w) - log k`` on ``log p(x)`` in nats."""
    return iwae_from_log_weights(
        log_importance_weights(key, params, x, num_samples=num_samples, likelihood=likelihood)
    )


def sample(key: PRNGKeyArray, params: HVAEParams, *, num_samples: int) -> Float[Array, "k d"]:
    """Ancestral sampling as in the book: ``z2 ~ N(0, I)``, ``ẑ = decoder2(z2)``, ``z1 ~ N(ẑ, I)``, ``x̂``.

    Args:
        key: PRNG key.
        params: HVAE weights.
        num_samples: (static) how many images.
    """
    check_num_samples(num_samples)
    key2, key1 = jax.random.split(key)
    latent_dim = params.decoder2.hidden.w.shape[0]
    dtype = params.decoder2.hidden.w.dtype
    z2 = jax.random.normal(key2, (num_samples, latent_dim), dtype=dtype)
    z_hat = nn.mlp(params.decoder2, z2)
    z1 = z_hat + jax.random.normal(key1, z_hat.shape, dtype=dtype)
    return decode(params, z1)


def reconstruct(params: HVAEParams, x: Float[Array, "*n d"]) -> Float[Array, "*n d"]:
    """Deterministic reconstruction: decode the posterior mean ``μ1(x)``."""
    mu1, _ = encode(params, x)
    return decode(params, mu1)
