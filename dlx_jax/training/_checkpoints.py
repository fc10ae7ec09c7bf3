"""Orbax checkpoints of a :class:`TrainState` with JSON metadata, the run's ``.partial`` folder and
its commit (see :mod:`dlx_jax.training`)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax

from dlx_jax.training._state import TrainState


class CheckpointError(ValueError):
    """A checkpoint folder cannot be read: corrupted, incomplete, or written for another model.

    Raised instead of orbax's and tensorstore's own errors, whose messages name internals rather
    than the fix (delete the folder or run without ``--resume``).
    """


def _manager(directory: Path, *, create: bool = True):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _to_tree(state: TrainState) -> dict[str, Any]:
    """The state as a dict without empty fields (orbax stores no ``None``)."""
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if jax.tree_util.tree_leaves(state.model_state):
        tree["model_state"] = state.model_state
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then raise it.

    Orbax writes a checkpoint through threads and an event loop that catch a ``KeyboardInterrupt``
    raised in the middle of a save: the interrupt was lost and the run went on to the end. Deferred,
    the checkpoint is completed and the interrupt is raised right after it. Only in the main thread
    (where Python handles signals) and only while Python's own handler is installed.
    """
    if threading.current_thread() is not threading.main_thread() or not callable(
        signal.getsignal(signal.SIGINT)
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def save_checkpoint(directory: str | Path, epoch: int, state: TrainState, meta: Mapping[str, Any]) -> None:
    """Save ``state`` (orbax ``StandardSave``) and JSON ``meta`` as checkpoint number ``epoch``.

    A Ctrl-C during the save is raised once the checkpoint is complete (:func:`interrupts_deferred`).
    """
    import orbax.checkpoint as ocp

    with interrupts_deferred(), _manager(Path(directory)) as mngr:
        mngr.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)), meta=ocp.args.JsonSave(dict(meta))
            ),
            force=True,
        )
        mngr.wait_until_finished()


@contextlib.contextmanager
def _reading(directory: Path) -> Iterator[None]:
    """Turn any failure of orbax/tensorstore while reading ``directory`` into one :class:`CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {directory} is corrupted or incomplete (or was written for another model); "
            "delete it or run without --resume"
        ) from err


def latest_checkpoint(directory: str | Path) -> int | None:
    """The newest checkpoint number in ``directory``, or ``None`` when there is none.

    Raises:
        CheckpointError: the folder cannot be read as a checkpoint folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with _reading(directory), _manager(directory, create=False) as mngr:
        return mngr.latest_step()


def restore_meta(directory: Path, step: int) -> dict:
    """Only the JSON metadata of checkpoint ``step`` (``epoch``, ``history``, ``fingerprint``), no arrays.

    Raises:
        CheckpointError: unreadable, or metadata without those three entries.
    """
    import orbax.checkpoint as ocp

    with _reading(directory):
        with _manager(directory, create=False) as mngr:
            restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if not isinstance(meta, Mapping) or not {"epoch", "history", "fingerprint"} <= set(meta):
            raise ValueError("metadata without epoch, history and fingerprint")
        return dict(meta)


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
        CheckpointError: the checkpoint cannot be read (corrupted, incomplete, another model's).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    step = latest_checkpoint(directory) if epoch is None else epoch
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {str(directory)!r}; run without --resume first")
    template = _to_tree(like)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    with _reading(directory), _manager(directory, create=False) as mngr:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
    tree = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(template), jax.tree_util.tree_leaves(restored["state"])
    )
    state = TrainState(
        tree["step"],
        tree["params"],
        tree["opt_state"],
        tree.get("model_state", like.model_state),
        tree.get("ema_params"),
    )
    return state, dict(restored["meta"])


def partial_dir(checkpoint_dir: Path) -> Path:
    """``<checkpoint_dir>.partial``: where a run trains before :func:`commit_checkpoints`."""
    return checkpoint_dir.with_name(checkpoint_dir.name + ".partial")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst`` (the old ``dst`` is removed only after ``src`` is in place)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def commit_checkpoints(checkpoint_dir: str | Path) -> bool:
    """Move a run finished with ``fit(..., commit=False)`` from ``<checkpoint_dir>.partial`` onto
    ``checkpoint_dir`` (the old folder is removed only after the new one is in place).

    Returns:
        ``True`` when a partial folder was moved, ``False`` when there was none.
    """
    checkpoint_dir = Path(checkpoint_dir)
    partial = partial_dir(checkpoint_dir)
    if not partial.exists():
        return False
    _replace_dir(partial, checkpoint_dir)
    return True
