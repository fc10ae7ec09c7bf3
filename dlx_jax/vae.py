"""Variational autoencoder (book step 7): encoder, decoder, reparameterization, KL, losses, bounds.

The book's model, as plain pytrees of weights and pure functions (the caller jits):

* encoder ``d → h`` ReLU ``→ (μ, log σ²)``, each ``z`` wide (book: 784 → 200 → 20 + 20);
* decoder ``z → h`` ReLU ``→ d`` sigmoid (book: 20 → 200 → 784);
* reparameterization :math:`z = \\mu + \\sigma \\odot \\varepsilon` with
  :math:`\\varepsilon \\sim \\mathcal N(0, I)`.

Two objectives:

* :func:`book_loss`, the loss the book trains with (per batch of ``B`` examples)

  .. math::
      L = \\frac1B \\sum_{b} \\Big[ \\lVert x_b - \\hat x_b \\rVert^2
          + \\sum_j \\big(\\mu_{bj}^2 + \\sigma_{bj}^2 - 1 - \\log \\sigma_{bj}^2\\big) \\Big],

  a summed squared error plus *twice* the closed-form KL to the prior (it is the negative ELBO of
  a Gaussian decoder with variance 1/2, up to a constant, times 2);
* a proper per-example ELBO and the importance-weighted bound (IWAE) in **nats**, with the decoder's
  sigmoid outputs taken as the parameters of a likelihood over pixels (``likelihood=``):

  - ``"bernoulli"`` (default):
    :math:`\\log p(x|z) = \\sum_i x_i \\log \\lambda_i + (1-x_i)\\log(1-\\lambda_i)`,
    a true log-probability for *binarized* data ``x ∈ {0, 1}`` (binarize test images first,
    e.g. :func:`binarize`);
  - ``"continuous_bernoulli"``: the same plus the normalizer :math:`\\log C(\\lambda)` of the
    continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), a true log-density for ``x ∈ [0, 1]``.

  Both are computed from logits with ``log_sigmoid``/``softplus``, never ``log(sigmoid)``.

  .. math::
      \\mathrm{ELBO}(x) = \\mathbb E_{q(z|x)}[\\log p(x|z)] - \\mathrm{KL}(q(z|x)\\,\\|\\,p(z)),\\qquad
      \\mathcal L_k(x) = \\mathbb E\\Big[\\log \\frac1k \\sum_{i=1}^k \\frac{p(x, z_i)}{q(z_i|x)}\\Big]
      \\;\\ge\\; \\mathrm{ELBO}(x).

Shapes use ``d`` pixels (features), ``h`` hidden units, ``z`` latent units; functions broadcast over
any leading axes (written ``*n``). Dtypes are preserved (float32 in → float32 out). Shape errors raise
``ValueError`` at trace time; value checks on images (range, NaN) need concrete arrays and live in
:func:`validate_images`, which the experiments call before training.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "LIKELIHOODS",
    "Dense",
    "GaussianEncoder",
    "MLPDecoder",
    "VAEParams",
    "bernoulli_log_likelihood",
    "binarize",
    "book_loss",
    "continuous_bernoulli_log_norm",
    "decode",
    "decode_logits",
    "dense",
    "diag_normal_log_pdf",
    "elbo",
    "encode",
    "gaussian_encoder",
    "gaussian_kl",
    "init_dense",
    "init_params",
    "iwae_bound",
    "iwae_from_log_weights",
    "log_importance_weights",
    "log_likelihood",
    "mlp_decoder",
    "posterior_log_pdf_from_noise",
    "reconstruct",
    "reparameterize",
    "sample",
    "validate_images",
]

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
_LOG_2PI = math.log(2.0 * math.pi)


# --- layers -------------------------------------------------------------------------------------


class Dense(NamedTuple):
    """An affine layer ``y = x @ w + b``."""

    w: Float[Array, "i o"]
    b: Float[Array, " o"]


class GaussianEncoder(NamedTuple):
    """``x → h`` ReLU ``→ (μ, log σ²)``: the book's ``Encoder`` (two heads on one hidden layer)."""

    hidden: Dense
    mu: Dense
    logvar: Dense


class MLPDecoder(NamedTuple):
    """``z → h`` ReLU ``→ out`` (no output activation here; the caller applies sigmoid or not)."""

    hidden: Dense
    out: Dense


class VAEParams(NamedTuple):
    """The book's VAE: ``encoder`` (``q(z|x)``) and ``decoder`` (logits of ``p(x|z)``)."""

    encoder: GaussianEncoder
    decoder: MLPDecoder


def init_dense(key: PRNGKeyArray, *, fan_in: int, fan_out: int, dtype=jnp.float32) -> Dense:
    """PyTorch's ``nn.Linear`` default: ``w, b ~ U(-1/√fan_in, 1/√fan_in)``.

    Args:
        key: PRNG key.
        fan_in: (static) input width.
        fan_out: (static) output width.
        dtype: (static) parameter dtype.
    """
    if fan_in < 1 or fan_out < 1:
        raise ValueError(
            f"layer sizes must be >= 1, got fan_in={fan_in}, fan_out={fan_out}; pass positive sizes"
        )
    key_w, key_b = jax.random.split(key)
    bound = 1.0 / math.sqrt(fan_in)
    w = jax.random.uniform(key_w, (fan_in, fan_out), dtype, minval=-bound, maxval=bound)
    b = jax.random.uniform(key_b, (fan_out,), dtype, minval=-bound, maxval=bound)
    return Dense(w, b)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}; pass e.g. {name}=20")


def init_params(
    key: PRNGKeyArray, *, input_dim: int = 784, hidden_dim: int = 200, latent_dim: int = 20, dtype=jnp.float32
) -> VAEParams:
    """Initial weights of the book's VAE (PyTorch ``nn.Linear`` initialization).

    Args:
        key: PRNG key.
        input_dim: (static) ``d``, pixels per image (784 for 28×28).
        hidden_dim: (static) ``h``, hidden units of encoder and decoder (book: 200).
        latent_dim: (static) ``z``, latent units (book: 20; 2 for a plottable latent space).
        dtype: (static) parameter dtype.

    Raises:
        ValueError: a size is < 1.
    """
    _check_sizes(input_dim=input_dim, hidden_dim=hidden_dim, latent_dim=latent_dim)
    k = jax.random.split(key, 5)
    encoder = GaussianEncoder(
        hidden=init_dense(k[0], fan_in=input_dim, fan_out=hidden_dim, dtype=dtype),
        mu=init_dense(k[1], fan_in=hidden_dim, fan_out=latent_dim, dtype=dtype),
        logvar=init_dense(k[2], fan_in=hidden_dim, fan_out=latent_dim, dtype=dtype),
    )
    decoder = MLPDecoder(
        hidden=init_dense(k[3], fan_in=latent_dim, fan_out=hidden_dim, dtype=dtype),
        out=init_dense(k[4], fan_in=hidden_dim, fan_out=input_dim, dtype=dtype),
    )
    return VAEParams(encoder, decoder)


def dense(p: Dense, x: Float[Array, "*n i"]) -> Float[Array, "*n o"]:
    """``x @ w + b`` over the last axis of ``x``; raises ``ValueError`` on a width mismatch."""
    if x.ndim < 1 or x.shape[-1] != p.w.shape[0]:
        raise ValueError(
            f"input has shape {tuple(x.shape)} but the layer expects a last axis of {p.w.shape[0]}; "
            f"pass inputs of shape (..., {p.w.shape[0]}) (flatten images with x.reshape(len(x), -1))"
        )
    return x @ p.w + p.b


def gaussian_encoder(
    p: GaussianEncoder, x: Float[Array, "*n d"]
) -> tuple[Float[Array, "*n z"], Float[Array, "*n z"]]:
    """``(μ, log σ²)`` of a diagonal Gaussian from one ReLU hidden layer."""
    h = jax.nn.relu(dense(p.hidden, x))
    return dense(p.mu, h), dense(p.logvar, h)


def mlp_decoder(p: MLPDecoder, z: Float[Array, "*n z"]) -> Float[Array, "*n d"]:
    """``relu(z W1 + b1) W2 + b2`` (pre-activation output)."""
    return dense(p.out, jax.nn.relu(dense(p.hidden, z)))


# --- the VAE ------------------------------------------------------------------------------------


def encode(params: VAEParams, x: Float[Array, "*n d"]) -> tuple[Float[Array, "*n z"], Float[Array, "*n z"]]:
    """Parameters ``(μ, log σ²)`` of ``q(z|x) = N(μ, diag σ²)``; broadcasts over leading axes.

    Raises:
        ValueError: ``x.shape[-1]`` is not the model's input width ``d``.
    """
    return gaussian_encoder(params.encoder, x)


def decode_logits(params: VAEParams, z: Float[Array, "*n z"]) -> Float[Array, "*n d"]:
    """Logits ``ℓ`` of the decoder, :math:`\\hat x = \\sigma(\\ell)`; broadcasts over leading axes."""
    return mlp_decoder(params.decoder, z)


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
        raise ValueError(f"mu {mu.shape} and logvar {logvar.shape} must have the same shape")
    eps = jax.random.normal(key, mu.shape, dtype=jnp.result_type(mu, logvar))
    return mu + jnp.exp(0.5 * logvar) * eps


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
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {mu.shape} and logvar {logvar.shape} must have the same shape")
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu - prior_mean) - 1.0 - logvar, axis=-1)


def diag_normal_log_pdf(
    z: Float[Array, "*n z"],
    mu: Float[Array, "*n z"] | float = 0.0,
    logvar: Float[Array, "*n z"] | float = 0.0,
) -> Float[Array, "*n"]:
    """:math:`\\log \\mathcal N(z; \\mu, \\mathrm{diag}\\,e^{\\log\\sigma^2})`, summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mu) * jnp.exp(-logvar), axis=-1)


def _check_batch(params_in: int, x: Array) -> None:
    if x.ndim < 1 or x.shape[-1] != params_in:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but the model expects (..., {params_in}); "
            f"flatten images to (n, {params_in}) with x.reshape(len(x), -1)"
        )


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
    """
    _check_batch(params.encoder.hidden.w.shape[0], x)
    mu, logvar = encode(params, x)
    z = reparameterize(key, mu, logvar)
    x_hat = decode(params, z)
    per_example = jnp.sum(jnp.square(x - x_hat), axis=-1) + 2.0 * gaussian_kl(mu, logvar)
    return jnp.mean(per_example)


# --- likelihoods, ELBO and IWAE -----------------------------------------------------------------


def bernoulli_log_likelihood(logits: Float[Array, "*n d"], x: Float[Array, "*n d"]) -> Float[Array, "*n"]:
    """Bernoulli log-likelihood from logits, summed over the last axis.

    .. math::
        \\sum_i x_i \\log\\sigma(\\ell_i) + (1-x_i)\\log(1-\\sigma(\\ell_i))
        = \\sum_i x_i\\ell_i - \\mathrm{softplus}(\\ell_i)


    A log-probability in nats for ``x ∈ {0, 1}``; broadcasts ``logits`` against ``x``.
    """
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


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
    """``log p(x | z)`` in nats from decoder logits, for ``likelihood`` (static) in :data:`LIKELIHOODS`."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood={likelihood!r} is not one of {LIKELIHOODS}; pick one of them")
    ll = bernoulli_log_likelihood(logits, x)
    if likelihood == "continuous_bernoulli":
        ll = ll + jnp.sum(continuous_bernoulli_log_norm(logits), axis=-1)
    return ll


def posterior_log_pdf_from_noise(
    logvar: Float[Array, "*n z"], eps: Float[Array, "*n z"]
) -> Float[Array, "*n"]:
    """:math:`\\log \\mathcal N(z; \\mu, \\sigma^2)` at a reparameterised draw
    :math:`z = \\mu + \\sigma\\varepsilon`.

    Since :math:`z - \\mu = \\sigma\\varepsilon`, the density needs only ``logvar`` and ``eps``:
    :math:`-\\tfrac12 \\sum_j (\\log 2\\pi + \\log\\sigma_j^2 + \\varepsilon_j^2)`.
    """
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(eps), axis=-1)


def iwae_from_log_weights(log_w: Float[Array, "k *n"]) -> Float[Array, "*n"]:  # noqa: UP037, F821
    """:math:`\\log \\frac1k \\sum_i w_i` from ``k`` log weights on axis 0: ``logsumexp - log k``."""
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def _check_num_samples(num_samples: int) -> None:
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}; pass e.g. num_samples=1")


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
    _check_num_samples(num_samples)
    _check_batch(params.encoder.hidden.w.shape[0], x)
    mu, logvar = encode(params, x)
    eps = jax.random.normal(key, (num_samples, *mu.shape), dtype=mu.dtype)
    z = mu + jnp.exp(0.5 * logvar) * eps
    log_px = log_likelihood(decode_logits(params, z), x, likelihood=likelihood)
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
    _check_num_samples(num_samples)
    _check_batch(params.encoder.hidden.w.shape[0], x)
    mu, logvar = encode(params, x)
    eps = jax.random.normal(key, (num_samples, *mu.shape), dtype=mu.dtype)
    z = mu + jnp.exp(0.5 * logvar) * eps
    log_px = log_likelihood(decode_logits(params, z), x, likelihood=likelihood)
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
    _check_num_samples(num_samples)
    latent_dim = params.decoder.hidden.w.shape[0]
    z = jax.random.normal(key, (num_samples, latent_dim), dtype=params.decoder.hidden.w.dtype)
    return decode(params, z)


def reconstruct(params: VAEParams, x: Float[Array, "*n d"]) -> Float[Array, "*n d"]:
    """Deterministic reconstruction :math:`\\sigma(\\ell(\\mu(x)))` (decode the posterior mean)."""
    mu, _ = encode(params, x)
    return decode(params, mu)


def binarize(x: Float[Array, "*n d"], threshold: float = 0.5) -> Float[Array, "*n d"]:
    """Static binarization ``x > threshold`` as ``x``'s dtype (for the Bernoulli likelihood)."""
    return (x > threshold).astype(x.dtype)


# --- input validation (concrete arrays) ---------------------------------------------------------


def validate_images(x, *, input_dim: int = 784, name: str = "images") -> np.ndarray:
    """Check a concrete batch of images and return it flattened to float32 ``(n, d)``.

    Accepts ``(n, d)``, ``(n, H, W)`` or ``(n, H, W, 1)`` with ``H·W = d``, values in ``[0, 1]``
    (uint8 0–255 images are rejected: convert with ``dlx_jax.data.to_float_images``). This is a
    value check and so runs on concrete arrays only (call it before jitting, as the experiments do).

    Raises:
        ValueError: wrong shape, an empty batch, NaN/inf, or values outside ``[0, 1]``.
    """
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            f"validate_images needs a concrete array, got a tracer for {name}; call it outside jit"
        )
    arr = np.asarray(x)
    shape = arr.shape
    if arr.ndim == 4 and shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = arr.reshape(len(arr), -1)
    if arr.ndim != 2 or arr.shape[1] != input_dim:
        raise ValueError(
            f"{name} have shape {shape}; expected (n, {input_dim}), (n, H, W) or (n, H, W, 1) with "
            f"H*W = {input_dim} (e.g. 28x28 MNIST); reshape or resize the images"
        )
    if len(arr) == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} have dtype {arr.dtype}; expected floats in [0, 1] (uint8 pixels 0-255: divide by 255, "
            "e.g. with dlx_jax.data.to_float_images)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values; clean the data")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} have values in [{lo:g}, {hi:g}]; expected pixels in [0, 1] (divide 0-255 images by 255)"
        )
    return arr.astype(np.float32, copy=False)
