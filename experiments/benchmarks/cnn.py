"""Benchmark section "cnn": one training step of the seed CNN (batch 128, forward + backward + Adam).

Rows, all measured in this process on the same random batch (28x28x1 images in [0, 1], labels 0-9):

* ``cnn_jax``: the training step ``experiments.cnn`` runs — ``dlx_jax.training.make_train_step``
  on ``dlx_jax.cnn.train_loss`` with the library defaults (``conv_impl="im2col"``: static slices +
  concatenate + one matmul; pooling by reshape + running first-maximum), ``optax.adam(1e-3)``,
  jitted on its own with the train state donated.
* ``cnn_jax_auto``: im2col for conv1 (patch length 9), XLA's convolution for conv2 — the fastest
  single step, but ~15x slower inside a ``lax.scan`` epoch on XLA:CPU, hence not the default;
  ``cnn_jax_lax``: XLA's convolution in both layers (reshape pooling); ``cnn_jax_stock``: XLA's
  convolution and ``lax.reduce_window`` pooling — the plain formulation.
* ``cnn_jax_scan`` / ``cnn_jax_auto_scan`` (not with ``--quick``): seconds per step of the epoch
  ``experiments.cnn`` trains with, ``jax.jit(training.make_epoch_fn(step, batch_size=128),
  donate_argnums=1)`` (one ``lax.scan``; shuffled batches gathered inside it, as in
  ``training.fit``) over 8 resp. 4 batches, with im2col resp. ``"auto"`` convolutions — the proof
  that ``"auto"`` is slow inside a loop (``ratio_cnn_auto_scan_over_scan``).
* ``cnn_numpy``: ``reference_numpy`` (im2col/col2im, written for clarity) ``loss_and_grads`` + ``Adam``.
* ``cnn_torch``: an equivalent PyTorch CPU model (``torch.nn.Conv2d`` NCHW, ``torch.optim.Adam``) with
  ``torch.set_num_threads(os.cpu_count())``, and ``cnn_torch_1thread`` with one thread (OpenMP
  threads that spin-wait suffer badly when other processes share the cores, one thread does not);
  skipped with a note when torch is not importable.

Every row goes through :func:`time_call` (first call — compilation for JAX — apart, then the
median of the steady-state calls), one row after the other. The JAX rows run first, then the
peers, so the libraries' thread pools do not interfere. Ratios: ``ratio_cnn_jax_over_torch``
(goal <= 0.7), ``ratio_cnn_jax_over_torch_1thread``, ``ratio_cnn_numpy_over_jax``,
``ratio_cnn_stock_over_jax``, ``ratio_cnn_lax_over_jax``, ``ratio_cnn_auto_over_jax``,
``ratio_cnn_jax_stock_over_torch``. ``--quick`` uses few repeats.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import cnn, training
from experiments.benchmarks._timing import Timing, ratio, time_call

NAME = "cnn"
BATCH = 128
JAX_VARIANTS = {  # row name -> (conv_impl, pool_impl)
    "cnn_jax": ("im2col", "reshape"),
    "cnn_jax_auto": ("auto", "reshape"),
    "cnn_jax_lax": ("lax", "reshape"),
    "cnn_jax_stock": ("lax", "reduce_window"),
}


def _train_step(conv_impl: str, pool_impl: str = "reshape") -> tuple[Callable, optax.GradientTransformation]:
    """The training step of ``experiments.cnn`` (other convolution/pooling formulations on request)."""
    optimizer = optax.adam(1e-3)
    loss = functools.partial(cnn.train_loss, conv_impl=conv_impl, pool_impl=pool_impl)
    return training.make_train_step(loss, optimizer), optimizer


def _jax_step(conv_impl: str, pool_impl: str, x, y, seed: int) -> Callable[[], Any]:
    step, optimizer = _train_step(conv_impl, pool_impl)
    step_jit = jax.jit(step, donate_argnums=1)
    state = [training.init_state(cnn.init_params(jax.random.key(seed)), optimizer)]
    key = jax.random.key(seed + 1)
    batch = (jnp.asarray(x), jnp.asarray(y))

    def run():
        state[0], metrics = step_jit(key, state[0], batch)  # donated: feed back
        return metrics["loss"]

    return run


def _jax_epoch(conv_impl: str, x, y, steps: int, seed: int) -> Callable[[], Any]:
    """The compiled ``lax.scan`` epoch of ``experiments.cnn`` over ``steps`` batches of ``len(y)``."""
    step, optimizer = _train_step(conv_impl)
    epoch_jit = jax.jit(training.make_epoch_fn(step, batch_size=len(y)), donate_argnums=1)
    state = [training.init_state(cnn.init_params(jax.random.key(seed)), optimizer)]
    data = (jnp.asarray(np.concatenate([x] * steps)), jnp.asarray(np.concatenate([y] * steps)))
    key = jax.random.key(seed + 1)

    def run():
        state[0], metrics = epoch_jit(key, state[0], data)
        return metrics["loss"]

    return run


def _numpy_step(x, y, seed: int) -> Callable[[], Any] | str:
    try:
        from reference_numpy import cnn as ref_cnn
        from reference_numpy.adam import Adam
    except ImportError as err:  # pragma: no cover - reference_numpy is part of the project
        return f"reference_numpy is not importable: {err}"
    rng = np.random.default_rng(seed)
    optimizer = Adam(lr=1e-3)
    params = ref_cnn.init_params(rng)
    state = [params, optimizer.init(params)]

    def run():
        value, grads, _ = ref_cnn.loss_and_grads(state[0], x, y, rng=rng)
        state[0], state[1] = optimizer.update(grads, state[1], state[0])
        return value

    return run


def _torch_step(x, y, seed: int) -> tuple[Callable[[], Any] | str, dict]:
    try:
        import torch
    except ImportError:
        return "torch is not importable; install torch (CPU) to time the PyTorch peer", {}
    torch.manual_seed(seed)
    threads = os.cpu_count() or 1

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 32, 3)
            self.conv2 = torch.nn.Conv2d(32, 64, 3)
            self.drop = torch.nn.Dropout(0.5)
            self.dense = torch.nn.Linear(1600, 10)

        def forward(self, v):
            v = torch.nn.functional.max_pool2d(torch.relu(self.conv1(v)), 2)
            v = torch.nn.functional.max_pool2d(torch.relu(self.conv2(v)), 2)
            return self.dense(self.drop(torch.flatten(v, 1)))

    net = Net().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order="C"))
    yt = torch.from_numpy(y.astype(np.int64))

    def run():
        opt.zero_grad(set_to_none=True)
        value = torch.nn.functional.cross_entropy(net(xt), yt)
        value.backward()
        opt.step()
        return value.item()

    info = {
        "torch_version": torch.__version__,
        "torch_num_threads": threads,
        "cnn_torch_params": int(sum(p.numel() for p in net.parameters())),
    }
    return run, info


def run(config: Any) -> dict:
    """Time the rows above; returns flat metrics (``*_median_s``, ``*_compile_s``, ``ratio_*``)."""
    quick = bool(getattr(config, "quick", False))
    seed = int(getattr(config, "seed", 0))
    repeats = 3 if quick else max(20, 4 * int(getattr(config, "repeats", 5)))
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)

    out: dict[str, Any] = {"cnn_batch": BATCH, "cnn_repeats": repeats}
    timings: dict[str, Timing] = {}
    for name, (conv_impl, pool_impl) in JAX_VARIANTS.items():
        timings[name] = time_call(_jax_step(conv_impl, pool_impl, x, y, seed), repeats=repeats)
    if not quick:  # the same step inside a compiled lax.scan epoch, per step (slow for "auto")
        for name, impl, steps, reps in (
            ("cnn_jax_scan", "im2col", 8, 5),
            ("cnn_jax_auto_scan", "auto", 4, 2),
        ):
            t = time_call(_jax_epoch(impl, x, y, steps, seed), repeats=reps)
            timings[name] = Timing(t.compile_s, t.median_s / steps, tuple(v / steps for v in t.times))
    torch_fn, info = _torch_step(x, y, seed)
    out.update(info)
    if isinstance(torch_fn, str):
        out["cnn_torch_skipped"] = torch_fn
    else:
        import torch

        before = torch.get_num_threads()
        try:
            for name, threads in (("cnn_torch", info["torch_num_threads"]), ("cnn_torch_1thread", 1)):
                torch.set_num_threads(threads)
                timings[name] = time_call(torch_fn, repeats=repeats)
        finally:
            torch.set_num_threads(before)
    numpy_fn = _numpy_step(x, y, seed)  # slow: fewer calls
    if isinstance(numpy_fn, str):
        out["cnn_numpy_skipped"] = numpy_fn
    else:
        timings["cnn_numpy"] = time_call(numpy_fn, repeats=2 if quick else 5)
    for name, t in timings.items():
        out.update(t.metrics(name, compile=name.startswith("cnn_jax")))
    jax_t = timings["cnn_jax"]
    for name in ("stock", "lax", "auto"):
        out[f"ratio_cnn_{name}_over_jax"] = ratio(timings[f"cnn_jax_{name}"], jax_t)
    if "cnn_jax_scan" in timings:
        out["ratio_cnn_auto_scan_over_scan"] = ratio(timings["cnn_jax_auto_scan"], timings["cnn_jax_scan"])
    if "cnn_numpy" in timings:
        out["ratio_cnn_numpy_over_jax"] = ratio(timings["cnn_numpy"], jax_t)
    if "cnn_torch" in timings:
        out["ratio_cnn_jax_over_torch"] = ratio(jax_t, timings["cnn_torch"])
        out["ratio_cnn_jax_over_torch_1thread"] = ratio(jax_t, timings["cnn_torch_1thread"])
        out["ratio_cnn_jax_stock_over_torch"] = ratio(timings["cnn_jax_stock"], timings["cnn_torch"])
        # Training runs the step inside a compiled lax.scan epoch: that is the step the goal is about.
        goal_key = "ratio_cnn_jax_over_torch"
        if "cnn_jax_scan" in timings:
            goal_key = "ratio_cnn_jax_scan_over_torch"
            out[goal_key] = ratio(timings["cnn_jax_scan"], timings["cnn_torch"])
        verdict = "met" if out[goal_key] <= 0.7 else "not met"
        out["cnn_jax_torch_goal"] = f"{verdict} (goal <= 0.7, {goal_key})"
    return out
