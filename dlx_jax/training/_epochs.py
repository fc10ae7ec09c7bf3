"""Compiled epochs: one ``lax.scan`` over the batches, or the same steps from a Python loop (see
:mod:`dlx_jax.training`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from dlx_jax.data import batch_indices
from dlx_jax.training._state import Metrics, StepFn, TrainState

EpochFn = Callable[[PRNGKeyArray, TrainState, Any], tuple[TrainState, Metrics]]


def _example_count(data: Any) -> int:
    sizes = {leaf.shape[0] if np.ndim(leaf) else None for leaf in jax.tree_util.tree_leaves(data)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"data leaves must share a leading example axis, got sizes {sizes}; stack them")
    (n,) = sizes
    return int(n)


def _take(data: Any, idx: Array) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)


def make_epoch_fn(step_fn: StepFn, *, batch_size: int, shuffle: bool = True, unroll: int = 1) -> EpochFn:
    """One epoch ``epoch(epoch_key, state, data) -> (state, metrics)`` as one ``lax.scan`` over batches.

    ``data`` is an array (or pytree of arrays) with the examples on axis 0. The epoch key is split
    into ``(key_perm, key_steps)``; the batches are :func:`dlx_jax.data.batch_indices` of ``key_perm``
    (``drop_remainder=True``: the last partial batch is dropped) and step ``i`` gets
    ``jax.random.fold_in(key_steps, i)``. Each step gathers its batch from ``data`` inside the scan,
    so the data are never copied per epoch.

    Args:
        step_fn: ``step(key, state, batch) -> (state, metrics)``, e.g. from :func:`make_train_step`.
        batch_size: (static) examples per step.
        shuffle: (static) reshuffle every epoch.
        unroll: (static) ``lax.scan`` unroll factor (a speed knob; results are identical).

    Returns:
        The undecorated epoch function; every entry of ``metrics`` has one value per step.
    """

    def epoch(key: PRNGKeyArray, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        n = _example_count(data)
        key_perm, key_steps = jax.random.split(key)
        batches = batch_indices(key_perm, n, batch_size=batch_size, shuffle=shuffle)

        def body(state: TrainState, inputs: tuple[Array, Array]) -> tuple[TrainState, Metrics]:
            i, idx = inputs
            return step_fn(jax.random.fold_in(key_steps, i), state, _take(data, idx))

        steps = jnp.arange(batches.shape[0], dtype=jnp.int32)
        return jax.lax.scan(body, state, (steps, batches), unroll=unroll)

    return epoch


def make_stepped_epoch_fn(
    step_fn: StepFn, *, batch_size: int, shuffle: bool = True, donate: bool = True
) -> EpochFn:
    """The epoch of :func:`make_epoch_fn` run from Python, one jitted call per step (same keys, batches).

    Use it when a model compiles better outside ``lax.scan``. The returned function is impure (it
    dispatches one compiled step per batch); do not jit it. The step is jitted here with the state
    donated (``donate=True``), so do not reuse a state after passing it in.

    Args:
        step_fn: ``step(key, state, batch) -> (state, metrics)`` (undecorated).
        batch_size: examples per step.
        shuffle: reshuffle every epoch.
        donate: donate the state's buffers to each step (saves a copy of params and optimizer state).
    """
    step_jit = jax.jit(step_fn, donate_argnums=(1,) if donate else ())
    split = jax.jit(jax.random.split)
    fold = jax.jit(jax.random.fold_in)
    perm = jax.jit(batch_indices, static_argnums=(1,), static_argnames=("batch_size", "shuffle"))
    take = jax.jit(_take)

    def epoch(key: PRNGKeyArray, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        n = _example_count(data)
        key_perm, key_steps = split(key)
        batches = perm(key_perm, n, batch_size=batch_size, shuffle=shuffle)
        per_step: list[Metrics] = []
        for i in range(batches.shape[0]):
            state, metrics = step_jit(fold(key_steps, np.int32(i)), state, take(data, batches[i]))
            per_step.append(metrics)
        stacked = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *per_step)
        return state, stacked

    return epoch
