"""Variational autoencoder (book step 7): encoder, decoder, reparameterization, losses, bounds.

The book's model, as plain pytrees of weights and pure functions (the caller jits):

* encoder ``d → h`` ReLU ``→ (μ, log σ²)``, each ``z`` wide (book: 784 → 200 → 20 + 20),
  a :class:`GaussianEncoder`;
* decoder ``z → h`` ReLU ``→ d`` sigmoid (book: 20 → 200 → 784), a :class:`dlx_jax.nn.MLP` whose
  outputs are logits;
* reparameterization :math:`z = \\mu + \\sigma \\odot \\varepsilon` with
  :math:`\\varepsilon \\sim \\mathcal N(0, I)`.

Two objectives:

* :func:`book_loss`, the loss the book trains with (per batch of ``B`` examples)

  .. math::
      L = \\frac1B \\sum_{b} \\Big[ \\lVert x_b - \\hat x_b \\rVert^2
          + \\sum_j \\big(\\mu_{bj}^2 + \\sigma_{bj}^2 - 1 - \\log \\sigma_{bj}^2\\big) \\Big],

  a summed squared error plus *twice* the closed-form KL to the prior (it is the negative ELBO of
  a Gaussian decoder with variance 1/2, up to a constant, times 2);
* a proper per-example ELBO (:func:`elbo`) and the importance-weighted bound (:func:`iwae_bound`) in
  **nats**, with the decoder's sigmoid outputs taken as the parameters of a likelihood over pixels
  (``likelihood=``: ``"bernoulli"`` on binarized data, the default, or ``"continuous_bernoulli"``).

The likelihoods, Gaussian densities, KL and the IWAE formula live in :mod:`dlx_jax.bounds` (shared
with :mod:`dlx_jax.hvae`) and are re-exported here: ``vae.gaussian_kl``, ``vae.log_likelihood``,
``vae.binarize``, ... Generic layers (:class:`~dlx_jax.nn.Dense`, :func:`~dlx_jax.nn.mlp`) come from
:mod:`dlx_jax.nn`.

Shapes use ``d`` pixels (features), ``h`` hidden units, ``z`` latent units; functions broadcast over
any leading axes (written ``*n``). Dtypes are preserved (float32 in → float32 out). Shape errors raise
``ValueError`` at trace time. The losses and bounds also reject pixels outside ``[0, 1]`` (e.g.
0-255 images, which would give a loss of ~1e5 or ±inf nats) and NaN when ``x`` is concrete; under
``jit`` values cannot be checked (wrap the function with ``dlx_jax.checked`` to check them there).
:func:`validate_images` checks a whole image batch before training, as the experiments do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dlx_jax import nn
from dlx_jax._checks import check_flat_pixels, check_nonempty, check_num_samples, check_sizes, validate_images
from dlx_jax.bounds import (
    LIKELIHOODS,
    bernoulli_log_likelihood,
    binarize,
    check_likelihood,
    continuous_bernoulli_log_norm,
    diag_normal_log_pdf,
    gaussian_kl,
    iwae_from_log_weights,
    log_likelihood,
    log_likelihood_unchecked,
    posterior_log_pdf_from_noise,
)

__all__ = [
    # the model
    "GaussianEncoder",
    "VAEParams",
    "book_loss",
    "decode",
    "decode_logits",
    "elbo",
    "encode",
    "gaussian_encoder",
    "init_gaussian_encoder",
    "init_params",
    "iwae_bound",
    "log_importance_weights",
    "reconstruct",
    "reparameterize",
    "sample",
    # re-exported from dlx_jax.bounds
    "LIKELIHOODS",
    "bernoulli_log_likelihood",
    "binarize",
    "continuous_bernoulli_log_norm",
    "diag_normal_log_pdf",
    "gaussian_kl",
    "iwae_from_log_weights",
    "log_likelihood",
    "posterior_log_pdf_from_noise",
    # concrete input check
    "validate_images",
]


# --- parameters ---------------------------------------------------------------------------------


class GaussianEncoder(NamedTuple):
    """``x → h`` ReLU ``→ (μ, log σ²)``: the book's ``Encoder`` (two heads on one hidden layer)."""

    hidden: nn.Dense
    mu: nn.Dense
    logvar: nn.Dense


class VAEParams(NamedTuple):
    """The book's VAE: ``encoder`` (``q(z|x)``) and ``decoder`` (logits of ``p(x|z)``)."""

    encoder: GaussianEncoder
    decoder: nn.MLP


def init_gaussian_encoder(
    keys: tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray],
    *,
    input_dim: int,
    hidden_dim: int,
    latent_dim: int,
    dtype=jnp.float32,
) -> GaussianEncoder:
    """A :class:`GaussianEncoder` ``input_dim → hidden_dim → 2 × latent_dim`` from three layer keys."""
    key_hidden, key_mu, key_logvar = keys
    return GaussianEncoder(
        hidden=nn.init_dense(key_hidden, fan_in=input_dim, fan_out=hidden_dim, dtype=dtype),
        mu=nn.init_dense(key_mu, fan_in=hidden_dim, fan_out=latent_dim, dtype=dtype),
        logvar=nn.init_dense(key_logvar, fan_in=hidden_dim, fan_out=latent_dim, dtype=dtype),
    )


def init_params(
    key: PRNGKeyArray, *, input_dim: int = 784, hidden_dim: int = 200, latent_dim: int = 20, dtype=jnp.float32
) -> VAEParams:
    """Initial weights of the book's VAE (PyTorch ``nn.Linear`` init, :func:`dlx_jax.nn.init_dense`).

    Args:
        key: PRNG key.
        input_dim: (static) ``d``, pixels per image (784 for 28×28).
        hidden_dim: (static) ``h``, hidden units of encoder and decoder (book: 200).
        latent_dim: (static) ``z``, latent units (book: 20; 2 for a plottable latent space).
        dtype: (static) parameter dtype.

    Raises:
        ValueError: a size is < 1.
    """
    check_sizes(input_dim=input_dim, hidden_dim=hidden_dim, latent_dim=latent_dim)
    k = jax.random.split(key, 5)
    encoder = init_gaussian_encoder(
        (k[0], k[1], k[2]), input_dim=input_dim, hidden_dim=hidden_dim, latent_dim=latent_dim, dtype=dtype
    )
    decoder = nn.MLP(
        hidden=nn.init_dense(k[3], fan_in=latent_dim, fan_out=hidden_dim, dtype=dtype),
        out=nn.init_dense(k[4], fan_in=hidden_dim, fan_out=input_dim, dtype=dtype),
    )
    return VAEParams(encoder, decoder)


def gaussian_encoder(
    p: GaussianEncoder, x: Float[Array, "*n d"]
) -> tuple[Float[Array, "*n z"], Float[Array, "*n z"]]:
    """``(μ, log σ²)`` of a diagonal Gaussian from one ReLU hidden layer; broadcasts over leading axes."""
    h = nn.relu(nn.dense(x, p.hidden.w, p.hidden.b))
    return nn.dense(h, p.mu.w, p.mu.b), nn.dense(h, p.logvar.w, p.logvar.b)


# --- the VAE -------------------------------------------------------------------------------------


def encode(params: VAEParams, x: Float[Array, "*n d"]) -> tuple[Float[Array, "*n z"], Float[Array, "*n z"]]:
    """Parameters ``(μ, log σ²)`` of ``q(z|x) = N(μ, diag σ²)``; broadcasts over leading axes.

    Raises:
        ValueError: ``x.shape[-1]`` is not the model's input width ``d``.
    """
    return gaussian_encoder(params.encoder, x)


def decode_logits(params: VAEParams, z: Float[Array, "*n z"]) -> Float[Array, "*n d"]:
    """Logits ``ℓ`` of the decoder, :math:`\\hat x = \\sigma(\\ell)`; broadcasts over leading axes."""
    return nn.mlp(params.decoder, z)


def decode(params: VAEParams, z: Float[Array, "*n z"]) -> Float[Array, "*n d"]:
    """The book's decoder output :math:`\\hat x = \\mathrm{sigmoid}(\\ell) \\in (0, 1)^d`."""
    return jax.nn.sigmoid(decode_logits(params, z))


def reparameterize(
    key: PRNGKeyArray, mu: Float[Array, "*n z"], logvar: Float[Array, "*n z"]
) -> Float[Array, "*n z"]:
    """One draw :math:`z = \\mu + e^{\\log\\sigma^2/2} \\odot \\varepsilon`, differentiable in μ and log σ².

    ``ε = jax.random.normal(key, mu.shape)``.
    """
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu {mu.shape} and logvar {logvar.shape} must have the same shape; pass the two heads of "
            "one encoder"
        )
    eps = jax.random.normal(key, mu.shape, dtype=jnp.result_type(mu, logvar))
    return mu + jnp.exp(0.5 * logvar) * eps


def book_loss(key: PRNGKeyArray, params: VAEParams, x: Float[Array, "*n d"]) -> Float[Array, ""]:
    """The book's training loss (one reparameterized draw per example), averaged over examples.

    .. math::
        L = \\frac1B \\sum_b \\Big[\\lVert x_b - \\sigma(\\ell(z_b)) \\rVert^2
            + \\sum_j (\\mu_{bj}^2 + \\sigma_{bj}^2 - 1 - \\log\\sigma_{bj}^2)\\Big]

    i.e. ``(F.mse_loss(x_hat, x, reduction="sum") + 2 * KL) / B``. ``B`` is the product of the
    leading axes of ``x``.

    Args:
        key: PRNG key for the draw of ``ε``.
        params: VAE weights.
        x: a batch of flattened images in ``[0, 1]``, shape ``(B, d)`` (or more leading axes).

    Returns:
        The scalar loss, in ``x``'s dtype.

    Raises:
        ValueError: ``x`` is not ``(..., d)`` floats, or (concrete) holds values outside ``[0, 1]``,
            or is an empty batch (the mean over no examples is undefined).
    """
    check_flat_pixels(x, params.encoder.hidden.w.shape[0])
    check_nonempty("x", math.prod(jnp.shape(x)[:-1]))
    mu, logvar = encode(params, x)
    z = reparameterize(key, mu, logvar)
    x_hat = decode(params, z)
    per_example = jnp.sum(jnp.square(x - x_hat), axis=-1) + 2.0 * gaussian_kl(mu, logvar)
    return jnp.mean(per_example)


def log_importance_weights(
    key: PRNGKeyArray,
    params: VAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int,
    likelihood: str = "bernoulli",
) -> Float[Array, "k *n"]:  # noqa: UP037, F821 (a jaxtyping shape)
    """:math:`\\log w_i = \\log p(x|z_i) + \\log p(z_i) - \\log q(z_i|x)` for ``z_i ~ q(z|x)``.

    Args:
        key: PRNG key; ``ε`` has shape ``(num_samples, *n, z)``.
        params: VAE weights.
        x: data, shape ``(*n, d)``.
        num_samples: (static) ``k``.
        likelihood: (static) see :func:`log_likelihood`.

    Returns:
        ``(k, *n)`` log weights in nats.
    """
    check_num_samples(num_samples)
    check_likelihood(likelihood)
    check_flat_pixels(x, params.encoder.hidden.w.shape[0])
    mu, logvar = encode(params, x)
    eps = jax.random.normal(key, (num_samples, *mu.shape), dtype=mu.dtype)
    z = mu + jnp.exp(0.5 * logvar) * eps
    log_px = log_likelihood_unchecked(decode_logits(params, z), x, likelihood)
    log_pz = diag_normal_log_pdf(z)
    log_qz = posterior_log_pdf_from_noise(logvar, eps)
    return log_px + log_pz - log_qz


def elbo(
    key: PRNGKeyArray,
    params: VAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int = 1,
    analytic_kl: bool = True,
    likelihood: str = "bernoulli",
) -> Float[Array, "*n"]:
    """Per-example ELBO in nats, a Monte Carlo estimate with ``num_samples`` draws of ``z``.

    With ``analytic_kl`` the KL term is closed form (:func:`gaussian_kl`, lower variance):
    :math:`\\frac1k\\sum_i \\log p(x|z_i) - \\mathrm{KL}(q\\|p)`; otherwise the plain estimator
    :math:`\\frac1k\\sum_i \\log w_i` (the same draws as :func:`iwae_bound` with the same key, so
    ``iwae_bound(key, ..., num_samples=1) == elbo(key, ..., analytic_kl=False)``).

    Args:
        key: PRNG key (same use as :func:`log_importance_weights`).
        params: VAE weights.
        x: data in ``[0, 1]`` (binarized for ``likelihood="bernoulli"``), shape ``(*n, d)``.
        num_samples: (static) ``k`` draws per example.
        analytic_kl: (static) use the closed-form KL.
        likelihood: (static) see :func:`log_likelihood`.

    Returns:
        ``(*n,)`` ELBO estimates in nats (negate for the usual "−ELBO" / NLL bound).
    """
    if not analytic_kl:
        return jnp.mean(
            log_importance_weights(key, params, x, num_samples=num_samples, likelihood=likelihood), axis=0
        )
    check_num_samples(num_samples)
    check_likelihood(likelihood)
    check_flat_pixels(x, params.encoder.hidden.w.shape[0])
    mu, logvar = encode(params, x)
    eps = jax.random.normal(key, (num_samples, *mu.shape), dtype=mu.dtype)
    z = mu + jnp.exp(0.5 * logvar) * eps
    log_px = log_likelihood_unchecked(decode_logits(params, z), x, likelihood)
    return jnp.mean(log_px, axis=0) - gaussian_kl(mu, logvar)


def iwae_bound(
    key: PRNGKeyArray,
    params: VAEParams,
    x: Float[Array, "*n d"],
    *,
    num_samples: int,
    likelihood: str = "bernoulli",
) -> Float[Array, "*n"]:
    """Importance-weighted bound :math:`\\log \\frac1k \\sum_i w_i` (Burda et al., 2016), in nats.

    Computed as ``logsumexp(log w, axis=0) - log k``. It increases with ``k`` in expectation and
    tends to ``log p(x)``: use a large ``k`` as a test log-likelihood estimate.

    Args:
        key: PRNG key (same use as :func:`log_importance_weights`).
        params: VAE weights.
        x: data, shape ``(*n, d)``.
        num_samples: (static) ``k``.
        likelihood: (static) see :func:`log_likelihood`.

    Returns:
        ``(*n,)`` bounds on ``log p(x)`` in nats.
    """
    return iwae_from_log_weights(
        log_importance_weights(key, params, x, num_samples=num_samples, likelihood=likelihood)
    )


# --- generation ---------------------------------------------------------------------------------


def sample(key: PRNGKeyArray, params: VAEParams, *, num_samples: int) -> Float[Array, "k d"]:
    """Images from the prior: :math:`z \\sim \\mathcal N(0, I)`, :math:`\\hat x = \\sigma(\\ell(z))`.

    Args:
        key: PRNG key.
        params: VAE weights.
        num_samples: (static) how many images.
    """
    check_num_samples(num_samples)
    latent_dim = params.decoder.hidden.w.shape[0]
    z = jax.random.normal(key, (num_samples, latent_dim), dtype=params.decoder.hidden.w.dtype)
    return decode(params, z)


def reconstruct(params: VAEParams, x: Float[Array, "*n d"]) -> Float[Array, "*n d"]:
    """Deterministic reconstruction :math:`\\sigma(\\ell(\\mu(x)))` (decode the posterior mean)."""
    mu, _ = encode(params, x)
    return decode(params, mu)
