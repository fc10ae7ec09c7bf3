"""Single reverse steps: the x0 prediction, the ancestral DDPM step (book step 9) and the DDIM
step (Song et al., 2021) (see :mod:`dlx_jax.diffusion`)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from dlx_jax._checks import check_timesteps, is_concrete
from dlx_jax._random import standard_normal
from dlx_jax.diffusion._schedule import Schedule, check_schedule, coef, float_x


def predict_x0(
    schedule: Schedule,
    x: Float[ArrayLike, " n *img"],
    t: Int[ArrayLike, "*n"],
    eps_hat: Float[ArrayLike, " n *img"],
) -> Float[Array, " n *img"]:
    """The clean data implied by a noise prediction: ``x̂0 = (x_t - √(1 - ᾱ_t) ε̂) / √ᾱ_t``.

    Args:
        schedule: the :class:`Schedule`.
        x: ``(n, ...)`` noisy data ``x_t``.
        t: scalar or ``(n,)`` integer timesteps in ``1..T`` (checked when concrete).
        eps_hat: the noise prediction, shaped like ``x``.

    Returns:
        ``x̂0`` shaped like ``x``, in its dtype.
    """
    num_steps = check_schedule(schedule)
    x, eps_hat = _check_x_eps(x, eps_hat)
    t = check_timesteps(t, num_steps, x.shape[0])
    sqrt_ab = jnp.sqrt(coef(schedule.alpha_bars, t, x))
    sqrt_omab = jnp.sqrt(coef(schedule.one_minus_alpha_bars, t, x))
    return (x - sqrt_omab * eps_hat) / sqrt_ab


def ddpm_step(
    key: PRNGKeyArray | None,
    schedule: Schedule,
    x: Float[ArrayLike, " n *img"],
    t: Int[ArrayLike, "*n"],
    eps_hat: Float[ArrayLike, " n *img"],
    *,
    clip_x0: tuple[float, float] | None = None,
) -> Float[Array, " n *img"]:
    r"""One ancestral DDPM step ``x_t → x_{t-1}`` (the book's ``denoise``).

    .. math::
        \mu = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{1 - \alpha_t}{\sqrt{1 - \bar\alpha_t}}
               \hat\varepsilon\Big), \qquad
        \sigma_t^2 = \frac{(1 - \alpha_t)(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}, \qquad
        x_{t-1} = \mu + \sigma_t z,\; z \sim \mathcal N(0, I),

    with **no noise at** ``t = 1`` (there ``σ_1 = 0`` anyway because ``ᾱ_0 = 1``). The noise is
    ``z = jax.random.normal(key, (x.size,), x.dtype).reshape(x.shape)`` (drawn flat: the same
    distribution, faster to compile on CPU). ``1 - α_t`` is read as ``β_t`` and ``1 - ᾱ_t`` from
    :attr:`Schedule.one_minus_alpha_bars`, not subtracted in float32.

    Args:
        key: PRNG key for ``z`` (may be ``None`` only when every ``t`` is concretely 1).
        schedule: the :class:`Schedule`.
        x: ``(n, ...)`` current sample ``x_t``, floating.
        t: 1-based timestep in ``1..T``: a scalar int (possibly traced, e.g. a loop counter) or
            ``(n,)``. Checked when concrete; under ``jit`` an out-of-range ``t`` gives NaN.
        eps_hat: noise prediction ``ε̂(x_t, t)``, shaped like ``x``.
        clip_x0: ``None`` (default; the book does not clip) or ``(low, high)``: clip the implied
            ``x̂0`` (:func:`predict_x0`) to that range and use the matching ``ε̂``, which makes ``μ``
            the posterior mean of ``q(x_{t-1} | x_t, x̂0)`` with the clipped ``x̂0``.

    Returns:
        ``x_{t-1}`` shaped like ``x``, in ``x``'s dtype.

    Raises:
        ValueError: bad shapes or dtypes, (concrete) ``t`` outside ``1..T``, a bad ``clip_x0``, or
            ``key=None`` where noise is needed.
    """
    num_steps = check_schedule(schedule)
    x, eps_hat = _check_x_eps(x, eps_hat)
    t = check_timesteps(t, num_steps, x.shape[0])
    beta = coef(schedule.betas, t, x)
    alpha = coef(schedule.alphas, t, x)
    omab = coef(schedule.one_minus_alpha_bars, t, x)
    omab_prev = coef(schedule.one_minus_alpha_bars, t - 1, x)
    if clip_x0 is not None:
        ab = coef(schedule.alpha_bars, t, x)
        x0_hat = (x - jnp.sqrt(omab) * eps_hat) / jnp.sqrt(ab)
        eps_hat = _clip_x0_eps(x, x0_hat, ab, omab, clip_x0)[1]
    mean = (x - beta / jnp.sqrt(omab) * eps_hat) / jnp.sqrt(alpha)
    if is_concrete(t) and np.all(np.asarray(t) == 1):
        return mean
    if key is None:
        raise ValueError("ddpm_step needs a PRNG key for the noise at t > 1; pass key=jax.random.key(...)")
    sigma = jnp.where(_bcast(t, x) > 1, jnp.sqrt(beta * omab_prev / omab), 0).astype(x.dtype)
    return mean + sigma * standard_normal(key, x.shape, x.dtype)


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The DDIM subsequence ``τ_1 < ... < τ_S`` of ``{1..T}``, evenly spaced, ascending.

    ``τ_i = round(1 + (i - 1)(T - 1)/(S - 1))``, so ``τ_1 = 1`` and ``τ_S = T`` (sampling starts
    at full noise and its last step goes from ``τ_1 = 1`` to ``ᾱ_0 = 1``); ``S = T`` gives every
    step, ``S = 1`` gives ``[T]`` (one jump from ``T`` to the ``x̂0`` prediction).

    Args:
        num_train_steps: ``T``, the schedule's number of steps.
        num_steps: ``S`` in ``1..T``.

    Returns:
        ``(S,)`` int numpy array (static: the samplers build their loop from it).

    Raises:
        ValueError: ``num_steps`` outside ``1..T``.
    """
    if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool):
        raise ValueError(f"num_steps must be an int (static), got {num_steps!r}; pass e.g. num_steps=50")
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(
            f"num_steps must lie in 1..T = 1..{num_train_steps} (a subsequence of the training "
            f"timesteps), got {num_steps}; pass e.g. num_steps=50"
        )
    if num_steps == 1:
        return np.array([num_train_steps])
    taus = np.floor(np.linspace(1.0, num_train_steps, int(num_steps)) + 0.5).astype(np.int64)
    assert np.all(np.diff(taus) > 0)
    return taus


def ddim_step(
    key: PRNGKeyArray | None,
    schedule: Schedule,
    x: Float[ArrayLike, " n *img"],
    t: Int[ArrayLike, "*n"],
    t_prev: Int[ArrayLike, "*n"],
    eps_hat: Float[ArrayLike, " n *img"],
    *,
    eta: float | Float[ArrayLike, ""] = 0.0,
    clip_x0: tuple[float, float] | None = None,
) -> Float[Array, " n *img"]:
    r"""One DDIM step ``x_t → x_s`` for ``s = t_prev < t`` (Song et al., 2021, eq. 12).

    .. math::
        \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\hat\varepsilon}{\sqrt{\bar\alpha_t}},\quad
        \sigma^2 = \eta^2\,\frac{1 - \bar\alpha_s}{1 - \bar\alpha_t}
                    \Big(1 - \frac{\bar\alpha_t}{\bar\alpha_s}\Big),\quad
        x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2}\,\hat\varepsilon
              + \sigma z.

    ``η = 0`` is deterministic (``key`` unused, may be ``None``); ``η = 1`` with ``s = t - 1``
    has exactly the DDPM step's mean and ``σ`` (:func:`ddpm_step`), and it draws the same ``z``
    from the same key, so the two steps agree to rounding. With ``s = 0``
    (``ᾱ_0 = 1``) the step returns ``x̂0``. ``1 - ᾱ_t/ᾱ_s = (ᾱ_s - ᾱ_t)/ᾱ_s`` is computed from
    whichever of ``ᾱ`` or ``1 - ᾱ`` is small, so it keeps its digits in float32 at both ends.

    Args:
        key: PRNG key for ``z`` (``None`` allowed when ``eta`` is concretely 0).
        schedule: the :class:`Schedule`.
        x: ``(n, ...)`` current sample ``x_t``.
        t: timestep in ``1..T``, scalar (possibly traced) or ``(n,)``.
        t_prev: target timestep ``s`` in ``0..t-1``, scalar or ``(n,)``.
        eps_hat: noise prediction ``ε̂(x_t, t)``, shaped like ``x``.
        eta: ``η`` in ``[0, 1]`` (may be traced; checked when concrete). ``η > 1`` can ask for
            ``σ² > 1 - ᾱ_s`` (more noise than the schedule has at ``s``) and is rejected.
        clip_x0: ``None`` (default, no clipping) or ``(low, high)``: clip ``x̂0`` and use the
            matching ``ε̂ = (x_t - √ᾱ_t x̂0)/√(1 - ᾱ_t)`` (as OpenAI's guided-diffusion does).

    Returns:
        ``x_s`` shaped like ``x``, in ``x``'s dtype.

    Raises:
        ValueError: bad shapes or dtypes, (concrete) ``t`` outside ``1..T`` or ``t_prev`` outside
            ``0..t-1``, ``η`` outside ``[0, 1]``, a bad ``clip_x0``, or ``key=None`` with ``η != 0``.
    """
    num_steps = check_schedule(schedule)
    x, eps_hat = _check_x_eps(x, eps_hat)
    n = x.shape[0]
    t = check_timesteps(t, num_steps, n)
    t_prev = check_timesteps(t_prev, num_steps, n, low=0, high=num_steps - 1, name="t_prev")
    if is_concrete(t, t_prev) and np.any(np.asarray(t_prev) >= np.asarray(t)):
        raise ValueError(
            "t_prev must be smaller than t (DDIM steps go from t down to t_prev); pass e.g. t_prev = t - 1 "
            "or use ddim_timesteps"
        )
    check_eta(eta)
    ab_t = coef(schedule.alpha_bars, t, x)
    omab_t = coef(schedule.one_minus_alpha_bars, t, x)
    ab_s = coef(schedule.alpha_bars, t_prev, x)
    omab_s = coef(schedule.one_minus_alpha_bars, t_prev, x)
    x0_hat = (x - jnp.sqrt(omab_t) * eps_hat) / jnp.sqrt(ab_t)
    if clip_x0 is not None:
        x0_hat, eps_hat = _clip_x0_eps(x, x0_hat, ab_t, omab_t, clip_x0)
    deterministic = is_concrete(eta) and float(eta) == 0.0
    if deterministic:
        sigma2 = jnp.zeros_like(omab_s)
    else:
        ab_diff = jnp.where(ab_s > 0.5, omab_t - omab_s, ab_s - ab_t)  # ᾱ_s - ᾱ_t, accurately
        sigma2 = jnp.asarray(eta, x.dtype) ** 2 * (omab_s / omab_t) * (ab_diff / ab_s)
    direction = jnp.sqrt(jnp.maximum(omab_s - sigma2, 0)) * eps_hat
    mean = jnp.sqrt(ab_s) * x0_hat + direction
    if deterministic:
        return mean
    if key is None:
        raise ValueError("ddim_step with eta != 0 needs a PRNG key; pass key=jax.random.key(...)")
    return mean + jnp.sqrt(sigma2) * standard_normal(key, x.shape, x.dtype)


# --- private helpers ---------------------------------------------------------------------------------


def _bcast(t: Array, x: Array) -> Array:
    return t.reshape(t.shape + (1,) * (x.ndim - 1)) if t.ndim == 1 else t


def _check_x_eps(x: ArrayLike, eps_hat: ArrayLike) -> tuple[Array, Array]:
    x = float_x(x)
    eps_hat = float_x(eps_hat, "eps_hat")
    if eps_hat.shape != x.shape:
        raise ValueError(
            f"eps_hat must have the shape of x, {x.shape}, got {eps_hat.shape}; the model must return "
            "one noise prediction per pixel"
        )
    return x, eps_hat.astype(x.dtype)


def check_eta(eta: float | Array) -> None:
    """``η`` must be a scalar in ``[0, 1]`` (checked when concrete)."""
    if jnp.ndim(eta) != 0:
        raise ValueError(f"eta must be a scalar, got shape {jnp.shape(eta)}; pass e.g. eta=0.0")
    if is_concrete(eta) and not float(eta) >= 0:
        raise ValueError(
            f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta!r}; pass e.g. eta=0.0"
        )
    if is_concrete(eta) and float(eta) > 1:
        raise ValueError(
            f"eta must be <= 1, got {eta!r}: η > 1 can ask for a noise variance σ² above the 1 - ᾱ_s "
            "that the schedule has at the target step, which leaves the schedule's variance; pass eta "
            "in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise)"
        )


def check_clip(clip_x0: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in clip_x0)
    except (TypeError, ValueError):
        raise ValueError(
            f"clip_x0 must be None or a pair (low, high), e.g. (-1.0, 1.0), got {clip_x0!r}"
        ) from None
    if not low < high:
        raise ValueError(f"clip_x0 must satisfy low < high, got {clip_x0!r}; pass e.g. (-1.0, 1.0)")
    return low, high


def _clip_x0_eps(x: Array, x0_hat: Array, ab: Array, omab: Array, clip_x0: Any) -> tuple[Array, Array]:
    """The clipped ``x̂0`` and the matching ``ε̂ = (x - √ᾱ clip(x̂0)) / √(1 - ᾱ)``."""
    low, high = check_clip(clip_x0)
    x0_hat = jnp.clip(x0_hat, low, high)
    return x0_hat, (x - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(omab)
