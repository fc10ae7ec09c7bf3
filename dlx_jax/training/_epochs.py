"""Compiled epochs: one ``lax.scan`` over the batches, or the same steps from a Python loop (see
:mod:`dlx_jax.training`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, PRNGKeyArray

from dlx_jax.data import batch_indices
from dlx_jax.training import _mesh
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


def make_epoch_fn(
    step_fn: StepFn, *, batch_size: int, shuffle: bool = True, unroll: int = 1, mesh: Mesh | None = None
) -> EpochFn:
    """One epoch ``epoch(epoch_key, state, data) -> (state, metrics)`` as one ``lax.scan`` over batches.

    ``data`` is an array (or pytree of arrays) with the examples on axis 0. The epoch key is split
    into ``(key_perm, key_steps)``; the batches are :func:`dlx_jax.data.batch_indices` of ``key_perm``
    (``drop_remainder=True``: the last partial batch is dropped) and step ``i`` gets
    ``jax.random.fold_in(key_steps, i)``. Each step gathers its batch from ``data`` inside the scan,
    so the data are never copied per epoch.

    **On a device mesh** (``mesh``, see :mod:`dlx_jax.training._mesh`): pass the state and the data
    replicated (:func:`dlx_jax.training.replicate`); each gathered batch is laid out sharded on its
    leading axis, so every device gathers and trains on its own ``batch_size / D`` examples, and the
    state stays replicated (the gradient's all-reduce is XLA's). Same keys, same batches: the numbers
    are those of one device up to the order of floating-point sums.

    Args:
        step_fn: ``step(key, state, batch) -> (state, metrics)``, e.g. from :func:`make_train_step`.
        batch_size: (static) examples per step (the global batch on a mesh).
        shuffle: (static) reshuffle every epoch.
        unroll: (static) ``lax.scan`` unroll factor (a speed knob; results are identical).
        mesh: a data mesh (:func:`dlx_jax.training.data_mesh`) or ``None`` (one device, no layout).

    Returns:
        The undecorated epoch function; every entry of ``metrics`` has one value per step.

    Raises:
        ValueError: ``batch_size`` does not divide over the mesh's devices.
    """
    if mesh is not None:
        _mesh.check_divides(batch_size, mesh)

    def epoch(key: PRNGKeyArray, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        n = _example_count(data)
        key_perm, key_steps = jax.random.split(key)
        batches = batch_indices(key_perm, n, batch_size=batch_size, shuffle=shuffle)

        def body(state: TrainState, inputs: tuple[Array, Array]) -> tuple[TrainState, Metrics]:
            i, idx = inputs
            batch = _mesh.constrain_batch(_take(data, idx), mesh)
            state, metrics = step_fn(jax.random.fold_in(key_steps, i), state, batch)
            return _mesh.constrain_replicated(state, mesh), metrics

        steps = jnp.arange(batches.shape[0], dtype=jnp.int32)
        return jax.lax.scan(body, state, (steps, batches), unroll=unroll)

    return epoch


def make_stepped_epoch_fn(
    step_fn: StepFn,
    *,
    batch_size: int,
    shuffle: bool = True,
    donate: bool = True,
    mesh: Mesh | None = None,
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
        mesh: a data mesh, or ``None``. On a mesh pass the state replicated
            (:func:`dlx_jax.training.replicate`); the batch indices are computed in every process
            alike and each process feeds only its own rows of every batch from its copy of the data
            (:func:`dlx_jax.training.shard_batch`, ``jax.make_array_from_process_local_data``).

    Raises:
        ValueError: ``batch_size`` does not divide over the mesh's devices.
    """
    if mesh is not None:
        _mesh.check_divides(batch_size, mesh)
        return _stepped_on_mesh(step_fn, batch_size=batch_size, shuffle=shuffle, donate=donate, mesh=mesh)
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


def _stepped_on_mesh(step_fn: StepFn, *, batch_size: int, shuffle: bool, donate: bool, mesh: Mesh) -> EpochFn:
    """:func:`make_stepped_epoch_fn` on a mesh: the batches are fed from the host, process by process."""

    def step(key: PRNGKeyArray, state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        state, metrics = step_fn(key, state, batch)
        return _mesh.constrain_replicated(state, mesh), metrics

    step_jit = jax.jit(step, donate_argnums=(1,) if donate else ())
    split = jax.jit(jax.random.split)
    fold = jax.jit(jax.random.fold_in)
    perm = jax.jit(batch_indices, static_argnums=(1,), static_argnames=("batch_size", "shuffle"))
    rows = _mesh.process_rows(batch_size, mesh)

    def epoch(key: PRNGKeyArray, state: TrainState, data: Any) -> tuple[TrainState, Metrics]:
        n = _example_count(data)
        host = jax.tree_util.tree_map(np.asarray, data)  # free for numpy data; one copy otherwise
        key_perm, key_steps = split(key)
        batches = np.asarray(perm(key_perm, n, batch_size=batch_size, shuffle=shuffle))
        per_step: list[Metrics] = []
        for i in range(batches.shape[0]):
            local = jax.tree_util.tree_map(lambda a, i=i: a[batches[i, rows]], host)
            batch = _mesh.shard_batch(local, mesh, batch_size=batch_size)
            state, metrics = step_jit(fold(key_steps, np.int32(i)), state, batch)
            per_step.append(metrics)
        stacked = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *per_step)
        return state, stacked

    return epoch
