"""The one training loop: train state, optimizer step, compiled epochs, EMA, evaluation, checkpoints.

Every model in the project trains through this module. The pieces compose as

.. code-block:: python

    step = make_train_step(loss_fn, optax.adam(3e-4))               # loss_fn(key, params, batch)
    epoch = jax.jit(make_epoch_fn(step, batch_size=32))              # the caller jits
    state, history = fit(key, init_state(params, optax.adam(3e-4)), x, epoch_fn=epoch, epochs=30,
                         checkpoint_dir="out/checkpoints", resume=True)

**Loss functions.** Three shapes, chosen with the keyword-only flags of :func:`make_train_step`:

* plain, ``loss_fn(key, params, batch) -> loss`` (e.g. :func:`dlx_jax.vae.book_loss`);
* ``has_aux=True``: ``loss_fn(key, params, batch) -> (loss, metrics)`` with ``metrics`` a dict of
  scalars logged per step;
* ``stateful=True``: ``loss_fn(key, params, model_state, batch) -> (loss, (model_state, metrics))``
  for models with non-trainable state such as flax ``batch_stats`` (BatchNorm running statistics).

**Train state.** :class:`TrainState` holds the step count, ``params``, the optax ``opt_state``, the
``model_state`` (``{}`` for stateless models) and, when an exponential moving average is kept,
``ema_params``. The EMA is updated inside the compiled step after every optimizer update ``s``
(1-based count):

.. math::
    \\bar\\theta_s = \\begin{cases} \\theta_s & s \\le \\text{warmup} \\\\
    d\\,\\bar\\theta_{s-1} + (1-d)\\,\\theta_s & s > \\text{warmup} \\end{cases}

with decay ``d`` (e.g. 0.999) — during the warm-up the average simply follows the weights, so it
does not remember the random initialization.

**Randomness** is a pure function of the run key: epoch ``e`` (0-based) uses
``epoch_key = fold_in(key, e)``, split into a permutation key and a step key; step ``i`` of the
epoch uses ``fold_in(step_key, i)``. A run that is interrupted and resumed from a checkpoint replays
exactly the numbers of an uninterrupted run.

**Two ways to run an epoch, same numbers.** :func:`make_epoch_fn` is one ``lax.scan`` over the
batches (one dispatch per epoch, the default). :func:`make_stepped_epoch_fn` runs the same steps on
the same batches with the same keys from a Python loop over a jitted step, for models that XLA
compiles better outside a loop (on some CPUs convolutions inside ``lax.scan`` are much slower).

:func:`fit` is the one impure function here: it writes orbax checkpoints, shows one tqdm bar and
times epochs. Checkpoints are never half-good: a run trains into ``<checkpoint_dir>.partial`` and
replaces ``checkpoint_dir`` only when it finishes, so a failed or diverged run leaves an earlier good
run's checkpoints untouched while an interrupted run can be resumed from its partial folder.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int, PRNGKeyArray

from dlx_jax.data import batch_indices

__all__ = [
    "CheckpointError",
    "TrainState",
    "TrainingDivergedError",
    "commit_checkpoints",
    "ema_update",
    "fit",
    "init_state",
    "latest_checkpoint",
    "load_params",
    "make_epoch_fn",
    "make_stepped_epoch_fn",
    "make_train_step",
    "restore_checkpoint",
    "save_checkpoint",
    "save_params",
]

Metrics = dict[str, Array]
StepFn = Callable[[PRNGKeyArray, "TrainState", Any], tuple["TrainState", Metrics]]
EpochFn = Callable[[PRNGKeyArray, "TrainState", Any], tuple["TrainState", Metrics]]
EvalFn = Callable[[int, "TrainState"], Mapping[str, Any]]


class CheckpointError(ValueError):
    """A checkpoint folder cannot be read: corrupted, incomplete, or written for another model.

    Raised instead of orbax's and tensorstore's own errors, whose messages name internals rather
    than the fix (delete the folder or run without ``--resume``).
    """


class TrainingDivergedError(ValueError):
    """A training epoch produced a non-finite loss or metric.

    Subclasses ``ValueError`` so callers that catch bad-input errors also catch it. :func:`fit`
    discards the run's partial checkpoint folder only for this error (a diverged run is not worth
    resuming); any other failure, e.g. in an ``evaluate`` callback, leaves it for ``resume=True``.
    """


class TrainState(NamedTuple):
    """Everything one optimizer step carries (a pytree; checkpointed as a whole).

    Attributes:
        step: int32 scalar, optimizer updates done so far.
        params: the trainable parameters.
        opt_state: the optax optimizer state.
        model_state: non-trainable model state, e.g. ``{"batch_stats": ...}``; ``{}`` when none.
        ema_params: exponential moving average of ``params`` (same structure), or ``None``.
    """

    step: Int[Array, ""]
    params: Any
    opt_state: Any
    model_state: Any = {}
    ema_params: Any = None


def init_state(
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    model_state: Any = None,
    ema: bool = False,
) -> TrainState:
    """A fresh :class:`TrainState`: step 0, ``optimizer.init(params)``, EMA = a copy of ``params``.

    Args:
        params: the initial parameters.
        optimizer: the optax transformation the train step will use.
        model_state: non-trainable state (e.g. ``{"batch_stats": ...}``); ``None`` means ``{}``.
        ema: keep an exponential moving average of the parameters (``ema_params``).
    """
    ema_params = jax.tree_util.tree_map(jnp.array, params) if ema else None
    return TrainState(
        jnp.zeros((), jnp.int32),
        params,
        optimizer.init(params),
        {} if model_state is None else model_state,
        ema_params,
    )


def ema_update(ema: Any, params: Any, step: Int[Array, ""], *, decay: float, warmup: int = 0) -> Any:
    """One EMA update after optimizer update number ``step`` (1-based), see the module docstring.

    Args:
        ema: the current average (pytree like ``params``).
        params: the parameters after the update.
        step: 1-based count of optimizer updates done, including this one.
        decay: (static) ``d`` in [0, 1).
        warmup: (static) updates during which the average copies the parameters.
    """
    d = jnp.where(step <= warmup, 0.0, decay)
    return jax.tree_util.tree_map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), ema, params)


def _check_ema(decay: float | None, warmup: int) -> None:
    if decay is None:
        return
    if not (isinstance(decay, float | int) and 0 <= decay < 1):
        raise ValueError(f"ema_decay must be a number in [0, 1), got {decay!r}; the usual value is 0.999")
    if not isinstance(warmup, int | np.integer) or warmup < 0:
        raise ValueError(f"ema_warmup must be an integer >= 0, got {warmup!r}")


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    stateful: bool = False,
    ema_decay: float | None = None,
    ema_warmup: int = 0,
) -> StepFn:
    """One optimizer step ``step(key, state, batch) -> (state, metrics)`` (undecorated; the caller jits).

    ``metrics`` is a dict of scalars: ``"loss"`` plus whatever the loss function reports.

    Args:
        loss_fn: the loss (see the module docstring for its three shapes).
        optimizer: an optax gradient transformation (e.g. ``optax.adam(3e-4)``).
        has_aux: ``loss_fn(key, params, batch) -> (loss, metrics)``.
        stateful: ``loss_fn(key, params, model_state, batch) -> (loss, (model_state, metrics))``.
        ema_decay: keep ``state.ema_params`` as an EMA with this decay (``None``: no EMA).
        ema_warmup: updates during which the EMA copies the parameters.

    Raises:
        ValueError: a bad EMA setting; at trace time, a state whose ``ema_params`` does not match
            ``ema_decay`` (build it with ``init_state(..., ema=True)``).
    """
    _check_ema(ema_decay, ema_warmup)

    def objective(params, key, model_state, batch):
        if stateful:
            loss, (new_model_state, metrics) = loss_fn(key, params, model_state, batch)
        elif has_aux:
            (loss, metrics), new_model_state = loss_fn(key, params, batch), model_state
        else:
            loss, metrics, new_model_state = loss_fn(key, params, batch), {}, model_state
        return loss, (new_model_state, dict(metrics))

    def step(key: PRNGKeyArray, state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        if (ema_decay is None) != (state.ema_params is None):
            raise ValueError(
                "the train state's ema_params and the step's ema_decay disagree: build the state with "
                "init_state(..., ema=True) exactly when make_train_step gets ema_decay"
            )
        (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, key, state.model_state, batch
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        count = state.step + 1
        ema = state.ema_params
        if ema_decay is not None:
            ema = ema_update(ema, params, count, decay=ema_decay, warmup=ema_warmup)
        return TrainState(count, params, opt_state, model_state, ema), {"loss": loss, **metrics}

    return step


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


# --- checkpoints ----------------------------------------------------------------------------------


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


def save_checkpoint(directory: str | Path, epoch: int, state: TrainState, meta: Mapping[str, Any]) -> None:
    """Save ``state`` (orbax ``StandardSave``) and JSON ``meta`` as checkpoint number ``epoch``."""
    import orbax.checkpoint as ocp

    with _manager(Path(directory)) as mngr:
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


def _restore_meta(directory: Path, step: int) -> dict:
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


def save_params(path: str | Path, params: Any, *, overwrite: bool = False) -> None:
    """Write a parameter pytree with orbax (``StandardCheckpointer``) into the folder ``path``.

    The folder is written beside ``path`` first and renamed into place, so ``path`` never holds a
    half-written pytree.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is false.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; pass overwrite=True or choose another folder")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp, params)
        ckpt.wait_until_finished()
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_params(path: str | Path, like: Any) -> Any:
    """Read parameters written by :func:`save_params`, shaped like the pytree ``like``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the stored arrays do not match ``like``'s structure, shapes or dtypes.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    with ocp.StandardCheckpointer() as ckpt:
        stored = ckpt.metadata(path)
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    got = {
        jax.tree_util.keystr(p): (tuple(m.shape), np.dtype(m.dtype))
        for p, m in jax.tree_util.tree_leaves_with_path(stored)
    }
    want = {
        jax.tree_util.keystr(p): (tuple(np.shape(a)), np.dtype(a.dtype))
        for p, a in jax.tree_util.tree_leaves_with_path(like)
    }
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        first = diff[0]
        raise ValueError(
            f"the parameters at {path} do not match the expected model: {first} is stored as "
            f"{got.get(first, 'missing')} but expected {want.get(first, 'absent')} ({len(diff)} entries "
            "differ); they were saved for another model or with other settings"
        )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(path, abstract)
    return params


# --- fit ------------------------------------------------------------------------------------------


def _partial_dir(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.with_name(checkpoint_dir.name + ".partial")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst`` (the old ``dst`` is removed only after ``src`` is in place)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr.item()
    return arr.tolist()


def _new_history() -> dict[str, list]:
    return {"loss": [], "epoch_seconds": [], "eval": []}


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
    for bit (same keys, same batches). The fingerprint is compared before any array is read. A
    non-finite epoch loss stops the run with a ``ValueError``; the previous ``checkpoint_dir`` is
    left as it was.

    Args:
        key: the run key.
        state: the initial state (also the structure template for restoring).
        data: the training data (array or pytree), passed to every epoch.
        epoch_fn: ``jax.jit(make_epoch_fn(...))`` or :func:`make_stepped_epoch_fn`.
        epochs: total number of epochs (counting restored ones).
        checkpoint_dir: where to keep checkpoints, or ``None``.
        resume: continue from the newest checkpoint when there is one (else start over, saying so
            in the bar's label).
        fingerprint: JSON-able settings that must match on resume (model sizes, learning rate, ...).
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
        CheckpointError: with ``resume=True``, a checkpoint folder that cannot be read.
    """
    from tqdm.auto import tqdm

    if not isinstance(epochs, int | np.integer) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}; pass e.g. --epochs 30")
    if not isinstance(eval_every, int | np.integer) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    fingerprint = _jsonable(dict(fingerprint or {}))
    history = _new_history()
    start = 0
    partial: Path | None = None
    note = ""
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        partial = _partial_dir(checkpoint_dir)
        source = None
        if resume:
            for candidate in (partial, checkpoint_dir):
                if latest_checkpoint(candidate) is not None:
                    source = candidate
                    break
            if source is None:
                note = " (no checkpoint to resume: starting over)"
        if source is not None:
            meta = _restore_meta(source, latest_checkpoint(source))
            saved = meta.get("fingerprint", {})
            if saved != fingerprint:
                diff = {
                    k: (saved.get(k), fingerprint.get(k))
                    for k in sorted(set(saved) | set(fingerprint))
                    if saved.get(k) != fingerprint.get(k)
                }
                raise ValueError(
                    f"the checkpoint in {str(source)!r} was made with other settings "
                    f"(saved, now): {diff}; use the same settings or run without --resume"
                )
            if int(meta["epoch"]) > epochs:
                raise ValueError(
                    f"the checkpoint already has {meta['epoch']} epochs, more than epochs={epochs}; "
                    f"pass --epochs >= {meta['epoch']} or run without --resume"
                )
            state, meta = restore_checkpoint(source, state)
            start, history = int(meta["epoch"]), {k: list(v) for k, v in meta["history"].items()}
            if source != partial:
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(source, partial)
        else:
            shutil.rmtree(partial, ignore_errors=True)
    extra = {} if progress else {"disable": True}  # else tqdm's own default (and TQDM_DISABLE) applies
    bar = tqdm(range(start, epochs), initial=start, total=epochs, desc=desc + note, unit="epoch", **extra)
    try:
        for e in bar:
            t0 = time.perf_counter()
            state, metrics = epoch_fn(jax.random.fold_in(key, e), state, data)
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
            if evaluate is not None and ((e + 1) % eval_every == 0 or e + 1 == epochs):
                history["eval"].append({"epoch": e + 1, **_jsonable(dict(evaluate(e + 1, state)))})
            bar.set_postfix(loss=f"{means['loss']:.4g}")
            if partial is not None:
                meta = {"epoch": e + 1, "history": history, "fingerprint": fingerprint}
                save_checkpoint(partial, e + 1, state, meta)
    except BaseException as err:
        bar.close()
        if partial is not None and isinstance(err, TrainingDivergedError):
            shutil.rmtree(partial, ignore_errors=True)  # a diverged run is not worth resuming
        raise
    bar.close()
    if commit and checkpoint_dir is not None:
        commit_checkpoints(checkpoint_dir)
    return state, history


def commit_checkpoints(checkpoint_dir: str | Path) -> bool:
    """Move a run finished with ``fit(..., commit=False)`` from ``<checkpoint_dir>.partial`` onto
    ``checkpoint_dir`` (the old folder is removed only after the new one is in place).

    Returns:
        ``True`` when a partial folder was moved, ``False`` when there was none.
    """
    checkpoint_dir = Path(checkpoint_dir)
    partial = _partial_dir(checkpoint_dir)
    if not partial.exists():
        return False
    _replace_dir(partial, checkpoint_dir)
    return True
