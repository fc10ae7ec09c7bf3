"""dlx_jax.metrics: the Fréchet distance against scipy's matrix square root and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dlx_jax import metrics
from tests.helpers import (
    ATOL_FRECHET_ZERO,
    RTOL_F64,
    RTOL_FRECHET_F32,
    RTOL_FRECHET_VS_SQRTM,
)


def _reference(x, y):
    m1, m2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * covmean)


def test_matches_scipy_sqrtm(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    y = rng.normal(size=(200, 20)) * 1.5 + 0.3
    got = metrics.frechet_distance(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(got, _reference(x, y), rtol=RTOL_FRECHET_VS_SQRTM)


def test_closed_forms(x64):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(100, 5)))
    np.testing.assert_allclose(metrics.frechet_distance(x, x), 0.0, atol=ATOL_FRECHET_ZERO)
    # shifting one set by c adds |c|^2
    c = jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])
    np.testing.assert_allclose(metrics.frechet_distance(x, x + c), jnp.sum(c**2), rtol=RTOL_FRECHET_VS_SQRTM)
    # N(0, a^2 I) vs N(0, b^2 I): d (a - b)^2
    d = metrics.gaussian_frechet_distance(jnp.zeros(4), 4.0 * jnp.eye(4), jnp.zeros(4), jnp.eye(4))
    np.testing.assert_allclose(d, 4 * (2 - 1) ** 2, rtol=RTOL_F64)


def test_singular_covariances_and_float32():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 40)).astype(np.float32)  # fewer samples than features: rank 9
    y = rng.normal(size=(12, 40)).astype(np.float32)
    got = metrics.frechet_distance(jnp.asarray(x), jnp.asarray(y))
    assert got.dtype == jnp.float32 and np.isfinite(got)
    np.testing.assert_allclose(
        got, _reference(x.astype(np.float64), y.astype(np.float64)), rtol=RTOL_FRECHET_F32
    )
    assert float(jax.jit(metrics.frechet_distance)(x, y)) == pytest.approx(float(got), rel=RTOL_FRECHET_F32)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        metrics.frechet_distance(jnp.zeros((5, 3)), jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(jnp.zeros((1, 3)), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="means"):
        metrics.gaussian_frechet_distance(jnp.zeros(3), jnp.eye(4), jnp.zeros(3), jnp.eye(3))
