"""The book's ``step09/gaussian_noise.py``: noise ``flower.png`` step by step, beside the closed form.

The book adds noise one step at a time, ``x_t = √(1 − β_t) x_{t−1} + √β_t ε_t`` for ``t = 1..T``
(linear β from 1e-4 to 0.02, T = 1000), and shows ``x_t`` every 100 steps; then it draws ``x_t`` in one
go from the closed form ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)``. The two are the same distribution:
:func:`noise_step_by_step` and :func:`dlx_jax.diffusion.q_sample_from_noise` are compared in the tests
by moments over many keys. Step 9 calls :func:`run` and :func:`figure` (``book_noising.png``).

Photos by name (:data:`PHOTOS`): ``flower`` (the book's, default) and ``grace-hopper`` (matplotlib's
sample photo, centre-cropped to 64 × 64).

Alone (seconds, no training): ``python -m experiments._book_noising --out DIR`` writes the figure and
the metrics with the book's schedule (T = 1000, β 1e-4 → 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dlx_jax import diffusion
from dlx_jax.data import load_flower
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = ["PHOTOS", "BookNoising", "figure", "grace_hopper", "load_photo", "noise_step_by_step", "run"]


def grace_hopper() -> np.ndarray:
    """matplotlib's sample photo of Grace Hopper, centre-cropped and resized to 64x64 RGB in [0, 1]."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        w, h = img.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        small = img.convert("RGB").crop(box).resize((64, 64), Image.Resampling.BILINEAR)
        return np.asarray(small, np.float32) / 255.0


PHOTOS = {"flower": load_flower, "grace-hopper": grace_hopper}


def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` (a key of :data:`PHOTOS`) as float32 ``(64, 64, 3)`` in [0, 1]."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {', '.join(PHOTOS)}")
    return PHOTOS[name]()


def noise_step_by_step(
    key: jax.Array, schedule: diffusion.Schedule, x0: Float[Array, "*img"], *, record_every: int
) -> Float[Array, " r *img"]:
    r"""Run the forward chain one step at a time and keep every ``record_every``-th state.

    :math:`x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t`, :math:`t = 1..T`, with
    :math:`\varepsilon_t \sim N(0, I)` drawn from ``fold_in(key, t)``. Acts on one example (vmap over
    keys or images); memory holds one state per record, not all ``T``.

    Args:
        key: PRNG key.
        schedule: the :class:`dlx_jax.diffusion.Schedule` (1-based ``betas[t]``).
        x0: the clean example, any shape.
        record_every: (static) keep ``x_t`` at ``t = 0, record_every, 2·record_every, …, T``; must
            divide ``T``.

    Returns:
        ``(T / record_every + 1, *x0.shape)`` states, ``x0`` first, in ``x0``'s dtype.

    Raises:
        ValueError: ``record_every`` does not divide ``T``.
    """
    num_steps = schedule.betas.shape[0] - 1
    if record_every < 1 or num_steps % record_every:
        raise ValueError(
            f"record_every must divide the schedule's T = {num_steps}, got {record_every}; pass e.g. 100"
        )
    betas = jnp.asarray(schedule.betas, x0.dtype)

    def one_step(t: jax.Array, x: jax.Array) -> jax.Array:
        eps = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
        return jnp.sqrt(1 - betas[t]) * x + jnp.sqrt(betas[t]) * eps

    def chunk(x: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jax.lax.fori_loop(start + 1, start + record_every + 1, one_step, x)
        return x, x

    starts = jnp.arange(0, num_steps, record_every)
    _, kept = jax.lax.scan(chunk, x0, starts)
    return jnp.concatenate([x0[None], kept])


def closed_form(
    key: jax.Array, schedule: diffusion.Schedule, x0: Float[Array, "*img"], ts: jax.Array
) -> Float[Array, " r *img"]:
    """``x_t ~ q(x_t | x_0)`` for each ``t`` of ``ts`` in one draw each (independent ε)."""
    batch = jnp.broadcast_to(x0, (ts.shape[0], *x0.shape))
    eps = jax.random.normal(key, batch.shape, x0.dtype)
    return diffusion.q_sample_from_noise(schedule, batch, ts, eps)


def standardized(schedule: diffusion.Schedule, x0: Array, xs: Array, ts: Array) -> Array:
    """``(x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)``: N(0, I) under q(x_t | x_0) (``ts`` ≥ 1, one per row of ``xs``)."""
    shape = (-1,) + (1,) * x0.ndim
    alpha_bar = jnp.asarray(schedule.alpha_bars, xs.dtype)[ts].reshape(shape)
    one_minus = jnp.asarray(schedule.one_minus_alpha_bars, xs.dtype)[ts].reshape(shape)
    return (xs - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(one_minus)


class BookNoising(NamedTuple):
    """What step 9 shows: the photo, ``x_t`` step by step and from the closed form, and their metrics."""

    ts: np.ndarray
    stepwise: np.ndarray
    closed: np.ndarray
    metrics: dict[str, Any]


def run(key: jax.Array, schedule: diffusion.Schedule, photo: str) -> BookNoising:
    """Noise the photo step by step and by the closed form (one key each); per-``t`` moments of the
    standardized pixels (mean ≈ 0, std ≈ 1 under q(x_t | x_0)) as metrics."""
    x0 = jnp.asarray(load_photo(photo))
    num_steps = schedule.betas.shape[0] - 1
    every = num_steps // 10 if num_steps % 10 == 0 else num_steps  # the book's T = 1000: every 100
    key_steps, key_closed = jax.random.split(key)
    stepwise = jax.jit(noise_step_by_step, static_argnames="record_every")(
        key_steps, schedule, x0, record_every=every
    )
    ts = jnp.arange(0, num_steps + 1, every)
    closed = jax.jit(closed_form)(key_closed, schedule, x0, ts)
    z_steps = np.asarray(standardized(schedule, x0, stepwise[1:], ts[1:]))
    z_closed = np.asarray(standardized(schedule, x0, closed[1:], ts[1:]))
    axes = tuple(range(1, z_steps.ndim))
    metrics = {
        "noising_photo": photo,
        "noising_photo_shape": list(x0.shape),
        "noising_t": np.asarray(ts[1:]).tolist(),
        "noising_stepwise_z_mean": z_steps.mean(axis=axes).tolist(),
        "noising_stepwise_z_std": z_steps.std(axis=axes).tolist(),
        "noising_closed_form_z_mean": z_closed.mean(axis=axes).tolist(),
        "noising_closed_form_z_std": z_closed.std(axis=axes).tolist(),
    }
    return BookNoising(np.asarray(ts), np.asarray(stepwise), np.asarray(closed), metrics)


def figure(out: StepOutput, noising: BookNoising) -> None:
    """``gaussian_noise.py``'s figure (x_t every 100 steps, clipped to [0, 1] as the book's
    ``reverse_to_img`` does), step by step on top, the closed form below."""
    ts = noising.ts
    fig, axes = plt.subplots(2, len(ts), figsize=(len(ts) * 1.1, 2.8))
    for row, (name, images) in enumerate(
        (("step by step", noising.stepwise), ("closed form", noising.closed))
    ):
        for col, t in enumerate(ts):
            ax = axes[row, col]
            ax.imshow(np.clip(images[col], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(
        "The book's gaussian_noise.py: x_t = √(1−β_t) x_{t−1} + √β_t ε_t, step by step (top) and "
        "q(x_t | x_0) in one draw (bottom)",
        fontsize=9,
    )
    out.figure(fig, "book_noising")


@dataclass(frozen=True)
class Config:
    out: str = "outputs/book_noising"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    photo: str = "flower"

    SUMMARY = ("noising_photo",)
    HELP = {"photo": "flower (the book's) or grace-hopper"}
    CHOICES = {"photo": tuple(PHOTOS)}


def main(config: Config) -> dict:
    """The book's noising of the photo alone, with the book's schedule."""
    check_config(config)
    noising = run(jax.random.key(config.seed), diffusion.linear_schedule(1000), config.photo)
    with StepOutput(config) as out:
        if out.plots:
            figure(out, noising)
        return out.finish(noising.metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
