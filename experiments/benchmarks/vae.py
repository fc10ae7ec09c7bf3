"""VAE section: one book-config VAE training epoch, dlx_jax (scan-compiled) vs the book's PyTorch code.

The book's configuration: 784 → 200 → 20 VAE, book loss, Adam 3e-4, batch 32, one epoch of the full
MNIST training set = 1,875 steps of 32 images. No full MNIST ships here, so the 5,000 embedded
``mnist-5k`` images (train + test) are tiled 12× to 60,000 (the timing depends only on the shapes).

* JAX: the epoch step 7 trains with (``experiments._generative.compiled_epoch``, what
  ``training.fit`` calls): ``jax.jit(make_epoch_fn(make_train_step(vae.book_loss,
  optax.adam(3e-4)), batch_size=32))``, one ``lax.scan`` over the 1,875 steps (batches gathered
  inside the scan, per-step keys by ``fold_in``). The first call (tracing + compilation + one
  epoch) is reported separately.
* PyTorch (when importable): :mod:`experiments._torch_vae`, the book's model and loop (``get_loss``,
  ``zero_grad``, ``backward``, ``Adam.step``, ``loss.item()``), indexing one in-memory tensor with the
  same batch indices and initial weights; timed with ``torch.set_num_threads(os.cpu_count())``
  (``vae_epoch_torch_*``) and with one thread (``vae_epoch_torch_1thread_*``).

Both sides are timed with :func:`experiments.benchmarks._timing.time_call` (median of
``config.repeats`` epochs after a warm-up epoch; ``--quick``: 100 steps, 1 repeat).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import training, vae
from dlx_jax.data import batch_indices, load_dataset, to_float_images
from experiments._generative import compiled_epoch
from experiments.benchmarks._timing import time_call

NAME = "vae"
BOOK_BATCHES, BATCH_SIZE, LR = 1875, 32, 3e-4
QUICK_BATCHES = 100


def _images(num: int) -> np.ndarray:
    ds = load_dataset("mnist-5k")
    x = np.concatenate([ds.x_train, ds.x_test])
    x = vae.validate_images(to_float_images(x))
    reps = -(-num // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:num])


def run(config: Any) -> dict:
    batches = QUICK_BATCHES if config.quick else BOOK_BATCHES
    repeats = 1 if config.quick else config.repeats
    n = batches * BATCH_SIZE
    x = _images(n)
    key_init, key_epoch = jax.random.split(jax.random.key(config.seed))
    params = jax.jit(vae.init_params)(key_init)
    optimizer, epoch = compiled_epoch(vae, LR, BATCH_SIZE)
    state = training.init_state(params, optimizer)
    xj = jnp.asarray(x)
    jax_t = time_call(epoch, key_epoch, state, xj, repeats=repeats)
    jax_loss = float(jnp.mean(jax_t.result[1]["loss"]))

    metrics: dict[str, Any] = {
        "vae_epoch_steps": batches,
        "vae_epoch_images": n,
        "vae_data": f"mnist-5k (5,000 images) tiled to {n:,}; batch {BATCH_SIZE}, Adam {LR}",
        **jax_t.metrics("vae_epoch_jax"),
        "vae_epoch_jax_mean_loss": jax_loss,
    }
    if importlib.util.find_spec("torch") is None:
        metrics["vae_torch_skipped"] = "PyTorch is not installed"
        return metrics

    import torch

    from experiments import _torch_vae

    key_perm, _ = jax.random.split(key_epoch)
    idx = np.asarray(batch_indices(key_perm, n, batch_size=BATCH_SIZE))
    xt = torch.from_numpy(x)
    threads = torch.get_num_threads()
    # the contract row: all cores; a 1-thread row too, since on a shared (oversubscribed) machine
    # PyTorch's OpenMP regions stall when a core is taken and the all-cores number can blow up
    for suffix, num_threads in (("", os.cpu_count() or 1), ("_1thread", 1)):
        torch.set_num_threads(num_threads)
        torch.manual_seed(config.seed)
        model = _torch_vae.from_jax_params(params)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        torch_t = time_call(_torch_vae.train_epoch, model, opt, xt, idx, repeats=repeats)
        metrics.update(torch_t.metrics(f"vae_epoch_torch{suffix}"))
        metrics[f"vae_torch{suffix}_threads"] = num_threads
        metrics[f"ratio_vae_epoch_torch{suffix}_over_jax"] = torch_t.median_s / jax_t.median_s
    torch.set_num_threads(threads)
    metrics["vae_torch_version"] = torch.__version__
    return metrics
