"""Ensembles (``--ensemble M``): M independently seeded models trained in one compiled call.

Member ``m`` is the model that ``--seed S+m`` trains alone: its own initial weights, batch order
and dropout/noise keys (``jax.random.key(S + m)``, split as the single run splits it). The single
run's epoch function is ``jax.vmap``-ed over the members' keys and train states, the data shared
(``in_axes=(0, 0, None)``), and ``dlx_jax.training.fit`` runs it like any epoch. On a device mesh
the members are spread over the devices (``M`` must then be a multiple of the device count): each
device trains its ``M / D`` members, nothing is exchanged between devices.

To show what the one call buys, the step also trains the same members one after another with the
single run's compiled epoch (same keys, so the same models up to float rounding) and reports both
training times (compilation excluded) and their ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlx_jax import training
from experiments._cli import SEED_MAX

__all__ = ["HELP", "check", "layout", "member_keys", "sequential", "vmapped_epoch"]

HELP = (
    "train this many independently seeded models (member m = the model --seed S+m trains) in one "
    "vmapped compiled call, and the same members one after another to compare the time (1: one model)"
)


def check(config: Any, mesh: Any) -> None:
    """``--ensemble`` must be >= 1, its seeds must exist, and on a mesh it must spread evenly.

    Raises:
        ValueError: naming the fix.
    """
    m = config.ensemble
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"--ensemble must be an integer >= 1, got {m!r}; pass e.g. --ensemble 8")
    if config.seed + m - 1 > SEED_MAX:
        raise ValueError(
            f"--ensemble {m} with --seed {config.seed} needs seeds up to {config.seed + m - 1}, beyond "
            f"{SEED_MAX}; pass --seed {SEED_MAX - m + 1} or less"
        )
    d = mesh.devices.size
    if m > 1 and m % d:
        raise ValueError(
            f"--ensemble {m} does not spread over {d} devices (each device trains an equal share of the "
            f"members); pass --ensemble a multiple of {d}, or --devices a divisor of {m}"
        )


def member_keys(seed: int, size: int) -> tuple[jax.Array, jax.Array]:
    """``(init keys, train keys)``, each ``(size,)``: member ``m``'s are the two halves of
    ``jax.random.split(jax.random.key(seed + m))``, as a single run with ``--seed seed+m`` splits."""
    pairs = [jax.random.split(jax.random.key(seed + m)) for m in range(size)]
    return jnp.stack([k[0] for k in pairs]), jnp.stack([k[1] for k in pairs])


def layout(tree: Any, mesh: Any) -> Any:
    """Members (the leading axis) spread over the mesh's devices; on one device just replicated."""
    if mesh.devices.size == 1:
        return training.replicate(tree, mesh)
    sharding = NamedSharding(mesh, P(training.DATA_AXIS))

    def put(leaf: Any) -> Any:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def vmapped_epoch(epoch_fn: Callable) -> Callable:
    """``jit(vmap(epoch_fn))`` over the members' keys and states (data shared), states donated."""
    return jax.jit(jax.vmap(epoch_fn, in_axes=(0, 0, None)), donate_argnums=1)


def sequential(
    epoch_fn: Callable, keys: jax.Array, states: Any, data: Any, *, epochs: int
) -> tuple[Any, float, float]:
    """The members trained one after another with the single run's ``jit(epoch_fn)``.

    Returns ``(stacked final states, training seconds, compile seconds)``; the epoch is compiled
    once, ahead, and its time kept apart, as for the vmapped run.
    """
    first = jax.tree_util.tree_map(lambda a: a[0], states)
    start = time.perf_counter()
    compiled = jax.jit(epoch_fn, donate_argnums=1).lower(keys[0], first, data).compile()
    compile_s = time.perf_counter() - start
    finals, seconds = [], 0.0
    for m in range(keys.shape[0]):
        state = jax.tree_util.tree_map(lambda a, m=m: jnp.array(a[m]), states)
        start = time.perf_counter()
        for e in range(epochs):
            state, _ = compiled(jax.random.fold_in(keys[m], e), state, data)
        jax.block_until_ready(state)
        seconds += time.perf_counter() - start
        finals.append(state)
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *finals), seconds, compile_s
