"""dlx_jax.training: the scanned epoch equals a Python loop; checkpoints; resume reproduces a run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx_jax import training
from dlx_jax.data import batch_indices
from tests.helpers import ATOL_JIT_F32, RTOL_JIT_F32


def loss_fn(key, params, batch):
    """A tiny stochastic least-squares loss (uses its key, like the VAE losses)."""
    x, y = batch
    noise = 0.01 * jax.random.normal(key, y.shape)
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y - noise))


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(50, 3)), jnp.float32)
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    optimizer = optax.adam(0.05)
    state = training.TrainState(params, optimizer.init(params))
    epoch = jax.jit(training.make_epoch_fn(training.make_train_step(loss_fn, optimizer), batch_size=8))
    return (x, y), state, optimizer, epoch


def test_scanned_epoch_equals_a_python_loop(problem, key):
    data, state, optimizer, epoch = problem
    new, losses = epoch(key, state, data)
    key_perm, key_steps = jax.random.split(key)
    batches = batch_indices(key_perm, 50, batch_size=8)
    assert batches.shape == (6, 8) and len(np.unique(batches)) == 48  # each example at most once
    params, opt_state = state
    for i, idx in enumerate(batches):
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(
            jax.random.fold_in(key_steps, i), params, (data[0][idx], data[1][idx])
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(losses[i], loss, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_jit_equals_eager(problem, key):
    data, state, optimizer, epoch = problem
    eager = training.make_epoch_fn(training.make_train_step(loss_fn, optimizer), batch_size=8)
    np.testing.assert_allclose(epoch(key, state, data)[1], eager(key, state, data)[1], rtol=RTOL_JIT_F32)


def test_fit_learns_and_resume_reproduces_the_uninterrupted_run(problem, key, tmp_path):
    data, state, _, epoch = problem
    full, history = training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)
    assert history[-1] < history[0]
    ckpt = tmp_path / "ckpt"
    fp = {"lr": 0.05}
    training.fit(
        key, state, data, epoch_fn=epoch, epochs=1, checkpoint_dir=ckpt, fingerprint=fp, progress=False
    )
    assert training.latest_checkpoint(ckpt) == 1
    resumed, history2 = training.fit(
        key,
        state,
        data,
        epoch_fn=epoch,
        epochs=3,
        checkpoint_dir=ckpt,
        resume=True,
        fingerprint=fp,
        progress=False,
    )
    assert history2 == history  # exact: same keys, same batches, same compiled program
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(full), strict=True):
        np.testing.assert_array_equal(a, b)
    assert training.latest_checkpoint(ckpt) == 3
    # a checkpoint round trip restores the same structure and values
    restored, meta = training.restore_checkpoint(ckpt, state)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    assert meta["epoch"] == 3 and meta["history"] == history
    # settings that differ, or fewer epochs than saved, are refused
    with pytest.raises(ValueError, match="other settings"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=4, checkpoint_dir=ckpt, resume=True,
                     fingerprint={"lr": 0.1}, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="already has 3 epochs"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt, resume=True,
                     fingerprint=fp, progress=False)  # fmt: skip
    # without resume the old checkpoints are replaced
    training.fit(
        key, state, data, epoch_fn=epoch, epochs=1, checkpoint_dir=ckpt, fingerprint=fp, progress=False
    )
    assert training.latest_checkpoint(ckpt) == 1


def test_bad_arguments_raise(problem, key):
    data, state, optimizer, epoch = problem
    step = training.make_train_step(loss_fn, optimizer)
    with pytest.raises(ValueError, match="batch_size=64 exceeds n=50"):
        training.make_epoch_fn(step, batch_size=64)(key, state, data)
    with pytest.raises(ValueError, match="leading example axis"):
        training.make_epoch_fn(step, batch_size=8)(key, state, (data[0], data[1][:10]))
    with pytest.raises(ValueError, match="epochs must be"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=1, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.restore_checkpoint("/nonexistent/ckpt", state)
