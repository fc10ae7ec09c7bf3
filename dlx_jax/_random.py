"""Random draws shared by several library modules (one home for each)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def standard_normal(key: PRNGKeyArray, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """``jax.random.normal`` drawn flat and reshaped: the same distribution, but XLA:CPU compiles
    a flat draw much faster than a multi-axis one (see :mod:`dlx_jax.distributions`).

    Args:
        key: PRNG key.
        shape: the output shape (static).
        dtype: floating dtype of the draw.

    Returns:
        ``jax.random.normal(key, (prod(shape),), dtype).reshape(shape)``.
    """
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
