"""dlx_jax.diffusion vs the book's numbers, naive numpy loops, closed forms and Monte Carlo.

Models are stand-ins: closed-form callables (the exact denoiser of Gaussian data) and tiny
recorders of what the library passes them; no network is trained here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import diffusion
from tests.helpers import (
    ATOL_DDIM_VS_DDPM_F32,
    ATOL_DDIM_VS_DDPM_F64,
    ATOL_DIFFUSION_F32,
    ATOL_F64,
    ATOL_FD,
    ATOL_JIT_F32,
    RTOL_BOOK_4_SIG_FIGS,
    RTOL_DDIM50_GAUSSIAN,
    RTOL_DDPM1000_GAUSSIAN,
    RTOL_DIFFUSION_F32,
    RTOL_F32,
    RTOL_F64,
    RTOL_FD,
    RTOL_JIT_F32,
    SAMPLE_N_SE,
    central_difference,
)

# data distribution of the end-to-end checks: every pixel N(M, S^2)
M, S = 0.3, 0.5


def _np_schedule(num_steps=1000, beta_start=1e-4, beta_end=0.02):
    """The book's schedule in float64 numpy, 1-based with index 0 = no noise (independent of the library)."""
    betas = np.concatenate([[0.0], np.linspace(beta_start, beta_end, num_steps)])
    alphas = 1.0 - betas
    return betas, alphas, np.cumprod(alphas)


def _bcast(v, x):
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _gaussian_eps_fn(schedule, m=M, s=S):
    """The exact (MMSE) noise predictor for x0 ~ N(m, s^2) per pixel:
    eps(x_t, t) = sqrt(1 - ab_t) (x_t - sqrt(ab_t) m) / (ab_t s^2 + 1 - ab_t)."""

    def eps_fn(x, t, labels=None, label_mask=None):
        ab = _bcast(schedule.alpha_bars[t], x)
        omab = _bcast(schedule.one_minus_alpha_bars[t], x)
        return jnp.sqrt(omab) * (x - jnp.sqrt(ab) * m) / (ab * s * s + omab)

    return eps_fn


def _z(key, shape, dtype):
    """The noise a step draws from ``key`` (the documented flat draw)."""
    return np.asarray(jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape))


class _Recorder:
    """A stand-in eps_fn that depends on labels and mask and records every call (at trace time)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, labels=None, label_mask=None):
        self.calls.append((x.shape, None if labels is None else labels.shape, label_mask))
        out = 0.5 * x + 0.01 * _bcast(t, x).astype(x.dtype)
        if labels is not None:
            out = out + _bcast(label_mask * (labels.astype(x.dtype) + 1.0), x)
        return out


# --- schedule ------------------------------------------------------------------------------------


def test_linear_schedule_matches_the_book():
    s = diffusion.linear_schedule()
    assert s.num_steps == 1000 and s.dtype == jnp.float32
    assert all(a.shape == (1001,) for a in s)
    # index 0 is "no noise"; index t is the book's 1-based t
    np.testing.assert_array_equal(
        [s.betas[0], s.alphas[0], s.alpha_bars[0], s.one_minus_alpha_bars[0]], [0, 1, 1, 0]
    )
    np.testing.assert_allclose([s.betas[1], s.betas[1000]], [1e-4, 0.02], rtol=RTOL_F32)
    np.testing.assert_allclose(s.alpha_bars[1], 0.9999, rtol=RTOL_F32)
    np.testing.assert_allclose(
        s.alpha_bars[np.array([100, 500, 1000])], [0.8970, 0.07859, 4.036e-5], rtol=RTOL_BOOK_4_SIG_FIGS
    )
    _, _, ab = _np_schedule()
    np.testing.assert_allclose(s.alpha_bars, ab, rtol=RTOL_F32, atol=0)
    # 1 - ab keeps its relative precision at small t (a float32 subtraction would not)
    np.testing.assert_allclose(s.one_minus_alpha_bars, 1 - ab, rtol=RTOL_F32, atol=0)
    np.testing.assert_allclose(s.alphas, 1 - s.betas, rtol=RTOL_F32)


def test_schedule_float64_and_from_betas(x64):
    betas, _, ab = _np_schedule(50, 1e-3, 0.05)
    s = diffusion.schedule_from_betas(betas[1:])
    assert s.dtype == jnp.float64 and s.num_steps == 50
    np.testing.assert_allclose(s.alpha_bars, ab, rtol=RTOL_F64, atol=0)
    np.testing.assert_allclose(s.one_minus_alpha_bars, 1 - ab, rtol=RTOL_F64, atol=ATOL_F64)
    assert diffusion.linear_schedule(10, dtype=jnp.float64).dtype == jnp.float64
    assert diffusion.schedule_from_betas(betas[1:], dtype=jnp.float32).dtype == jnp.float32
    # a constant schedule is non-decreasing, so allowed
    assert diffusion.schedule_from_betas(np.full(5, 0.1)).num_steps == 5


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1], "T >= 2"),
        ([[0.1, 0.2]], "1-D"),
        ([0.0, 0.1], r"\(0, 1\)"),
        ([0.1, 1.0], r"\(0, 1\)"),
        ([-0.1, 0.1], r"\(0, 1\)"),
        ([0.1, np.nan], r"\(0, 1\)"),
        ([0.2, 0.1, 0.3], "non-decreasing"),
    ],
)
def test_bad_betas_raise(betas, match):
    with pytest.raises(ValueError, match=match):
        diffusion.schedule_from_betas(np.asarray(betas))


def test_bad_linear_schedules_raise():
    with pytest.raises(ValueError, match=r"num_steps must be an int >= 2 \(static\)"):
        diffusion.linear_schedule(1)
    with pytest.raises(ValueError, match="beta_end must be >= beta_start"):
        diffusion.linear_schedule(10, 0.02, 1e-4)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        diffusion.linear_schedule(10, 0.0, 0.02)
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(diffusion.schedule_from_betas)(jnp.linspace(0.1, 0.2, 5))
    with pytest.raises(ValueError, match="must be a Schedule"):
        diffusion.q_sample_from_noise((1, 2, 3), np.zeros((1, 2)), 1, np.zeros((1, 2)))


# --- forward process -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [3, 200])
def test_q_sample_matches_iterated_one_step_process(t):
    """Closed form x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (vmapped over 20k keys) vs t iterations of
    x_s = sqrt(alpha_s) x_{s-1} + sqrt(beta_s) eps_s (numpy), both vs the theory N(sqrt(ab) x0, 1 - ab)."""
    n = 20_000
    x0 = np.array([-1.0, 0.5, 2.0])
    s = diffusion.linear_schedule()
    keys = jax.random.split(jax.random.key(1), n)
    closed = jax.vmap(lambda k: diffusion.q_sample(k, s, x0[None].astype(np.float32), t)[0][0])(keys)
    closed = np.asarray(closed, np.float64)
    betas, alphas, ab = _np_schedule()
    rng = np.random.default_rng(0)
    it = np.broadcast_to(x0, (n, 3)).copy()
    for step in range(1, t + 1):
        it = np.sqrt(alphas[step]) * it + np.sqrt(betas[step]) * rng.standard_normal((n, 3))
    mean, var = np.sqrt(ab[t]) * x0, 1 - ab[t]
    se_mean, se_var = np.sqrt(var / n), var * np.sqrt(2 / (n - 1))
    for draws in (closed, it):
        assert np.all(np.abs(draws.mean(0) - mean) <= SAMPLE_N_SE * se_mean)
        assert np.all(np.abs(draws.var(0, ddof=1) - var) <= SAMPLE_N_SE * se_var)
    # and the two samplers against each other (two-sample bounds)
    assert np.all(np.abs(closed.mean(0) - it.mean(0)) <= SAMPLE_N_SE * np.sqrt(2) * se_mean)
    assert np.all(np.abs(closed.var(0, ddof=1) - it.var(0, ddof=1)) <= SAMPLE_N_SE * np.sqrt(2) * se_var)


def test_q_sample_from_noise_values_dtype_and_jit():
    rng = np.random.default_rng(0)
    s = diffusion.linear_schedule()
    x0 = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 1, 500, 1000], np.int32)
    _, _, ab = _np_schedule()
    ref = np.sqrt(ab[t])[:, None, None, None] * x0 + np.sqrt(1 - ab[t])[:, None, None, None] * eps
    out = diffusion.q_sample_from_noise(s, x0, t, eps)
    assert out.dtype == jnp.float32 and out.shape == x0.shape
    np.testing.assert_allclose(out, ref, rtol=RTOL_DIFFUSION_F32, atol=ATOL_DIFFUSION_F32)
    np.testing.assert_array_equal(out[0], x0[0])  # t = 0: no noise
    jitted = jax.jit(diffusion.q_sample_from_noise)(s, x0, t, eps)
    np.testing.assert_allclose(jitted, out, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    # q_sample returns the noise it used, and a scalar t broadcasts over the batch
    key = jax.random.key(2)
    xt, e = diffusion.q_sample(key, s, x0, 7)
    np.testing.assert_array_equal(e, _z(key, x0.shape, jnp.float32))
    np.testing.assert_allclose(xt, diffusion.q_sample_from_noise(s, x0, np.full(4, 7), e), rtol=RTOL_JIT_F32)


def test_q_sample_bad_inputs_raise():
    s = diffusion.linear_schedule(10)
    x0 = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"t must lie in 0..10"):
        diffusion.q_sample(jax.random.key(0), s, x0, np.array([1, 11]))
    with pytest.raises(ValueError, match=r"shape \(n,\) = \(2,\)"):
        diffusion.q_sample(jax.random.key(0), s, x0, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="integer timesteps"):
        diffusion.q_sample(jax.random.key(0), s, x0, 1.5)
    with pytest.raises(ValueError, match="floating array"):
        diffusion.q_sample(jax.random.key(0), s, np.zeros((2, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="eps must have the shape of x0"):
        diffusion.q_sample_from_noise(s, x0, 1, np.zeros((2, 4)))
    # under jit t cannot be checked: an out-of-range t gives NaN, not a clamped index
    out = jax.jit(diffusion.q_sample_from_noise)(s, x0, jnp.array([1, 11]), x0)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


# --- reverse steps -------------------------------------------------------------------------------


def _np_ddpm_step(x, t, eps, z, betas, alphas, ab):
    t = np.asarray(t)
    c = lambda v: v[t].reshape(t.shape + (1,) * (x.ndim - t.ndim))  # noqa: E731
    mean = (x - (1 - c(alphas)) / np.sqrt(1 - c(ab)) * eps) / np.sqrt(c(alphas))
    ab_prev = ab[t - 1].reshape(c(ab).shape)
    var = (1 - c(alphas)) * (1 - ab_prev) / (1 - c(ab))
    return mean + np.where(c(np.arange(len(ab))) > 1, np.sqrt(var), 0.0) * z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ddpm_step_matches_naive_numpy(dtype):
    rng = np.random.default_rng(1)
    betas, alphas, ab = _np_schedule()
    t = np.array([1, 2, 37, 500, 999, 1000])
    x = rng.normal(size=(6, 2, 2, 1))
    eps = rng.normal(size=x.shape)
    key = jax.random.key(3)
    with jax.enable_x64(dtype == np.float64):
        s = diffusion.linear_schedule(dtype=dtype)
        out = diffusion.ddpm_step(key, s, x.astype(dtype), t, eps.astype(dtype))
        assert out.dtype == dtype
        z = _z(key, x.shape, dtype).astype(np.float64)
        # a scalar (traced) t inside jit, as the sampler uses it
        scalar = jax.jit(diffusion.ddpm_step)(key, s, x.astype(dtype), 37, eps.astype(dtype))
    ref = _np_ddpm_step(x, t, eps, z, betas, alphas, ab)
    tol = (
        dict(rtol=RTOL_F64, atol=ATOL_F64)
        if dtype == np.float64
        else dict(rtol=RTOL_DIFFUSION_F32, atol=ATOL_DIFFUSION_F32)
    )
    np.testing.assert_allclose(out, ref, **tol)
    np.testing.assert_allclose(scalar, _np_ddpm_step(x, np.full(6, 37), eps, z, betas, alphas, ab), **tol)
    # t = 1 has no noise: equal to the mean, whatever the key
    mean1 = (x[0] - betas[1] / np.sqrt(1 - ab[1]) * eps[0]) / np.sqrt(alphas[1])
    np.testing.assert_allclose(out[0], mean1, **tol)


def test_ddpm_step_t1_is_deterministic_and_clip_gives_posterior_mean(x64):
    rng = np.random.default_rng(2)
    s = diffusion.linear_schedule(dtype=jnp.float64)
    x, eps = rng.normal(size=(2, 3, 4))
    a = diffusion.ddpm_step(jax.random.key(0), s, x, 1, eps)
    np.testing.assert_array_equal(a, diffusion.ddpm_step(jax.random.key(1), s, x, 1, eps))
    np.testing.assert_array_equal(a, diffusion.ddpm_step(None, s, x, 1, eps))
    # with clip_x0 the mean is the posterior mean of q(x_{t-1} | x_t, clip(x0_hat)), written the
    # other way round: sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t
    betas, alphas, ab = _np_schedule()
    t = 40
    x0_hat = np.clip((x - np.sqrt(1 - ab[t]) * eps * 30) / np.sqrt(ab[t]), -1, 1)
    assert np.any(np.abs(x0_hat) == 1)  # clipping is active
    mean = (
        np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t]) * x0_hat
        + np.sqrt(alphas[t]) * (1 - ab[t - 1]) / (1 - ab[t]) * x
    )
    key = jax.random.key(4)
    out = diffusion.ddpm_step(key, s, x, t, eps * 30, clip_x0=(-1, 1))
    sigma = np.sqrt(betas[t] * (1 - ab[t - 1]) / (1 - ab[t]))
    np.testing.assert_allclose(
        out, mean + sigma * _z(key, x.shape, jnp.float64), rtol=RTOL_F64, atol=ATOL_F64
    )
    np.testing.assert_allclose(
        diffusion.predict_x0(s, x, t, eps), (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t]), rtol=RTOL_F64
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ddim_eta1_full_steps_is_the_ddpm_step(dtype):
    """With s = t - 1 and eta = 1, DDIM has the DDPM step's mean and sigma and draws the same z,
    so for every t in 1..T and two keys the outputs agree (same mean and same sigma)."""
    rng = np.random.default_rng(3)
    x, eps = rng.normal(size=(2, 1000, 3)).astype(dtype)
    t = np.arange(1, 1001)
    atol = ATOL_DDIM_VS_DDPM_F64 if dtype == np.float64 else ATOL_DDIM_VS_DDPM_F32
    with jax.enable_x64(dtype == np.float64):
        s = diffusion.linear_schedule(dtype=dtype)
        for seed in (0, 1):
            key = jax.random.key(seed)
            ddpm = diffusion.ddpm_step(key, s, x, t, eps)
            ddim = diffusion.ddim_step(key, s, x, t, t - 1, eps, eta=1.0)
            assert ddim.dtype == dtype
            np.testing.assert_allclose(ddim, ddpm, rtol=0, atol=atol)


def test_ddim_step_eta0_is_deterministic_and_last_step_is_x0_prediction():
    rng = np.random.default_rng(4)
    s = diffusion.linear_schedule()
    x, eps = rng.normal(size=(2, 3, 2, 2, 1)).astype(np.float32)
    t, t_prev = np.array([1000, 500, 2]), np.array([980, 1, 0])
    a = diffusion.ddim_step(jax.random.key(0), s, x, t, t_prev, eps)
    np.testing.assert_array_equal(a, diffusion.ddim_step(jax.random.key(1), s, x, t, t_prev, eps))
    np.testing.assert_array_equal(a, diffusion.ddim_step(None, s, x, t, t_prev, eps, eta=0.0))
    np.testing.assert_allclose(
        a[2], diffusion.predict_x0(s, x, t, eps)[2], rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    # against the paper's formula in float64 numpy (eta = 0)
    _, _, ab = _np_schedule()
    c = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    x0 = (x - c(np.sqrt(1 - ab[t])) * eps) / c(np.sqrt(ab[t]))
    ref = c(np.sqrt(ab[t_prev])) * x0 + c(np.sqrt(1 - ab[t_prev])) * eps
    np.testing.assert_allclose(a, ref, rtol=RTOL_DIFFUSION_F32, atol=ATOL_DIFFUSION_F32)
    clipped = diffusion.ddim_step(None, s, 5 * x, t, np.zeros(3, np.int32), eps, clip_x0=(-1.0, 1.0))
    assert np.all(np.abs(clipped) <= 1.0)


def test_ddim_timesteps():
    np.testing.assert_array_equal(diffusion.ddim_timesteps(10, 10), np.arange(1, 11))
    taus = diffusion.ddim_timesteps(1000, 50)
    assert taus[0] == 1 and taus[-1] == 1000 and len(taus) == 50
    assert np.all(np.abs(np.diff(taus) - 999 / 49) <= 1)
    np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 1), [1000])
    for bad in (0, 1001):
        with pytest.raises(ValueError, match=r"num_steps must lie in 1..T = 1..1000"):
            diffusion.ddim_timesteps(1000, bad)


def test_step_bad_inputs_raise():
    s = diffusion.linear_schedule(10)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"t must lie in 1..10"):
        diffusion.ddpm_step(jax.random.key(0), s, x, 0, x)
    with pytest.raises(ValueError, match=r"t must lie in 1..10"):
        diffusion.ddpm_step(jax.random.key(0), s, x, 11, x)
    with pytest.raises(ValueError, match="eps_hat must have the shape of x"):
        diffusion.ddpm_step(jax.random.key(0), s, x, 3, x[:1])
    with pytest.raises(ValueError, match="needs a PRNG key"):
        diffusion.ddpm_step(None, s, x, 3, x)
    with pytest.raises(ValueError, match=r"t_prev must lie in 0..9 \(the book's 1-based timesteps; T = 10\)"):
        diffusion.ddim_step(None, s, x, 10, 10, x)
    with pytest.raises(ValueError, match="t_prev must be smaller than t"):
        diffusion.ddim_step(None, s, x, 3, 3, x)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        diffusion.ddim_step(None, s, x, 3, 2, x, eta=-0.1)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        diffusion.ddim_step(None, s, x, 3, 2, x, eta=0.5)
    with pytest.raises(ValueError, match="clip_x0 must satisfy low < high"):
        diffusion.ddim_step(None, s, x, 3, 2, x, clip_x0=(1, -1))
    with pytest.raises(ValueError, match="clip_x0 must be None or a pair"):
        diffusion.ddpm_step(None, s, x, 1, x, clip_x0=1.0)


# --- guidance ------------------------------------------------------------------------------------


def test_guided_eps_limits_and_one_2n_call():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 3, 9, 1], np.int32)
    t = np.array([1, 5, 9, 10], np.int32)
    rec = _Recorder()
    cond = rec(x, t, labels, np.ones(4, np.float32))
    uncond = rec(x, t, labels, np.zeros(4, np.float32))
    assert not np.allclose(cond, uncond)
    rec.calls.clear()
    g3 = diffusion.guided_eps(rec, x, t, labels, 3.0)
    assert len(rec.calls) == 1 and rec.calls[0][0] == (8, 2, 2, 1) and rec.calls[0][1] == (8,)
    np.testing.assert_array_equal(rec.calls[0][2], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(
        diffusion.guided_eps(rec, x, t, labels, 1.0), cond, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    np.testing.assert_allclose(
        diffusion.guided_eps(rec, x, t, labels, 0.0), uncond, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    np.testing.assert_allclose(g3, uncond + 3 * (cond - uncond), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    assert g3.dtype == jnp.float32
    # gamma and labels may be traced; a scalar t broadcasts
    jitted = jax.jit(lambda g, y: diffusion.guided_eps(rec, x, 5, y, g))(3.0, labels)
    np.testing.assert_allclose(
        jitted, diffusion.guided_eps(rec, x, np.full(4, 5), labels, 3.0), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )


def test_guided_eps_interval_guides_only_inside():
    """interval=(lo, hi): per example, ε̂_u + γ(ε̂_c − ε̂_u) where lo <= t <= hi and ε̂_c elsewhere
    (both references computed from the recorder's own conditional and unconditional outputs); an
    interval covering 1..T is the plain rule; still one 2n call; γ may be traced."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 3, 9, 1, 4], np.int32)
    t = np.array([1, 3, 4, 6, 10], np.int32)
    rec = _Recorder()
    cond = rec(x, t, labels, np.ones(5, np.float32))
    uncond = rec(x, t, labels, np.zeros(5, np.float32))
    inside = (t >= 3) & (t <= 6)
    want = np.where(inside[:, None, None, None], uncond + 3 * (cond - uncond), cond)
    rec.calls.clear()
    got = diffusion.guided_eps(rec, x, t, labels, 3.0, interval=(3, 6))
    assert len(rec.calls) == 1
    np.testing.assert_allclose(got, want, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    assert not np.allclose(got, diffusion.guided_eps(rec, x, t, labels, 3.0))
    np.testing.assert_allclose(
        diffusion.guided_eps(rec, x, t, labels, 3.0, interval=(1, 10)),
        diffusion.guided_eps(rec, x, t, labels, 3.0),
        rtol=RTOL_JIT_F32,
        atol=ATOL_JIT_F32,
    )
    jitted = jax.jit(lambda g: diffusion.guided(rec, labels, g, interval=(3, 6))(x, t))(3.0)
    np.testing.assert_allclose(jitted, want, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    for bad, match in [
        ((0, 5), "1 <= t_lo <= t_hi"),
        ((6, 3), "1 <= t_lo <= t_hi"),
        ((1.0, 5), "two ints"),
        (400, "a pair"),
        ((1, 2, 3), "a pair"),
    ]:
        with pytest.raises(ValueError, match=match):
            diffusion.guided(rec, labels, 3.0, interval=bad)
        with pytest.raises(ValueError, match=match):
            diffusion.guided_eps(rec, x, t, labels, 3.0, interval=bad)


def test_guided_eps_bad_inputs_raise():
    x = np.zeros((2, 3), np.float32)
    rec = _Recorder()
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        diffusion.guided_eps(rec, x, 1, np.array([0, 1]), -1.0)
    with pytest.raises(ValueError, match=r"labels must lie in 0..9"):
        diffusion.guided_eps(rec, x, 1, np.array([0, 10]), 3.0, num_classes=10)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        diffusion.guided_eps(rec, x, 1, np.array([0, -1]), 3.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\) = \(2,\)"):
        diffusion.guided_eps(rec, x, 1, np.array([0, 1, 2]), 3.0)
    with pytest.raises(ValueError, match="labels must be integers"):
        diffusion.guided_eps(rec, x, 1, np.array([0.0, 1.0]), 3.0)
    with pytest.raises(ValueError, match=r"eps_fn must return .* \(2n, ...\)"):
        diffusion.guided_eps(lambda x, t, y, m: x[: len(x) // 2], x, 1, np.array([0, 1]), 3.0)


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_label_drop_mask_frequencies(mode):
    p, n, reps = 0.1, 16, 4000
    masks = jax.vmap(lambda k: diffusion.label_drop_mask(k, n=n, p=p, mode=mode))(
        jax.random.split(jax.random.key(0), reps)
    )
    masks = np.asarray(masks)
    assert masks.dtype == np.float32 and set(np.unique(masks)) <= {0.0, 1.0}
    if mode == "batch":  # all or none
        assert np.all((masks == masks[:, :1]).all(axis=1))
        draws = 1 - masks[:, 0]
    else:
        assert 0 < (1 - masks).sum(axis=1).max() < n  # mixed batches occur
        draws = (1 - masks).reshape(-1)
    se = np.sqrt(p * (1 - p) / draws.size)
    assert abs(draws.mean() - p) <= SAMPLE_N_SE * se
    with pytest.raises(ValueError, match="drop mode must be one of"):
        diffusion.label_drop_mask(jax.random.key(0), n=4, p=0.1, mode="pixel")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        diffusion.label_drop_mask(jax.random.key(0), n=4, p=1.5)


# --- loss ----------------------------------------------------------------------------------------


def _recording_apply(params, model_state, x, t, labels, label_mask, *, train):
    """eps_hat = w * x; the new state counts calls and records what the loss passed in."""
    new_state = {
        "count": model_state["count"] + 1,
        "x_t": x,
        "t": t,
        "labels": labels,
        "label_mask": label_mask,
        "train": jnp.asarray(train),
    }
    return params["w"] * x, new_state


def test_make_loss_equals_mse_by_hand_and_threads_state(x64):
    s = diffusion.linear_schedule(dtype=jnp.float64)
    rng = np.random.default_rng(6)
    x0 = rng.normal(size=(64, 3, 3, 1))
    params, state = {"w": jnp.float64(0.7)}, {"count": jnp.int32(4)}
    loss_fn = diffusion.make_loss(_recording_apply, s)
    loss, (new_state, metrics) = jax.jit(loss_fn)(jax.random.key(0), params, state, x0)
    assert int(new_state["count"]) == 5 and bool(new_state["train"])
    assert new_state["labels"] is None and new_state["label_mask"] is None
    t = np.asarray(new_state["t"])
    assert t.shape == (64,) and t.dtype == np.int32 and t.min() >= 1 and t.max() <= 1000
    x_t = np.asarray(new_state["x_t"])
    _, _, ab = _np_schedule()
    c = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    eps = (x_t - c(np.sqrt(ab[t])) * x0) / c(np.sqrt(1 - ab[t]))  # the noise the loss drew
    assert abs(eps.std() - 1) < 0.1  # it is standard normal noise (576 draws), not garbage
    np.testing.assert_allclose(loss, np.mean((0.7 * x_t - eps) ** 2), rtol=RTOL_F64)
    np.testing.assert_allclose(metrics["mse"], loss, rtol=RTOL_F64)
    # (x0, labels) batches are accepted by an unconditional loss, the labels ignored
    loss2, _ = loss_fn(jax.random.key(0), params, state, (x0, np.zeros(64, np.int32)))
    np.testing.assert_allclose(loss2, loss, rtol=RTOL_F64)
    # the gradient with respect to params matches central differences
    grad = jax.grad(lambda w: loss_fn(jax.random.key(0), {"w": w}, state, x0)[0])(0.7)
    fd = central_difference(lambda w: loss_fn(jax.random.key(0), {"w": w}, state, x0)[0], np.array(0.7))
    np.testing.assert_allclose(grad, fd, rtol=RTOL_FD, atol=ATOL_FD)


def test_make_loss_timesteps_are_uniform():
    s = diffusion.linear_schedule(10)
    loss_fn = diffusion.make_loss(_recording_apply, s)
    x0 = np.zeros((5000, 1), np.float32)
    _, (new_state, _) = loss_fn(jax.random.key(1), {"w": 1.0}, {"count": 0}, x0)
    counts = np.bincount(np.asarray(new_state["t"]), minlength=11)
    assert counts[0] == 0
    se = np.sqrt(5000 * 0.1 * 0.9)
    assert np.all(np.abs(counts[1:] - 500) <= SAMPLE_N_SE * se)


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_make_loss_label_dropping(mode):
    s = diffusion.linear_schedule(10)
    n, reps, p = 16, 2000, 0.1
    loss_fn = diffusion.make_loss(
        _recording_apply, s, conditional=True, label_drop=p, drop_mode=mode, num_classes=10
    )
    x0 = np.zeros((n, 2, 2, 1), np.float32)
    labels = np.arange(n, dtype=np.int32) % 10

    def one(key):
        _, (st, metrics) = loss_fn(key, {"w": 1.0}, {"count": 0}, (x0, labels))
        return st["label_mask"], st["labels"], metrics["label_drop_fraction"]

    masks, seen, frac = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), reps))
    masks = np.asarray(masks)
    np.testing.assert_array_equal(seen[0], labels)
    np.testing.assert_allclose(frac, 1 - masks.mean(axis=1), rtol=RTOL_JIT_F32)
    if mode == "batch":
        assert np.all((masks == masks[:, :1]).all(axis=1))  # all or none
        draws = 1 - masks[:, 0]
    else:
        draws = (1 - masks).reshape(-1)
    assert abs(draws.mean() - p) <= SAMPLE_N_SE * np.sqrt(p * (1 - p) / draws.size)


def test_make_loss_bad_inputs_raise():
    s = diffusion.linear_schedule(10)
    with pytest.raises(ValueError, match="needs conditional=True"):
        diffusion.make_loss(_recording_apply, s, label_drop=0.1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        diffusion.make_loss(_recording_apply, s, conditional=True, label_drop=1.5)
    with pytest.raises(ValueError, match="drop mode must be one of"):
        diffusion.make_loss(_recording_apply, s, conditional=True, drop_mode="pixel")
    cond = diffusion.make_loss(_recording_apply, s, conditional=True)
    x0 = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"needs batch = \(x0, labels\)"):
        cond(jax.random.key(0), {"w": 1.0}, {"count": 0}, x0)
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\) = \(4,\)"):
        cond(jax.random.key(0), {"w": 1.0}, {"count": 0}, (x0, np.zeros(3, np.int32)))
    bad_model = diffusion.make_loss(lambda p, st, x, *a, train: (x[:, :1], st), s)
    with pytest.raises(ValueError, match="apply_fn must return eps_hat shaped like"):
        bad_model(jax.random.key(0), {}, {}, x0)


# --- samplers ------------------------------------------------------------------------------------


def test_samplers_jit_equals_eager_and_ddim_full_eta1_is_ddpm():
    s = diffusion.linear_schedule(10, 1e-3, 0.2)
    labels = np.array([0, 1, 2, 3], np.int32)
    rec = _Recorder()
    shape = (4, 3, 3, 1)
    key = jax.random.key(7)
    eager = {}
    for sampler, kw in (
        (diffusion.ddpm_sample, {}),
        (diffusion.ddim_sample, {"num_steps": 4, "eta": 0.5}),
    ):
        eager[sampler] = sampler(key, diffusion.guided(rec, labels, 3.0), s, shape=shape, **kw)
        jitted = jax.jit(
            lambda k, y, g, sampler=sampler, kw=kw: sampler(
                k, diffusion.guided(rec, y, g), s, shape=shape, **kw
            )
        )(key, labels, 3.0)
        assert eager[sampler].shape == shape and eager[sampler].dtype == jnp.float32
        np.testing.assert_allclose(jitted, eager[sampler], rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    # DDIM over all T steps with eta = 1 is DDPM: same x_T, same per-step keys, same moments
    ddim = diffusion.ddim_sample(
        key, diffusion.guided(rec, labels, 3.0), s, shape=shape, num_steps=10, eta=1.0
    )
    np.testing.assert_allclose(ddim, eager[diffusion.ddpm_sample], rtol=0, atol=ATOL_DDIM_VS_DDPM_F32)


def test_sampler_conditioning_modes_call_eps_fn_as_documented():
    s = diffusion.linear_schedule(5)
    labels = np.array([1, 2], np.int32)
    for condition, batch, has_labels, mask in (
        (lambda f: f, 2, False, None),
        (lambda f: diffusion.conditional(f, labels), 2, True, [1, 1]),
        (lambda f: diffusion.guided(f, labels, 2.0), 4, True, [1, 1, 0, 0]),
    ):
        rec, masks, ts = _Recorder(), [], []

        def eps_fn(x, t, labels=None, label_mask=None, rec=rec, masks=masks, ts=ts):
            # runs once per step at run time, inside the compiled loop
            jax.debug.callback(lambda t_: ts.append(np.asarray(t_)), t, ordered=True)
            if label_mask is not None:
                jax.debug.callback(lambda m_: masks.append(np.asarray(m_)), label_mask, ordered=True)
            return rec(x, t, labels, label_mask)

        jax.block_until_ready(diffusion.ddpm_sample(jax.random.key(0), condition(eps_fn), s, shape=(2, 3)))
        assert len(rec.calls) == 1  # traced once: the loop is one lax.scan
        x_shape, labels_shape, m = rec.calls[0]
        assert x_shape == (batch, 3) and (labels_shape is not None) == has_labels
        np.testing.assert_array_equal(np.stack(ts), np.repeat(np.arange(5, 0, -1)[:, None], batch, 1))
        if mask is None:
            assert m is None and not masks
        else:
            np.testing.assert_array_equal(np.stack(masks), np.tile(mask, (5, 1)))


def test_ddim_eta0_sampler_is_deterministic_given_x_init_and_trajectory():
    s = diffusion.linear_schedule(20)
    eps_fn = _gaussian_eps_fn(s)
    x_init = np.asarray(jax.random.normal(jax.random.key(9), (3, 2)))
    a = diffusion.ddim_sample(jax.random.key(0), eps_fn, s, shape=(3, 2), num_steps=7, x_init=x_init)
    b = diffusion.ddim_sample(jax.random.key(1), eps_fn, s, shape=(3, 2), num_steps=7, x_init=x_init)
    np.testing.assert_array_equal(a, b)
    c = diffusion.ddim_sample(jax.random.key(1), eps_fn, s, shape=(3, 2), num_steps=7, x_init=x_init, eta=1.0)
    assert not np.allclose(a, c)
    trajectory = diffusion.ddim_trajectory(
        jax.random.key(0), eps_fn, s, shape=(3, 2), num_steps=7, x_init=x_init, every=3
    )
    x, traj, traj_t = trajectory.x0, trajectory.xs, trajectory.ts
    # steps 20 -> 17 -> 14 -> 11 -> 7 -> 4 -> 1 -> 0; recorded where 6, 3, 0 steps remain
    np.testing.assert_array_equal(diffusion.ddim_timesteps(20, 7), [1, 4, 7, 11, 14, 17, 20])
    np.testing.assert_array_equal(traj_t, [20, 17, 7, 0])
    np.testing.assert_array_equal(x, a)
    np.testing.assert_array_equal(traj[0], x_init)
    np.testing.assert_array_equal(traj[-1], x)
    x = diffusion.ddpm_sample(jax.random.key(0), eps_fn, s, shape=(3, 2))
    trajectory = diffusion.ddpm_trajectory(jax.random.key(0), eps_fn, s, shape=(3, 2), every=5)
    traj, traj_t = trajectory.xs, trajectory.ts
    np.testing.assert_array_equal(traj_t, [20, 15, 10, 5, 0])
    assert traj.shape == (5, 3, 2)
    np.testing.assert_array_equal(traj[-1], x)
    # the trajectory is the chain itself: the middle frame continued for 10 steps gives x_5
    x10 = traj[2]
    for t in range(10, 5, -1):
        x10 = diffusion.ddpm_step(
            jax.random.fold_in(jax.random.split(jax.random.key(0))[1], t),
            s,
            x10,
            t,
            eps_fn(x10, np.full(3, t), None, None),
        )
    np.testing.assert_allclose(x10, traj[3], rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def _propagated_moments(step_pairs, eta, betas_np, m=M, s=S, ddpm=False):
    """Exact mean and std of a sampler's output with the exact Gaussian denoiser, float64 numpy.

    With eps = c_t (x - d_t) every update is affine in x plus independent noise, so the mean and
    variance of x propagate exactly from x_T ~ N(0, 1)."""
    alphas = 1 - betas_np
    ab = np.cumprod(alphas)
    mu, var = 0.0, 1.0
    for t, sp in step_pairs:
        c, d = np.sqrt(1 - ab[t]) / (ab[t] * s * s + 1 - ab[t]), np.sqrt(ab[t]) * m
        if ddpm:
            k = betas_np[t] / np.sqrt(1 - ab[t]) * c
            a, b = (1 - k) / np.sqrt(alphas[t]), k * d / np.sqrt(alphas[t])
            noise = betas_np[t] * (1 - ab[t - 1]) / (1 - ab[t])
        else:
            x0_a, x0_b = (
                (1 - np.sqrt(1 - ab[t]) * c) / np.sqrt(ab[t]),
                np.sqrt(1 - ab[t]) * c * d / np.sqrt(ab[t]),
            )
            noise = eta**2 * (1 - ab[sp]) / (1 - ab[t]) * (1 - ab[t] / ab[sp])
            q = np.sqrt(1 - ab[sp] - noise)
            a, b = np.sqrt(ab[sp]) * x0_a + q * c, np.sqrt(ab[sp]) * x0_b - q * c * d
        mu, var = a * mu + b, a * a * var + noise
    return mu, np.sqrt(var)


@pytest.mark.parametrize("kind", ["ddpm1000", "ddim50"])
def test_exact_gaussian_denoiser_recovers_the_data_distribution(kind):
    """x0 ~ N(M, S^2) per pixel, the exact eps predictor, T = 1000: samples have the mean and std
    that exact moment propagation predicts (within SAMPLE_N_SE standard errors), and those are
    M and S up to the samplers' own discretisation error (named tolerances)."""
    s = diffusion.linear_schedule()
    betas, _, _ = _np_schedule()
    eps_fn = _gaussian_eps_fn(s)
    shape = (2000, 4, 4, 1)  # 32,000 independent pixels
    if kind == "ddpm1000":
        sample = jax.jit(lambda k: diffusion.ddpm_sample(k, eps_fn, s, shape=shape))
        mu, sd = _propagated_moments([(t, t - 1) for t in range(1000, 0, -1)], 1.0, betas, ddpm=True)
        rtol = RTOL_DDPM1000_GAUSSIAN
    else:
        sample = jax.jit(lambda k: diffusion.ddim_sample(k, eps_fn, s, shape=shape, num_steps=50))
        taus = diffusion.ddim_timesteps(1000, 50)[::-1]
        mu, sd = _propagated_moments(zip(taus, np.append(taus[1:], 0), strict=True), 0.0, betas)
        rtol = RTOL_DDIM50_GAUSSIAN
    x = np.asarray(sample(jax.random.key(11)), np.float64).reshape(-1)
    n = x.size
    assert abs(x.mean() - mu) <= SAMPLE_N_SE * sd / np.sqrt(n)
    assert abs(x.std() - sd) <= SAMPLE_N_SE * sd / np.sqrt(2 * n)
    assert abs(mu - M) <= rtol * S and abs(sd - S) <= rtol * S
    assert abs(x.mean() - M) <= rtol * S + SAMPLE_N_SE * sd / np.sqrt(n)
    assert abs(x.std() - S) <= rtol * S + SAMPLE_N_SE * sd / np.sqrt(2 * n)


def test_samplers_float64(x64):
    s = diffusion.linear_schedule(8, dtype=jnp.float64)
    eps_fn = _gaussian_eps_fn(s)
    assert diffusion.ddpm_sample(jax.random.key(0), eps_fn, s, shape=(2, 3)).dtype == jnp.float64
    assert (
        diffusion.ddim_sample(jax.random.key(0), eps_fn, s, shape=(2, 3), num_steps=3, eta=0.3).dtype
        == jnp.float64
    )
    # a float32 x_init sets the dtype when none is given
    x32 = np.zeros((2, 3), np.float32)
    assert diffusion.ddpm_sample(jax.random.key(0), eps_fn, s, shape=(2, 3), x_init=x32).dtype == jnp.float32
    xt, eps = diffusion.q_sample(jax.random.key(0), s, np.zeros((2, 3)), 4)
    assert xt.dtype == eps.dtype == jnp.float64


def test_vmap_equals_loop_and_schedule_as_jit_argument():
    s = diffusion.linear_schedule(10)
    rng = np.random.default_rng(8)
    x, eps = rng.normal(size=(2, 2, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), 4)
    vm = jax.vmap(lambda k: diffusion.ddpm_step(k, s, x, 5, eps))(keys)
    np.testing.assert_allclose(
        vm, [diffusion.ddpm_step(k, s, x, 5, eps) for k in keys], rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    vm = jax.vmap(lambda k: diffusion.q_sample(k, s, x, np.array([1, 10]))[0])(keys)
    np.testing.assert_allclose(
        vm,
        [diffusion.q_sample(k, s, x, np.array([1, 10]))[0] for k in keys],
        rtol=RTOL_JIT_F32,
        atol=ATOL_JIT_F32,
    )
    # the schedule is a pytree: it can be a (traced) jit argument; T stays static
    eps_fn = _gaussian_eps_fn(s)
    as_arg = jax.jit(lambda k, sch: diffusion.ddim_sample(k, eps_fn, sch, shape=(2, 3), num_steps=4, eta=0.5))
    np.testing.assert_allclose(
        as_arg(keys[0], s),
        diffusion.ddim_sample(keys[0], eps_fn, s, shape=(2, 3), num_steps=4, eta=0.5),
        rtol=RTOL_JIT_F32,
        atol=ATOL_JIT_F32,
    )


def test_make_eps_fn_uses_eval_mode_and_drops_state():
    seen = {}

    def apply_fn(params, model_state, x, t, labels, label_mask, *, train):
        seen["train"] = train
        return params * x, {"changed": True}

    eps_fn = diffusion.make_eps_fn(apply_fn, 2.0, {"changed": False})
    np.testing.assert_array_equal(
        eps_fn(np.ones((2, 1), np.float32), np.ones(2, np.int32), None, None), [[2], [2]]
    )
    assert seen["train"] is False


def test_sampler_bad_inputs_raise():
    s = diffusion.linear_schedule(10)
    rec = _Recorder()
    key = jax.random.key(0)
    labels = np.array([0, 1], np.int32)
    sample = functools.partial(diffusion.ddpm_sample, key, schedule=s, shape=(2, 3))
    ddim = functools.partial(diffusion.ddim_sample, key, rec, s, shape=(2, 3))
    cases = [
        (lambda: diffusion.guided(rec, None, 3.0), "gamma .* needs labels"),
        (lambda: diffusion.guided(rec, labels, -1.0), "gamma must be >= 0"),
        (
            lambda: sample(eps_fn=diffusion.conditional(rec, np.array([0, 1, 2], np.int32))),
            r"labels must have shape \(n,\) = \(2,\)",
        ),
        (
            lambda: diffusion.conditional(rec, np.array([0, 10], np.int32), num_classes=10),
            r"labels must lie in 0..9",
        ),
        (lambda: sample(eps_fn=rec, x_init=np.zeros((3, 3), np.float32)), "x_init must have shape"),
        (
            lambda: diffusion.ddpm_trajectory(key, rec, s, shape=(2, 3), every=0),
            "every must be an int >= 1",
        ),
        (lambda: ddim(num_steps=11), r"num_steps must lie in 1..T = 1..10"),
        (lambda: ddim(num_steps=0), r"num_steps must lie in 1..T"),
        (lambda: ddim(eta=-1.0, num_steps=5), "eta must be >= 0"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive ints"):
        diffusion.ddpm_sample(key, rec, s, shape=(0, 3))
    with pytest.raises(ValueError, match="eps_fn must return an array shaped like its input"):
        diffusion.ddim_sample(key, lambda x, t: x[:, :1], s, shape=(2, 3), num_steps=5)


def _old_style_sampler(key, predict, schedule, shape, *, ddim_steps=None, eta=0.0):
    """The samplers as they were before the ε-function transforms (PR 13), written out: the same
    draws and the same steps, with the prediction ``predict(x, t_scalar)`` chosen by the caller."""
    key_init, key_steps = jax.random.split(key)
    x = jax.random.normal(key_init, (int(np.prod(shape)),), jnp.float32).reshape(shape)
    if ddim_steps is None:

        def body(x, t):
            key_t = jax.random.fold_in(key_steps, t)
            return diffusion.ddpm_step(key_t, schedule, x, t, predict(x, t)), None

        return jax.lax.scan(body, x, jnp.arange(schedule.num_steps, 0, -1, dtype=jnp.int32))[0]
    taus = diffusion.ddim_timesteps(schedule.num_steps, ddim_steps)[::-1]
    prev = np.append(taus[1:], 0)

    def body_ddim(x, tt):
        t, t_prev = tt
        key_t = jax.random.fold_in(key_steps, t)
        return diffusion.ddim_step(key_t, schedule, x, t, t_prev, predict(x, t), eta=eta), None

    return jax.lax.scan(body_ddim, x, (jnp.asarray(taus, jnp.int32), jnp.asarray(prev, jnp.int32)))[0]


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_conditional_and_guided_eps_fns_give_the_old_samplers_samples_bit_for_bit(kind):
    """conditional(eps_fn, labels) is eps_fn(x, t, labels, ones) and guided(eps_fn, labels, γ) is
    guided_eps on a doubled batch, inside the same loop as before: identical samples for one key."""
    s = diffusion.linear_schedule(10, 1e-3, 0.2)
    rec = _Recorder()
    labels = jnp.array([0, 3, 9, 1], jnp.int32)
    shape, n = (4, 3, 3, 1), 4
    options = {} if kind == "ddpm" else {"num_steps": 4, "eta": 0.5}
    sampler = diffusion.ddpm_sample if kind == "ddpm" else diffusion.ddim_sample
    old = {} if kind == "ddpm" else {"ddim_steps": 4, "eta": 0.5}

    def full(t):
        return jnp.full((n,), t, jnp.int32)

    predictions = {
        "unconditional": (lambda f: f, lambda x, t: rec(x, full(t), None, None)),
        "conditional": (
            lambda f: diffusion.conditional(f, labels),
            lambda x, t: rec(x, full(t), labels, jnp.ones((n,), x.dtype)),
        ),
        "guided": (
            lambda f: diffusion.guided(f, labels, 3.0),
            lambda x, t: diffusion.guided_eps(rec, x, t, labels, 3.0),
        ),
    }
    key = jax.random.key(5)
    for name, (transform, predict) in predictions.items():
        new_x = jax.jit(lambda k, transform=transform: sampler(k, transform(rec), s, shape=shape, **options))(
            key
        )
        old_x = jax.jit(lambda k, predict=predict: _old_style_sampler(k, predict, s, shape, **old))(key)
        np.testing.assert_array_equal(new_x, old_x, err_msg=name)
        trajectory = (diffusion.ddpm_trajectory if kind == "ddpm" else diffusion.ddim_trajectory)(
            key, transform(rec), s, shape=shape, every=2, **options
        )
        np.testing.assert_array_equal(trajectory.x0, sampler(key, transform(rec), s, shape=shape, **options))


def test_conditional_closes_over_labels_with_a_mask_of_ones():
    rec = _Recorder()
    x = np.ones((2, 3), np.float32)
    t = np.array([4, 4], np.int32)
    labels = np.array([2, 5], np.int32)
    np.testing.assert_array_equal(
        diffusion.conditional(rec, labels)(x, t), rec(x, t, labels, np.ones(2, np.float32))
    )
    np.testing.assert_array_equal(
        diffusion.guided(rec, labels, 1.5)(x, t), diffusion.guided_eps(rec, x, t, labels, 1.5)
    )
    # the labels may be traced: the transforms are built inside jit as well
    jitted = jax.jit(lambda y, g: diffusion.guided(rec, y, g)(x, t))(labels, 1.5)
    np.testing.assert_allclose(
        jitted, diffusion.guided_eps(rec, x, t, labels, 1.5), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
