"""Property tests (hypothesis): for random valid shapes and values, the library's densities, EM
step, layers, losses and diffusion steps return finite values of the right shape and dtype, and
1-D densities integrate to one.

Shapes are drawn from small fixed sets and the functions are jitted once at module level, so each
shape compiles once however many examples run; values come from a numpy generator seeded by
hypothesis (cheap to draw, and a failing seed is reported and replayed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlx_jax import bounds, cnn, hvae, mixture, nn, vae
from dlx_jax import diffusion as dif
from dlx_jax import distributions as D
from tests.helpers import (
    ATOL_EM_MONOTONE_F32,
    RTOL_DENSITY_NORMALISATION,
    RTOL_EM_MONOTONE_F32,
    RTOL_F32,
)

F32 = np.float32
KEY = jax.random.key(0)
# few examples, no deadline (the first example of a shape compiles), no example database on disk
PROPERTY = settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
seeds = st.integers(0, 2**32 - 1)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def spd(g: np.random.Generator, d: int, lead: tuple[int, ...] = ()) -> np.ndarray:
    a = g.normal(size=(*lead, d, d))
    return (a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)).astype(F32)


def assert_finite(a, shape: tuple[int, ...], dtype=jnp.float32) -> None:
    a = jnp.asarray(a)
    assert a.shape == shape, (a.shape, shape)
    assert a.dtype == dtype, (a.dtype, dtype)
    assert np.isfinite(np.asarray(a)).all()


def trapezoid(values: np.ndarray, grid: np.ndarray) -> float:
    values, grid = np.asarray(values, np.float64), np.asarray(grid, np.float64)
    return float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(grid)))


# --- densities -------------------------------------------------------------------------------------

normal_pdf = jax.jit(D.normal_pdf)
mvn_logpdf = jax.jit(D.mvn_logpdf)
mvn_logpdf_tril = jax.jit(lambda x, m, tril: D.mvn_logpdf(x, m, scale_tril=tril))
gmm_logpdf = jax.jit(mixture.gmm_logpdf)


@PROPERTY
@given(seed=seeds, log_sigma=st.floats(np.log(1e-2), np.log(1e2)), mu=st.floats(-10, 10))
def test_normal_density_is_finite_and_integrates_to_one(seed, log_sigma, mu):
    sigma = float(np.exp(log_sigma))
    grid = (mu + sigma * np.linspace(-12.0, 12.0, 2401)).astype(F32)  # spacing sigma / 100
    p = normal_pdf(grid, F32(mu), F32(sigma))
    assert_finite(p, grid.shape)
    np.testing.assert_allclose(trapezoid(p, grid), 1.0, rtol=RTOL_DENSITY_NORMALISATION)
    x = rng(seed).normal(mu, 10 * sigma, size=7).astype(F32)
    assert_finite(jax.jit(D.normal_logpdf)(x, F32(mu), F32(sigma)), (7,))


@PROPERTY
@given(seed=seeds, d=st.sampled_from([1, 2, 3]), n=st.sampled_from([1, 5]))
def test_mvn_log_density_is_finite_with_the_batch_shape(seed, d, n):
    g = rng(seed)
    x = g.normal(0.0, 10.0, size=(n, d)).astype(F32)
    mean = g.normal(0.0, 5.0, size=d).astype(F32)
    cov = spd(g, d)
    out = mvn_logpdf(x, mean, cov)
    assert_finite(out, (n,))
    tril = np.linalg.cholesky(cov.astype(np.float64)).astype(F32)
    assert_finite(mvn_logpdf_tril(x, mean, tril), (n,))
    # leading axes broadcast: (n, 1, d) points against (3, d) means -> (n, 3)
    means = g.normal(size=(3, d)).astype(F32)
    assert_finite(mvn_logpdf(x[:, None, :], means, spd(g, d, (3,))), (n, 3))


def random_gmm(g: np.random.Generator, k: int, d: int, sigma: tuple[float, float]) -> mixture.GMMParams:
    weights = g.dirichlet(np.ones(k)).astype(F32)
    means = g.uniform(-5.0, 5.0, size=(k, d)).astype(F32)
    scales = g.uniform(*sigma, size=(k, d))
    covs = np.stack([np.diag(s**2) for s in scales]).astype(F32)
    return mixture.gmm_params_from_covariances(weights, means, covs)


@PROPERTY
@given(seed=seeds, k=st.sampled_from([1, 2, 3]))
def test_one_dimensional_mixture_density_integrates_to_one(seed, k):
    params = random_gmm(rng(seed), k, 1, (0.3, 3.0))
    grid = np.linspace(-45.0, 45.0, 4001).astype(F32)  # spacing 0.0225 <= sigma_min / 10
    log_p = gmm_logpdf(grid[:, None], params)
    assert_finite(log_p, grid.shape)
    np.testing.assert_allclose(trapezoid(np.exp(log_p), grid), 1.0, rtol=RTOL_DENSITY_NORMALISATION)


@PROPERTY
@given(seed=seeds, k=st.sampled_from([1, 3]), d=st.sampled_from([1, 2]))
def test_mixture_log_densities_are_finite(seed, k, d):
    g = rng(seed)
    params = random_gmm(g, k, d, (0.1, 3.0))
    x = g.normal(0.0, 20.0, size=(6, d)).astype(F32)
    assert_finite(gmm_logpdf(x, params), (6,))
    assert_finite(jax.jit(mixture.component_log_densities)(x, params), (6, k))
    assert_finite(jax.jit(mixture.e_step)(x, params), (6, k))


# --- one EM step -------------------------------------------------------------------------------------

em_step = jax.jit(mixture.em_step)
mean_ll = jax.jit(mixture.mean_log_likelihood)


@PROPERTY
@given(seed=seeds, k=st.sampled_from([1, 3]), d=st.sampled_from([1, 2]), spread=st.floats(0.1, 100.0))
def test_one_em_step_is_finite_and_does_not_lower_the_likelihood(seed, k, d, spread):
    g = rng(seed)
    centres = g.normal(0.0, spread, size=(k, d))
    x = (centres[g.integers(0, k, size=32)] + g.normal(size=(32, d))).astype(F32)
    params = mixture.init_params(jax.random.key(seed % 1000), x, k=k, method="kmeans++")
    new = em_step(x, params)
    assert_finite(new.log_weights, (k,))
    assert_finite(new.means, (k, d))
    assert_finite(new.scale_tril, (k, d, d))
    np.testing.assert_allclose(float(jnp.sum(new.weights)), 1.0, rtol=RTOL_F32)
    before, after = float(mean_ll(x, params)), float(mean_ll(x, new))
    assert after >= before - (RTOL_EM_MONOTONE_F32 * abs(before) + ATOL_EM_MONOTONE_F32), (before, after)


# --- layers ----------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="impl")
def _layers(x, w, b, mask, dense_w, impl):
    y = nn.relu(nn.conv2d(x, w, b, impl=impl))
    pooled = nn.max_pool2d(y, size=2)
    flat = nn.flatten(pooled)
    dropped = nn.dropout(None, flat, rate=0.5, mask=mask)
    return y, pooled, nn.dense(dropped, dense_w)


@PROPERTY
@given(
    seed=seeds,
    n=st.sampled_from([1, 2]),
    c=st.sampled_from([1, 3]),
    impl=st.sampled_from(["im2col", "lax"]),
    scale=st.floats(1e-3, 1e3),
)
def test_layers_are_finite_with_the_right_shapes(seed, n, c, impl, scale):
    g = rng(seed)
    x = (scale * g.normal(size=(n, 7, 7, c))).astype(F32)
    w = g.normal(size=(3, 3, c, 4)).astype(F32)
    b = g.normal(size=4).astype(F32)
    mask = g.integers(0, 2, size=(n, 2 * 2 * 4)).astype(F32)
    y, pooled, out = _layers(x, w, b, mask, g.normal(size=(16, 5)).astype(F32), impl)
    assert_finite(y, (n, 5, 5, 4))
    assert_finite(pooled, (n, 2, 2, 4))
    assert_finite(out, (n, 5))
    assert np.all(np.asarray(y) >= 0)
    mlp = nn.init_mlp(jax.random.key(seed % 1000), fan_in=3, hidden=4, fan_out=2)
    assert_finite(jax.jit(nn.mlp)(mlp, x[:, 0, 0, :1].repeat(3, axis=-1)), (n, 2))


# --- losses ----------------------------------------------------------------------------------------------


@functools.cache
def models():
    k1, k2, k3 = jax.random.split(KEY, 3)
    return (
        cnn.init_params(k1),
        vae.init_params(k2, input_dim=12, hidden_dim=8, latent_dim=3),
        hvae.init_params(k3, input_dim=12, hidden_dim=8, latent_dim=3),
    )


@jax.jit
def _cnn_loss(params, x, y, mask):
    return cnn.loss(params, x, y, dropout_mask=mask)


@jax.jit
def _vae_losses(key, vp, hp, x):
    return (
        vae.book_loss(key, vp, x),
        vae.elbo(key, vp, x, num_samples=2),
        vae.elbo(key, vp, x, analytic_kl=False, likelihood="continuous_bernoulli"),
        vae.iwae_bound(key, vp, x, num_samples=3),
        hvae.book_loss(key, hp, x),
        hvae.elbo(key, hp, x),
        hvae.iwae_bound(key, hp, x, num_samples=3, likelihood="continuous_bernoulli"),
    )


@jax.jit
def _bounds(logits, x, mu, logvar, log_w):
    return (
        bounds.log_likelihood(logits, x),
        bounds.log_likelihood(logits, x, likelihood="continuous_bernoulli"),
        bounds.gaussian_kl(mu, logvar),
        bounds.diag_normal_log_pdf(mu, 0.0, logvar),
        bounds.iwae_from_log_weights(log_w),
    )


@PROPERTY
@given(seed=seeds, labels=st.lists(st.integers(0, 9), min_size=2, max_size=2))
def test_cnn_loss_is_a_finite_scalar(seed, labels):
    params = models()[0]
    g = rng(seed)
    x = g.uniform(size=(2, 28, 28, 1)).astype(F32)
    mask = g.integers(0, 2, size=(2, 1600)).astype(F32)
    assert_finite(_cnn_loss(params, x, np.array(labels, np.int32), mask), ())


@PROPERTY
@given(seed=seeds, n=st.sampled_from([1, 3]), binary=st.booleans())
def test_vae_and_hvae_losses_are_finite(seed, n, binary):
    _, vp, hp = models()
    g = rng(seed)
    x = g.uniform(size=(n, 12))
    x = (x > 0.5 if binary else x).astype(F32)
    book, elbo_a, elbo_mc, iwae, h_book, h_elbo, h_iwae = _vae_losses(jax.random.key(seed % 1000), vp, hp, x)
    for scalar in (book, h_book):
        assert_finite(scalar, ())
    for per_example in (elbo_a, elbo_mc, iwae, h_elbo, h_iwae):
        assert_finite(per_example, (n,))


@PROPERTY
@given(seed=seeds, n=st.sampled_from([1, 3]), logit_scale=st.floats(1e-3, 1e3))
def test_bound_pieces_are_finite_for_extreme_logits(seed, n, logit_scale):
    g = rng(seed)
    logits = (logit_scale * g.normal(size=(n, 12))).astype(F32)
    x = g.uniform(size=(n, 12)).astype(F32)
    mu, logvar = g.normal(0, 10, size=(2, n, 3)).astype(F32)
    log_w = (100 * g.normal(size=(4, n))).astype(F32)
    for value in _bounds(logits, x, mu, np.clip(logvar, -20, 20), log_w):
        assert_finite(value, (n,))


# --- diffusion -------------------------------------------------------------------------------------------

SCHEDULE = dif.linear_schedule(50)


def apply_fn(params, state, x, t, labels, label_mask, *, train):
    """A simple noise model: linear in x, with a time and (optional) label term."""
    eps = params["w"] * x + params["b"] * (t / 50.0)[:, None, None, None]
    if labels is not None:
        eps = eps + 0.1 * (labels * label_mask)[:, None, None, None]
    return eps, state


_loss = jax.jit(dif.make_loss(apply_fn, SCHEDULE))
_loss_cond = jax.jit(dif.make_loss(apply_fn, SCHEDULE, conditional=True, label_drop=0.5, num_classes=10))


@jax.jit
def _steps(key, x, t, eps):
    t_prev = jnp.maximum(t - 7, 0)
    return (
        dif.ddpm_step(key, SCHEDULE, x, t, eps),
        dif.ddim_step(key, SCHEDULE, x, t, t_prev, eps, eta=0.5),
        dif.ddim_step(None, SCHEDULE, x, t, t_prev, eps, eta=0.0, clip_x0=(-1.0, 1.0)),
        dif.predict_x0(SCHEDULE, x, t, eps),
    )


@PROPERTY
@given(seed=seeds, n=st.sampled_from([1, 3]), t=st.integers(1, 50))
def test_diffusion_loss_and_one_sampler_step_are_finite(seed, n, t):
    g = rng(seed)
    key = jax.random.key(seed % 1000)
    params = {"w": F32(g.normal()), "b": F32(g.normal())}
    x0 = g.uniform(-1, 1, size=(n, 4, 4, 1)).astype(F32)
    loss, (_, metrics) = _loss(key, params, {}, x0)
    assert_finite(loss, ())
    labels = g.integers(0, 10, size=n).astype(np.int32)
    loss_c, (_, metrics_c) = _loss_cond(key, params, {}, (x0, labels))
    assert_finite(loss_c, ())
    assert 0.0 <= float(metrics_c["label_drop_fraction"]) <= 1.0
    x = g.normal(size=(n, 4, 4, 1)).astype(F32)
    eps = np.asarray(apply_fn(params, {}, x, np.full(n, t), None, None, train=False)[0])
    for out in _steps(key, x, jnp.int32(t), eps):
        assert_finite(out, x.shape)
