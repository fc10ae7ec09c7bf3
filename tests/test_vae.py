"""dlx_jax.vae against naive numpy loops, finite differences and its own invariants.

The likelihoods, Gaussian densities and KL it re-exports from dlx_jax.bounds are tested in
test_bounds.py."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from dlx_jax import bounds, nn, vae
from tests.helpers import (
    ATOL_FD_VAE,
    ATOL_JIT_F32,
    ATOL_VAE_F32,
    FD_STEP,
    MC_SIGMAS,
    RTOL_FD,
    RTOL_FD_VAE,
    RTOL_JIT_F32,
    RTOL_JIT_F64,
    RTOL_VAE_F32,
    central_difference,
)

D, H, Z = 12, 7, 3  # a tiny model: every test runs in milliseconds


def tiny(key, dtype=jnp.float32):
    return vae.init_params(key, input_dim=D, hidden_dim=H, latent_dim=Z, dtype=dtype)


def data(seed=0, n=5, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, D)).astype(dtype)


# --- naive numpy references (float64, loops over examples) ---------------------------------------


def np_params(params):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


def np_mlp(layer_h, layer_o, v):
    h = np.maximum(v @ layer_h.w + layer_h.b, 0.0)
    return h @ layer_o.w + layer_o.b


def np_encode(p, xi):
    h = np.maximum(xi @ p.encoder.hidden.w + p.encoder.hidden.b, 0.0)
    return h @ p.encoder.mu.w + p.encoder.mu.b, h @ p.encoder.logvar.w + p.encoder.logvar.b


def np_logits(p, z):
    return np_mlp(p.decoder.hidden, p.decoder.out, z)


def np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_log_normal(z, mu, var):
    return sum(
        -0.5 * math.log(2 * math.pi * var[j]) - 0.5 * (z[j] - mu[j]) ** 2 / var[j] for j in range(len(z))
    )


def np_bernoulli(x, probs):
    return sum(x[i] * math.log(probs[i]) + (1 - x[i]) * math.log(1 - probs[i]) for i in range(len(x)))


# --- tests -----------------------------------------------------------------------------------------


def test_bounds_are_re_exported_and_layers_come_from_nn(key):
    for name in bounds.__all__:
        assert getattr(vae, name) is getattr(bounds, name), name
    params = tiny(key)
    assert isinstance(params.encoder.hidden, nn.Dense) and isinstance(params.decoder, nn.MLP)
    z = jnp.asarray(np.random.default_rng(9).normal(size=(2, Z)), jnp.float32)
    np.testing.assert_array_equal(vae.decode_logits(params, z), nn.mlp(params.decoder, z))


def test_book_loss_matches_naive_numpy(key):
    key_p, key_loss = jax.random.split(key)
    params = tiny(key_p)
    x = data()
    loss = vae.book_loss(key_loss, params, jnp.asarray(x))
    p = np_params(params)
    eps = np.asarray(jax.random.normal(key_loss, (len(x), Z)), np.float64)  # reparameterize's draw
    total = 0.0
    for b in range(len(x)):
        mu, logvar = np_encode(p, x[b])
        z = mu + np.exp(0.5 * logvar) * eps[b]
        x_hat = np_sigmoid(np_logits(p, z))
        total += sum((x[b, i] - x_hat[i]) ** 2 for i in range(D))
        total += sum(mu[j] ** 2 + math.exp(logvar[j]) - 1 - logvar[j] for j in range(Z))
    np.testing.assert_allclose(loss, total / len(x), rtol=RTOL_VAE_F32, atol=ATOL_VAE_F32)
    assert loss.dtype == jnp.float32


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_elbo_and_iwae_match_naive_numpy(key, analytic_kl):
    key_p, key_e = jax.random.split(key)
    params = tiny(key_p)
    x = (data(2) > 0.5).astype(np.float32)
    k = 4
    elbo = vae.elbo(key_e, params, jnp.asarray(x), num_samples=k, analytic_kl=analytic_kl)
    iwae = vae.iwae_bound(key_e, params, jnp.asarray(x), num_samples=k)
    p = np_params(params)
    eps = np.asarray(jax.random.normal(key_e, (k, len(x), Z)), np.float64)
    for b in range(len(x)):
        mu, logvar = np_encode(p, x[b])
        var = np.exp(logvar)
        kl = 0.5 * sum(var[j] + mu[j] ** 2 - 1 - logvar[j] for j in range(Z))
        log_w, log_px = [], []
        for i in range(k):
            z = mu + np.sqrt(var) * eps[i, b]
            lp = np_bernoulli(x[b], np_sigmoid(np_logits(p, z)))
            log_px.append(lp)
            log_w.append(lp + np_log_normal(z, np.zeros(Z), np.ones(Z)) - np_log_normal(z, mu, var))
        expected = np.mean(log_px) - kl if analytic_kl else np.mean(log_w)
        np.testing.assert_allclose(elbo[b], expected, rtol=RTOL_VAE_F32, atol=ATOL_VAE_F32)
        top = max(log_w)
        np.testing.assert_allclose(
            iwae[b],
            top + math.log(np.mean([math.exp(v - top) for v in log_w])),
            rtol=RTOL_VAE_F32,
            atol=ATOL_VAE_F32,
        )


def test_iwae_with_one_sample_equals_the_elbo_estimate(key):
    key_p, key_e = jax.random.split(key)
    params, x = tiny(key_p), jnp.asarray(data(3))
    for likelihood in vae.LIKELIHOODS:
        np.testing.assert_allclose(
            vae.iwae_bound(key_e, params, x, num_samples=1, likelihood=likelihood),
            vae.elbo(key_e, params, x, num_samples=1, analytic_kl=False, likelihood=likelihood),
            rtol=RTOL_JIT_F32,
            atol=ATOL_JIT_F32,
        )


def test_iwae_bound_is_above_the_elbo_on_average(key):
    key_p, key_e, key_i = jax.random.split(key, 3)
    params, x = tiny(key_p), vae.binarize(jnp.asarray(data(4, n=3)))
    elbo = vae.elbo(key_e, params, x, num_samples=20_000)  # ≈ the exact ELBO
    iwae = jax.vmap(lambda k: vae.iwae_bound(k, params, x, num_samples=64))(jax.random.split(key_i, 400))
    se = np.asarray(iwae).std(0) / math.sqrt(iwae.shape[0])
    gap = np.asarray(iwae.mean(0) - elbo)
    assert np.all(gap > MC_SIGMAS * se), (gap, se)


def batched_central_difference(f, x):
    """helpers.central_difference, with all 2n perturbed evaluations in one vmapped call."""
    steps = FD_STEP * jnp.eye(x.size, dtype=x.dtype)
    values = np.asarray(jax.jit(jax.vmap(f))(jnp.concatenate([x + steps, x - steps])))
    return (values[: x.size] - values[x.size :]) / (2 * FD_STEP)


def test_batched_central_difference_matches_the_helper(x64):
    f = lambda v: jnp.sum(jnp.sin(v) * v[::-1])  # noqa: E731
    x = jnp.linspace(-1.0, 2.0, 5)
    np.testing.assert_allclose(
        batched_central_difference(f, x), central_difference(f, np.asarray(x)), rtol=RTOL_FD
    )


def test_gradients_match_finite_differences(x64, key):
    key_p, key_l, key_e = jax.random.split(key, 3)
    params = tiny(key_p, jnp.float64)
    x = jnp.asarray(data(5, dtype=np.float64))
    flat, unravel = ravel_pytree(params)
    for name, fn in [
        ("book_loss", lambda p: vae.book_loss(key_l, p, x)),
        ("elbo", lambda p: jnp.sum(vae.elbo(key_e, p, x, num_samples=2))),
        ("iwae", lambda p: jnp.sum(vae.iwae_bound(key_e, p, x, num_samples=3))),
    ]:
        f = lambda v: fn(unravel(v))  # noqa: E731, B023 (used inside this iteration only)
        grad = jax.jit(jax.grad(f))(flat)
        fd = batched_central_difference(f, flat)
        np.testing.assert_allclose(grad, fd, rtol=RTOL_FD_VAE, atol=ATOL_FD_VAE, err_msg=name)


def test_jit_equals_eager_and_vmap_equals_loop(key):
    key_p, key_e = jax.random.split(key)
    params, x = tiny(key_p), jnp.asarray(data(6))
    for fn in (vae.book_loss, vae.elbo, functools.partial(vae.iwae_bound, num_samples=5)):
        np.testing.assert_allclose(
            jax.jit(fn)(key_e, params, x), fn(key_e, params, x), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
        )
    # per-example functions broadcast over leading axes; vmap over examples (own keys) == a loop
    keys = jax.random.split(key_e, len(x))
    f = functools.partial(vae.iwae_bound, num_samples=5)
    looped = jnp.stack([f(keys[i], params, x[i]) for i in range(len(x))])
    np.testing.assert_allclose(
        jax.vmap(f, in_axes=(0, None, 0))(keys, params, x), looped, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    mu, logvar = vae.encode(params, x)
    np.testing.assert_allclose(
        jax.vmap(vae.gaussian_kl)(mu, logvar), vae.gaussian_kl(mu, logvar), rtol=RTOL_JIT_F32
    )


def test_reparameterize_has_the_right_moments_and_gradient(key, x64):
    mu, logvar = jnp.array([1.0, -2.0]), jnp.array([0.5, -1.0])
    z = jax.vmap(lambda k: vae.reparameterize(k, mu, logvar))(jax.random.split(key, 100_000))
    se = np.sqrt(np.exp(logvar) / z.shape[0])
    assert np.all(np.abs(z.mean(0) - mu) < MC_SIGMAS * se)
    g = jax.grad(lambda m: vae.reparameterize(key, m, logvar).sum())(mu)  # dz/dμ = 1
    np.testing.assert_allclose(g, np.ones(2), rtol=RTOL_JIT_F64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_preserved(key, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = tiny(key, dtype)
        x = jnp.asarray(data(7), dtype)
        outs = [
            vae.book_loss(key, params, x),
            vae.elbo(key, params, x),
            vae.iwae_bound(key, params, x, num_samples=2),
            vae.sample(key, params, num_samples=3),
            vae.reconstruct(params, x),
            *vae.encode(params, x),
        ]
        assert all(o.dtype == dtype for o in outs)
        assert vae.sample(key, params, num_samples=3).shape == (3, D)


def test_prior_samples_and_reconstructions_are_probabilities(key):
    params = tiny(key)
    for out in (vae.sample(key, params, num_samples=16), vae.reconstruct(params, jnp.asarray(data(8)))):
        assert np.all((np.asarray(out) > 0) & (np.asarray(out) < 1))


def test_bad_inputs_raise(key):
    params = tiny(key)
    with pytest.raises(ValueError, match="expects"):
        vae.book_loss(key, params, jnp.zeros((4, D + 1)))
    with pytest.raises(ValueError, match="latent_dim must be an integer >= 1"):
        vae.init_params(key, latent_dim=0)
    with pytest.raises(ValueError, match="num_samples must be"):
        vae.iwae_bound(key, params, jnp.zeros((2, D)), num_samples=0)
    with pytest.raises(ValueError, match="likelihood="):
        vae.elbo(key, params, jnp.zeros((2, D)), likelihood="gaussian")
    good = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    assert vae.validate_images(good).shape == (3, 784)
    with pytest.raises(ValueError, match=r"expected \(n, 784\)"):
        vae.validate_images(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="divide"):
        vae.validate_images(good * 255)
    with pytest.raises(ValueError, match="uint8|dtype"):
        vae.validate_images(np.zeros((3, 784), np.uint8))
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vae.validate_images(bad)
    images = vae.validate_images(good[..., 0], flatten=False)  # (n, 28, 28) -> (n, 28, 28, 1)
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(images, good)
    with pytest.raises(ValueError, match="flatten=True"):
        vae.validate_images(good.reshape(3, 784), flatten=False)
