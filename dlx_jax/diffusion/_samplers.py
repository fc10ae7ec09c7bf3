"""Samplers as one compiled loop each: ancestral DDPM (book step 9) and DDIM (Song et al., 2021), and
the same loops recording a denoising trajectory (see :mod:`dlx_jax.diffusion`).

Every sampler is ``sampler(key, eps_fn, schedule, *, shape, ...options)`` with ``eps_fn(x, t)`` an
:data:`EpsFn` (the model closed over its parameters and conditioning: :func:`make_eps_fn`,
:func:`conditional`, :func:`guided`). The samplers return ``x_0``; the ``*_trajectory`` functions
return a :class:`Trajectory`.

The sampler options are documented once, in :mod:`dlx_jax.diffusion` ("Sampler options").

Keys: ``key_init, key_steps = jax.random.split(key)``; ``x_T`` comes from ``key_init`` and the step
from ``t`` uses ``jax.random.fold_in(key_steps, t)``. Undecorated: the caller jits, e.g.
``jax.jit(lambda k: ddpm_sample(k, eps_fn, schedule, shape=(n, 28, 28, 1)))``.

Conditioning used to be sampler options; those keywords (``labels``, ``gamma``, ``num_classes``,
``trajectory_every``) now raise ``TypeError`` naming the call that replaces them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_positive_int
from dlx_jax._random import standard_normal
from dlx_jax.diffusion._forward import ApplyFn
from dlx_jax.diffusion._guidance import EpsFn
from dlx_jax.diffusion._schedule import Schedule, check_schedule, float_x
from dlx_jax.diffusion._steps import check_clip, check_eta, ddim_step, ddim_timesteps, ddpm_step

#: What each removed sampler keyword became (the ``TypeError`` names the new call).
REMOVED_KEYWORDS = {
    "labels": "labels= moved out of the sampler: pass eps_fn=diffusion.conditional(eps_fn, labels) "
    "(or diffusion.guided(eps_fn, labels, gamma) for classifier-free guidance)",
    "gamma": "gamma= moved out of the sampler: pass eps_fn=diffusion.guided(eps_fn, labels, gamma)",
    "num_classes": "num_classes= moved out of the sampler: pass it to diffusion.conditional(eps_fn, labels, "
    "num_classes=...) or diffusion.guided(eps_fn, labels, gamma, num_classes=...)",
    "trajectory_every": "trajectory_every= moved out of the sampler, which always returns x_0: call "
    "diffusion.{kind}_trajectory(key, eps_fn, schedule, shape=..., every=k), which returns a Trajectory",
}


class Trajectory(NamedTuple):
    """A denoising trajectory (a pytree).

    Attributes:
        xs: ``(m, *shape)`` the start ``x_T``, then the recorded samples; ``xs[-1]`` is ``x_0``.
        ts: ``(m,)`` int32 timesteps the samples are at (``ts[0] = T``, ``ts[-1] = 0``).
    """

    xs: Float[Array, "m n *img"]
    ts: Int[Array, " m"]

    @property
    def x0(self) -> Float[Array, " n *img"]:
        """The final sample ``x_0`` (the last recorded frame)."""
        return self.xs[-1]


def make_eps_fn(apply_fn: ApplyFn, params: Any, model_state: Any) -> Callable[..., Array]:
    """The model in eval mode, ``eps_fn(x, t, labels=None, label_mask=None) -> eps``.

    Called as ``eps_fn(x, t)`` it is the unconditional :data:`EpsFn` the samplers take; its
    labelled form (:data:`LabeledEpsFn`) is what :func:`conditional`, :func:`guided` and
    :func:`guided_eps` close over the labels.

    Args:
        apply_fn: ``apply_fn(params, model_state, x, t, labels, label_mask, *, train)`` returning
            ``(eps_hat, new_model_state)``.
        params: the trained parameters.
        model_state: the model state (e.g. batch statistics), used read-only.

    Returns:
        ``eps_fn`` calling ``apply_fn(..., train=False)`` and dropping the returned state.
    """

    def eps_fn(x: Array, t: Array, labels: Array | None = None, label_mask: Array | None = None) -> Array:
        return apply_fn(params, model_state, x, t, labels, label_mask, train=False)[0]

    return eps_fn


def ddpm_sample(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    dtype: jnp.dtype | None = None,
    sharding: jax.sharding.Sharding | None = None,
    **removed: Any,
) -> Float[Array, " n *img"]:
    """Ancestral DDPM sampling (the book's ``sample``): ``x_T ~ N(0, I)``, then :func:`ddpm_step`
    for ``t = T, T-1, ..., 1``, as one ``lax.scan``.

    Args:
        key: PRNG key (split as this module's docstring says).
        eps_fn: ``eps_fn(x, t) -> eps`` (:data:`EpsFn`); the conditioning is closed over it.
        schedule: the :class:`Schedule` the model was trained with.
        shape, clip_x0, x_init, dtype, sharding: the sampler options (:mod:`dlx_jax.diffusion`).

    Returns:
        ``x_0`` of shape ``shape``.

    Raises:
        ValueError: a bad ``shape``, ``x_init``, ``dtype`` or ``clip_x0``; an ``eps_fn`` output not
            shaped like its input. TypeError: a removed keyword (``labels=``, ``gamma=``, ...) or an
            ``eps_fn`` that cannot be called as ``eps_fn(x, t)``.
    """
    _reject_removed("ddpm", removed)
    options = {"shape": shape, "clip_x0": clip_x0, "x_init": x_init, "dtype": dtype, "sharding": sharding}
    return _scan(_ddpm_loop(key, eps_fn, schedule, **options))


def ddim_sample(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    num_steps: int = 50,
    eta: float | Float[ArrayLike, ""] = 0.0,
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    dtype: jnp.dtype | None = None,
    sharding: jax.sharding.Sharding | None = None,
    **removed: Any,
) -> Float[Array, " n *img"]:
    """DDIM sampling (Song et al., 2021) on ``S = num_steps`` evenly spaced timesteps, as one
    ``lax.scan``.

    Starts from ``x_T ~ N(0, I)`` and applies :func:`ddim_step` from ``τ_S = T`` down through
    :func:`ddim_timesteps` ``τ_{S-1}, ..., τ_1 = 1`` and finally to ``ᾱ_0 = 1`` (the last step
    returns the ``x̂0`` prediction). ``η = 0`` is deterministic given ``x_T``.

    Args:
        key: PRNG key (split as this module's docstring says).
        eps_fn: ``eps_fn(x, t) -> eps`` (:data:`EpsFn`).
        schedule: the :class:`Schedule` the model was trained with.
        shape, num_steps, eta, clip_x0, x_init, dtype, sharding: the sampler
            options (:mod:`dlx_jax.diffusion`).

    Returns:
        ``x_0`` of shape ``shape``.

    Raises:
        ValueError: as :func:`ddpm_sample`, plus ``num_steps`` outside ``1..T`` and ``η`` outside
            ``[0, 1]``. TypeError: as :func:`ddpm_sample`.
    """
    _reject_removed("ddim", removed)
    options = {"shape": shape, "clip_x0": clip_x0, "x_init": x_init, "dtype": dtype, "sharding": sharding}
    return _scan(_ddim_loop(key, eps_fn, schedule, num_steps=num_steps, eta=eta, **options))


def ddpm_trajectory(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    every: int,
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    dtype: jnp.dtype | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Trajectory:
    """:func:`ddpm_sample` recording the chain every ``every`` steps (same keys, same ``x_0``).

    Args:
        key, eps_fn, schedule: as :func:`ddpm_sample`.
        shape, every, clip_x0, x_init, dtype, sharding: the sampler options (:mod:`dlx_jax.diffusion`).

    Returns:
        The :class:`Trajectory` (``trajectory.x0`` is what :func:`ddpm_sample` returns).

    Raises:
        ValueError: as :func:`ddpm_sample`, or ``every`` not an int ``>= 1``.
    """
    _check_every(every)
    options = {"shape": shape, "clip_x0": clip_x0, "x_init": x_init, "dtype": dtype, "sharding": sharding}
    return _scan_recording(_ddpm_loop(key, eps_fn, schedule, **options), every)


def ddim_trajectory(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Sequence[int],
    every: int,
    num_steps: int = 50,
    eta: float | Float[ArrayLike, ""] = 0.0,
    clip_x0: tuple[float, float] | None = None,
    x_init: Float[ArrayLike, " n *img"] | None = None,
    dtype: jnp.dtype | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Trajectory:
    """:func:`ddim_sample` recording the chain every ``every`` DDIM steps (same keys, same ``x_0``).

    Args:
        key, eps_fn, schedule: as :func:`ddim_sample`.
        shape, every, num_steps, eta, clip_x0, x_init, dtype, sharding: the sampler options
            (:mod:`dlx_jax.diffusion`).

    Returns:
        The :class:`Trajectory`.

    Raises:
        ValueError: as :func:`ddim_sample`, or ``every`` not an int ``>= 1``.
    """
    _check_every(every)
    options = {"shape": shape, "clip_x0": clip_x0, "x_init": x_init, "dtype": dtype, "sharding": sharding}
    return _scan_recording(_ddim_loop(key, eps_fn, schedule, num_steps=num_steps, eta=eta, **options), every)


# --- private helpers ---------------------------------------------------------------------------------


class _Loop(NamedTuple):
    """A sampler as data: ``x_T``, the per-step scan inputs, the step, and the timesteps for a
    trajectory (``start_t`` before the first step, ``after_t[j]`` after step ``j``)."""

    x: Array
    inputs: tuple[np.ndarray, ...]
    step: Callable[..., Array]
    start_t: int
    after_t: np.ndarray


def _ddpm_loop(key: PRNGKeyArray, eps_fn: EpsFn, schedule: Schedule, **options: Any) -> _Loop:
    num_steps = check_schedule(schedule)
    x, eps_at = _start(key, eps_fn, schedule, **options)
    key_steps = jax.random.split(key)[1]
    ts = np.arange(num_steps, 0, -1)
    clip_x0, sharding = options["clip_x0"], options["sharding"]

    def step(x: Array, t: Array) -> Array:
        eps = eps_at(x, t)
        x = ddpm_step(jax.random.fold_in(key_steps, t), schedule, x, t, eps, clip_x0=clip_x0)
        return _lay_out(x, sharding)

    return _Loop(x, (ts,), step, num_steps, ts - 1)


def _ddim_loop(
    key: PRNGKeyArray, eps_fn: EpsFn, schedule: Schedule, *, num_steps: int, eta: Any, **options: Any
) -> _Loop:
    total = check_schedule(schedule)
    taus = ddim_timesteps(total, num_steps)[::-1]
    prev = np.append(taus[1:], 0)
    check_eta(eta)
    x, eps_at = _start(key, eps_fn, schedule, **options)
    key_steps = jax.random.split(key)[1]
    clip_x0, sharding = options["clip_x0"], options["sharding"]

    def step(x: Array, t: Array, t_prev: Array) -> Array:
        eps = eps_at(x, t)
        key_t = jax.random.fold_in(key_steps, t)
        x = ddim_step(key_t, schedule, x, t, t_prev, eps, eta=eta, clip_x0=clip_x0)
        return _lay_out(x, sharding)

    return _Loop(x, (taus, prev), step, total, prev)


def _reject_removed(kind: str, removed: dict[str, Any]) -> None:
    for name in removed:
        if name in REMOVED_KEYWORDS:
            raise TypeError(f"{kind}_sample(): {REMOVED_KEYWORDS[name].format(kind=kind)}")
        raise TypeError(
            f"{kind}_sample() got an unexpected keyword argument {name!r}; its options are shape, "
            + ("num_steps, eta, " if kind == "ddim" else "")
            + "clip_x0, x_init and dtype (see dlx_jax.diffusion's sampler options)"
        )


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


def _check_every(every: Any) -> None:
    check_positive_int("every", every, fix="pass e.g. every=100", static=True)


def _check_eps_fn(eps_fn: Any) -> None:
    """``eps_fn`` must be callable as ``eps_fn(x, t)`` (a labelled model is closed over first)."""
    if not callable(eps_fn):
        raise TypeError(f"eps_fn must be a function eps_fn(x, t) -> eps, got {type(eps_fn).__name__}")
    try:
        signature = inspect.signature(eps_fn)
    except (TypeError, ValueError):  # no signature to read (e.g. a builtin): trust it
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"eps_fn must take (x, t), but its signature is {signature}; close a model that takes "
            "(x, t, labels, label_mask) over its conditioning first: diffusion.conditional(eps_fn, labels), "
            "diffusion.guided(eps_fn, labels, gamma), or lambda x, t: eps_fn(x, t, None, None) "
            "(make_eps_fn's models take (x, t) as they are)"
        ) from None


def _start(
    key: PRNGKeyArray,
    eps_fn: EpsFn,
    schedule: Schedule,
    *,
    shape: Any,
    clip_x0: Any,
    x_init: ArrayLike | None,
    dtype: Any,
    sharding: Any,
) -> tuple[Array, Callable[[Array, Array], Array]]:
    """Check the sampler options; return ``x_T`` and ``eps_at(x, t_scalar)``."""
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
    _check_eps_fn(eps_fn)
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(
            f"sharding must be a jax.sharding.Sharding or None, got {type(sharding).__name__}; pass e.g. "
            "dlx_jax.training.batch_sharding(mesh)"
        )
    key_init = jax.random.split(key)[0]
    x = x_init.astype(dtype) if x_init is not None else standard_normal(key_init, shape, dtype)
    x = _lay_out(x, sharding)

    def eps_at(x: Array, t: Array) -> Array:
        eps = jnp.asarray(eps_fn(x, jnp.full((n,), t, jnp.int32)))
        if eps.shape != x.shape:
            raise ValueError(
                f"eps_fn must return an array shaped like its input x, {x.shape}, got {eps.shape}; the model "
                "must return one noise prediction per pixel"
            )
        return eps.astype(x.dtype)

    return x, eps_at


def _lay_out(x: Array, sharding: Any) -> Array:
    """``x`` laid out as ``sharding`` (the image batch over a device mesh), or as it is for ``None``."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _scan(loop: _Loop) -> Array:
    """``lax.scan`` the loop's step over its inputs; the final sample."""

    def body(x: Array, inp: tuple[Array, ...]) -> tuple[Array, None]:
        return loop.step(x, *inp), None

    x, _ = lax.scan(body, loop.x, tuple(jnp.asarray(s, jnp.int32) for s in loop.inputs))
    return x


def _scan_recording(loop: _Loop, every: int) -> Trajectory:
    """:func:`_scan`, also writing the start and every ``every``-th sample (counted from the end)
    into an ``(m + 1, *shape)`` buffer in place: slot 0 is the start, slot ``m`` a scratch slot
    for the steps that are not recorded."""
    num = len(loop.inputs[0])
    recorded = (num - 1 - np.arange(num)) % int(every) == 0
    m = 1 + int(recorded.sum())
    slots = np.where(recorded, np.cumsum(recorded), m)
    traj = jnp.zeros((m + 1, *loop.x.shape), loop.x.dtype).at[0].set(loop.x)

    def body(carry: tuple[Array, Array], inp: tuple[Array, ...]) -> tuple[tuple[Array, Array], None]:
        x, traj = carry
        *args, slot = inp
        x = loop.step(x, *args)
        return (x, lax.dynamic_update_index_in_dim(traj, x, slot, 0)), None

    xs = tuple(jnp.asarray(s, jnp.int32) for s in loop.inputs)
    (_, traj), _ = lax.scan(body, (loop.x, traj), (*xs, jnp.asarray(slots, jnp.int32)))
    traj_t = np.concatenate([[loop.start_t], np.asarray(loop.after_t)[recorded]])
    return Trajectory(traj[:m], jnp.asarray(traj_t, jnp.int32))
