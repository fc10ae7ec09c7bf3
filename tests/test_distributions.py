"""dlx_jax.distributions vs scipy.stats / numpy / closed forms / finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dlx_jax import distributions as D
from tests.helpers import (
    ATOL_F32,
    ATOL_F64,
    ATOL_FD,
    ATOL_JIT_F32,
    RTOL_F32,
    RTOL_F64,
    RTOL_FD,
    RTOL_JIT_F32,
    RTOL_JIT_F64,
    SAMPLE_N_SE,
    central_difference,
)

DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return (RTOL_F32, ATOL_F32) if dtype == np.float32 else (RTOL_F64, ATOL_F64)


def _spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- univariate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_densities_match_scipy(dtype, rng):
    x = rng.normal(2.0, 3.0, size=(7, 5))
    mu = rng.normal(size=(5,))
    sigma = rng.uniform(0.5, 2.0, size=(7, 1))
    rtol, atol = _tol(dtype)
    with jax.enable_x64(dtype == np.float64):
        args = [a.astype(dtype) for a in (x, mu, sigma)]
        logp = D.normal_logpdf(*args)
        p = D.normal_pdf(*args)
        cdf = D.normal_cdf(*args)
        assert logp.dtype == p.dtype == cdf.dtype == dtype
    ref = stats.norm(mu, sigma)
    np.testing.assert_allclose(logp, ref.logpdf(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(p, ref.pdf(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(cdf, ref.cdf(x), rtol=rtol, atol=atol)


def test_normal_cdf_tails_are_accurate(x64):
    x = np.array([-30.0, -10.0, -5.0, 5.0])
    np.testing.assert_allclose(D.normal_cdf(x), stats.norm.cdf(x), rtol=RTOL_F64, atol=0)
    # P(X > b) without cancellation, as the docstring promises
    np.testing.assert_allclose(D.normal_cdf(-x), stats.norm.sf(x), rtol=RTOL_F64, atol=0)


def test_normal_defaults_are_standard_normal():
    np.testing.assert_allclose(D.normal_pdf(0.0), 1 / np.sqrt(2 * np.pi), rtol=RTOL_F32)
    np.testing.assert_allclose(D.normal_cdf(0.0), 0.5, rtol=RTOL_F32)


def test_normal_dtype_follows_arrays_not_python_scalars(x64):
    x32 = np.linspace(-1, 1, 4, dtype=np.float32)
    assert D.normal_logpdf(x32, 0.5, 2.0).dtype == jnp.float32
    assert D.normal_logpdf(x32.astype(np.float64), 0.5, 2.0).dtype == jnp.float64
    assert D.normal_logpdf(np.arange(3), 0.0, 1.0).dtype == jnp.float64  # ints promote to float
    mu, sigma = D.normal_mle(x32)
    assert mu.dtype == sigma.dtype == jnp.float32
    assert D.sample_normal(jax.random.key(1), np.float32(0), np.float32(1), shape=(3,)).dtype == jnp.float32
    assert D.sample_normal(jax.random.key(1), shape=(3,), dtype=jnp.float32).dtype == jnp.float32


def test_normal_jit_equals_eager(rng):
    x, mu, sigma = rng.normal(size=(3, 10)).astype(np.float32)
    sigma = np.abs(sigma) + 0.1
    for fn in (D.normal_logpdf, D.normal_pdf, D.normal_cdf):
        np.testing.assert_allclose(
            jax.jit(fn)(x, mu, sigma), fn(x, mu, sigma), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
        )
    mle = jax.jit(lambda v: D.normal_mle(v, ddof=1))
    np.testing.assert_allclose(mle(x), D.normal_mle(x, ddof=1), rtol=RTOL_JIT_F32)


def test_normal_vmap_equals_loop(rng):
    data = rng.normal(size=(4, 50)).astype(np.float32)
    vm = jax.vmap(D.normal_mle)(data)
    loop = [D.normal_mle(row) for row in data]
    np.testing.assert_allclose(vm[0], [m for m, _ in loop], rtol=RTOL_JIT_F32)
    np.testing.assert_allclose(vm[1], [s for _, s in loop], rtol=RTOL_JIT_F32)
    sig = np.array([0.5, 1.0, 2.0], np.float32)
    vl = jax.vmap(lambda s: D.normal_logpdf(data[0], 1.0, s))(sig)
    np.testing.assert_allclose(vl, [D.normal_logpdf(data[0], 1.0, s) for s in sig], rtol=RTOL_JIT_F32)


def test_normal_logpdf_gradients_match_finite_differences(x64):
    x = np.array([0.3, -1.2, 2.5])
    mu, sigma = np.array([0.1]), np.array([1.7])

    def f(x_, mu_, sigma_):
        return jnp.sum(D.normal_logpdf(x_, mu_, sigma_))

    grads = jax.grad(f, argnums=(0, 1, 2))(x, mu, sigma)
    fds = (
        central_difference(lambda v: f(v, mu, sigma), x),
        central_difference(lambda v: f(x, v, sigma), mu),
        central_difference(lambda v: f(x, mu, v), sigma),
    )
    for g, fd in zip(grads, fds, strict=True):
        np.testing.assert_allclose(g, fd, rtol=RTOL_FD, atol=ATOL_FD)
    # and the closed form d/dx = -(x - mu) / sigma^2
    np.testing.assert_allclose(grads[0], -(x - mu) / sigma**2, rtol=RTOL_F64)


@pytest.mark.parametrize("ddof", [0, 1])
def test_normal_mle_matches_numpy(ddof, x64, rng):
    data = rng.normal(170, 7, size=(200, 3))
    for axis in (0, 1, -1):
        mu, sigma = D.normal_mle(data, ddof=ddof, axis=axis)
        np.testing.assert_allclose(mu, data.mean(axis=axis), rtol=RTOL_F64)
        np.testing.assert_allclose(sigma, data.std(axis=axis, ddof=ddof), rtol=RTOL_F64)


def test_sample_normal_moments_within_standard_errors(key):
    n, mu, sigma = 40_000, 3.0, 2.0
    x = np.asarray(D.sample_normal(key, mu, sigma, shape=(n,)), np.float64)
    assert abs(x.mean() - mu) < SAMPLE_N_SE * sigma / np.sqrt(n)
    assert abs(x.var() - sigma**2) < SAMPLE_N_SE * sigma**2 * np.sqrt(2 / (n - 1))


def test_sample_normal_shapes_keys_and_broadcasting(key):
    k1, k2 = jax.random.split(key)
    mu = jnp.array([0.0, 100.0])
    x = D.sample_normal(k1, mu, 1.0, shape=(1000, 2))
    assert x.shape == (1000, 2)
    assert abs(float(x[:, 1].mean()) - 100.0) < 0.5 and abs(float(x[:, 0].mean())) < 0.5
    assert D.sample_normal(k1, mu, 1.0).shape == (2,)
    np.testing.assert_array_equal(
        D.sample_normal(k1, shape=(5,)), jax.jit(D.sample_normal, static_argnames="shape")(k1, shape=(5,))
    )
    assert not np.allclose(D.sample_normal(k1, shape=(5,)), D.sample_normal(k2, shape=(5,)))
    keys = jax.random.split(k2, 3)
    vm = jax.vmap(lambda k: D.sample_normal(k, shape=(4,)))(keys)
    np.testing.assert_allclose(vm, [D.sample_normal(k, shape=(4,)) for k in keys], rtol=RTOL_JIT_F32)


# --- multivariate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 4, 20])  # 20 > UNROLL_MAX_D: the matrix-product branch
@pytest.mark.parametrize("dtype", DTYPES)
def test_mvn_logpdf_matches_scipy(dtype, d, rng):
    x = rng.normal(size=(30, d)) * 2
    mean = rng.normal(size=d)
    cov = _spd(rng, d)
    ref = stats.multivariate_normal(mean, cov)
    rtol, atol = _tol(dtype)
    with jax.enable_x64(dtype == np.float64):
        x_, m_, c_ = (a.astype(dtype) for a in (x, mean, cov))
        by_cov = D.mvn_logpdf(x_, m_, c_)
        by_tril = D.mvn_logpdf(x_, m_, scale_tril=np.linalg.cholesky(cov).astype(dtype))
        pdf = D.mvn_pdf(x_, m_, c_)
        assert by_cov.dtype == by_tril.dtype == pdf.dtype == dtype
    np.testing.assert_allclose(by_cov, ref.logpdf(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(by_tril, ref.logpdf(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(pdf, ref.pdf(x), rtol=rtol, atol=atol)


def test_mvn_logpdf_one_dimension_equals_normal(x64, rng):
    x = rng.normal(size=(10, 1))
    np.testing.assert_allclose(
        D.mvn_logpdf(x, [0.5], [[4.0]]), D.normal_logpdf(x[:, 0], 0.5, 2.0), rtol=RTOL_F64, atol=ATOL_F64
    )


def test_mvn_logpdf_broadcasts_over_leading_axes(x64, rng):
    n, k, d = 12, 3, 2
    x = rng.normal(size=(n, d))
    means = rng.normal(size=(k, d))
    covs = np.stack([_spd(rng, d, s) for s in (0.5, 1.0, 3.0)])
    table = D.mvn_logpdf(x[:, None, :], means, covs)  # the mixture layout
    assert table.shape == (n, k)
    for j in range(k):
        np.testing.assert_allclose(
            table[:, j], stats.multivariate_normal(means[j], covs[j]).logpdf(x), rtol=RTOL_F64, atol=ATOL_F64
        )
    tril = np.linalg.cholesky(covs)
    np.testing.assert_allclose(D.mvn_logpdf(x[:, None, :], means, scale_tril=tril), table, rtol=RTOL_F64)
    # batch axes of the factor first, data axes last: (k, 1, d) against (1, n, d)
    np.testing.assert_allclose(
        D.mvn_logpdf(x[None], means[:, None], scale_tril=tril[:, None]), table.T, rtol=RTOL_F64
    )
    # extra leading axes of x with one shared covariance
    x3 = rng.normal(size=(2, 5, d))
    np.testing.assert_allclose(
        D.mvn_logpdf(x3, means[0], covs[0]),
        stats.multivariate_normal(means[0], covs[0]).logpdf(x3.reshape(-1, d)).reshape(2, 5),
        rtol=RTOL_F64,
        atol=ATOL_F64,
    )


def test_mvn_logpdf_batched_factors_float32_far_from_origin(rng):
    """The mixture layout whitens x and the means separately: it must not lose float32 precision
    when the data sit far from the origin (heights in cm, waiting times, ...)."""
    d, k = 2, 3
    means = 1000.0 + rng.normal(size=(k, d))
    covs = np.stack([_spd(rng, d, s) for s in (0.5, 1.0, 2.0)])
    x = means[0] + rng.normal(size=(50, d))
    table = D.mvn_logpdf(x[:, None, :].astype(np.float32), means.astype(np.float32), covs.astype(np.float32))
    for j in range(k):
        ref = stats.multivariate_normal(means[j].astype(np.float32), covs[j].astype(np.float32)).logpdf(
            x.astype(np.float32)
        )
        np.testing.assert_allclose(table[:, j], ref, rtol=RTOL_F32, atol=ATOL_F32)


def test_mvn_jit_equals_eager_and_vmap_equals_loop(rng):
    d = 3
    x = rng.normal(size=(20, d)).astype(np.float32)
    mean = rng.normal(size=d).astype(np.float32)
    covs = np.stack([_spd(rng, d, s) for s in (0.5, 1.0, 2.0)]).astype(np.float32)
    eager = D.mvn_logpdf(x, mean, covs[0])
    np.testing.assert_allclose(
        jax.jit(D.mvn_logpdf)(x, mean, covs[0]), eager, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32
    )
    vm = jax.vmap(lambda c: D.mvn_logpdf(x, mean, c))(covs)
    loop = np.stack([D.mvn_logpdf(x, mean, c) for c in covs])
    np.testing.assert_allclose(vm, loop, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    datasets = rng.normal(size=(3, 15, d)).astype(np.float32)
    vm_mle = jax.vmap(D.mvn_mle)(datasets)
    for i, data in enumerate(datasets):
        m, c = D.mvn_mle(data)
        np.testing.assert_allclose(vm_mle[0][i], m, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
        np.testing.assert_allclose(vm_mle[1][i], c, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    np.testing.assert_allclose(
        jax.jit(D.mvn_mle)(datasets[0])[1], D.mvn_mle(datasets[0])[1], rtol=RTOL_JIT_F32
    )


def test_mvn_logpdf_gradients_match_finite_differences(x64, rng):
    d = 3
    x = rng.normal(size=(4, d))
    mean = rng.normal(size=d)
    cov = _spd(rng, d)
    tril = np.linalg.cholesky(cov)

    # jitted: finite differences step off the symmetric set, which eager validation would reject
    @jax.jit
    def f(x_, m_, c_):
        return jnp.sum(D.mvn_logpdf(x_, m_, c_))

    @jax.jit
    def g(x_, m_, l_):
        return jnp.sum(D.mvn_logpdf(x_, m_, scale_tril=l_))

    gx, gm, gc = jax.grad(f, argnums=(0, 1, 2))(x, mean, cov)
    np.testing.assert_allclose(
        gx, central_difference(lambda v: f(v, mean, cov), x), rtol=RTOL_FD, atol=ATOL_FD
    )
    np.testing.assert_allclose(
        gm, central_difference(lambda v: f(x, v, cov), mean), rtol=RTOL_FD, atol=ATOL_FD
    )
    np.testing.assert_allclose(
        gc, central_difference(lambda v: f(x, mean, v), cov), rtol=RTOL_FD, atol=ATOL_FD
    )
    gl = jax.grad(g, argnums=2)(x, mean, tril)
    np.testing.assert_allclose(
        gl, central_difference(lambda v: g(x, mean, v), tril), rtol=RTOL_FD, atol=ATOL_FD
    )
    # closed forms: d/dx = -P (x - mu); d/dSigma = 1/2 sum_n (P r r^T P - P), P = Sigma^{-1}
    prec = np.linalg.inv(cov)
    r = x - mean
    np.testing.assert_allclose(gx, -r @ prec, rtol=RTOL_FD)
    expected = 0.5 * sum(prec @ np.outer(ri, ri) @ prec - prec for ri in r)
    np.testing.assert_allclose(gc, expected, rtol=RTOL_FD, atol=ATOL_FD)


@pytest.mark.parametrize("ddof", [0, 1])
def test_mvn_mle_matches_numpy(ddof, x64, rng):
    data = rng.normal(size=(300, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])
    mean, cov = D.mvn_mle(data, ddof=ddof)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=RTOL_F64)
    np.testing.assert_allclose(cov, np.cov(data, rowvar=False, ddof=ddof), rtol=RTOL_F64, atol=ATOL_F64)
    np.testing.assert_array_equal(cov, np.asarray(cov).T)
    batched = D.mvn_mle(np.stack([data, 2 * data]), ddof=ddof)[1]
    np.testing.assert_allclose(batched[1], 4 * np.cov(data, rowvar=False, ddof=ddof), rtol=RTOL_F64)


def test_mvn_mle_is_the_likelihood_maximum(x64, rng):
    data = rng.normal(size=(100, 2)) + np.array([1.0, -2.0])
    mean, cov = D.mvn_mle(data)
    best = float(jnp.sum(D.mvn_logpdf(data, mean, cov)))
    for shift in (np.array([0.05, 0.0]), np.array([0.0, -0.05])):
        assert float(jnp.sum(D.mvn_logpdf(data, mean + shift, cov))) < best
    assert float(jnp.sum(D.mvn_logpdf(data, mean, cov * 1.05))) < best
    assert float(jnp.sum(D.mvn_logpdf(data, mean, D.mvn_mle(data, ddof=1)[1]))) < best


def test_sample_mvn_moments_within_standard_errors(key, x64):
    n = 40_000
    mean = np.array([0.5, -0.2])
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    x = np.asarray(D.sample_mvn(key, mean, cov, shape=(n,)))
    assert x.shape == (n, 2) and x.dtype == np.float64
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < SAMPLE_N_SE * se_mean)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(np.cov(x, rowvar=False) - cov) < SAMPLE_N_SE * se_cov)
    same = D.sample_mvn(key, mean, scale_tril=np.linalg.cholesky(cov), shape=(n,))
    np.testing.assert_allclose(same, x, rtol=RTOL_JIT_F64, atol=ATOL_F64)


def test_sample_mvn_batched_parameters_jit_and_vmap(key):
    k1, k2 = jax.random.split(key)
    means = jnp.array([[0.0, 0.0], [10.0, -10.0]])
    covs = jnp.stack([jnp.eye(2), 0.25 * jnp.eye(2)])
    x = D.sample_mvn(k1, means, covs, shape=(500, 2))
    assert x.shape == (500, 2, 2)
    n = x.shape[0]  # standard errors: sd/sqrt(n) for a mean (sd <= 1 here), ~sd/sqrt(2n) for an sd
    np.testing.assert_allclose(x.mean(0), means, atol=SAMPLE_N_SE / np.sqrt(n))
    np.testing.assert_allclose(x[:, 1].std(0), [0.5, 0.5], rtol=SAMPLE_N_SE / np.sqrt(2 * n))
    assert D.sample_mvn(k1, means, covs).shape == (2, 2)
    jitted = jax.jit(D.sample_mvn, static_argnames="shape")(k1, means, covs, shape=(500, 2))
    np.testing.assert_allclose(jitted, x, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    keys = jax.random.split(k2, 3)
    vm = jax.vmap(lambda k: D.sample_mvn(k, means[1], covs[1], shape=(4,)))(keys)
    loop = np.stack([D.sample_mvn(k, means[1], covs[1], shape=(4,)) for k in keys])
    np.testing.assert_allclose(vm, loop, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_mvn_dtypes_preserved(x64, rng):
    d = 2
    for dtype in DTYPES:
        x = rng.normal(size=(5, d)).astype(dtype)
        mean, cov = D.mvn_mle(x)
        assert mean.dtype == cov.dtype == dtype
        assert D.mvn_logpdf(x, mean, cov).dtype == dtype
        assert D.sample_mvn(jax.random.key(0), mean, cov, shape=(3,)).dtype == dtype
        assert D.scale_tril_from_cov(cov).dtype == dtype


# --- bad input -------------------------------------------------------------------------------------


def test_bad_values_raise_clear_errors():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        D.normal_logpdf(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        D.normal_cdf(1.0, 0.0, np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        D.sample_normal(jax.random.key(0), 0.0, np.nan, shape=(2,))
    with pytest.raises(ValueError, match="not positive definite"):
        D.mvn_logpdf(x, np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="not positive definite"):
        D.sample_mvn(jax.random.key(0), np.zeros(2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not symmetric"):
        D.mvn_logpdf(x, np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="cov contains NaN"):
        D.mvn_logpdf(x, np.zeros(2), np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="positive diagonal"):
        D.mvn_logpdf(x, np.zeros(2), scale_tril=np.array([[1.0, 0.0], [0.5, -1.0]]))
    with pytest.raises(ValueError, match="x contains NaN"):
        D.normal_mle(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="x contains NaN"):
        D.mvn_mle(np.array([[1.0, 2.0], [np.nan, 0.0]]))


def test_bad_shapes_raise_clear_errors():
    x = np.zeros((4, 2))
    mean, cov = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match=r"mean must have shape \(\.\.\., d\)"):
        D.mvn_logpdf(x, 0.0, cov)
    with pytest.raises(ValueError, match="x must have shape"):
        D.mvn_logpdf(np.zeros((4, 3)), mean, cov)
    with pytest.raises(ValueError, match="x must have shape"):
        D.mvn_logpdf(1.0, mean, cov)
    with pytest.raises(ValueError, match=r"cov must have shape \(\.\.\., 2, 2\)"):
        D.mvn_logpdf(x, mean, np.ones(2))
    with pytest.raises(ValueError, match=r"cov must have shape \(\.\.\., d, d\)"):
        D.scale_tril_from_cov(np.ones((2, 3)))
    with pytest.raises(ValueError, match="scale_tril must have shape"):
        D.mvn_logpdf(x, mean, scale_tril=np.eye(3))
    with pytest.raises(ValueError, match="exactly one of cov= or scale_tril="):
        D.mvn_logpdf(x, mean)
    with pytest.raises(ValueError, match="exactly one of cov= or scale_tril="):
        D.mvn_logpdf(x, mean, cov, scale_tril=cov)
    with pytest.raises(ValueError, match="do not broadcast"):
        D.mvn_logpdf(np.zeros((4, 2)), np.zeros((3, 2)), np.stack([cov] * 3))
    with pytest.raises(ValueError, match="does not hold the parameters' batch shape"):
        D.sample_mvn(jax.random.key(0), np.zeros((3, 2)), cov, shape=(5,))
    with pytest.raises(ValueError, match="does not hold the parameter shape"):
        D.sample_normal(jax.random.key(0), np.zeros(3), 1.0, shape=(5,))
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        D.mvn_mle(np.zeros(5))
    with pytest.raises(ValueError, match="got a scalar"):
        D.normal_mle(1.0)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        D.normal_mle(np.zeros((3, 2)), axis=2)
    with pytest.raises(ValueError, match="needs more than ddof=1 samples, got n=1"):
        D.normal_mle(np.zeros(1), ddof=1)
    with pytest.raises(ValueError, match="needs more than ddof=0 samples, got n=0"):
        D.mvn_mle(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="ddof must be a non-negative int"):
        D.normal_mle(np.zeros(3), ddof=-1)


def test_values_under_jit_are_not_checked_but_give_nan():
    """Documented: value checks need concrete arrays; a traced non-SPD covariance gives NaN."""
    bad = np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)
    out = jax.jit(D.mvn_logpdf)(np.zeros((3, 2), np.float32), np.zeros(2, np.float32), bad)
    assert np.isnan(np.asarray(out)).all()
