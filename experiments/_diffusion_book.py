"""``--preset book`` of steps 9 and 10: the book's own settings in one switch, so a reader can put the
project's run beside the book's.

The project's default pipeline differs from the book's in choices that help a small CPU run (weights
averaged with EMA 0.995, BatchNorm statistics re-estimated for them, DDIM-50 sample grids, whole
batches only). ``--preset book`` sets the following; a flag that asks for a value other than both the
book's and the project's default is an error naming it (a flag left at its default is overridden):

* width 64 (the book's UNet, 2.17 M parameters);
* the book's step count *with its partial last batch*: an epoch is ``ceil(n / 128)`` steps, the last
  one on the ``n mod 128`` examples left (PyTorch's ``DataLoader`` default), so full MNIST is 469
  steps per epoch and the book's 10 epochs are 4,690 steps; other data train
  ``ceil(4690 / steps per epoch)`` epochs (mnist-5k: 32 steps per epoch, 147 epochs, 4,704 steps);
* no weight averaging (``--ema-decay 0``: the sampled weights are the trained ones), no BatchNorm
  re-estimation and no clipping of x̂0;
* DDPM-1000 sample grids of 20 images, step 10's with 20 uniformly random labels (the book's
  ``torch.randint(0, 10, (20,))``, drawn here from the run's key), guidance γ = 3 at every ``t``
  (``--guidance-interval all``).

Samples are still judged like the project's own pipeline (cfg_accuracy on DDIM-50 samples, FIDs).
:data:`BOOK_LOSSES` are the book's printed per-epoch losses, drawn beside the run's loss curve.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BOOK_TRAIN_STEPS = 4690
PRESETS = ("project", "book")
#: The book's printed mean losses, ``(epoch, loss)`` (full MNIST, 469 steps per epoch); step 10's
#: conditional run is quoted at its first and last epoch.
BOOK_LOSSES = {
    "step09_diffusion": list(
        enumerate(
            [0.04625, 0.02627, 0.02361, 0.02145, 0.02062, 0.01951, 0.01923, 0.01854, 0.01863, 0.01811], 1
        )
    ),
    "step10_guidance": [(1, 0.04907), (10, 0.01775)],
}
BOOK_STEPS_PER_EPOCH = 469
PRESET_HELP = (
    "project: the project's pipeline (EMA, BatchNorm re-estimation, DDIM grids); book: the book's own "
    "settings (width 64, 4,690 steps with the last partial batch of each epoch kept, no EMA, no BatchNorm "
    "re-estimation, DDPM-1000 grids, 20 random labels, γ = 3 at every t; a flag asking for another of "
    "these is an error); see experiments._diffusion_book"
)


def apply(config: Any) -> Any:
    """``config`` with the book's settings when ``config.preset == "book"`` (else unchanged)."""
    if config.preset != "book":
        return config
    book = {
        "features": 64,
        "ema_decay": 0.0,
        "ema_warmup": 0,
        "bn_recalibration": 0,
        "train_steps": BOOK_TRAIN_STEPS,
        "clip_x0": False,
    }
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    if "gamma" in defaults:
        book["gamma"] = 3.0
        book["guidance_interval"] = "all"
    clashes = [name for name, value in book.items() if getattr(config, name) not in (defaults[name], value)]
    if clashes:
        flags = ", ".join(f"--{name.replace('_', '-')} {getattr(config, name)}" for name in clashes)
        fixed = ", ".join(f"{name} = {book[name]}" for name in clashes)
        raise ValueError(
            f"--preset book sets the book's {fixed}, but the flags ask for {flags}; drop those flags to run "
            f"the book's settings, or leave --preset at project to choose them yourself"
        )
    return dataclasses.replace(config, **book)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps of one epoch that keeps the last partial batch: ``ceil(n / batch_size)``."""
    return math.ceil(n / batch_size)


def epochs_for(train_steps: int, n: int, batch_size: int) -> int:
    """Whole epochs (last partial batch kept) nearest ``train_steps`` steps (at least one)."""
    per = steps_per_epoch(n, batch_size)
    return max(1, round(train_steps / per))


def make_epoch_fn(step_fn: Any, *, batch_size: int) -> Any:
    """One epoch that keeps the last partial batch, run from Python one jitted step per batch.

    The keys follow :func:`dlx_jax.training.make_stepped_epoch_fn`: the epoch key splits into
    ``(key_perm, key_steps)``, the order is ``jax.random.permutation(key_perm, n)``, step ``i`` gets
    ``fold_in(key_steps, i)``; the batches are consecutive slices of the order, the last one shorter
    (one extra compilation for its shape). The state is donated to each step.
    """
    step_jit = jax.jit(step_fn, donate_argnums=(1,))

    def epoch(key: Any, state: Any, data: Any) -> tuple[Any, dict]:
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        key_perm, key_steps = jax.random.split(key)
        order = np.asarray(jax.random.permutation(key_perm, n))
        per_step = []
        for i, start in enumerate(range(0, n, batch_size)):
            idx = jnp.asarray(order[start : start + batch_size])
            batch = jax.tree_util.tree_map(lambda a, idx=idx: jnp.take(a, idx, axis=0), data)
            state, metrics = step_jit(jax.random.fold_in(key_steps, i), state, batch)
            per_step.append(metrics)
        return state, jax.tree_util.tree_map(lambda *v: jnp.stack(v), *per_step)

    return epoch


def random_labels(key: Any, n: int = 20) -> np.ndarray:
    """The book's ``torch.randint(0, 10, (n,))``: ``n`` uniformly random labels in 0..9 (int32)."""
    return np.asarray(jax.random.randint(key, (n,), 0, 10), np.int32)


def loss_metrics(step: str, history: dict[str, list], n: int, batch_size: int) -> dict[str, Any]:
    """The run's per-epoch losses beside the book's, on one axis of optimizer steps (an epoch's mean
    loss placed at its middle step)."""
    per = steps_per_epoch(n, batch_size)
    return {
        "book_epoch_losses": [loss for _, loss in BOOK_LOSSES[step]],
        "book_epoch_loss_steps": [BOOK_STEPS_PER_EPOCH * (e - 0.5) for e, _ in BOOK_LOSSES[step]],
        "loss_steps": [per * (k + 0.5) for k in range(len(history["loss"]))],
    }


def loss_figure(out: Any, step: str, history: dict[str, list], n: int, batch_size: int) -> None:
    """``loss_vs_book.png``: the run's mean loss per epoch against optimizer steps, with the book's."""
    from experiments._plots import plt

    m = loss_metrics(step, history, n, batch_size)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(m["loss_steps"], history["loss"], marker="o", ms=2, label=f"this run ({n:,} digits per epoch)")
    ax.plot(m["book_epoch_loss_steps"], m["book_epoch_losses"], "s--", color="gray",
            label="the book (60,000 digits, 469 steps per epoch)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("optimizer steps (an epoch's mean loss at its middle step)")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_title(f"{step}: loss curve beside the book's printed per-epoch losses")
    ax.legend()
    out.figure(fig, "loss_vs_book")


def labelled_grid(out: Any, x: np.ndarray, labels: np.ndarray, title: str, name: str) -> None:
    """2 × 10 samples, each with its conditioning label under it (the book's ``show_images``)."""
    from experiments._plots import plt

    fig, axes = plt.subplots(2, 10, figsize=(10, 2.6))
    for i, ax in enumerate(axes.flat):
        ax.imshow(np.clip(x[i, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(str(int(labels[i])))
    fig.suptitle(title, fontsize=9)
    out.figure(fig, name)
