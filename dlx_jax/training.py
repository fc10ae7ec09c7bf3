"""Training loops: one jit-compiled epoch as a ``lax.scan`` over batches, checkpoints, resume.

The pieces compose as

.. code-block:: python

    step = make_train_step(loss_fn, optax.adam(3e-4))        # loss_fn(key, params, batch) -> scalar
    epoch = jax.jit(make_epoch_fn(step, batch_size=32))      # the caller jits
    state, history = fit(key, TrainState(params, opt.init(params)), x, epoch_fn=epoch, epochs=30,
                         checkpoint_dir="out/checkpoints", resume=True)

Randomness is a pure function of the run key: epoch ``e`` uses ``epoch_key = fold_in(key, e)``,
split into a permutation key and a step key; step ``i`` of the epoch uses ``fold_in(step_key, i)``.
So a run that is interrupted and resumed from a checkpoint replays exactly the numbers of an
uninterrupted run (:func:`fit` with ``resume=True``).

:func:`fit` is the one impure function here: it writes orbax checkpoints and shows a tqdm bar.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from dlx_jax.data import batch_indices

__all__ = [
    "TrainState",
    "fit",
    "latest_checkpoint",
    "make_epoch_fn",
    "make_train_step",
    "restore_checkpoint",
    "save_checkpoint",
]

LossFn = Callable[[PRNGKeyArray, Any, Any], Float[Array, ""]]
StepFn = Callable[[PRNGKeyArray, "TrainState", Any], tuple["TrainState", Float[Array, ""]]]


class TrainState(NamedTuple):
    """What an optimizer step carries: model ``params`` and the optax ``opt_state``."""

    params: Any
    opt_state: Any


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> StepFn:
    """One optimizer step ``step(key, state, batch) -> (state, loss)`` (undecorated; the caller jits).

    Args:
        loss_fn: ``loss_fn(key, params, batch) -> scalar`` (e.g. :func:`dlx_jax.vae.book_loss`).
        optimizer: an optax gradient transformation (e.g. ``optax.adam(3e-4)``).
    """

    def step(key: PRNGKeyArray, state: TrainState, batch: Any) -> tuple[TrainState, Float[Array, ""]]:
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(key, state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


def make_epoch_fn(
    step_fn: StepFn, *, batch_size: int, shuffle: bool = True, unroll: int = 1
) -> Callable[[PRNGKeyArray, TrainState, Any], tuple[TrainState, Float[Array, " t"]]]:
    """One epoch ``epoch(epoch_key, state, data) -> (state, losses)`` as a ``lax.scan`` over batches.

    ``data`` is an array (or pytree of arrays) with the examples on axis 0. The epoch key is split
    into ``(key_perm, key_steps)``; the batches are :func:`dlx_jax.data.batch_indices` of ``key_perm``
    (``drop_remainder=True``: the last partial batch is dropped) and step
    ``i`` gets ``jax.random.fold_in(key_steps, i)``. Each step gathers its batch from ``data``
    inside the scan, so the data are never copied per epoch.

    Args:
        step_fn: ``step(key, state, batch) -> (state, loss)``, e.g. from :func:`make_train_step`.
        batch_size: (static) examples per step; the last partial batch is dropped.
        shuffle: (static) reshuffle every epoch.
        unroll: (static) ``lax.scan`` unroll factor (a speed knob; results are identical).

    Returns:
        The undecorated epoch function; ``losses`` has one entry per step.
    """

    def epoch(key: PRNGKeyArray, state: TrainState, data: Any) -> tuple[TrainState, Float[Array, " t"]]:
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree_util.tree_leaves(data)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"data leaves must share a leading example axis, got sizes {sizes}; stack them")
        (n,) = sizes
        key_perm, key_steps = jax.random.split(key)
        batches = batch_indices(key_perm, n, batch_size=batch_size, shuffle=shuffle)

        def body(state: TrainState, inputs: tuple[Array, Array]) -> tuple[TrainState, Array]:
            i, idx = inputs
            batch = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)
            return step_fn(jax.random.fold_in(key_steps, i), state, batch)

        steps = jnp.arange(batches.shape[0], dtype=jnp.int32)
        return jax.lax.scan(body, state, (steps, batches), unroll=unroll)

    return epoch


# --- checkpoints ----------------------------------------------------------------------------------


def _manager(directory: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save_checkpoint(directory: str | Path, epoch: int, state: TrainState, meta: Mapping[str, Any]) -> None:
    """Save ``state`` (orbax ``StandardSave``) and JSON ``meta`` as checkpoint number ``epoch``."""
    import orbax.checkpoint as ocp

    with _manager(Path(directory)) as mngr:
        mngr.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
            force=True,
        )
        mngr.wait_until_finished()


def latest_checkpoint(directory: str | Path) -> int | None:
    """The newest checkpoint number in ``directory``, or ``None`` when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with _manager(directory) as mngr:
        return mngr.latest_step()


def restore_checkpoint(
    directory: str | Path, like: TrainState, epoch: int | None = None
) -> tuple[TrainState, dict]:
    """Restore ``(state, meta)`` from checkpoint ``epoch`` (default: the newest).

    Args:
        directory: the checkpoint folder.
        like: a state with the same structure, shapes and dtypes (e.g. freshly initialized).
        epoch: which checkpoint.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    step = latest_checkpoint(directory) if epoch is None else epoch
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {str(directory)!r}; run without --resume first")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with _manager(directory) as mngr:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
    state = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(like), jax.tree_util.tree_leaves(restored["state"])
    )
    return state, dict(restored["meta"])


def fit(
    key: PRNGKeyArray,
    state: TrainState,
    data: Any,
    *,
    epoch_fn: Callable[[PRNGKeyArray, TrainState, Any], tuple[TrainState, Array]],
    epochs: int,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[TrainState, list[float]]:
    """Run ``epochs`` epochs of ``epoch_fn`` (jit it first), checkpointing after each one.

    Epoch ``e`` (0-based) runs ``epoch_fn(fold_in(key, e), state, data)``; ``history[e]`` is the mean of
    its per-step losses. With ``checkpoint_dir`` the state, the epoch count, the history and
    ``fingerprint`` are saved after every epoch; ``resume=True`` restores the newest checkpoint and
    continues from there, which reproduces the uninterrupted run (same keys, same batches). Without
    ``resume`` an existing ``checkpoint_dir`` is cleared first.

    Args:
        key: the run key.
        state: the initial state (also the structure template for restoring).
        data: the training data (array or pytree), passed to every epoch.
        epoch_fn: e.g. ``jax.jit(make_epoch_fn(...))``.
        epochs: total number of epochs (counting restored ones).
        checkpoint_dir: where to keep checkpoints, or ``None``.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` when there is one.
        fingerprint: JSON-able settings that must match on resume (model sizes, learning rate, ...).
        progress: show a tqdm bar over epochs (also disabled by ``TQDM_DISABLE=1``).
        desc: the bar's label.

    Returns:
        ``(state, history)`` after ``epochs`` epochs.

    Raises:
        ValueError: ``epochs`` < 1, ``resume`` without ``checkpoint_dir``, a checkpoint whose
            fingerprint differs from ``fingerprint``, or one with more epochs than ``epochs``.
    """
    from tqdm.auto import tqdm

    if not isinstance(epochs, int | np.integer) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}; pass e.g. --epochs 30")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    fingerprint = dict(fingerprint or {})
    history: list[float] = []
    start = 0
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        if resume and latest_checkpoint(checkpoint_dir) is not None:
            state, meta = restore_checkpoint(checkpoint_dir, state)
            saved = meta.get("fingerprint", {})
            if saved != fingerprint:
                diff = {
                    k: (saved.get(k), fingerprint.get(k))
                    for k in set(saved) | set(fingerprint)
                    if saved.get(k) != fingerprint.get(k)
                }
                raise ValueError(
                    f"the checkpoint in {str(checkpoint_dir)!r} was made with other settings "
                    f"(saved, now): {diff}; use the same settings or run without --resume"
                )
            start, history = int(meta["epoch"]), [float(v) for v in meta["history"]]
            if start > epochs:
                raise ValueError(
                    f"the checkpoint already has {start} epochs, more than epochs={epochs}; "
                    f"pass --epochs >= {start} or run without --resume"
                )
        elif checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
    extra = {} if progress else {"disable": True}  # else tqdm's own default (and TQDM_DISABLE) applies
    bar = tqdm(range(start, epochs), initial=start, total=epochs, desc=desc, unit="epoch", **extra)
    for e in bar:
        state, losses = epoch_fn(jax.random.fold_in(key, e), state, data)
        history.append(float(jnp.mean(losses)))
        bar.set_postfix(loss=f"{history[-1]:.4g}")
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir, e + 1, state, {"epoch": e + 1, "history": history, "fingerprint": fingerprint}
            )
    bar.close()
    return state, history
