"""Checks that need several JAX devices or processes, run in a fresh Python by tests/test_training_mesh.py.

JAX fixes its device count when it starts, so the tests start this script in a subprocess with
``JAX_NUM_CPU_DEVICES`` set (or several copies of it joined by ``jax.distributed``) and read one JSON
object from its last line of output. Every check compares a sharded computation with the same
computation on one device and reports numbers; the tests hold the assertions and tolerances.

Usage: ``python tests/mesh_worker.py CHECK[,CHECK...] [OUT]`` with CHECK among ``train_steps``, ``em``,
``sampler``, ``resume`` (needs OUT), ``errors``, ``two_process`` (needs OUT; run under
``DLX_COORDINATOR``, ``DLX_NUM_PROCESSES``, ``DLX_PROCESS_ID``).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import cnn, diffusion, mixture, training, unet, vae
from dlx_jax.data import load_dataset, to_float_images

# a train step in these checks uses SGD: Adam's first update is lr * sign(gradient), which turns a
# rounding-level difference of a near-zero gradient into a difference of 2 lr
OPTIMIZER = optax.sgd(0.1)


def _max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


def _max_abs(a) -> float:
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(a))


def _digits(n: int, *, sort: bool = False):
    """``n`` training digits as float images and labels; ``sort`` orders them by label, so every
    device's shard of the batch holds other digits (local and global statistics then differ)."""
    ds = load_dataset("mnist-5k")
    x, y = to_float_images(ds.x_train[:n]), np.asarray(ds.y_train[:n], np.int32)
    if sort:
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
    return x, y


def _one_step(step, state, batch, mesh):
    """One jitted train step on one device (``mesh=None``) or data parallel on ``mesh``;
    ``(state, metrics, compiled HLO text)``."""
    key = jax.random.key(7)
    if mesh is not None:
        state, key = training.replicate((state, key), mesh)
        batch = training.shard_batch(batch, mesh)
    compiled = jax.jit(step).lower(key, state, batch).compile()
    new_state, metrics = compiled(key, state, batch)
    return new_state, metrics, compiled.as_text()


def _compare_steps(name, step, state, batch, mesh) -> tuple[dict, training.TrainState]:
    one, m1, _ = _one_step(step, state, batch, None)
    many, mn, hlo = _one_step(step, state, batch, mesh)
    return one, {
        f"{name}_param_diff": _max_diff(one.params, many.params),
        f"{name}_update_scale": _max_diff(one.params, state.params),
        f"{name}_loss_diff": abs(float(m1["loss"]) - float(mn["loss"])),
        f"{name}_state_diff": _max_diff(one.model_state, many.model_state) if one.model_state else 0.0,
        f"{name}_all_reduce": hlo.count("all-reduce"),
        f"{name}_params_replicated": all(
            leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(many.params)
        ),
    }


def _unet_step():
    """The book's UNet (width 8, BatchNorm, labels) on the noise-prediction loss, stateful step."""
    model = unet.UNet(features=8, num_labels=10)
    params, batch_stats = unet.init(jax.random.key(0), model=model)
    schedule = diffusion.linear_schedule(1000, 1e-4, 0.02)
    loss_fn = diffusion.make_loss(unet.make_apply_fn(model), schedule, conditional=True, label_drop=0.1)
    step = training.make_train_step(loss_fn, OPTIMIZER, stateful=True)
    return step, training.init_state(params, OPTIMIZER, model_state=batch_stats)


def check_train_steps() -> dict:
    """CNN and VAE: one sharded train step on 4 devices against one device."""
    mesh = training.data_mesh(4)
    x, y = _digits(64, sort=True)
    out = {"devices": jax.device_count()}
    cnn_state = training.init_state(cnn.init_params(jax.random.key(0)), OPTIMIZER)
    cnn_step = training.make_train_step(cnn.train_loss, OPTIMIZER)
    out.update(_compare_steps("cnn", cnn_step, cnn_state, (x, y), mesh)[1])
    vae_params = vae.init_params(jax.random.key(0), input_dim=784, hidden_dim=200, latent_dim=20)
    vae_step = training.make_train_step(vae.book_loss, OPTIMIZER)
    vae_batch = x.reshape(len(x), -1)
    out.update(
        _compare_steps("vae", vae_step, training.init_state(vae_params, OPTIMIZER), vae_batch, mesh)[1]
    )
    return out


def check_unet_step() -> dict:
    """The UNet with BatchNorm: one sharded train step on 4 devices against one device, and what the
    statistics of one device's shard alone would have been."""
    mesh = training.data_mesh(4)
    x, y = _digits(32, sort=True)
    out = {}
    unet_step, unet_state = _unet_step()
    one, compared = _compare_steps("unet", unet_step, unet_state, (x[:32], y[:32]), mesh)
    out.update(compared)
    # what per-device ("local") BatchNorm statistics would have given: the first device's shard alone
    local, _, _ = _one_step(unet_step, unet_state, (x[:8], y[:8]), None)
    out["unet_local_stats_diff"] = _max_diff(one.model_state, local.model_state)
    return out


def _mixture_data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (6000, 2)), rng.normal(4, 0.5, (2000, 2))]).astype(np.float32)


def check_em() -> dict:
    """EM with the data sharded over 4 devices against one device."""
    x = _mixture_data()
    mesh = training.data_mesh(4)
    xs = jax.device_put(x, training.batch_sharding(mesh))
    init = mixture.init_params(jax.random.key(0), x, k=2)
    p1, i1 = mixture.fit(x, init, tol=0.0, max_iter=30)
    p4, i4 = mixture.fit(xs, init, tol=0.0, max_iter=30)
    hlo = jax.jit(lambda v: mixture.fit(v, init, tol=0.0, max_iter=3)).lower(xs).compile().as_text()
    return {
        "em_param_diff": _max_diff(p1, p4),
        "em_trace_diff": _max_diff(i1.log_likelihood_trace, i4.log_likelihood_trace),
        "em_iterations": [int(i1.n_iter), int(i4.n_iter)],
        "em_all_reduce": hlo.count("all-reduce"),
        "em_data_sharded": not xs.sharding.is_fully_replicated,
    }


def check_restarts() -> dict:
    """EM's vmapped restarts with the data sharded over 4 devices against one device."""
    x = _mixture_data()
    xs = jax.device_put(x, training.batch_sharding(training.data_mesh(4)))
    # every restart's fit (the best one is a tie between restarts that found the same mixture with
    # its components in another order, which rounding may break either way)
    _, r1 = mixture.fit_restarts(jax.random.key(1), x, k=2, n_init=4, tol=0.0, max_iter=20)
    _, r4 = mixture.fit_restarts(jax.random.key(1), xs, k=2, n_init=4, tol=0.0, max_iter=20)
    return {
        "restarts_param_diff": _max_diff(r1.params, r4.params),
        "restarts_loglik_diff": _max_diff(r1.final_log_likelihood, r4.final_log_likelihood),
    }


def check_sampler(kinds: tuple[str, ...] = ("ddim",)) -> dict:
    """DDIM (and DDPM) with the image batch sharded over 4 devices against one device (guided UNet)."""
    model = unet.UNet(features=8, num_labels=10)
    params, batch_stats = unet.init(jax.random.key(0), model=model)
    schedule = diffusion.linear_schedule(50, 1e-4, 0.02)
    labels = jnp.arange(8) % 10
    eps_fn = diffusion.guided(
        diffusion.make_eps_fn(unet.make_apply_fn(model), params, batch_stats), labels, 3.0
    )
    mesh = training.data_mesh(4)
    sharding = training.batch_sharding(mesh)
    out = {}
    samplers = {
        "ddim": functools.partial(diffusion.ddim_sample, num_steps=10, eta=0.5),
        "ddpm": diffusion.ddpm_sample,
    }
    for name in kinds:
        sampler = samplers[name]
        run = functools.partial(sampler, eps_fn=eps_fn, schedule=schedule, shape=(8, 28, 28, 1))
        one = jax.jit(lambda k, run=run: run(k))(jax.random.key(3))
        many_fn = jax.jit(lambda k, run=run: run(k, sharding=sharding))
        many = many_fn(jax.random.key(3))
        hlo = many_fn.lower(jax.random.key(3)).compile().as_text()
        out[f"{name}_diff"] = _max_diff(one, many)
        out[f"{name}_scale"] = _max_abs(one)
        out[f"{name}_sharded"] = many.sharding.spec == sharding.spec
        out[f"{name}_partitioned"] = (
            "all-reduce" in hlo or "all-gather" in hlo or many.sharding.num_devices == 4
        )
    return out


def check_resume(out_dir: str) -> dict:
    """``fit`` on 4 devices (stepped epochs: batches fed from the host) interrupted after epoch 1 and
    resumed, against the same 3 epochs uninterrupted: the histories and states, bit for bit."""
    mesh = training.data_mesh(4)
    x, y = _digits(256)
    optimizer = optax.adam(1e-3)
    step = training.make_train_step(cnn.train_loss, optimizer)
    epoch_fn = training.make_stepped_epoch_fn(step, batch_size=64, mesh=mesh)

    def start():
        state = training.init_state(cnn.init_params(jax.random.key(0)), optimizer)
        return training.replicate((state, jax.random.key(1)), mesh)

    state, key = start()
    straight, h_straight = training.fit(key, state, (x, y), epoch_fn=epoch_fn, epochs=3, progress=False)
    ckpt = Path(out_dir) / "checkpoints"
    state, key = start()
    training.fit(key, state, (x, y), epoch_fn=epoch_fn, epochs=1, checkpoint_dir=ckpt, progress=False)
    state, key = start()
    resumed, h_resumed = training.fit(
        key, state, (x, y), epoch_fn=epoch_fn, epochs=3, checkpoint_dir=ckpt, resume=True, progress=False
    )
    return {
        "resume_state_diff": _max_diff(straight, resumed),
        "resume_loss_straight": h_straight["loss"],
        "resume_loss_resumed": h_resumed["loss"],
        "resume_sharding": str(resumed.params["dense"]["w"].sharding.spec),
    }


def check_errors() -> dict:
    """The one-line errors of the mesh: a batch that does not divide, too many devices."""
    mesh = training.data_mesh(4)
    step = training.make_train_step(cnn.train_loss, OPTIMIZER)
    out = {}
    for name, call in (
        ("scan", lambda: training.make_epoch_fn(step, batch_size=30, mesh=mesh)),
        ("stepped", lambda: training.make_stepped_epoch_fn(step, batch_size=30, mesh=mesh)),
        ("shard_batch", lambda: training.shard_batch(np.zeros((6, 2)), mesh)),
        ("too_many", lambda: training.data_mesh(5)),
    ):
        try:
            call()
            out[name] = "no error"
        except ValueError as err:
            out[name] = f"ValueError: {err}"
    return out


def check_two_process(out_dir: str) -> dict:
    """One CNN train step and one EM step with each process feeding its own rows of the global batch."""
    joined = training.initialize_distributed(timeout_s=30)
    mesh = training.data_mesh()
    x, y = _digits(64, sort=True)
    rows = training.process_rows(len(x), mesh)
    state = training.init_state(cnn.init_params(jax.random.key(0)), OPTIMIZER)
    step = training.make_train_step(cnn.train_loss, OPTIMIZER)
    state, key = training.replicate((state, jax.random.key(7)), mesh)
    batch = training.shard_batch((x[rows], y[rows]), mesh, batch_size=len(x))
    new_state, metrics = jax.jit(step)(key, state, batch)
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 1, (600, 2)), rng.normal(4, 0.5, (200, 2))]).astype(np.float32)
    init = mixture.init_params(jax.random.key(0), data, k=2)
    em_rows = training.process_rows(len(data), mesh)
    xs = training.shard_batch(data[em_rows], mesh, batch_size=len(data))
    em = jax.jit(functools.partial(mixture.em_step, reg_covar=1e-6))(xs, training.replicate(init, mesh))
    result = {
        "joined": joined,
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "rows": [rows.start, rows.stop],
        "loss": float(metrics["loss"]),
        "params": jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), new_state.params),
        "em": jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), em._asdict()),
    }
    Path(out_dir, f"process{jax.process_index()}.json").write_text(json.dumps(result))
    return {"process": jax.process_index(), "loss": result["loss"]}


CHECKS = {
    "train_steps": check_train_steps,
    "unet_step": check_unet_step,
    "em": check_em,
    "restarts": check_restarts,
    "sampler": check_sampler,
    "ddpm": functools.partial(check_sampler, ("ddpm",)),
    "resume": check_resume,
    "errors": check_errors,
    "two_process": check_two_process,
}

if __name__ == "__main__":
    # CHECK[,CHECK...] [OUT]: several checks share one Python (JAX starts once)
    names, *args = sys.argv[1:]
    results: dict = {}
    for name in names.split(","):
        takes_out = name in ("resume", "two_process")
        results.update(CHECKS[name](*args) if takes_out else CHECKS[name]())
    print(json.dumps(results))
