"""Sampling for steps 9 and 10: the library's samplers compiled ahead of time once per
:class:`SamplerSpec` (so sampling seconds exclude compilation), run in chunks of ``--sample-batch``.

The conditioning is an ε-function transform of the model (:data:`CONDITIONS`): the unconditional
model itself, ``diffusion.conditional`` (labels, one forward pass) or ``diffusion.guided`` (labels,
γ and the guidance interval, one pass on a doubled batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import diffusion, training, unet
from experiments import _fitting
from experiments._diffusion import DiffusionConfig

#: How the sampled ε-function is built from the model's ``eps_fn(x, t, labels=None, label_mask=None)``.
CONDITIONS: dict[str, Callable[[Any, Any, Any, Any], diffusion.EpsFn]] = {
    "unconditional": lambda eps_fn, labels, gamma, interval: eps_fn,
    "conditional": lambda eps_fn, labels, gamma, interval: diffusion.conditional(eps_fn, labels),
    "guided": lambda eps_fn, labels, gamma, interval: diffusion.guided(
        eps_fn, labels, gamma, interval=interval
    ),
}


@dataclass(frozen=True)
class SamplerSpec:
    """What one compiled sampler depends on: the model, the schedule, the sampler and its options,
    the chunk size, the trajectory spacing and the conditioning (the compilation cache's key)."""

    features: int
    num_labels: int | None
    schedule: tuple[int, float, float]  # (T, β_1, β_T)
    kind: str  # "ddpm" or "ddim"
    n: int
    ddim_steps: int
    eta: float
    every: int
    condition: str  # a key of CONDITIONS
    clip_x0: tuple[float, float] | None = None
    interval: tuple[int, int] | None = None  # guided only: guide for t_lo <= t <= t_hi (None: every t)
    mesh: Any = None  # the image batch is sharded over it (data parallel sampling)


class Samples(NamedTuple):
    """``n`` samples, the denoising trajectory of the first chunk, and the sampling seconds."""

    x0: np.ndarray
    trajectory: diffusion.Trajectory
    seconds: float


_EXECUTABLES: dict[SamplerSpec, Any] = {}


def _executable(spec: SamplerSpec, args: tuple) -> Any:
    """``run(key, params, batch_stats, labels, gamma) -> Trajectory`` for ``spec``, compiled once per
    process. Every call records the trajectory (11 snapshots, cheap) so that the figures' calls and
    the judged calls share one compilation."""
    if spec in _EXECUTABLES:
        return _EXECUTABLES[spec]
    sched = diffusion.linear_schedule(*spec.schedule)
    apply_fn = unet.make_apply_fn(unet.UNet(features=spec.features, num_labels=spec.num_labels))
    condition = CONDITIONS[spec.condition]

    def run(key, params, batch_stats, labels, gamma):
        eps_fn = condition(diffusion.make_eps_fn(apply_fn, params, batch_stats), labels, gamma, spec.interval)
        options = {"shape": (spec.n, 28, 28, 1), "every": spec.every, "clip_x0": spec.clip_x0}
        options["sharding"] = training.batch_sharding(spec.mesh) if spec.mesh is not None else None
        if spec.kind == "ddpm":
            return diffusion.ddpm_trajectory(key, eps_fn, sched, **options)
        options |= {"num_steps": spec.ddim_steps, "eta": spec.eta}
        return diffusion.ddim_trajectory(key, eps_fn, sched, **options)

    _EXECUTABLES[spec] = jax.jit(run).lower(*args).compile()
    return _EXECUTABLES[spec]


def sample(
    config: DiffusionConfig,
    model: unet.UNet,
    params: Any,
    batch_stats: Any,
    key: jax.Array,
    *,
    n: int,
    kind: str,
    condition: str = "unconditional",
    labels: np.ndarray | None = None,
    gamma: float | None = None,
    interval: tuple[int, int] | None = None,
) -> Samples:
    """``n`` samples in chunks of ``--sample-batch`` (chunk ``i`` uses ``fold_in(key, i)``), each chunk
    sharded over the step's device mesh (``--devices``; the chunk is rounded up to a multiple of the
    device count, the extra images dropped).

    Args:
        config: the step's config (schedule, DDIM settings, ``sample_batch``).
        model, params, batch_stats: the UNet and the weights to sample.
        key: PRNG key.
        n: how many samples.
        kind: ``"ddpm"`` or ``"ddim"``.
        condition: a key of :data:`CONDITIONS`; ``"conditional"`` needs ``labels``, ``"guided"``
            ``labels`` and ``gamma``.
        labels: ``(n,)`` conditioning labels.
        gamma: the guidance scale.
        interval: ``"guided"`` only: ``(t_lo, t_hi)`` to guide only there (the conditional model
            elsewhere), or ``None`` to guide at every ``t``.
    """
    every = max(1, (config.num_timesteps if kind == "ddpm" else config.ddim_steps) // 10)
    mesh = _fitting.data_mesh(config)
    devices = mesh.devices.size
    chunk = -(-min(config.sample_batch, n) // devices) * devices
    g = None if gamma is None or condition != "guided" else jnp.float32(gamma)
    spec = SamplerSpec(
        features=model.features,
        num_labels=model.num_labels,
        schedule=(config.num_timesteps, config.beta_start, config.beta_end),
        kind=kind,
        n=chunk,
        ddim_steps=config.ddim_steps,
        eta=config.ddim_eta,
        every=every,
        condition=condition,
        clip_x0=(0.0, 1.0) if config.clip_x0 else None,
        interval=interval if condition == "guided" else None,
        mesh=mesh,
    )
    outs, seconds = [], 0.0
    for i in range(math.ceil(n / chunk)):
        lab = None
        if condition != "unconditional":
            lab = jnp.asarray(np.resize(np.asarray(labels[i * chunk : (i + 1) * chunk], np.int32), chunk))
        k = jax.random.fold_in(key, i)
        exe = _executable(spec, (k, params, batch_stats, lab, g))
        start = time.perf_counter()
        trajectory = jax.block_until_ready(exe(k, params, batch_stats, lab, g))
        seconds += time.perf_counter() - start
        outs.append(training.gather(trajectory))
    x0 = np.concatenate([o.x0 for o in outs])[:n]
    return Samples(x0, outs[0], seconds)
