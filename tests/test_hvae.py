"""dlx_jax.hvae against naive numpy loops, finite differences and its own invariants."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_vae import batched_central_difference, np_bernoulli, np_log_normal, np_params, np_sigmoid

from dlx_jax import hvae
from tests.helpers import (
    ATOL_FD_VAE,
    ATOL_JIT_F32,
    ATOL_VAE_F32,
    MC_SIGMAS,
    RTOL_FD_VAE,
    RTOL_JIT_F32,
    RTOL_VAE_F32,
)

D, H, Z = 10, 6, 3


def tiny(key, dtype=jnp.float32):
    return hvae.init_params(key, input_dim=D, hidden_dim=H, latent_dim=Z, dtype=dtype)


def data(seed=0, n=4, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, D)).astype(dtype)


def np_enc(e, v):
    h = np.maximum(v @ e.hidden.w + e.hidden.b, 0.0)
    return h @ e.mu.w + e.mu.b, h @ e.logvar.w + e.logvar.b


def np_dec(d, v):
    return np.maximum(v @ d.hidden.w + d.hidden.b, 0.0) @ d.out.w + d.out.b


def test_book_loss_matches_naive_numpy(key):
    key_p, key_l = jax.random.split(key)
    params, x = tiny(key_p), data()
    loss = hvae.book_loss(key_l, params, jnp.asarray(x))
    p = np_params(params)
    key1, key2 = jax.random.split(key_l)
    eps1 = np.asarray(jax.random.normal(key1, (len(x), Z)), np.float64)
    eps2 = np.asarray(jax.random.normal(key2, (len(x), Z)), np.float64)
    total = 0.0
    for b in range(len(x)):
        mu1, lv1 = np_enc(p.encoder1, x[b])
        z1 = mu1 + np.exp(0.5 * lv1) * eps1[b]
        mu2, lv2 = np_enc(p.encoder2, z1)
        z2 = mu2 + np.exp(0.5 * lv2) * eps2[b]
        z_hat = np_dec(p.decoder2, z2)
        x_hat = np_sigmoid(np_dec(p.decoder1, z1))
        total += sum((x[b, i] - x_hat[i]) ** 2 for i in range(D))
        total -= sum(1 + lv2[j] - mu2[j] ** 2 - math.exp(lv2[j]) for j in range(Z))
        total -= sum(1 + lv1[j] - (mu1[j] - z_hat[j]) ** 2 - math.exp(lv1[j]) for j in range(Z))
    np.testing.assert_allclose(loss, total / len(x), rtol=RTOL_VAE_F32, atol=ATOL_VAE_F32)


def test_log_weights_elbo_iwae_match_naive_numpy(key):
    key_p, key_e = jax.random.split(key)
    params, x = tiny(key_p), (data(1) > 0.5).astype(np.float32)
    k = 3
    log_w = hvae.log_importance_weights(key_e, params, jnp.asarray(x), num_samples=k)
    p = np_params(params)
    key1, key2 = jax.random.split(key_e)
    eps1 = np.asarray(jax.random.normal(key1, (k, len(x), Z)), np.float64)
    eps2 = np.asarray(jax.random.normal(key2, (k, len(x), Z)), np.float64)
    expected = np.zeros((k, len(x)))
    for i in range(k):
        for b in range(len(x)):
            mu1, lv1 = np_enc(p.encoder1, x[b])
            z1 = mu1 + np.exp(0.5 * lv1) * eps1[i, b]
            mu2, lv2 = np_enc(p.encoder2, z1)
            z2 = mu2 + np.exp(0.5 * lv2) * eps2[i, b]
            log_p = (
                np_bernoulli(x[b], np_sigmoid(np_dec(p.decoder1, z1)))
                + np_log_normal(z1, np_dec(p.decoder2, z2), np.ones(Z))
                + np_log_normal(z2, np.zeros(Z), np.ones(Z))
            )
            log_q = np_log_normal(z1, mu1, np.exp(lv1)) + np_log_normal(z2, mu2, np.exp(lv2))
            expected[i, b] = log_p - log_q
    np.testing.assert_allclose(log_w, expected, rtol=RTOL_VAE_F32, atol=ATOL_VAE_F32)
    np.testing.assert_allclose(
        hvae.elbo(key_e, params, jnp.asarray(x), num_samples=k),
        expected.mean(0),
        rtol=RTOL_VAE_F32,
        atol=ATOL_VAE_F32,
    )
    top = expected.max(0)
    np.testing.assert_allclose(
        hvae.iwae_bound(key_e, params, jnp.asarray(x), num_samples=k),
        top + np.log(np.exp(expected - top).mean(0)),
        rtol=RTOL_VAE_F32,
        atol=ATOL_VAE_F32,
    )


def test_iwae_one_sample_equals_elbo_and_iwae_is_above_elbo(key):
    key_p, key_e, key_i = jax.random.split(key, 3)
    params, x = tiny(key_p), jnp.asarray(data(2) > 0.5, jnp.float32)
    np.testing.assert_allclose(
        hvae.iwae_bound(key_e, params, x, num_samples=1),
        hvae.elbo(key_e, params, x, num_samples=1),
        rtol=RTOL_JIT_F32,
        atol=ATOL_JIT_F32,
    )
    elbo = hvae.elbo(key_e, params, x, num_samples=20_000)
    iwae = jax.vmap(lambda k: hvae.iwae_bound(k, params, x, num_samples=64))(jax.random.split(key_i, 300))
    se = np.asarray(iwae).std(0) / math.sqrt(iwae.shape[0])
    assert np.all(np.asarray(iwae.mean(0) - elbo) > MC_SIGMAS * se)


def test_gradients_match_finite_differences(x64, key):
    key_p, key_l = jax.random.split(key)
    params = tiny(key_p, jnp.float64)
    x = jnp.asarray(data(3, dtype=np.float64))
    flat, unravel = ravel_pytree(params)
    for fn in (
        lambda p: hvae.book_loss(key_l, p, x),
        lambda p: jnp.sum(hvae.iwae_bound(key_l, p, x, num_samples=2)),
    ):
        f = lambda v: fn(unravel(v))  # noqa: E731, B023
        np.testing.assert_allclose(
            jax.jit(jax.grad(f))(flat),
            batched_central_difference(f, flat),
            rtol=RTOL_FD_VAE,
            atol=ATOL_FD_VAE,
        )


def test_sampling_follows_the_book_and_jit_equals_eager(key):
    key_p, key_s = jax.random.split(key)
    params = tiny(key_p)
    x = hvae.sample(key_s, params, num_samples=5)
    key2, key1 = jax.random.split(key_s)
    p = np_params(params)
    z2 = np.asarray(jax.random.normal(key2, (5, Z)), np.float64)
    z1 = np_dec(p.decoder2, z2) + np.asarray(jax.random.normal(key1, (5, Z)), np.float64)
    np.testing.assert_allclose(x, np_sigmoid(np_dec(p.decoder1, z1)), rtol=RTOL_VAE_F32, atol=ATOL_VAE_F32)
    xs = jnp.asarray(data(4))
    for fn in (hvae.book_loss, hvae.elbo, functools.partial(hvae.iwae_bound, num_samples=4)):
        np.testing.assert_allclose(
            jax.jit(fn)(key_s, params, xs), fn(key_s, params, xs), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved_and_bad_inputs(key, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = tiny(key, dtype)
        x = jnp.asarray(data(5), dtype)
        outs = [
            hvae.book_loss(key, params, x),
            hvae.elbo(key, params, x),
            hvae.sample(key, params, num_samples=2),
        ]
        assert all(o.dtype == dtype for o in outs)
    with pytest.raises(ValueError, match="expects"):
        hvae.book_loss(key, params, jnp.zeros((2, D + 3)))
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1"):
        hvae.init_params(key, latent_dim=0)
