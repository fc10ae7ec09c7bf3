"""``fit``: epochs with timing, evaluation, divergence checks and checkpoints; resume (see
:mod:`dlx_jax.training`)."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from dlx_jax._checks import check_positive_int
from dlx_jax.training._checkpoints import partial_dir, restore_meta
from dlx_jax.training._epochs import EpochFn
from dlx_jax.training._mesh import is_primary, sync_processes
from dlx_jax.training._state import TrainState

EvalFn = Callable[[int, TrainState], Mapping[str, Any]]


class TrainingDivergedError(ValueError):
    """A training epoch produced a non-finite loss or metric.

    Subclasses ``ValueError`` so callers that catch bad-input errors also catch it. :func:`fit`
    discards the run's partial checkpoint folder only for this error (a diverged run is not worth
    resuming); any other failure, e.g. in an ``evaluate`` callback or Ctrl-C, leaves it for
    ``resume=True``.
    """


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def _new_history() -> dict[str, list]:
    return {"loss": [], "epoch_seconds": [], "eval": []}


def _check_settings(epochs: int, eval_every: int, resume: bool, checkpoint_dir: Any) -> None:
    check_positive_int("epochs", epochs, fix="pass e.g. --epochs 30")
    check_positive_int("eval_every", eval_every, fix="pass e.g. eval_every=1 (evaluate after every epoch)")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")


def _check_resumable(
    source: Path, meta: Mapping[str, Any], fingerprint: dict, epochs: int, may_change: frozenset[str]
) -> dict[str, list]:
    """The checkpoint's settings must equal ``fingerprint`` except for keys in ``may_change`` (present
    in both), and it must not hold more than ``epochs``; returns what changes, ``{key: [saved, now]}``."""
    saved = meta.get("fingerprint", {})
    diff = {
        k: [saved.get(k), fingerprint.get(k)]
        for k in sorted(set(saved) | set(fingerprint))
        if saved.get(k) != fingerprint.get(k)
    }
    free = {k for k in may_change if k in saved and k in fingerprint}
    refused = {k: tuple(v) for k, v in diff.items() if k not in free}
    if refused:
        hint = ""
        if "lr" in refused and "lr" not in may_change:
            hint = (
                "; to continue deliberately at another learning rate pass may_change=('lr',) "
                "(the steps: --allow-lr-change)"
            )
        raise ValueError(
            f"the checkpoint in {str(source)!r} was made with other settings "
            f"(saved, now): {refused}; use the same settings or run without --resume{hint}"
        )
    if int(meta["epoch"]) > epochs:
        raise ValueError(
            f"the checkpoint already has {meta['epoch']} epochs, more than epochs={epochs}; "
            f"pass --epochs >= {meta['epoch']} or run without --resume"
        )
    return diff


def _copy_dir(src: Path, dst: Path) -> None:
    """Copy ``src`` to a fresh ``dst`` through a hidden sibling, so ``dst`` is never half-copied."""
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _resume(
    checkpoint_dir: Path,
    state: TrainState,
    fingerprint: dict,
    *,
    epochs: int,
    resume: bool,
    may_change: frozenset[str] = frozenset(),
) -> tuple[TrainState, int, dict[str, list], str]:
    """Where a checkpointed run starts: ``(state, first epoch, history, note for the bar)``.

    With ``resume`` the newest checkpoint of ``<checkpoint_dir>.partial`` (an interrupted run) or
    else of ``checkpoint_dir`` (a finished one, copied to the partial folder to train on) is
    checked against ``fingerprint`` and ``epochs`` before any array is read, then restored; the
    settings of ``may_change`` that differ are appended to ``history["changes"]`` as
    ``{"epoch": e, key: [saved, now], ...}``. Otherwise (or when there is none) the partial folder is
    cleared and the run starts at epoch 0.
    """
    from dlx_jax import training  # the public checkpoint functions, see fit

    partial = partial_dir(checkpoint_dir)
    candidates = (partial, checkpoint_dir) if resume else ()
    source = next((d for d in candidates if training.latest_checkpoint(d) is not None), None)
    if source is None:
        if is_primary():  # several processes: process 0 keeps the folders, the others wait for it
            shutil.rmtree(partial, ignore_errors=True)
        sync_processes("dlx_jax.fit: fresh partial folder")
        note = " (no checkpoint to resume: starting over)" if resume else ""
        return state, 0, _new_history(), note
    meta = restore_meta(source, training.latest_checkpoint(source))
    changed = _check_resumable(source, meta, fingerprint, epochs, may_change)
    state, meta = training.restore_checkpoint(source, state)
    sync_processes("dlx_jax.fit: restored")
    if source != partial and is_primary():
        _copy_dir(source, partial)
    sync_processes("dlx_jax.fit: partial folder ready")
    history = {k: list(v) for k, v in meta["history"].items()}
    if changed and int(meta["epoch"]) < epochs:  # recorded once training goes on under them
        history.setdefault("changes", []).append({"epoch": int(meta["epoch"]), **changed})
    note = "".join(f" ({k} {a} -> {b})" for k, (a, b) in changed.items())
    return state, int(meta["epoch"]), history, note


def _epoch_key(key: PRNGKeyArray, e: int) -> PRNGKeyArray:
    """``fold_in(key, e)``, member by member for a batch of keys (an ensemble's ``(M,)`` keys)."""
    if jnp.ndim(key) == 0:
        return jax.random.fold_in(key, e)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, e)


def _run_epoch(
    epoch_fn: EpochFn, key: PRNGKeyArray, e: int, state: TrainState, data: Any, history: dict[str, list]
) -> tuple[TrainState, dict[str, float]]:
    """Epoch ``e`` (0-based) with key ``fold_in(key, e)``: its time and metric means go to ``history``.

    Raises:
        TrainingDivergedError: a non-finite mean (after it was recorded).
    """
    t0 = time.perf_counter()
    state, metrics = epoch_fn(_epoch_key(key, e), state, data)
    means = {k: float(jnp.mean(v)) for k, v in metrics.items()}
    jax.block_until_ready(state)
    history["epoch_seconds"].append(time.perf_counter() - t0)
    for k, v in means.items():
        history.setdefault(k, []).append(v)
    if not all(math.isfinite(v) for v in means.values()):
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        raise TrainingDivergedError(
            f"training diverged in epoch {e + 1}: {bad}; try a smaller learning rate "
            "(earlier checkpoints and outputs were left untouched)"
        )
    return state, means


def fit(
    key: PRNGKeyArray,
    state: TrainState,
    data: Any,
    *,
    epoch_fn: EpochFn,
    epochs: int,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    may_change: Collection[str] = (),
    evaluate: EvalFn | None = None,
    eval_every: int = 1,
    progress: bool = True,
    desc: str = "train",
    commit: bool = True,
) -> tuple[TrainState, dict[str, list]]:
    """Run ``epochs`` epochs of ``epoch_fn``, evaluating, timing and checkpointing after each one.

    Epoch ``e`` (0-based) runs ``epoch_fn(fold_in(key, e), state, data)``. The returned history holds
    per epoch the mean of every step metric (``history["loss"]``, ...), the wall-clock
    ``history["epoch_seconds"]`` (the first includes compilation), and ``history["eval"]``: a list
    of ``{"epoch": e + 1, **evaluate(e + 1, state)}`` every ``eval_every`` epochs and after the last
    (values converted to JSON numbers/lists so they can live in the checkpoint).

    With ``checkpoint_dir`` the state, the history and ``fingerprint`` are saved after every epoch
    into ``<checkpoint_dir>.partial``, which replaces ``checkpoint_dir`` when all epochs are done.
    ``resume=True`` continues from that partial folder (an interrupted run) or else from
    ``checkpoint_dir`` (a finished run, to train it longer), and reproduces the uninterrupted run bit
    for bit (same keys, same batches). The fingerprint is compared before any array is read; keys
    named in ``may_change`` may differ (a deliberate change from the restored epoch on, e.g. a lower
    learning rate for the last epochs: the new value is in effect because ``epoch_fn`` was built with
    it; the change is recorded in ``history["changes"]`` and the checkpoints carry the new
    fingerprint). A
    non-finite epoch loss stops the run with a ``ValueError``; the previous ``checkpoint_dir`` is
    left as it was.

    **Ensembles.** ``key`` may be a batch of ``M`` keys with ``state`` stacked on a leading member
    axis and ``epoch_fn`` vmapped over both (``jax.vmap(make_epoch_fn(...), in_axes=(0, 0, None))``):
    member ``m`` then trains exactly as ``fit(key[m], state[m], ...)`` would (epoch key
    ``fold_in(key[m], e)``), all members in one compiled call; ``history`` holds means over members.

    Args:
        key: the run key (or an ensemble's ``(M,)`` keys).
        state: the initial state (also the structure template for restoring).
        data: the training data (array or pytree), passed to every epoch.
        epoch_fn: ``jax.jit(make_epoch_fn(...))`` or :func:`make_stepped_epoch_fn`.
        epochs: total number of epochs (counting restored ones).
        checkpoint_dir: where to keep checkpoints, or ``None``.
        resume: continue from the newest checkpoint when there is one (else start over, saying so
            in the bar's label).
        fingerprint: JSON-able settings that must match on resume (model sizes, learning rate, ...).
        may_change: fingerprint keys that may differ on resume, e.g. ``("lr",)`` to continue a run at
            another learning rate (its ``epoch_fn`` built with it); default none.
        evaluate: ``evaluate(epoch, state) -> mapping`` of results (test accuracy, a sample grid, ...).
        eval_every: evaluate every this many epochs (and after the last).
        progress: show a tqdm bar over epochs (also disabled by ``TQDM_DISABLE=1``).
        desc: the bar's label.
        commit: move the finished run onto ``checkpoint_dir`` (default). ``False`` leaves it in
            ``<checkpoint_dir>.partial`` for the caller to :func:`commit_checkpoints` once its own
            outputs (samples, metrics) are in place, so a run killed after training but before those
            outputs never pairs new checkpoints with old outputs; ``resume=True`` then restores the
            finished partial run without training again.

    Returns:
        ``(state, history)`` after ``epochs`` epochs.

    Raises:
        ValueError: ``epochs`` < 1, ``resume`` without ``checkpoint_dir``, a checkpoint whose
            fingerprint differs from ``fingerprint``, or one with more epochs than ``epochs``.
        TrainingDivergedError: a non-finite epoch loss or metric (a ``ValueError``); the partial
            folder is discarded. Any other error (an ``evaluate`` failure, Ctrl-C) keeps it for
            ``resume=True``.
        KeyboardInterrupt: re-raised as it came (Ctrl-C); the partial folder then holds every
            epoch that finished, each checkpoint complete, and ``resume=True`` continues bit for bit.
        CheckpointError: with ``resume=True``, a checkpoint folder that cannot be read.
    """
    from tqdm.auto import tqdm

    # the public checkpoint functions are called through the package, as when the loop was one
    # module, so patching e.g. ``training.save_checkpoint`` (tests interrupt a run that way) reaches fit
    from dlx_jax import training

    _check_settings(epochs, eval_every, resume, checkpoint_dir)
    if isinstance(may_change, str) or not all(isinstance(k, str) for k in may_change):
        raise ValueError(
            f"may_change must be a collection of fingerprint keys, got {may_change!r}; pass e.g. ('lr',)"
        )
    fingerprint = _jsonable(dict(fingerprint or {}))
    start, history, partial, note = 0, _new_history(), None, ""
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        partial = partial_dir(checkpoint_dir)
        state, start, history, note = _resume(
            checkpoint_dir, state, fingerprint, epochs=epochs, resume=resume, may_change=frozenset(may_change)
        )
    extra = {} if progress else {"disable": True}  # else tqdm's own default (and TQDM_DISABLE) applies
    bar = tqdm(range(start, epochs), initial=start, total=epochs, desc=desc + note, unit="epoch", **extra)
    try:
        for e in bar:
            state, means = _run_epoch(epoch_fn, key, e, state, data, history)
            if evaluate is not None and ((e + 1) % eval_every == 0 or e + 1 == epochs):
                history["eval"].append({"epoch": e + 1, **_jsonable(dict(evaluate(e + 1, state)))})
            bar.set_postfix(loss=f"{means['loss']:.4g}")
            if partial is not None:
                meta = {"epoch": e + 1, "history": history, "fingerprint": fingerprint}
                training.save_checkpoint(partial, e + 1, state, meta)
    except BaseException as err:  # Ctrl-C included: the partial folder keeps the finished epochs
        bar.close()
        if partial is not None and isinstance(err, TrainingDivergedError) and is_primary():
            shutil.rmtree(partial, ignore_errors=True)  # a diverged run is not worth resuming
        raise
    bar.close()
    if commit and checkpoint_dir is not None:
        sync_processes("dlx_jax.fit: trained")
        if is_primary():
            training.commit_checkpoints(checkpoint_dir)
        sync_processes("dlx_jax.fit: committed")
    return state, history
