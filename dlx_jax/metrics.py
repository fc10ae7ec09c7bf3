r"""Sample-quality metrics: the Fréchet distance between two sets of feature vectors.

The Fréchet distance between the Gaussians fitted to two feature sets (the "FID" of Heusel et al.,
2017, when the features come from an Inception network; here the caller chooses the feature
extractor, e.g. the penultimate layer of the project's CNN, :func:`dlx_jax.cnn.features`):

.. math::
    d^2 = \lVert \mu_1 - \mu_2 \rVert^2
          + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}\big),

where :math:`\operatorname{tr}((\Sigma_1\Sigma_2)^{1/2}) = \operatorname{tr}((\Sigma_1^{1/2} \Sigma_2
\Sigma_1^{1/2})^{1/2})` is computed from two symmetric eigendecompositions (no general matrix square
root, no complex arithmetic). Covariances use ``ddof=1``; with fewer samples than features they
are singular, which the formula handles (tiny negative eigenvalues from rounding are clipped at 0).
The value depends on the number of samples (it is biased upwards for small sets), so compare
distances computed from equally many samples. Run it in float64 (``jax.enable_x64``) for stable
digits; float32 is accepted.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from dlx_jax._checks import check_finite, check_float, require

__all__ = ["frechet_distance", "gaussian_frechet_distance"]


def _sqrt_psd(cov: Float[Array, "d d"]) -> Float[Array, "d d"]:
    w, v = jnp.linalg.eigh(cov)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


def gaussian_frechet_distance(
    mean1: Float[Array, " d"], cov1: Float[Array, "d d"], mean2: Float[Array, " d"], cov2: Float[Array, "d d"]
) -> Float[Array, ""]:
    """The squared Fréchet distance between N(mean1, cov1) and N(mean2, cov2) (formula above).

    Raises:
        ValueError: shapes that are not ``(d,)``/``(d, d)`` pairs of one ``d``; and, when
            concrete, non-finite values or a covariance that is not symmetric.
    """
    d = jnp.shape(mean1)[-1] if jnp.ndim(mean1) == 1 else None
    if d is None or jnp.shape(mean2) != (d,) or jnp.shape(cov1) != (d, d) or jnp.shape(cov2) != (d, d):
        raise ValueError(
            f"expected means (d,) and covariances (d, d) of one d, got {jnp.shape(mean1)}, "
            f"{jnp.shape(cov1)}, {jnp.shape(mean2)}, {jnp.shape(cov2)}; pass the mean and covariance of "
            "each feature set (e.g. jnp.mean(f, 0), jnp.cov(f, rowvar=False))"
        )
    for name, value in (("mean1", mean1), ("cov1", cov1), ("mean2", mean2), ("cov2", cov2)):
        check_finite(name, value, "compute the statistics from finite features")
    for name, value in (("cov1", cov1), ("cov2", cov2)):
        require(
            lambda xp, a: xp.all(xp.abs(a - a.T) <= 1e-6 * (1 + xp.max(xp.abs(a)))),
            value,
            f"{name} is not symmetric; pass a covariance matrix, e.g. ({name} + {name}.T) / 2",
        )
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    cross = jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh((middle + middle.T) / 2), 0.0)))
    return jnp.sum(jnp.square(mean1 - mean2)) + jnp.trace(cov1) + jnp.trace(cov2) - 2 * cross


def frechet_distance(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, ""]:
    """The squared Fréchet distance between Gaussians fitted to the rows of ``x`` and of ``y``.

    Args:
        x: ``(n, d)`` features of one set (e.g. generated images), ``n >= 2``.
        y: ``(m, d)`` features of the other (e.g. real test images), ``m >= 2``.

    Returns:
        A scalar in the features' dtype (0 for identical sets, up to rounding).

    Raises:
        ValueError: not two 2-D float arrays with the same ``d``, fewer than 2 rows, or (concrete)
            NaN/inf features.
    """
    if jnp.ndim(x) != 2 or jnp.ndim(y) != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must be (n, d) and (m, d) feature matrices, got {jnp.shape(x)}, {jnp.shape(y)}; "
            "flatten each set to one row of d features per example (e.g. cnn.features(params, images))"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"need at least 2 feature vectors per set, got {x.shape[0]} and {y.shape[0]}; pass more "
            "examples (the distance is biased for small sets: use the same, large n for both)"
        )
    check_float("x", x)
    check_float("y", y)
    check_finite("x", x, "drop the examples with NaN/inf features (e.g. diverged samples)")
    check_finite("y", y, "drop the examples with NaN/inf features (e.g. diverged samples)")
    return gaussian_frechet_distance(
        jnp.mean(x, axis=0), jnp.cov(x, rowvar=False), jnp.mean(y, axis=0), jnp.cov(y, rowvar=False)
    )
