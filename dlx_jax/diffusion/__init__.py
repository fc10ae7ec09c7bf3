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
(Song et al., 2021, ``η`` in ``[0, 1]``). :func:`ddpm_sample` (``t = T..1``) and :func:`ddim_sample`
(``num_steps`` evenly spaced timesteps, :func:`ddim_timesteps`) each run as one ``lax.scan`` and
return ``x_0``; :func:`ddpm_trajectory` and :func:`ddim_trajectory` run the same loops and return a
:class:`Trajectory`. All four take ``(key, eps_fn, schedule, *, shape, ...)`` and one shared set of
keyword options:

**Sampler options** (keyword-only, the same in every sampler):

* ``shape``: ``(n, ...)`` sample shape, e.g. ``(n, h, w, c)`` (static, required).
* ``clip_x0``: ``None`` (default; the book does not clip) or ``(low, high)``: clip the implied
  ``x̂0`` at every step (see :func:`ddpm_step`, :func:`ddim_step`).
* ``x_init``: ``None`` (default: ``x_T ~ N(0, I)`` from ``key_init``) or an ``x_T`` of shape ``shape``.
* ``dtype``: floating dtype of the samples; default ``x_init``'s, else the schedule's.
* ``sharding``: ``None`` (default) or a ``jax.sharding.Sharding`` for the image batch, e.g.
  ``NamedSharding(mesh, P("data"))`` (:func:`dlx_jax.training.batch_sharding`): under ``jit`` the
  chain ``x_T, ..., x_0`` is laid out so, each device denoising its share of the images (the
  network's parameters replicated). The keys and so the numbers are those of one device: random
  draws do not depend on the layout, and each image's network call is its own.
* DDIM only: ``num_steps`` ``S`` in ``1..T`` (static, default 50) and ``eta`` ``η`` in ``[0, 1]``
  (default 0, deterministic; ``η = 1`` with ``S = T`` is DDPM).
* trajectories only: ``every`` ``k >= 1`` (static, required): record the start ``x_T`` and the sample
  after every step that leaves a multiple of ``k`` steps to go (for ``T = 1000, k = 100``:
  ``x_1000, x_900, ..., x_100, x_0``; for DDIM counted in DDIM steps).

**The ε-function contract.** A sampler calls ``eps_fn(x, t) -> eps`` (:data:`EpsFn`): ``x (n, ...)``
float, ``t (n,)`` int32 in ``1..T``, the output shaped like ``x``. The model's parameters, state and
conditioning are closed over it, as score-based codebases close a model into its score function:

* :func:`make_eps_fn` ``(apply_fn, params, model_state)`` returns the model in eval mode,
  ``eps_fn(x, t, labels=None, label_mask=None)``: called with ``(x, t)`` it is the unconditional
  :data:`EpsFn`; its labelled form is a :data:`LabeledEpsFn`;
* :func:`conditional` ``(eps_fn, labels)`` returns ``(x, t) -> eps_fn(x, t, labels, 1)``;
* :func:`guided` ``(eps_fn, labels, gamma)`` returns classifier-free guidance
  ``ε̂ = ε̂_u + γ(ε̂_c - ε̂_u)`` from one ``eps_fn`` call on a ``2n`` batch (:func:`guided_eps`;
  ``γ = 0`` unconditional, ``γ = 1`` conditional, book ``γ = 3``); ``interval=(t_lo, t_hi)``
  guides only for ``t_lo <= t <= t_hi`` and samples the conditional model elsewhere (guidance in
  a limited interval, Kynkäänniemi et al., 2024; ``None``, the default, guides at every ``t``).

So ``ddim_sample(key, guided(make_eps_fn(apply_fn, params, state), labels, 3.0), schedule,
shape=(n, 28, 28, 1))``. The old sampler keywords (``labels=``, ``gamma=``, ``num_classes=``,
``trajectory_every=``) raise ``TypeError`` naming the call that replaces them.

**The model contract** (what :mod:`dlx_jax.unet` provides):
``apply_fn(params, model_state, x, t, labels, label_mask, *, train) -> (eps_hat, new_model_state)``
with ``x (n, h, w, c)`` float, ``t (n,)`` int32 in ``1..T``, ``labels (n,)`` int32 or ``None``,
``label_mask (n,)`` float in {0, 1} or ``None`` (0 = no label embedding).

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
from dlx_jax.diffusion._guidance import (
    DROP_MODES,
    EpsFn,
    LabeledEpsFn,
    conditional,
    guided,
    guided_eps,
    label_drop_mask,
)
from dlx_jax.diffusion._samplers import (
    Trajectory,
    ddim_sample,
    ddim_trajectory,
    ddpm_sample,
    ddpm_trajectory,
    make_eps_fn,
)
from dlx_jax.diffusion._schedule import Schedule, linear_schedule, schedule_from_betas
from dlx_jax.diffusion._steps import ddim_step, ddim_timesteps, ddpm_step, predict_x0

__all__ = [
    "DROP_MODES",
    "ApplyFn",
    "EpsFn",
    "LabeledEpsFn",
    "LossFn",
    "Schedule",
    "Trajectory",
    "conditional",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddim_trajectory",
    "ddpm_sample",
    "ddpm_step",
    "ddpm_trajectory",
    "guided",
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
