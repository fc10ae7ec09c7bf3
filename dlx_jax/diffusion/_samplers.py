"""Samplers as one compiled loop each: ancestral DDPM (book step 9) and DDIM (Song et al., 2021),
unconditional, conditional or classifier-free guided (step 10) (see :mod:`dlx_jax.diffusion`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax.diffusion._forward import ApplyFn, standard_normal
from dlx_jax.diffusion._guidance import EpsFn, check_gamma, check_labels, guided_eps
from dlx_jax.diffusion._schedule import Schedule, check_schedule, float_x
from dlx_jax.diffusion._steps import check_clip, check_eta, ddim_step, ddim_timesteps, ddpm_step


def make_eps_fn(apply_fn: ApplyFn, params: Any, model_state: Any) -> EpsFn:
    """The samplers' ``eps_fn(x, t, labels, label_mask) -> eps``: ``apply_fn`` in eval mode.

    Args:
        apply_fn: ``apply_fn(params, model_state, x, t, labels, label_mask, *, train)`` returning
            ``(eps_hat, new_model_state)``.
        params: the trained parameters.
        model_state: the model state (e.g. batch statistics), used read-only.

    Returns:
        ``eps_fn`` calling ``apply_fn(..., train=False)`` and dropping the returned state.
    """

    def eps_fn(x: Array, t: Array, labels: Array | None, label_mask: Array | None) -> Array:
        return apply_fn(params, model_state, x, t, labels, label_mask, train=False)[0]

    return eps_fn


def ddpm_sample(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    labels: Int[ArrayLike, " n"] | None = None,
    gamma: float | Float[ArrayLike, ""] | None = None,
    num_classes: int | None = None,
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    trajectory_every: int | None = None,
    dtype: jnp.dtype | None = None,
) -> Float[Array, " n *img"] | tuple[Float[Array, " n *img"], Float[Array, "m n *img"], Int[Array, " m"]]:
    """Ancestral DDPM sampling (the book's ``sample``): ``x_T ~ N(0, I)``, then :func:`ddpm_step`
    for ``t = T, T-1, ..., 1``, as one ``lax.scan``.

    The noise prediction at each step is (see :func:`guided_eps`):

    * ``labels=None``: unconditional, ``eps_fn(x, t, None, None)``;
    * ``labels`` and ``gamma=None``: conditional, ``eps_fn(x, t, labels, 1)`` (``γ = 1`` without
      the unconditional pass);
    * ``labels`` and ``gamma``: classifier-free guidance with scale ``γ`` (book: 3), one
      ``eps_fn`` call on a ``2n`` batch per step.

    Keys: ``key_init, key_steps = jax.random.split(key)``; ``x_T`` from ``key_init`` and the step
    at ``t`` uses ``jax.random.fold_in(key_steps, t)``. Undecorated: the caller jits, e.g.
    ``jax.jit(lambda k: ddpm_sample(k, eps_fn, schedule, shape=(n, 28, 28, 1)))``.

    Args:
        key: PRNG key.
        eps_fn: the model in eval mode, ``eps_fn(x, t, labels, label_mask) -> eps``
            (:func:`make_eps_fn` builds it from an ``apply_fn``).
        schedule: the :class:`Schedule` the model was trained with.
        shape: ``(n, ...)`` sample shape, e.g. ``(n, h, w, c)`` (static).
        labels: optional ``(n,)`` integer labels.
        gamma: optional guidance scale ``γ >= 0``; needs ``labels``.
        num_classes: when given, concrete labels are checked to lie in ``0..num_classes - 1``.
        clip_x0: ``None`` (default, as the book) or ``(low, high)``; see :func:`ddpm_step`.
        x_init: optional ``x_T`` of shape ``shape`` instead of a draw from ``key_init``.
        trajectory_every: ``None`` (default) or ``k >= 1`` (static): also return the start
            ``x_T`` and the sample after every step that leaves a multiple of ``k`` steps to go
            (for ``T = 1000, k = 100``: ``x_1000, x_900, ..., x_100, x_0``).
        dtype: floating dtype of the samples; default ``x_init``'s, else the schedule's.

    Returns:
        ``x_0`` of shape ``shape``; with ``trajectory_every`` the triple ``(x_0, trajectory,
        trajectory_t)``: ``(m, *shape)`` intermediate samples (``trajectory[-1]`` is ``x_0``) and
        the ``(m,)`` int32 timesteps they are at.

    Raises:
        ValueError: a bad ``shape``, ``labels``, ``gamma`` (negative, or without labels),
            ``x_init``, ``trajectory_every`` or ``clip_x0``; an ``eps_fn`` output not shaped like
            its input.
    """
    num_steps = check_schedule(schedule)
    x, eps_at = _setup(key, eps_fn, shape, labels, gamma, num_classes, x_init, dtype, schedule, clip_x0)
    key_steps = jax.random.split(key)[1]
    ts = np.arange(num_steps, 0, -1)

    def step(x: Array, t: Array) -> Array:
        eps = eps_at(x, t)
        return ddpm_step(jax.random.fold_in(key_steps, t), schedule, x, t, eps, clip_x0=clip_x0)

    return _run(x, (ts,), step, trajectory_every, start_t=num_steps, after_t=ts - 1)


def ddim_sample(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    num_steps: int = 50,
    eta: float | Float[ArrayLike, ""] = 0.0,
    labels: Int[ArrayLike, " n"] | None = None,
    gamma: float | Float[ArrayLike, ""] | None = None,
    num_classes: int | None = None,
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    trajectory_every: int | None = None,
    dtype: jnp.dtype | None = None,
) -> Float[Array, " n *img"] | tuple[Float[Array, " n *img"], Float[Array, "m n *img"], Int[Array, " m"]]:
    """DDIM sampling (Song et al., 2021) on ``S = num_steps`` evenly spaced timesteps, as one
    ``lax.scan``.

    Starts from ``x_T ~ N(0, I)`` and applies :func:`ddim_step` from ``τ_S = T`` down through
    :func:`ddim_timesteps` ``τ_{S-1}, ..., τ_1 = 1`` and finally to ``ᾱ_0 = 1`` (the last step
    returns the ``x̂0`` prediction). ``η = 0`` is deterministic given ``x_T``; ``η = 1`` with
    ``num_steps = T`` is DDPM. Conditioning, guidance, keys (the step from ``t`` uses
    ``fold_in(key_steps, t)``) and the trajectory are as in :func:`ddpm_sample`, with
    ``trajectory_every`` counted in DDIM steps.

    Args:
        key: PRNG key.
        eps_fn: the model in eval mode, ``eps_fn(x, t, labels, label_mask) -> eps``.
        schedule: the :class:`Schedule` the model was trained with.
        shape: ``(n, ...)`` sample shape (static).
        num_steps: ``S`` in ``1..T`` (static).
        eta: ``η >= 0``; 0 (default) is deterministic DDIM.
        labels: optional ``(n,)`` integer labels.
        gamma: optional guidance scale ``γ >= 0``; needs ``labels``.
        num_classes: when given, concrete labels are checked to lie in ``0..num_classes - 1``.
        clip_x0: ``None`` (default, no clipping) or ``(low, high)``; see :func:`ddim_step`.
        x_init: optional ``x_T`` of shape ``shape``.
        trajectory_every: ``None`` or ``k >= 1`` (static), see :func:`ddpm_sample`.
        dtype: floating dtype of the samples; default ``x_init``'s, else the schedule's.

    Returns:
        As :func:`ddpm_sample`.

    Raises:
        ValueError: as :func:`ddpm_sample`, plus ``num_steps`` outside ``1..T`` and ``η < 0``.
    """
    total = check_schedule(schedule)
    taus = ddim_timesteps(total, num_steps)[::-1]
    prev = np.append(taus[1:], 0)
    check_eta(eta)
    x, eps_at = _setup(key, eps_fn, shape, labels, gamma, num_classes, x_init, dtype, schedule, clip_x0)
    key_steps = jax.random.split(key)[1]

    def step(x: Array, t: Array, t_prev: Array) -> Array:
        eps = eps_at(x, t)
        key_t = jax.random.fold_in(key_steps, t)
        return ddim_step(key_t, schedule, x, t, t_prev, eps, eta=eta, clip_x0=clip_x0)

    return _run(x, (taus, prev), step, trajectory_every, start_t=total, after_t=prev)


# --- private helpers ---------------------------------------------------------------------------------


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(
            f"shape must be a tuple of ints (n, ...) such as (n, h, w, c), got {shape!r}; "
            "pass e.g. (16, 28, 28, 1)"
        ) from None
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(
            f"shape must be a non-empty tuple of positive ints (n, ...), got {shape}; "
            "pass e.g. (16, 28, 28, 1)"
        )
    return shape


def _setup(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    shape: Any,
    labels: ArrayLike | None,
    gamma: Any,
    num_classes: int | None,
    x_init: ArrayLike | None,
    dtype: Any,
    schedule: Schedule,
    clip_x0: Any,
) -> tuple[Array, Callable[[Array, Array], Array]]:
    """Validate the sampler arguments; return ``x_T`` and ``eps_at(x, t_scalar)``."""
    shape = _check_shape(shape)
    n = shape[0]
    if clip_x0 is not None:
        check_clip(clip_x0)
    if x_init is not None:
        x_init = float_x(x_init, "x_init")
        if x_init.shape != shape:
            raise ValueError(
                f"x_init must have shape {shape} (the shape argument), got {x_init.shape}; "
                "pass shape=x_init.shape"
            )
    if dtype is None:
        dtype = x_init.dtype if x_init is not None else schedule.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be floating, got {dtype}; pass e.g. dtype=jnp.float32")
    key_init = jax.random.split(key)[0]
    x = x_init.astype(dtype) if x_init is not None else standard_normal(key_init, shape, dtype)

    if labels is None:
        if gamma is not None:
            raise ValueError("gamma (classifier-free guidance) needs labels; pass labels=... or gamma=None")

        def predict(x: Array, t: Array) -> Array:
            return eps_fn(x, jnp.full((n,), t, jnp.int32), None, None)

    else:
        labels = check_labels(labels, n, num_classes)
        if gamma is None:
            ones = jnp.ones((n,), dtype)

            def predict(x: Array, t: Array) -> Array:
                return eps_fn(x, jnp.full((n,), t, jnp.int32), labels, ones)

        else:
            check_gamma(gamma)

            def predict(x: Array, t: Array) -> Array:
                return guided_eps(eps_fn, x, t, labels, gamma)

    def eps_at(x: Array, t: Array) -> Array:
        eps = jnp.asarray(predict(x, t))
        if eps.shape != x.shape:
            raise ValueError(
                f"eps_fn must return an array shaped like its input x, {x.shape}, got {eps.shape}; the model "
                "must return one noise prediction per pixel"
            )
        return eps.astype(x.dtype)

    return x, eps_at


def _run(
    x: Array,
    steps: tuple[np.ndarray, ...],
    step_fn: Callable[..., Array],
    every: int | None,
    *,
    start_t: int,
    after_t: np.ndarray,
) -> Array | tuple[Array, Array, Array]:
    """``lax.scan`` ``step_fn(x, *steps[j])`` over ``j``; optionally record a trajectory.

    The trajectory lives in an ``(m + 1, *shape)`` buffer written in place each step: slot 0 is
    the start, slot ``m`` a scratch slot for the steps that are not recorded.
    """
    xs = tuple(jnp.asarray(s, jnp.int32) for s in steps)
    if every is None:

        def body(x: Array, inp: tuple[Array, ...]) -> tuple[Array, None]:
            return step_fn(x, *inp), None

        x, _ = lax.scan(body, x, xs)
        return x
    if not isinstance(every, int | np.integer) or isinstance(every, bool) or every < 1:
        raise ValueError(
            f"trajectory_every must be None or an int >= 1 (static), got {every!r}; "
            "pass e.g. trajectory_every=100"
        )
    num = len(steps[0])
    recorded = (num - 1 - np.arange(num)) % int(every) == 0
    m = 1 + int(recorded.sum())
    slots = np.where(recorded, np.cumsum(recorded), m)
    traj = jnp.zeros((m + 1, *x.shape), x.dtype).at[0].set(x)

    def body_traj(carry: tuple[Array, Array], inp: tuple[Array, ...]) -> tuple[tuple[Array, Array], None]:
        x, traj = carry
        *args, slot = inp
        x = step_fn(x, *args)
        return (x, lax.dynamic_update_index_in_dim(traj, x, slot, 0)), None

    (x, traj), _ = lax.scan(body_traj, (x, traj), (*xs, jnp.asarray(slots, jnp.int32)))
    traj_t = np.concatenate([[start_t], np.asarray(after_t)[recorded]])
    return x, traj[:m], jnp.asarray(traj_t, jnp.int32)
