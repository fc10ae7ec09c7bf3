"""The one training loop: train state, optimizer step, compiled epochs, EMA, evaluation, checkpoints.

Every model in the project trains through this package. The pieces compose as

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

**BatchNorm statistics for the EMA weights.** The running statistics in ``state.model_state`` were
gathered under the raw weights; before evaluating or sampling ``state.ema_params`` re-estimate them
with :func:`recalibrate_batch_stats` (a few train-mode forward passes with the EMA weights, built
with :func:`make_stats_fn`).

:func:`fit` is the one impure function here: it writes orbax checkpoints, shows one tqdm bar and
times epochs. Checkpoints are never half-good: a run trains into ``<checkpoint_dir>.partial`` and
replaces ``checkpoint_dir`` only when it finishes, so a failed or diverged run leaves an earlier good
run's checkpoints untouched while an interrupted run (an error, Ctrl-C) can be resumed from its
partial folder. Parameter files (:func:`save_params`, :func:`load_params`) live in
:mod:`dlx_jax.params_io`, which model modules use without importing the loop; they are re-exported
here.

**Several devices, several processes.** The same loop trains data-parallel on a device mesh:

.. code-block:: python

    mesh = data_mesh()                                   # 1-D, axis "data", all devices
    state, data, key = replicate((state, data, key), mesh)
    epoch = jax.jit(make_epoch_fn(step, batch_size=128, mesh=mesh))   # batches sharded, state replicated
    state, history = fit(key, state, data, epoch_fn=epoch, epochs=30)

(see :mod:`dlx_jax.training._mesh`: BatchNorm statistics and gradients are over the global batch;
:func:`initialize_distributed` joins a multi-process run, where only process 0 writes checkpoint
folders' bookkeeping and every process computes the same numbers).

Modules: ``_state`` (train state, step, EMA, BatchNorm recalibration), ``_epochs`` (scanned and
stepped epochs), ``_checkpoints`` (orbax checkpoints, the partial folder and its commit), ``_fit``
(:func:`fit` and its resume), ``_mesh`` (the data mesh, replicated and sharded arrays, processes).
"""

from dlx_jax.params_io import load_params, save_params
from dlx_jax.training._checkpoints import (
    CheckpointError,
    commit_checkpoints,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from dlx_jax.training._epochs import EpochFn as EpochFn  # the signatures' type aliases, as before
from dlx_jax.training._epochs import make_epoch_fn, make_stepped_epoch_fn
from dlx_jax.training._fit import EvalFn as EvalFn
from dlx_jax.training._fit import TrainingDivergedError, fit
from dlx_jax.training._mesh import (
    DATA_AXIS,
    batch_sharding,
    check_divides,
    data_mesh,
    gather,
    initialize_distributed,
    process_rows,
    replicate,
    replicated,
    shard_batch,
)
from dlx_jax.training._state import Metrics as Metrics
from dlx_jax.training._state import StatsFn as StatsFn
from dlx_jax.training._state import StepFn as StepFn
from dlx_jax.training._state import (
    TrainState,
    ema_update,
    init_state,
    make_stats_fn,
    make_train_step,
    recalibrate_batch_stats,
)

__all__ = [
    "DATA_AXIS",
    "CheckpointError",
    "TrainState",
    "TrainingDivergedError",
    "batch_sharding",
    "check_divides",
    "commit_checkpoints",
    "data_mesh",
    "ema_update",
    "fit",
    "gather",
    "init_state",
    "initialize_distributed",
    "latest_checkpoint",
    "load_params",
    "make_epoch_fn",
    "make_stats_fn",
    "make_stepped_epoch_fn",
    "make_train_step",
    "process_rows",
    "recalibrate_batch_stats",
    "replicate",
    "replicated",
    "restore_checkpoint",
    "save_checkpoint",
    "save_params",
    "shard_batch",
]
