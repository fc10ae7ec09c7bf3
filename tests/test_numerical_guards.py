"""Numerical guards: inputs at the edges of the valid range stay finite.

* EM with a component collapsing onto duplicated points (and onto one far outlier) stays finite
  with the default ``reg_covar`` — the M-step's fast moment formula loses its digits there and
  must fall back to centred covariances;
* the VAE and HVAE losses are finite for saturated (all-0 / all-1) images, saturated decoders and
  large-magnitude latents;
* diffusion at ``t = 1`` and ``t = T``: the loss terms and one sampler step are finite;
* one test runs all of the above with ``jax_debug_nans`` on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import diffusion as dif
from dlx_jax import hvae, mixture, vae
from dlx_jax.mixture._em import _m_step
from tests.helpers import RTOL_COLLAPSED_COVARIANCE_F32

F32 = np.float32


def all_finite(tree) -> bool:
    return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(tree))


def collapsing_data(distance: float = 10.0, seed: int = 0) -> np.ndarray:
    """20 copies of the origin, 30 standard-normal points and one outlier at (distance, distance)."""
    g = np.random.default_rng(seed)
    return np.concatenate([np.zeros((20, 2)), g.normal(size=(30, 2)), [[distance, distance]]]).astype(F32)


# --- EM ----------------------------------------------------------------------------------------------

FIT = jax.jit(mixture.fit, static_argnames="max_iter")


@pytest.mark.parametrize("distance", [10.0, 1000.0])
@pytest.mark.parametrize("k", [2, 3])
def test_em_with_a_collapsing_component_stays_finite_with_the_default_reg_covar(distance, k):
    x = collapsing_data(distance)
    for seed in range(3):
        init = mixture.init_params(jax.random.key(seed), x, k=k, method="kmeans++")
        params, info = FIT(x, init, max_iter=200)
        assert all_finite(params), (distance, k, seed)
        assert np.isfinite(np.asarray(info.exact_log_likelihood_trace[: int(info.n_iter) + 1])).all()
    best, restarts = mixture.fit_restarts(jax.random.key(9), x, k=k, n_init=4, method="kmeans++")
    assert all_finite(best) and np.isfinite(np.asarray(restarts.final_log_likelihood)).all()


def test_collapsed_component_covariance_is_reg_covar_not_cancellation_noise():
    """Responsibilities that put one component on the outlier alone: its covariance is exactly the
    ridge, although E[(x - x̄)²] - (μ - x̄)² cancels ~190 in float32 (noise ~1e-5 >> 1e-6)."""
    x = collapsing_data(10.0)
    log_resp = np.full((2, len(x)), -1e4, F32)
    log_resp[0, :-1] = 0.0  # component 0: everything but the outlier
    log_resp[1, -1] = 0.0  # component 1: the outlier alone
    params = jax.jit(_m_step, static_argnums=2)(jnp.asarray(x), jnp.asarray(log_resp), 1e-6)
    cov = np.asarray(params.covariances)
    np.testing.assert_allclose(np.diagonal(cov[1]), [1e-6, 1e-6], rtol=RTOL_COLLAPSED_COVARIANCE_F32)
    np.testing.assert_allclose(np.asarray(params.means[1]), x[-1], rtol=RTOL_COLLAPSED_COVARIANCE_F32)


def test_em_on_duplicates_only():
    x = np.repeat(np.array([[1.0, 2.0], [3.0, -1.0]], F32), 10, axis=0)
    init = mixture.init_params(jax.random.key(0), x, k=2)
    params, _ = mixture.fit(x, init)
    assert all_finite(params)
    with pytest.raises(ValueError, match="increase reg_covar"):
        mixture.fit(x, init, reg_covar=0.0)


# --- VAE / HVAE ------------------------------------------------------------------------------------------


def _saturated(params, scale: float):
    """The decoder's output layer scaled so that its logits are ~±scale (a saturated sigmoid)."""
    dec = params.decoder if hasattr(params, "decoder") else params.decoder1
    out = dec.out._replace(w=dec.out.w * scale, b=dec.out.b * scale)
    dec = dec._replace(out=out)
    return params._replace(decoder=dec) if hasattr(params, "decoder") else params._replace(decoder1=dec)


def _big_latent(params, scale: float):
    """The encoder's mean head scaled so that μ(x) (and so z) has magnitude ~scale."""
    name = "encoder" if hasattr(params, "encoder") else "encoder1"
    enc = getattr(params, name)
    enc = enc._replace(mu=enc.mu._replace(w=enc.mu.w * scale, b=enc.mu.b * scale + scale))
    return params._replace(**{name: enc})


@pytest.mark.parametrize("module", [vae, hvae], ids=["vae", "hvae"])
def test_vae_losses_are_finite_for_saturated_images_and_extreme_latents(module):
    key = jax.random.key(0)
    plain = module.init_params(key, input_dim=16, hidden_dim=8, latent_dim=3)

    @jax.jit
    def losses(p, x):
        values = (
            module.book_loss(key, p, x),
            module.elbo(key, p, x),
            module.elbo(key, p, x, likelihood="continuous_bernoulli"),
            module.iwae_bound(key, p, x, num_samples=4),
        )
        return values, jax.grad(lambda q: module.book_loss(key, q, x))(p)

    variants = {
        "plain": plain,
        "saturated decoder": _saturated(plain, 1e3),
        "large latent": _big_latent(plain, 1e3),
        "both": _big_latent(_saturated(plain, 1e3), 1e3),
    }
    for name, params in variants.items():
        for fill in (0.0, 1.0):  # all-black and all-white images, plus one half-and-half image
            x = np.full((3, 16), fill, F32)
            x[0, :8] = 1.0 - fill
            values, grads = losses(params, x)
            assert all_finite(values), (name, fill, values)
            assert all_finite(grads), (name, fill)


# --- diffusion ---------------------------------------------------------------------------------------------

SCHEDULE = dif.linear_schedule(1000)


def eps_model(x, t, labels=None, mask=None):
    """A fixed, non-trivial noise prediction (what a model at initialisation might return)."""
    return 0.5 * x + 0.01 * (t.astype(x.dtype) / 1000.0)[:, None, None, None]


@pytest.mark.parametrize("t", [1, 1000])
def test_diffusion_loss_terms_and_steps_are_finite_at_t_1_and_T(t):
    key = jax.random.key(t)
    n = 2
    x0 = np.linspace(-1.0, 1.0, n * 16, dtype=F32).reshape(n, 4, 4, 1)
    ts = jnp.full((n,), t, jnp.int32)
    x_t, eps = dif.q_sample(key, SCHEDULE, x0, ts)
    mse = jnp.mean(jnp.square(eps_model(x_t, ts) - eps))  # the loss at this t
    assert all_finite((x_t, mse))
    eps_hat = eps_model(x_t, ts)
    ddpm = dif.ddpm_step(key, SCHEDULE, x_t, ts, eps_hat)
    ddim = dif.ddim_step(key, SCHEDULE, x_t, ts, ts - 1, eps_hat, eta=1.0)
    jump = dif.ddim_step(None, SCHEDULE, x_t, ts, jnp.zeros_like(ts), eps_hat)
    x0_hat = dif.predict_x0(SCHEDULE, x_t, ts, eps_hat)
    assert all_finite((ddpm, ddim, jump, x0_hat))
    # the same under jit with a traced timestep (the samplers' loop counter)
    step = jax.jit(lambda k, x, s: dif.ddpm_step(k, SCHEDULE, x, s, eps_model(x, jnp.full((n,), s))))
    assert all_finite(step(key, x_t, jnp.int32(t)))


def test_diffusion_loss_of_a_model_is_finite_over_all_timesteps():
    def apply_fn(params, state, x, t, labels, mask, *, train):
        return eps_model(x, t) * params, state

    loss_fn = jax.jit(dif.make_loss(apply_fn, SCHEDULE))
    x0 = np.ones((64, 4, 4, 1), F32)  # 64 random timesteps per call, from 1 to 1000
    for i in range(3):
        loss, (_, metrics) = loss_fn(jax.random.key(i), jnp.float32(1.0), {}, x0)
        assert all_finite((loss, metrics))


# --- everything once more with jax_debug_nans --------------------------------------------------------------


def test_guards_hold_with_debug_nans_enabled():
    """With ``jax_debug_nans`` every computation whose output holds a NaN raises. EM steps with a
    collapsing component (whose fast M-step path produces a NaN factor that the fallback replaces
    inside the compiled step), the VAE loss on saturated images and a diffusion step at t = T must
    not trip it. The flag is restored afterwards.

    (``mixture.fit`` itself is not run here: its ``EMInfo`` traces are NaN after the last update by
    design, which ``jax_debug_nans`` reports.)"""
    before = jax.config.jax_debug_nans
    with jax.debug_nans(True):
        assert jax.config.jax_debug_nans
        x = collapsing_data(10.0)
        params = mixture.init_params(jax.random.key(0), x, k=3, method="kmeans++")
        step = jax.jit(mixture.em_step)
        for _ in range(30):
            params = step(x, params)
        assert all_finite(params)
        vp = vae.init_params(jax.random.key(1), input_dim=16, hidden_dim=8, latent_dim=3)
        loss = jax.jit(vae.book_loss)(jax.random.key(2), _saturated(vp, 1e3), np.ones((2, 16), F32))
        assert all_finite(loss)
        ts = jnp.full((2,), 1000, jnp.int32)
        x_t = np.ones((2, 4, 4, 1), F32)
        step = jax.jit(lambda k, x: dif.ddpm_step(k, SCHEDULE, x, ts, eps_model(x, ts)))
        assert all_finite(step(jax.random.key(3), x_t))
        with pytest.raises(FloatingPointError):  # the flag is really on
            jax.jit(jnp.log)(-jnp.ones(2))
    assert jax.config.jax_debug_nans == before
