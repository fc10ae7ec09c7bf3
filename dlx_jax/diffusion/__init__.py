"""Diffusion models (book steps 9-10): schedule, forward process, loss, DDPM and DDIM samplers,
classifier-free guidance. Model-agnostic pure functions: the network enters only as a callable.

**Timesteps and the schedule.** The book's ``t`` is 1-based, ``t ∈ {1..T}`` (``T = 1000``), with
``β_t`` linear from ``1e-4`` to ``0.02``, ``α_t = 1 - β_t`` and ``ᾱ_t = Π_{s<=t} α_s``. A
:class:`Schedule` stores each of these as an array of length ``T + 1`` indexed directly by that
``t``; index 0 means "no noise" (``β_0 = 0``, ``α_0 = ᾱ_0 = 1``). So the book's
``alpha_bars[t - 1]`` is ``schedule.alpha_bars[t]`` here, and ``ᾱ_{t-1}`` at ``t = 1`` is
``alpha_bars[0] = 1``. The products are accumulated in float64 and then cast (``ᾱ_1000 =
4.0358e-5`` in float32 either way; ``1 - ᾱ_t`` is stored separately so that it keeps its digits
at small ``t``). One schedule object is shared by :func:`make_loss` and the samplers.

**Forward process** (:func:`q_sample`, :func:`q_sample_from_noise`):
``x_t = √ᾱ_t x0 + √(1 - ᾱ_t) ε``, ``ε ~ N(0, I)``, the closed form of ``t`` one-step updates
``x_s = √α_s x_{s-1} + √β_s ε_s``.

**Loss** (:func:`make_loss`): ``t ~ Uniform{1..T}`` per example and the mean squared error between
``ε`` and ``ε̂(x_t, t)`` over all pixels and the batch. For classifier-free guidance (step 10) the
labels of the whole batch are dropped with probability ``label_drop`` (book: 0.1;
``drop_mode="batch"``) or per example (``drop_mode="example"``); dropping means ``label_mask = 0``.

**Reverse process.** :func:`ddpm_step` is the book's ancestral step
``x_{t-1} = (x_t - β_t/√(1 - ᾱ_t) ε̂)/√α_t + σ_t z`` with
``σ_t² = β_t (1 - ᾱ_{t-1})/(1 - ᾱ_t)`` and no noise at ``t = 1``; :func:`ddim_step` is DDIM
(Song et al., 2021). :func:`ddpm_sample` (``t = T..1``) and :func:`ddim_sample` (``num_steps``
evenly spaced timesteps, :func:`ddim_timesteps`) each run as one ``lax.scan``; they are
unconditional (no labels), conditional (labels) or guided (labels and ``gamma``:
``ε̂ = ε̂_u + γ(ε̂_c - ε̂_u)``, :func:`guided_eps`). Nothing is clipped unless ``clip_x0`` is given
(the book does not clip).

**The model contract** (what :mod:`dlx_jax.unet` provides):
``apply_fn(params, model_state, x, t, labels, label_mask, *, train) -> (eps_hat, new_model_state)``
with ``x (n, h, w, c)`` float, ``t (n,)`` int32 in ``1..T``, ``labels (n,)`` int32 or ``None``,
``label_mask (n,)`` float in {0, 1} or ``None`` (0 = no label embedding). The samplers take the
eval-mode ``eps_fn(x, t, labels, label_mask) -> eps`` (:func:`make_eps_fn`).

Conventions: ``key`` first; shape-setting arguments are keyword-only and static; functions are
undecorated (the caller jits); dtypes are preserved (float32 in, float32 out; the schedule's
coefficients are cast to the data's dtype, so build a float64 schedule for float64 work).
Validation: shapes and dtypes raise ``ValueError`` at trace time; values (``t`` in range, labels,
``γ``, ``η``, drop probability) are checked when concrete and skipped for tracers, where an
out-of-range ``t`` reads NaN coefficients instead of silently clamping.
"""

from dlx_jax.diffusion._forward import (
    ApplyFn,
    LossFn,
    make_loss,
    q_sample,
    q_sample_from_noise,
    sample_timesteps,
)
from dlx_jax.diffusion._guidance import DROP_MODES, EpsFn, guided_eps, label_drop_mask
from dlx_jax.diffusion._samplers import ddim_sample, ddpm_sample, make_eps_fn
from dlx_jax.diffusion._schedule import Schedule, linear_schedule, schedule_from_betas
from dlx_jax.diffusion._steps import ddim_step, ddim_timesteps, ddpm_step, predict_x0

__all__ = [
    "DROP_MODES",
    "ApplyFn",
    "EpsFn",
    "LossFn",
    "Schedule",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "ddpm_step",
    "guided_eps",
    "label_drop_mask",
    "linear_schedule",
    "make_eps_fn",
    "make_loss",
    "predict_x0",
    "q_sample",
    "q_sample_from_noise",
    "sample_timesteps",
    "schedule_from_betas",
]
