"""dlx_jax.bounds: likelihoods, Gaussian densities, KL and the IWAE log-mean-exp against closed forms,
Monte Carlo, quadrature and naive numpy loops; dtypes and bad inputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from dlx_jax import bounds
from tests.helpers import ATOL_JIT_F32, MC_SIGMAS, RTOL_F64, RTOL_JIT_F32, RTOL_QUADRATURE


def np_log_normal(z, mu, var):
    return sum(
        -0.5 * math.log(2 * math.pi * var[j]) - 0.5 * (z[j] - mu[j]) ** 2 / var[j] for j in range(len(z))
    )


def test_gaussian_kl_matches_monte_carlo(key):
    key_mu, key_lv, key_eps = jax.random.split(key, 3)
    mu = jax.random.normal(key_mu, (4,))
    logvar = 0.5 * jax.random.normal(key_lv, (4,))
    prior_mean = jnp.array([0.3, -0.2, 0.0, 1.0])
    for m in (0.0, prior_mean):
        eps = jax.random.normal(key_eps, (200_000, 4))
        z = mu + jnp.exp(0.5 * logvar) * eps
        log_ratio = np.asarray(
            bounds.diag_normal_log_pdf(z, mu, logvar) - bounds.diag_normal_log_pdf(z, m), np.float64
        )
        se = log_ratio.std() / math.sqrt(len(log_ratio))
        assert abs(log_ratio.mean() - float(bounds.gaussian_kl(mu, logvar, m))) < MC_SIGMAS * se


def test_gaussian_kl_and_log_pdf_vs_closed_forms(x64):
    rng = np.random.default_rng(1)
    mu, logvar, m, z = rng.normal(size=(4, 6))
    var = np.exp(logvar)
    exact = 0.5 * sum(var[j] + (mu[j] - m[j]) ** 2 - 1 - logvar[j] for j in range(6))
    np.testing.assert_allclose(
        bounds.gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar), jnp.asarray(m)), exact, rtol=RTOL_F64
    )
    np.testing.assert_allclose(
        bounds.diag_normal_log_pdf(jnp.asarray(z), jnp.asarray(mu), jnp.asarray(logvar)),
        np_log_normal(z, mu, var),
        rtol=RTOL_F64,
    )


def test_continuous_bernoulli_normalizer_vs_quadrature(x64):
    for logit in (-30.0, -3.0, -0.2, -1e-3, 0.0, 5e-3, 0.7, 8.0):
        lam = 1.0 / (1.0 + math.exp(-logit))
        integral, _ = integrate.quad(
            lambda t, lam=lam: lam**t * (1 - lam) ** (1 - t), 0.0, 1.0, epsabs=0, epsrel=1e-13
        )
        np.testing.assert_allclose(
            bounds.continuous_bernoulli_log_norm(jnp.asarray(logit)),
            -math.log(integral),
            rtol=RTOL_QUADRATURE,
        )
    # the continuous-Bernoulli log-likelihood is the Bernoulli one plus the normalizers
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5)))
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 5)))
    np.testing.assert_allclose(
        bounds.log_likelihood(logits, x, likelihood="continuous_bernoulli")
        - bounds.log_likelihood(logits, x),
        jnp.sum(bounds.continuous_bernoulli_log_norm(logits), -1),
        rtol=RTOL_F64,
    )


def test_bernoulli_log_likelihood_and_iwae_formula_vs_naive_loops(x64):
    rng = np.random.default_rng(5)
    logits, x = rng.normal(size=(3, 7)) * 4, (rng.uniform(size=(3, 7)) > 0.5).astype(np.float64)
    probs = 1 / (1 + np.exp(-logits))
    expected = [
        sum(x[b, i] * math.log(probs[b, i]) + (1 - x[b, i]) * math.log(1 - probs[b, i]) for i in range(7))
        for b in range(3)
    ]
    np.testing.assert_allclose(bounds.bernoulli_log_likelihood(logits, x), expected, rtol=RTOL_F64)
    np.testing.assert_allclose(bounds.log_likelihood(logits, x), expected, rtol=RTOL_F64)
    log_w = rng.normal(size=(5, 3)) * 30  # spread out: a naive exp would lose the small weights
    naive = [max(log_w[:, b]) + math.log(np.mean(np.exp(log_w[:, b] - max(log_w[:, b])))) for b in range(3)]
    np.testing.assert_allclose(bounds.iwae_from_log_weights(jnp.asarray(log_w)), naive, rtol=RTOL_F64)
    np.testing.assert_array_equal(bounds.binarize(jnp.asarray([0.2, 0.5, 0.51, 1.0])), [0.0, 0.0, 1.0, 1.0])


def test_posterior_density_from_noise_equals_the_density_at_the_draw(x64):
    rng = np.random.default_rng(6)
    mu, logvar, eps = (jnp.asarray(rng.normal(size=(2, 4))) for _ in range(3))
    z = mu + jnp.exp(0.5 * logvar) * eps
    np.testing.assert_allclose(
        bounds.posterior_log_pdf_from_noise(logvar, eps),
        bounds.diag_normal_log_pdf(z, mu, logvar),
        rtol=RTOL_F64,
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved_jit_equals_eager_and_bad_inputs(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(7)
        a, b = (jnp.asarray(rng.normal(size=(3, 4)), dtype) for _ in range(2))
        outs = {
            "kl": bounds.gaussian_kl(a, b),
            "log_pdf": bounds.diag_normal_log_pdf(a, b, b),
            "noise": bounds.posterior_log_pdf_from_noise(a, b),
            "bern": bounds.log_likelihood(a, bounds.binarize(jax.nn.sigmoid(b))),
            "cb": bounds.log_likelihood(a, jax.nn.sigmoid(b), likelihood="continuous_bernoulli"),
            "iwae": bounds.iwae_from_log_weights(a),
        }
        assert all(v.dtype == dtype for v in outs.values())
        jitted = jax.jit(lambda a, b: bounds.gaussian_kl(a, b))(a, b)
        np.testing.assert_allclose(jitted, outs["kl"], rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    with pytest.raises(ValueError, match="same shape"):
        bounds.gaussian_kl(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="likelihood="):
        bounds.log_likelihood(jnp.zeros(3), jnp.zeros(3), likelihood="gaussian")
