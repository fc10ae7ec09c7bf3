"""Argument checks shared by several library modules (one place, one wording of each error).

Shape and setting checks (:func:`check_sizes`, :func:`check_num_samples`, :func:`check_last_axis`,
:func:`check_float`) read only static information and so work at trace time inside ``jax.jit``.
:func:`validate_images` checks *values* (range, NaN) and therefore needs a concrete array: call it
before jitting, as the experiments do. Every check raises ``ValueError`` with the expected value
and the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_float", "check_last_axis", "check_num_samples", "check_sizes", "validate_images"]


def check_sizes(**sizes: int) -> None:
    """Every keyword is a layer size that must be an integer >= 1 (e.g. ``latent_dim=20``)."""
    for name, value in sizes.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}; pass e.g. {name}=20")


def check_num_samples(num_samples: int) -> None:
    """``num_samples`` (a static sample count) must be an integer >= 1."""
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}; pass e.g. num_samples=1")


def check_last_axis(x, width: int) -> None:
    """``x`` must have a last axis of ``width`` features (e.g. 784 flattened pixels)."""
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != width:
        raise ValueError(
            f"x has shape {tuple(jnp.shape(x))} but the model expects (..., {width}); "
            f"flatten images to (n, {width}) with x.reshape(len(x), -1)"
        )


def check_float(name: str, x) -> None:
    """``x`` must have a floating-point dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}; cast it with "
            ".astype(jnp.float32)"
        )


def validate_images(x, *, input_dim: int = 784, name: str = "images", flatten: bool = True) -> np.ndarray:
    """Check a concrete batch of one-channel images and return it as float32.

    Accepts ``(n, d)``, ``(n, H, W)`` or ``(n, H, W, 1)`` with ``H·W = d``, values in ``[0, 1]``
    (uint8 0–255 images are rejected: convert with ``dlx_jax.data.to_float_images``). This is a
    value check and so runs on concrete arrays only (call it before jitting).

    Args:
        x: the images.
        input_dim: ``d``, pixels per image (784 for 28×28).
        name: what to call the images in error messages.
        flatten: return ``(n, d)`` (default); ``False`` keeps images ``(n, H, W, 1)`` (needs image
            input, not ``(n, d)``).

    Raises:
        ValueError: wrong shape, an empty batch, NaN/inf, or values outside ``[0, 1]``.
    """
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            f"validate_images needs a concrete array, got a tracer for {name}; call it outside jit"
        )
    arr = np.asarray(x)
    shape = arr.shape
    if arr.ndim == 4 and shape[-1] == 1:
        arr = arr[..., 0]
    image_shape = arr.shape[1:] if arr.ndim == 3 else None
    if arr.ndim == 3:
        arr = arr.reshape(len(arr), -1)
    if arr.ndim != 2 or arr.shape[1] != input_dim:
        raise ValueError(
            f"{name} have shape {shape}; expected (n, {input_dim}), (n, H, W) or (n, H, W, 1) with "
            f"H*W = {input_dim} (e.g. 28x28 MNIST); reshape or resize the images"
        )
    if not flatten and image_shape is None:
        raise ValueError(f"{name} have shape {shape}; pass images (n, H, W) or (n, H, W, 1) or flatten=True")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} have dtype {arr.dtype}; expected floats in [0, 1] (uint8 pixels 0-255: divide by 255, "
            "e.g. with dlx_jax.data.to_float_images)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values; clean the data")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} have values in [{lo:g}, {hi:g}]; expected pixels in [0, 1] (divide 0-255 images by 255)"
        )
    arr = arr.astype(np.float32, copy=False)
    return arr if flatten else arr.reshape(len(arr), *image_shape, 1)
