"""The noise schedule and the helpers that read it, shared by the loss and the samplers (see
:mod:`dlx_jax.diffusion`; the timestep check lives in :func:`dlx_jax._checks.check_timesteps`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from dlx_jax._checks import check_finite, check_positive_int


class Schedule(NamedTuple):
    """A variance schedule ``β_1..β_T`` and the products the model needs (a pytree).

    Every array has length ``T + 1`` and is indexed by the book's **1-based** timestep: entry
    ``t`` (``1 <= t <= T``) holds ``β_t``, ``α_t``, ``ᾱ_t``; entry ``0`` is "no noise"
    (``β_0 = 0``, ``α_0 = 1``, ``ᾱ_0 = 1``). So ``schedule.alpha_bars[t]`` is the book's
    ``alpha_bars[t - 1]``, and ``ᾱ_{t-1}`` at ``t = 1`` is ``alpha_bars[0] = 1``, which makes the
    posterior variance at ``t = 1`` exactly zero.

    Build one with :func:`linear_schedule` (the book's) or :func:`schedule_from_betas`; the same
    object is passed to the loss and to the samplers. The products are computed in float64
    numpy and then cast, so ``1 - ᾱ_t`` is accurate in float32 even where ``ᾱ_t`` rounds to
    nearly one (``t`` small).

    Attributes:
        betas: ``(T + 1,)`` ``β_t``, with ``β_0 = 0``.
        alphas: ``(T + 1,)`` ``α_t = 1 - β_t``, with ``α_0 = 1``.
        alpha_bars: ``(T + 1,)`` ``ᾱ_t = Π_{s<=t} α_s``, with ``ᾱ_0 = 1``.
        one_minus_alpha_bars: ``(T + 1,)`` ``1 - ᾱ_t`` computed before rounding, with ``0`` at 0.
    """

    betas: Float[Array, " T+1"]
    alphas: Float[Array, " T+1"]
    alpha_bars: Float[Array, " T+1"]
    one_minus_alpha_bars: Float[Array, " T+1"]

    @property
    def num_steps(self) -> int:
        """``T``, the number of diffusion steps (static: read from the array shape)."""
        return int(self.betas.shape[0]) - 1

    @property
    def dtype(self) -> jnp.dtype:
        """The floating dtype of the schedule's arrays."""
        return self.alpha_bars.dtype


def linear_schedule(
    num_steps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> Schedule:
    """The book's schedule: ``β_t`` linear from ``beta_start`` to ``beta_end`` over ``T`` steps.

    ``β_t = beta_start + (t - 1)(beta_end - beta_start)/(T - 1)`` for ``t = 1..T`` (numpy's
    ``linspace``), computed with :func:`schedule_from_betas`. With the defaults
    ``ᾱ_1 = 0.9999``, ``ᾱ_500 ≈ 0.07859`` and ``ᾱ_1000 ≈ 4.036e-5``.

    Args:
        num_steps: ``T >= 2`` (static).
        beta_start: ``β_1``, in ``(0, 1)``.
        beta_end: ``β_T``, in ``(0, 1)`` and ``>= beta_start``.
        dtype: floating dtype of the arrays (float64 needs ``jax.enable_x64``).

    Returns:
        The :class:`Schedule`.

    Raises:
        ValueError: ``num_steps`` is not an int ``>= 2``, or the betas are outside ``(0, 1)``, or
            ``beta_end < beta_start``.
    """
    check_positive_int(
        "num_steps", num_steps, fix="pass e.g. num_steps=1000 (the book's)", minimum=2, static=True
    )
    if not beta_end >= beta_start:
        raise ValueError(
            f"beta_end must be >= beta_start for an increasing schedule, got beta_start={beta_start}, "
            f"beta_end={beta_end}; swap them"
        )
    betas = np.linspace(float(beta_start), float(beta_end), int(num_steps), dtype=np.float64)
    return schedule_from_betas(betas, dtype=dtype)


def schedule_from_betas(betas: Float[ArrayLike, " T"], *, dtype: jnp.dtype | None = None) -> Schedule:
    """A :class:`Schedule` from the ``T`` values ``β_1..β_T`` (index 0 is prepended).

    ``ᾱ_t = Π_{s<=t} (1 - β_s)`` and ``1 - ᾱ_t`` are accumulated in float64 numpy and then cast
    to ``dtype``; a float32 ``cumprod`` would give the same ``ᾱ_1000`` to 1e-7 relative, but its
    ``1 - ᾱ_t`` would lose three digits at small ``t``.

    Args:
        betas: ``(T,)`` concrete values (a schedule is a constant: build it outside ``jit``),
            each in ``(0, 1)`` and non-decreasing (``β_t >= β_{t-1}``; constant runs are allowed,
            a decrease is an error).
        dtype: dtype of the arrays; default the floating dtype of ``betas`` (float32 for
            integer or non-array input, or float64 input without ``jax.enable_x64``).

    Returns:
        The :class:`Schedule`, arrays of length ``T + 1``.

    Raises:
        ValueError: ``betas`` is traced, not 1-D, shorter than 2, not finite, outside
            ``(0, 1)``, or decreasing somewhere.
    """
    if isinstance(betas, jax.core.Tracer):
        raise ValueError(
            "betas must be concrete (a schedule is a constant); build the Schedule outside jit and "
            "pass it in as an argument or close over it"
        )
    if dtype is None:
        in_dtype = jnp.asarray(betas).dtype
        dtype = in_dtype if jnp.issubdtype(in_dtype, jnp.floating) else jnp.float32
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"dtype must be a floating dtype (float32 or float64), got {dtype}; pass dtype=jnp.float32"
        )
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] < 2:
        raise ValueError(
            f"betas must be a 1-D array of T >= 2 values beta_1..beta_T, got shape {b.shape}; "
            "pass e.g. np.linspace(1e-4, 0.02, 1000)"
        )
    if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b >= 1):
        bad = int(np.nonzero(~((b > 0) & (b < 1)))[0][0])
        raise ValueError(
            f"every beta must lie in (0, 1), got beta_{bad + 1} = {float(b[bad])!r}; a noise variance "
            "per step must be positive and below one: pass e.g. np.linspace(1e-4, 0.02, 1000)"
        )
    if np.any(np.diff(b) < 0):
        bad = int(np.nonzero(np.diff(b) < 0)[0][0])
        raise ValueError(
            f"betas must be non-decreasing (more noise at later steps), but beta_{bad + 2} = "
            f"{float(b[bad + 1])!r} < beta_{bad + 1} = {float(b[bad])!r}; sort them or check the schedule"
        )
    betas0 = np.concatenate([[0.0], b])
    log_alpha_bars = np.cumsum(np.log1p(-betas0))
    alpha_bars = np.exp(log_alpha_bars)
    one_minus = -np.expm1(log_alpha_bars)
    return Schedule(
        betas=jnp.asarray(betas0, dtype),
        alphas=jnp.asarray(1.0 - betas0, dtype),
        alpha_bars=jnp.asarray(alpha_bars, dtype),
        one_minus_alpha_bars=jnp.asarray(one_minus, dtype),
    )


# --- private helpers shared by the package ----------------------------------------------------------


def check_schedule(schedule: Schedule) -> int:
    """Check that ``schedule`` is a :class:`Schedule` of equal-length 1-D arrays; return ``T``."""
    if not isinstance(schedule, Schedule):
        raise ValueError(
            f"schedule must be a Schedule, got {type(schedule).__name__}; build one with "
            "linear_schedule() or schedule_from_betas(betas)"
        )
    shapes = {jnp.shape(a) for a in schedule}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(
            f"schedule arrays must all have shape (T + 1,), got {[jnp.shape(a) for a in schedule]}; "
            "build the schedule with linear_schedule() or schedule_from_betas(betas)"
        )
    num_steps = schedule.num_steps
    if num_steps < 2:
        raise ValueError(
            f"the schedule needs T >= 2 steps, got T = {num_steps}; build it with e.g. linear_schedule(1000)"
        )
    return num_steps


def float_x(x: ArrayLike, name: str = "x") -> Array:
    """``x`` as a floating array with a leading batch axis; integer images are an error."""
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating array (images scaled to a small range such as [-1, 1] or "
            f"[0, 1]), got dtype {x.dtype}; convert it, e.g. x.astype(jnp.float32) / 255"
        )
    if x.ndim < 1:
        raise ValueError(
            f"{name} must have a leading batch axis, shape (n, ...) such as (n, h, w, c), got a scalar; "
            f"pass {name}[None]"
        )
    check_finite(name, x, "drop or fix the examples with NaN/inf values (e.g. a diverged sample)")
    return x


def coef(values: Float[Array, " T+1"], t: Int[Array, "*n"], x: Array) -> Array:
    """``values[t]`` in ``x``'s dtype, shaped to broadcast over the non-batch axes of ``x``.

    Out-of-range ``t`` (possible only under ``jit``, where it cannot be checked) gives NaN rather
    than a silently clamped index.
    """
    c = values.at[t].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False).astype(x.dtype)
    if c.ndim == 1:
        c = c.reshape(c.shape + (1,) * (x.ndim - 1))
    return c
