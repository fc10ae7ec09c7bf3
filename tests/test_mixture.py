"""dlx_jax.mixture vs scipy.stats, scikit-learn and naive loops."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from dlx_jax import mixture
from dlx_jax.data import load_old_faithful
from tests.helpers import (
    ATOL_F32,
    ATOL_F64,
    ATOL_FD,
    RTOL_EM_F32,
    RTOL_EM_FIT_F64,
    RTOL_F32,
    RTOL_F64,
    RTOL_FD,
    RTOL_JIT_F32,
    RTOL_JIT_F64,
    central_difference,
)


def _problem(seed: int, n: int = 200, d: int = 3, k: int = 3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    x = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    w = rng.dirichlet(np.ones(k) * 3)
    mu = rng.normal(scale=2.0, size=(k, d))
    a = rng.normal(size=(k, d, d))
    cov = a @ np.swapaxes(a, -1, -2) / d + 0.5 * np.eye(d)
    return x, w, mu, cov


def _params(w, mu, cov, dtype=jnp.float64):
    return mixture.gmm_params_from_covariances(*(jnp.asarray(a, dtype) for a in (w, mu, cov)))


def _scipy_logpdf(x, w, mu, cov):
    dens = sum(w[j] * stats.multivariate_normal(mu[j], cov[j]).pdf(x) for j in range(len(w)))
    return np.log(dens)


@pytest.mark.parametrize("d", [1, 3, 20])  # 20 > UNROLL_MAX_D: the matrix-product branch
def test_logpdf_vs_scipy_f64(x64, d):
    x, w, mu, cov = _problem(0, n=50, d=d)
    out = mixture.gmm_logpdf(jnp.asarray(x), _params(w, mu, cov))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _scipy_logpdf(x, w, mu, cov), rtol=RTOL_F64, atol=ATOL_F64)
    comp = mixture.component_log_densities(jnp.asarray(x), _params(w, mu, cov))
    for j in range(3):
        np.testing.assert_allclose(
            comp[:, j], stats.multivariate_normal(mu[j], cov[j]).logpdf(x), rtol=RTOL_F64, atol=ATOL_F64
        )


def test_logpdf_vs_scipy_f32_and_broadcast():
    x, w, mu, cov = _problem(1, n=24)
    p = _params(w, mu, cov, jnp.float32)
    out = mixture.gmm_logpdf(jnp.asarray(x, jnp.float32).reshape(4, 6, 3), p)
    assert out.dtype == jnp.float32 and out.shape == (4, 6)
    np.testing.assert_allclose(out.reshape(-1), _scipy_logpdf(x, w, mu, cov), rtol=RTOL_F32, atol=ATOL_F32)


def test_jit_equals_eager_and_vmap_equals_loop():
    x, w, mu, cov = _problem(2)
    p = _params(w, mu, cov, jnp.float32)
    xj = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(
        jax.jit(mixture.gmm_logpdf)(xj, p), mixture.gmm_logpdf(xj, p), rtol=RTOL_JIT_F32, atol=RTOL_JIT_F32
    )
    batched = jnp.stack([xj[:50], xj[50:100]])
    looped = jnp.stack([mixture.e_step(b, p) for b in batched])
    np.testing.assert_allclose(
        jax.vmap(mixture.e_step, in_axes=(0, None))(batched, p), looped, rtol=RTOL_JIT_F32, atol=RTOL_JIT_F32
    )


def test_e_step_m_step_vs_naive_loops_and_sklearn(x64):
    x, w, mu, cov = _problem(3)
    p = _params(w, mu, cov)
    log_resp = np.asarray(mixture.e_step(jnp.asarray(x), p))
    # naive loops
    joint = np.array(
        [
            [np.log(w[j]) + stats.multivariate_normal(mu[j], cov[j]).logpdf(x[i]) for j in range(3)]
            for i in range(len(x))
        ]
    )
    naive = joint - np.log(np.exp(joint).sum(1, keepdims=True))
    np.testing.assert_allclose(log_resp, naive, rtol=RTOL_F64, atol=ATOL_F64)
    # sklearn internals on identical inputs
    gm = GaussianMixture(3, covariance_type="full")
    gm.weights_, gm.means_ = w, mu
    gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(cov))
    _, sk_log_resp = gm._estimate_log_prob_resp(x)
    np.testing.assert_allclose(log_resp, sk_log_resp, rtol=RTOL_F64, atol=ATOL_F64)
    new = mixture.m_step(jnp.asarray(x), jnp.asarray(log_resp), reg_covar=1e-6)
    nk, means, covs = _estimate_gaussian_parameters(x, np.exp(log_resp), 1e-6, "full")
    np.testing.assert_allclose(new.weights, nk / nk.sum(), rtol=RTOL_F64, atol=ATOL_F64)
    np.testing.assert_allclose(new.means, means, rtol=RTOL_F64, atol=ATOL_F64)
    np.testing.assert_allclose(new.covariances, covs, rtol=RTOL_F64, atol=ATOL_F64)
    # the weighted MLE by a naive loop
    r = np.exp(log_resp)
    for j in range(3):
        m_j = (r[:, j : j + 1] * x).sum(0) / r[:, j].sum()
        c_j = sum(r[i, j] * np.outer(x[i] - m_j, x[i] - m_j) for i in range(len(x))) / r[:, j].sum()
        np.testing.assert_allclose(new.covariances[j], c_j + 1e-6 * np.eye(3), rtol=RTOL_F64, atol=ATOL_F64)


def test_fit_vs_sklearn_fixed_updates_and_tol(x64):
    x, w, _, _ = _problem(4, n=300)
    mu0 = x[:3]
    cov0 = np.broadcast_to(np.cov(x.T, bias=True), (3, 3, 3)).copy()
    p0 = _params(np.full(3, 1 / 3), mu0, cov0)
    kw = dict(
        covariance_type="full",
        weights_init=np.full(3, 1 / 3),
        means_init=mu0,
        precisions_init=np.linalg.inv(cov0),
        reg_covar=1e-6,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = GaussianMixture(3, tol=0.0, max_iter=15, **kw).fit(x)
        sk_tol = GaussianMixture(3, tol=1e-3, max_iter=200, **kw).fit(x)
    params, info = mixture.fit(jnp.asarray(x), p0, tol=0.0, max_iter=15)
    assert int(info.n_iter) == 15 and not bool(info.converged)
    np.testing.assert_allclose(params.means, sk.means_, rtol=RTOL_EM_FIT_F64, atol=RTOL_EM_FIT_F64)
    np.testing.assert_allclose(
        params.covariances, sk.covariances_, rtol=RTOL_EM_FIT_F64, atol=RTOL_EM_FIT_F64
    )
    np.testing.assert_allclose(params.weights, sk.weights_, rtol=RTOL_EM_FIT_F64)
    np.testing.assert_allclose(info.log_likelihood_trace[1:15], sk.lower_bounds_[1:], rtol=RTOL_EM_FIT_F64)
    # tol: sklearn does one more M-step after the same test, and reports our final value
    _, info_tol = mixture.fit(jnp.asarray(x), p0, tol=1e-3, max_iter=200)
    assert bool(info_tol.converged)
    assert int(info_tol.n_iter) == sk_tol.n_iter_ - 1
    np.testing.assert_allclose(
        info_tol.log_likelihood_trace[int(info_tol.n_iter)], sk_tol.lower_bound_, rtol=RTOL_EM_FIT_F64
    )
    assert np.all(np.isnan(np.asarray(info_tol.log_likelihood_trace[int(info_tol.n_iter) + 1 :])))


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_em_never_decreases_and_fit_equals_em_steps(x64, seed):
    x, w, mu, cov = _problem(seed, n=150, k=4)
    p = _params(np.full(4, 0.25), x[:4], np.broadcast_to(np.eye(3), (4, 3, 3)))
    _, info = jax.jit(mixture.fit, static_argnames="max_iter")(jnp.asarray(x), p, tol=0.0, max_iter=30)
    trace = np.asarray(info.exact_log_likelihood_trace)
    assert np.all(np.diff(trace) >= -1e-12)
    q = p
    for _ in range(3):
        q = mixture.em_step(jnp.asarray(x), q)
    np.testing.assert_allclose(mixture.mean_log_likelihood(jnp.asarray(x), q), trace[3], rtol=RTOL_JIT_F64)


def test_fit_f32_preserves_dtype_and_matches_f64(x64):
    x, *_ = _problem(8)
    cov0 = np.broadcast_to(np.cov(x.T), (3, 3, 3))
    p64, i64 = mixture.fit(jnp.asarray(x), _params(np.full(3, 1 / 3), x[:3], cov0), tol=0.0, max_iter=5)
    p32, i32 = mixture.fit(
        jnp.asarray(x, jnp.float32), _params(np.full(3, 1 / 3), x[:3], cov0, jnp.float32), tol=0.0, max_iter=5
    )
    assert p32.means.dtype == jnp.float32 and i32.log_likelihood_trace.dtype == jnp.float32
    np.testing.assert_allclose(p32.means, p64.means, rtol=RTOL_EM_F32, atol=RTOL_EM_F32)


def test_book_step5_numbers(x64):
    x = jnp.asarray(load_old_faithful())
    p0 = _params(np.array([0.5, 0.5]), np.array([[0.0, 50.0], [0.0, 100.0]]), np.stack([np.eye(2)] * 2))
    _, info = mixture.fit(x, p0, tol=1e-4, max_iter=100, reg_covar=0.0, floor=1e-8)
    n = int(info.n_iter)
    assert n == 9
    np.testing.assert_array_equal(
        np.round(np.asarray(info.log_likelihood_trace[: n + 1]), 3),
        [-16.538, -4.415, -4.357, -4.302, -4.245, -4.2, -4.164, -4.156, -4.155, -4.155],
    )
    assert round(float(info.exact_log_likelihood_trace[0]), 3) == -137.488
    # floor via logaddexp equals the naive formula where p does not underflow
    p = np.exp(np.asarray(mixture.gmm_logpdf(x, p0)))
    np.testing.assert_allclose(
        mixture.mean_log_likelihood(x, p0, floor=1e-8), np.mean(np.log(p + 1e-8)), rtol=RTOL_F64
    )


def test_gradient_vs_finite_differences(x64):
    x, w, mu, cov = _problem(9, n=5)
    p = _params(w, mu, cov)

    def f(means):
        return jnp.sum(mixture.gmm_logpdf(jnp.asarray(x), p._replace(means=jnp.asarray(means))))

    np.testing.assert_allclose(
        jax.grad(f)(jnp.asarray(mu)), central_difference(f, mu), rtol=RTOL_FD, atol=ATOL_FD
    )

    def g(xx):
        return jnp.sum(mixture.gmm_logpdf(jnp.asarray(xx), p))

    np.testing.assert_allclose(
        jax.grad(g)(jnp.asarray(x)), central_difference(g, x), rtol=RTOL_FD, atol=ATOL_FD
    )


def test_sample_gmm_moments(x64, key):
    _, w, mu, cov = _problem(10, d=2, k=2)
    p = _params(w, mu, cov)
    xs, labels = jax.jit(mixture.sample_gmm, static_argnames="n")(key, p, n=20000)
    assert xs.shape == (20000, 2) and labels.shape == (20000,)
    np.testing.assert_allclose(np.mean(np.asarray(labels) == 1), w[1], atol=0.02)  # 5 binomial sd ~ 0.018
    sel = np.asarray(labels) == 0
    np.testing.assert_allclose(
        np.asarray(xs)[sel].mean(0), mu[0], atol=5 * np.sqrt(cov[0].diagonal().max() / sel.sum())
    )


def test_restarts_best_and_equal_single_fits(x64, key):
    x = jnp.asarray(load_old_faithful())
    best, rec = mixture.fit_restarts(key, x, k=2, n_init=6, tol=1e-3, max_iter=100)
    final = np.asarray(rec.final_log_likelihood)
    assert np.all(final[int(rec.best)] >= final)
    np.testing.assert_allclose(best.means, rec.params.means[int(rec.best)])
    for i in (0, 3):
        init_i = jax.tree.map(lambda a, i=i: a[i], rec.init)
        p_i, info_i = mixture.fit(x, init_i, tol=1e-3, max_iter=100)
        assert int(info_i.n_iter) == int(rec.info.n_iter[i])
        np.testing.assert_allclose(p_i.means, rec.params.means[i], rtol=RTOL_JIT_F64 * 1e3)
    init_pp = mixture.init_params(key, x, k=3, method="kmeans++")
    assert init_pp.means.shape == (3, 2) and len({tuple(m) for m in np.asarray(init_pp.means)}) == 3


def test_bad_inputs_raise():
    x, w, mu, cov = _problem(11)
    p = _params(w, mu, cov, jnp.float32)
    bad_cov = cov.copy()
    bad_cov[1] = -np.eye(3)
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        _params(w, mu, bad_cov, jnp.float32)
    with pytest.raises(ValueError, match="sum to 1"):
        _params(w * 2, mu, cov, jnp.float32)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., d\) with d = 3"):
        mixture.gmm_logpdf(jnp.ones((5, 2)), p)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        mixture.fit(jnp.ones(5), p)
    with pytest.raises(ValueError, match="at least k samples"):
        mixture.fit(jnp.asarray(x[:2]), p)
    with pytest.raises(ValueError, match="at least k samples, got n = 2; use fewer components"):
        mixture.init_params(jax.random.key(0), jnp.asarray(x[:2]), k=3)
    with pytest.raises(ValueError, match=r"n_components\) must be >= 1, got 0; pass e\.g\. k=2"):
        mixture.init_params(jax.random.key(0), jnp.asarray(x), k=0)
    x_nan = x.copy()
    x_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mixture.fit(jnp.asarray(x_nan), p)
    with pytest.raises(ValueError, match="reg_covar must be >= 0"):
        mixture.fit(jnp.asarray(x), p, reg_covar=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        mixture.fit(jnp.asarray(x), p, max_iter=0)
    with pytest.raises(ValueError, match="method"):
        mixture.init_params(jax.random.key(0), jnp.asarray(x), k=2, method="kmeans")


def test_row_logsumexp_matches_scipy_on_extreme_values(x64):
    """The E-step's unrolled log-sum-exp over components is as stable as scipy's."""
    from scipy.special import logsumexp as sp_logsumexp

    from dlx_jax.mixture._em import _logsumexp_rows

    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 40)) * 300.0  # log-densities far apart: naive exp over/underflows
    a[:, 0] = -1000.0  # every component tiny
    a[2, 1] = 700.0  # one dominant component
    np.testing.assert_allclose(_logsumexp_rows(a), sp_logsumexp(a, axis=0), rtol=RTOL_F64, atol=ATOL_F64)
    np.testing.assert_allclose(_logsumexp_rows(a[:1]), a[0], rtol=RTOL_F64, atol=ATOL_F64)  # k = 1
