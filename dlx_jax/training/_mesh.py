r"""Data parallelism on a device mesh: one code path for 1, 2 or N devices, in one or many processes.

The mesh is one axis, ``"data"``, over the devices of every process (``jax.devices()``), built with
``jax.make_mesh`` and **Auto** axis types: the sharding of every intermediate is left to XLA's
propagation. (With ``make_mesh``'s Explicit default the backward pass of a convolution over a
batch-sharded input fails with ``ShardingTypeError``, "contracting dimensions are sharded".)

Data parallelism is then only a statement about where arrays live:

* the train state (params, optimizer state, model state such as BatchNorm statistics, EMA) is
  **replicated**: every device holds all of it (:func:`replicate`);
* every batch is **sharded** on its leading axis: with :math:`D` devices and a global batch of
  :math:`B` examples, device :math:`d` holds examples :math:`[dB/D, (d+1)B/D)` (:func:`batch_sharding`).

Under ``jax.jit`` the loss is computed on each device's examples and the gradient of the mean over
the **global** batch,

.. math:: \nabla_\theta \frac{1}{B}\sum_{i=1}^{B} \ell_i(\theta)
          = \sum_{d=1}^{D} \frac{1}{B}\sum_{i \in \text{shard } d} \nabla_\theta \ell_i(\theta),

needs one all-reduce over the devices, which XLA's SPMD partitioner inserts; so do the batch mean
and variance of a BatchNorm layer in train mode, which are therefore the statistics of the global
batch, exactly as on one device. The only numerical difference from one device is the order of
floating-point sums (the all-reduce adds per-device partial sums): results agree to rounding, and
on a one-device mesh they are bit for bit those of no mesh at all.

With several processes (:func:`initialize_distributed`) the same program runs in every process on
its own devices; :func:`replicate` builds global arrays from the value every process holds and
:func:`shard_batch` lets each process feed only its own rows of each global batch
(``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlx_jax._checks import check_positive_int

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_divides",
    "constrain_batch",
    "constrain_replicated",
    "data_mesh",
    "gather",
    "initialize_distributed",
    "is_primary",
    "process_rows",
    "replicate",
    "replicated",
    "shard_batch",
    "sync_processes",
]


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all processes' devices), axis ``"data"``.

    Args:
        num_devices: how many devices; ``None`` means all of ``jax.devices()``. With several
            processes it must be all of them (every process takes part in every step).

    Raises:
        ValueError: ``num_devices`` is not a positive integer, is more than there are, or (with
            several processes) is not all of them.
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    check_positive_int(
        "num_devices", n, fix=f"pass --devices between 1 and {len(devices)} (the devices JAX sees)"
    )
    if n > len(devices):
        raise ValueError(
            f"--devices {n} asks for more devices than JAX sees ({len(devices)}: "
            f"{devices[0].platform}); pass --devices {len(devices)} or fewer, or on a CPU simulate more "
            f"with JAX_NUM_CPU_DEVICES={n} set before Python starts"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"with {jax.process_count()} processes the mesh must hold all {len(devices)} devices, got "
            f"--devices {n}; leave --devices out"
        )
    return jax.make_mesh((n,), (DATA_AXIS,), (AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array of which every device of ``mesh`` holds a full copy."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch split on its leading (example) axis over the mesh's ``"data"`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_divides(batch_size: int, mesh: Mesh, *, what: str = "--batch-size") -> None:
    """A global batch must split evenly over the devices.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the mesh's device count (naming both fixes).
    """
    n = mesh.devices.size
    if batch_size % n:
        lower, upper = batch_size // n * n, -(-batch_size // n) * n
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{what} {batch_size} does not divide over {n} devices (each device takes an equal share "
            f"of every batch); pass {what} {sizes}, or --devices a divisor of {batch_size}"
        )


def _global(value: Any, sharding: NamedSharding) -> jax.Array:
    """A global array of ``value`` (the same on every process) laid out as ``sharding``."""
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` on every device of ``mesh`` (a global, replicated ``jax.Array``).

    Every process must pass the same values (e.g. parameters initialized from the same key): each
    builds its own devices' copies from its own value. Typed PRNG keys are kept as keys.
    """
    sharding = replicated(mesh)

    def put(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return _global(leaf, sharding)

    return jax.tree_util.tree_map(put, tree)


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows ``[start, stop)`` of a global batch of ``batch_size`` that this process's devices hold.

    The mesh's devices are ordered process by process, so each process holds one contiguous block.
    """
    sharding = batch_sharding(mesh)
    starts = sorted(
        (index[0].start or 0, index[0].stop if index[0].stop is not None else batch_size)
        for index in sharding.addressable_devices_indices_map((batch_size,)).values()
    )
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
        raise ValueError("this process's devices do not hold one contiguous block of the batch")
    return slice(start, stop)


def shard_batch(tree: Any, mesh: Mesh, *, batch_size: int | None = None) -> Any:
    """A global batch sharded on its leading axis, each process feeding only its own rows.

    Args:
        tree: arrays with the examples on axis 0. Either the whole global batch (every process
            passes the same values; each takes its rows of it) or, with ``batch_size``, only this
            process's rows (:func:`process_rows` of the global batch).
        mesh: the data mesh.
        batch_size: the global batch size when ``tree`` holds only this process's rows.

    Raises:
        ValueError: the global batch does not divide over the devices.
    """
    sharding = batch_sharding(mesh)
    leaves = jax.tree_util.tree_leaves(tree)
    n = batch_size if batch_size is not None else int(np.shape(leaves[0])[0])
    check_divides(n, mesh, what="the batch size")
    rows = process_rows(n, mesh) if batch_size is None else slice(None)  # given rows: this process's

    def put(leaf: Any) -> jax.Array:
        local = np.asarray(leaf)[rows]
        return jax.make_array_from_process_local_data(sharding, local, (n, *local.shape[1:]))

    return jax.tree_util.tree_map(put, tree)


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: lay ``tree`` out as a batch sharded over ``mesh`` (no-op for ``None``)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def constrain_replicated(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: keep ``tree`` (e.g. the train state) replicated over ``mesh`` (no-op for ``None``)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, replicated(mesh))


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 120,
) -> bool:
    """Join a multi-process JAX run (``jax.distributed.initialize``) when one is asked for.

    The three settings come from the arguments or else from the environment variables
    ``DLX_COORDINATOR`` (``host:port`` of process 0), ``DLX_NUM_PROCESSES`` and ``DLX_PROCESS_ID``.
    With none of them set nothing happens (a single-process run). On CPUs the processes exchange
    data through gloo collectives (JAX's default on CPU).

    Returns:
        ``True`` when this process joined a run of more than one process.

    Raises:
        ValueError: only some of the three settings are given, or they are out of range.
    """
    env = os.environ
    coordinator = coordinator or env.get("DLX_COORDINATOR") or None
    if num_processes is None and env.get("DLX_NUM_PROCESSES"):
        num_processes = int(env["DLX_NUM_PROCESSES"])
    if process_id is None and env.get("DLX_PROCESS_ID"):
        process_id = int(env["DLX_PROCESS_ID"])
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if not any(given) or (num_processes == 1 and not coordinator):
        return False
    if not all(given):
        raise ValueError(
            "a multi-process run needs all three of --coordinator HOST:PORT, --num-processes N and "
            "--process-id I (or DLX_COORDINATOR, DLX_NUM_PROCESSES, DLX_PROCESS_ID); pass the missing ones"
        )
    check_positive_int("num_processes", num_processes, fix="pass --num-processes 2 or more")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id {process_id} is not in [0, {num_processes}); number the processes 0 .. "
            f"{num_processes - 1}"
        )
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s)
    return num_processes > 1


def is_primary() -> bool:
    """Whether this process writes files: process 0 of a multi-process run, or a single process."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Wait until every process of a multi-process run reaches this point (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(tree: Any) -> Any:
    """Every array leaf of ``tree`` as one host numpy array, whatever its sharding; with several
    processes each gets the whole array (``multihost_utils.process_allgather``: a collective, so
    every process must call it)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(np.asarray, tree)
