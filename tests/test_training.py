"""dlx_jax.training: scanned and stepped epochs equal a Python loop; model state; EMA; BatchNorm
statistics re-estimated for the EMA weights; evaluation; checkpoints that are never half-good; resume
(also after Ctrl-C) reproduces a run bit for bit. Parameter files: tests/test_params_io.py."""

from __future__ import annotations

import hashlib
import shutil

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx_jax import training
from dlx_jax.data import batch_indices
from tests.helpers import ATOL_F32, ATOL_JIT_F32, RTOL_F32, RTOL_JIT_F32


def loss_fn(key, params, batch):
    """A tiny stochastic least-squares loss (uses its key, like the VAE losses)."""
    x, y = batch
    noise = 0.01 * jax.random.normal(key, y.shape)
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y - noise))


def bn_loss_fn(key, params, model_state, batch):
    """A toy model with BatchNorm-style state: the feature is standardized with batch statistics and
    the running mean/variance are updated with momentum 0.1, as ``flax.linen.BatchNorm`` does."""
    x, y = batch
    h = x @ params["w"]
    mean, var = jnp.mean(h), jnp.var(h)
    new_state = {
        "mean": 0.9 * model_state["mean"] + 0.1 * mean,
        "var": 0.9 * model_state["var"] + 0.1 * var,
    }
    pred = params["scale"] * (h - mean) / jnp.sqrt(var + 1e-5) + params["b"]
    noise = 0.01 * jax.random.normal(key, y.shape)
    loss = jnp.mean(jnp.square(pred - y - noise))
    return loss, (new_state, {"batch_mean": mean})


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(50, 3)), jnp.float32)
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
    return x, y


@pytest.fixture
def problem():
    optimizer = optax.adam(0.05)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    state = training.init_state(params, optimizer)
    epoch = jax.jit(training.make_epoch_fn(training.make_train_step(loss_fn, optimizer), batch_size=8))
    return _data(), state, optimizer, epoch


@pytest.fixture
def stateful():
    """The BatchNorm-style toy model with an EMA (decay 0.9, warm-up 3 updates)."""
    optimizer = optax.adam(0.05)
    params = {"w": jnp.full(3, 0.1), "scale": jnp.ones(()), "b": jnp.zeros(())}
    model_state = {"mean": jnp.zeros(()), "var": jnp.ones(())}
    state = training.init_state(params, optimizer, model_state=model_state, ema=True)
    step = training.make_train_step(bn_loss_fn, optimizer, stateful=True, ema_decay=0.9, ema_warmup=3)
    return _data(), state, step


def _leaves_equal(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _folder_digest(path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_scanned_epoch_equals_a_python_loop(problem, key):
    data, state, optimizer, epoch = problem
    new, metrics = epoch(key, state, data)
    losses = metrics["loss"]
    key_perm, key_steps = jax.random.split(key)
    batches = batch_indices(key_perm, 50, batch_size=8)
    assert batches.shape == (6, 8) and len(np.unique(batches)) == 48  # each example at most once
    params, opt_state = state.params, state.opt_state
    for i, idx in enumerate(batches):
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(
            jax.random.fold_in(key_steps, i), params, (data[0][idx], data[1][idx])
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(losses[i], loss, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    assert int(new.step) == 6


def test_jit_equals_eager(problem, key):
    data, state, optimizer, epoch = problem
    eager = training.make_epoch_fn(training.make_train_step(loss_fn, optimizer), batch_size=8)
    np.testing.assert_allclose(
        epoch(key, state, data)[1]["loss"], eager(key, state, data)[1]["loss"], rtol=RTOL_JIT_F32
    )


def test_stepped_epoch_equals_the_scanned_epoch(stateful, key):
    data, state, step = stateful
    scanned, m1 = jax.jit(training.make_epoch_fn(step, batch_size=8))(key, state, data)
    stepped, m2 = training.make_stepped_epoch_fn(step, batch_size=8, donate=False)(key, state, data)
    assert set(m1) == set(m2) == {"loss", "batch_mean"}
    leaves = jax.tree_util.tree_leaves
    pairs = zip(leaves((scanned, m1)), leaves((stepped, m2)), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_model_state_changes_and_is_checkpointed(stateful, key, tmp_path):
    data, state, step = stateful
    epoch = jax.jit(training.make_epoch_fn(step, batch_size=8))
    ckpt = tmp_path / "ckpt"
    new, history = training.fit(
        key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt, progress=False
    )
    assert float(new.model_state["mean"]) != 0.0 and float(new.model_state["var"]) != 1.0
    assert len(history["batch_mean"]) == 2 and len(history["epoch_seconds"]) == 2
    restored, meta = training.restore_checkpoint(ckpt, state)
    _leaves_equal(restored, new)
    assert int(restored.step) == 12 and meta["epoch"] == 2
    assert not (tmp_path / "ckpt.partial").exists()


def test_ema_equals_a_naive_numpy_ema_of_the_parameter_trajectory(stateful, key):
    data, state, step = stateful
    step = jax.jit(step)
    decay, warmup = 0.9, 3
    trajectory = []
    for i in range(8):
        idx = jnp.arange(8 * (i % 6), 8 * (i % 6) + 8)
        state, _ = step(jax.random.fold_in(key, i), state, (data[0][idx], data[1][idx]))
        trajectory.append({k: np.asarray(v, np.float64) for k, v in state.params.items()})
    ema = None
    for s, params in enumerate(trajectory, start=1):
        if s <= warmup:
            ema = dict(params)
        else:
            ema = {k: decay * ema[k] + (1 - decay) * params[k] for k in params}
    for k in ema:
        np.testing.assert_allclose(state.ema_params[k], ema[k], rtol=RTOL_F32)
    assert not np.allclose(state.ema_params["w"], state.params["w"])  # it really averages


def test_per_epoch_evaluation_lands_in_the_history(problem, key):
    data, state, _, epoch = problem
    seen = []

    def evaluate(e, st):
        seen.append(e)
        return {"w0": st.params["w"][0], "grid": jnp.ones((2, 2))}

    _, history = training.fit(
        key, state, data, epoch_fn=epoch, epochs=5, evaluate=evaluate, eval_every=2, progress=False
    )
    assert seen == [2, 4, 5]
    assert [h["epoch"] for h in history["eval"]] == [2, 4, 5]
    assert isinstance(history["eval"][0]["w0"], float) and history["eval"][0]["grid"] == [[1, 1], [1, 1]]
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("mode", ["scan", "stepped"])
def test_interrupted_then_resumed_equals_uninterrupted_bit_for_bit(stateful, key, tmp_path, mode):
    data, state, step = stateful
    if mode == "scan":
        epoch = jax.jit(training.make_epoch_fn(step, batch_size=8))
    else:
        epoch = training.make_stepped_epoch_fn(step, batch_size=8, donate=False)
    fp = {"lr": 0.05}
    full, history = training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)
    ckpt = tmp_path / "ckpt"

    class Interrupt(Exception):
        pass

    def stop_after_first(e, st):
        if e == 2:
            raise Interrupt  # like a kill during the second epoch's evaluation
        return {}

    with pytest.raises(Interrupt):
        training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, fingerprint=fp,
                     evaluate=stop_after_first, progress=False)  # fmt: skip
    assert not ckpt.exists() and training.latest_checkpoint(tmp_path / "ckpt.partial") == 1
    resumed, history2 = training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt,
                                     resume=True, fingerprint=fp, progress=False)  # fmt: skip
    _leaves_equal(resumed, full)  # params, optimizer state, model state, EMA, step
    assert history2["loss"] == history["loss"]  # exact: same keys, same batches, same program
    assert training.latest_checkpoint(ckpt) == 3 and not (tmp_path / "ckpt.partial").exists()
    # a finished run can be trained longer with --resume
    longer, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=4, checkpoint_dir=ckpt,
                             resume=True, fingerprint=fp, progress=False)  # fmt: skip
    _leaves_equal(longer, training.fit(key, state, data, epoch_fn=epoch, epochs=4, progress=False)[0])


def test_resume_checks_settings_before_reading_arrays(problem, key, tmp_path):
    data, state, _, epoch = problem
    ckpt = tmp_path / "ckpt"
    fp = {"lr": 0.05}
    training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt, fingerprint=fp,
                 progress=False)  # fmt: skip
    other = training.init_state({"w": jnp.zeros(7), "b": jnp.zeros(())}, optax.adam(0.05))
    with pytest.raises(ValueError, match=r"other settings.*'lr': \(0.05, 0.1\)"):
        training.fit(key, other, data, epoch_fn=epoch, epochs=4, checkpoint_dir=ckpt, resume=True,
                     fingerprint={"lr": 0.1}, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="already has 2 epochs"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=1, checkpoint_dir=ckpt, resume=True,
                     fingerprint=fp, progress=False)  # fmt: skip
    # resume with nothing to resume starts over (and says so in the bar's label)
    fresh, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=1, checkpoint_dir=tmp_path / "new",
                            resume=True, fingerprint=fp, progress=False)  # fmt: skip
    assert training.latest_checkpoint(tmp_path / "new") == 1 and int(fresh.step) == 6


def test_resume_may_continue_at_another_learning_rate(problem, key, tmp_path):
    """may_change=("lr",): a finished 2-epoch run continues to 4 epochs with an epoch function built
    at a new learning rate, exactly as restoring its state and running epochs 2 and 3 (keys
    fold_in(key, e)) by hand; the change is recorded once and the checkpoints carry the new lr."""
    data, state, _, epoch = problem
    slow_step = training.make_train_step(loss_fn, optax.adam(0.01))
    slower = jax.jit(training.make_epoch_fn(slow_step, batch_size=8))
    ckpt = tmp_path / "ckpt"
    training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt, fingerprint={"lr": 0.05},
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"'lr': \(0.05, 0.01\).*may_change=\('lr',\)"):
        training.fit(key, state, data, epoch_fn=slower, epochs=4, checkpoint_dir=ckpt, resume=True,
                     fingerprint={"lr": 0.01}, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"other settings.*'n': \(None, 3\)"):  # only the keys named
        training.fit(key, state, data, epoch_fn=slower, epochs=4, checkpoint_dir=ckpt, resume=True,
                     fingerprint={"lr": 0.01, "n": 3}, may_change=("lr",), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="may_change must be a collection"):
        training.fit(key, state, data, epoch_fn=slower, epochs=4, checkpoint_dir=ckpt, resume=True,
                     fingerprint={"lr": 0.01}, may_change="lr", progress=False)  # fmt: skip
    got, history = training.fit(key, state, data, epoch_fn=slower, epochs=4, checkpoint_dir=ckpt, resume=True,
                                fingerprint={"lr": 0.01}, may_change=("lr",), progress=False)  # fmt: skip
    want, first = training.fit(key, state, data, epoch_fn=epoch, epochs=2, progress=False)
    losses = list(first["loss"])
    for e in (2, 3):
        want, metrics = slower(jax.random.fold_in(key, e), want, data)
        losses.append(float(jnp.mean(metrics["loss"])))
    _leaves_equal(got, want)
    assert history["loss"] == losses
    assert history["changes"] == [{"epoch": 2, "lr": [0.05, 0.01]}]
    _, meta = training.restore_checkpoint(ckpt, got)
    assert meta["fingerprint"] == {"lr": 0.01} and meta["history"]["changes"] == history["changes"]
    # from now on the new rate is the run's own: a plain resume continues it, the change kept once
    _, again = training.fit(key, state, data, epoch_fn=slower, epochs=5, checkpoint_dir=ckpt, resume=True,
                            fingerprint={"lr": 0.01}, progress=False)  # fmt: skip
    assert again["changes"] == history["changes"] and len(again["loss"]) == 5


def test_a_diverging_run_leaves_a_good_run_untouched(key, tmp_path):
    data = _data()
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    ckpt = tmp_path / "ckpt"

    def run(lr, epochs):
        optimizer = optax.sgd(lr)
        epoch = jax.jit(training.make_epoch_fn(training.make_train_step(loss_fn, optimizer), batch_size=8))
        return training.fit(key, training.init_state(params, optimizer), data, epoch_fn=epoch,
                            epochs=epochs, checkpoint_dir=ckpt, progress=False)  # fmt: skip

    run(0.01, 2)
    before = _folder_digest(ckpt)
    with pytest.raises(training.TrainingDivergedError, match="diverged in epoch .*smaller learning rate"):
        run(1e6, 3)
    assert _folder_digest(ckpt) == before
    assert not (tmp_path / "ckpt.partial").exists()


def test_a_failing_evaluate_keeps_the_partial_run_resumable(problem, key, tmp_path):
    data, state, _, epoch = problem
    ckpt = tmp_path / "ckpt"

    def evaluate(e, _state):
        if e == 2:
            raise ValueError("evaluation failed")
        return {"ok": 1}

    with pytest.raises(ValueError, match="evaluation failed"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, evaluate=evaluate,
                     progress=False)  # fmt: skip
    assert not isinstance(ValueError("x"), training.TrainingDivergedError)
    assert training.latest_checkpoint(tmp_path / "ckpt.partial") == 1  # epoch 1 kept, epoch 2 not saved
    resumed, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, resume=True,
                              progress=False)  # fmt: skip
    _leaves_equal(resumed, training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)[0])


def test_bad_arguments_raise(problem, stateful, key):
    data, state, optimizer, epoch = problem
    step = training.make_train_step(loss_fn, optimizer)
    with pytest.raises(ValueError, match="batch_size=64 exceeds n=50"):
        training.make_epoch_fn(step, batch_size=64)(key, state, data)
    with pytest.raises(ValueError, match="leading example axis"):
        training.make_epoch_fn(step, batch_size=8)(key, state, (data[0], data[1][:10]))
    with pytest.raises(ValueError, match="epochs must be"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=0)
    with pytest.raises(ValueError, match="eval_every must be"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=1, eval_every=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        training.fit(key, state, data, epoch_fn=epoch, epochs=1, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.restore_checkpoint("/nonexistent/ckpt", state)
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \[0, 1\)"):
        training.make_train_step(loss_fn, optimizer, ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_warmup must be"):
        training.make_train_step(loss_fn, optimizer, ema_decay=0.9, ema_warmup=-1)
    with pytest.raises(ValueError, match=r"init_state\(\.\.\., ema=True\)"):
        training.make_train_step(loss_fn, optimizer, ema_decay=0.9)(key, state, (data[0][:8], data[1][:8]))


def test_commit_false_leaves_a_finished_run_resumable_without_training_again(problem, key, tmp_path):
    data, state, _, epoch = problem
    ckpt = tmp_path / "ckpt"
    training.fit(key, state, data, epoch_fn=epoch, epochs=1, checkpoint_dir=ckpt, progress=False)
    before = _folder_digest(ckpt)
    done, history = training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt,
                                 progress=False, commit=False)  # fmt: skip
    assert _folder_digest(ckpt) == before  # the old run is untouched until the caller commits
    assert training.latest_checkpoint(tmp_path / "ckpt.partial") == 2

    def no_training(*args):
        raise AssertionError("a finished partial run must not train again")

    again, history2 = training.fit(key, state, data, epoch_fn=no_training, epochs=2, checkpoint_dir=ckpt,
                                   resume=True, progress=False, commit=False)  # fmt: skip
    _leaves_equal(again, done)
    assert history2 == history
    assert training.commit_checkpoints(ckpt) and not training.commit_checkpoints(ckpt)
    assert training.latest_checkpoint(ckpt) == 2 and not (tmp_path / "ckpt.partial").exists()


# --- Ctrl-C -----------------------------------------------------------------------------------------


def _interrupt_in_epoch(epoch, at: int):
    """``epoch`` that raises KeyboardInterrupt (as Ctrl-C does) when called for its ``at``-th time."""
    calls = []

    def interrupted(key, state, data):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return epoch(key, state, data)

    return interrupted


def test_ctrl_c_during_an_epoch_is_re_raised_and_leaves_a_resumable_partial_folder(stateful, key, tmp_path):
    data, state, step = stateful
    epoch = jax.jit(training.make_epoch_fn(step, batch_size=8))
    fp = {"lr": 0.05}
    full, history = training.fit(key, state, data, epoch_fn=epoch, epochs=4, progress=False)
    two, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=2, progress=False)
    ckpt, partial = tmp_path / "ckpt", tmp_path / "ckpt.partial"
    with pytest.raises(KeyboardInterrupt):
        training.fit(key, state, data, epoch_fn=_interrupt_in_epoch(epoch, 3), epochs=4, checkpoint_dir=ckpt,
                     fingerprint=fp, progress=False)  # fmt: skip
    assert not ckpt.exists() and training.latest_checkpoint(partial) == 2
    assert sorted(p.name for p in partial.iterdir()) == ["1", "2"]  # nothing half-written beside them
    _leaves_equal(training.restore_checkpoint(partial, state)[0], two)  # epoch 2's checkpoint is whole
    resumed, history2 = training.fit(key, state, data, epoch_fn=epoch, epochs=4, checkpoint_dir=ckpt,
                                     resume=True, fingerprint=fp, progress=False)  # fmt: skip
    _leaves_equal(resumed, full)
    assert history2["loss"] == history["loss"]
    assert training.latest_checkpoint(ckpt) == 4 and not partial.exists()


def test_ctrl_c_while_a_checkpoint_is_written_leaves_no_half_checkpoint(problem, key, tmp_path, monkeypatch):
    """orbax writes a step into a temporary folder and renames it into place; Ctrl-C just before the
    rename leaves the temporary folder, which restore ignores and the resumed run replaces."""
    from orbax.checkpoint._src.path import atomicity

    data, state, _, epoch = problem
    ckpt, partial = tmp_path / "ckpt", tmp_path / "ckpt.partial"
    rename = atomicity.AtomicRenameTemporaryPath.finalize

    async def interrupted_finalize(self, *args, **kwargs):
        if self.get_final().name == "2":
            raise KeyboardInterrupt
        return await rename(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", interrupted_finalize)
    with pytest.raises(KeyboardInterrupt):
        training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, progress=False)
    monkeypatch.undo()
    assert training.latest_checkpoint(partial) == 1
    assert len([p for p in partial.iterdir() if p.name.startswith("2.")]) == 1  # the unfinished one
    resumed, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, resume=True,
                              progress=False)  # fmt: skip
    _leaves_equal(resumed, training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)[0])
    assert sorted(p.name for p in ckpt.iterdir()) == ["2", "3"]


def test_ctrl_c_while_a_finished_run_is_copied_to_train_longer_leaves_no_half_copy(
    problem, key, tmp_path, monkeypatch
):
    data, state, _, epoch = problem
    ckpt, partial = tmp_path / "ckpt", tmp_path / "ckpt.partial"
    training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=ckpt, progress=False)
    before = _folder_digest(ckpt)
    copytree = shutil.copytree

    def interrupted_copytree(src, dst, *args, **kwargs):
        monkeypatch.setattr(shutil, "copytree", copytree)  # copytree recurses through shutil.copytree
        copytree(src, dst, *args, **kwargs)
        raise KeyboardInterrupt  # after the copy, before it is moved into place

    monkeypatch.setattr(shutil, "copytree", interrupted_copytree)
    with pytest.raises(KeyboardInterrupt):
        training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, resume=True,
                     progress=False)  # fmt: skip
    monkeypatch.undo()
    assert not partial.exists() and _folder_digest(ckpt) == before
    longer, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, resume=True,
                             progress=False)  # fmt: skip
    _leaves_equal(longer, training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_fit_saves_through_the_public_save_checkpoint(problem, key, tmp_path, monkeypatch):
    """Patching ``training.save_checkpoint`` reaches fit (the experiment tests interrupt runs so)."""
    data, state, _, epoch = problem
    saved = []
    real = training.save_checkpoint
    monkeypatch.setattr(
        training, "save_checkpoint", lambda d, e, st, meta: saved.append(e) or real(d, e, st, meta)
    )
    training.fit(key, state, data, epoch_fn=epoch, epochs=2, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert saved == [1, 2] and training.latest_checkpoint(tmp_path / "ckpt") == 2


# --- BatchNorm statistics for the EMA weights ------------------------------------------------------


class _DenseBatchNorm(flax.linen.Module):
    """Dense(2) -> flax BatchNorm (momentum 0.8): the smallest model with running statistics."""

    @flax.linen.compact
    def __call__(self, x, *, train: bool):
        h = flax.linen.Dense(2)(x)
        return flax.linen.BatchNorm(use_running_average=not train, momentum=0.8)(h)


def _flax_apply_fn(params, model_state, *inputs, train):
    # the adapter of make_stats_fn's docstring
    return _DenseBatchNorm().apply({"params": params, **model_state}, *inputs, train=train,
                                   mutable=list(model_state))  # fmt: skip


_DATA_MEAN = jnp.array([3.0, -1.0, 0.5])


def _sample_inputs(key):
    return (_DATA_MEAN + 3 * jax.random.normal(key, (32, 3)),)


@pytest.fixture
def bn_model(key):
    variables = _DenseBatchNorm().init(key, jnp.zeros((1, 3)), train=False)
    stats_fn = jax.jit(training.make_stats_fn(_flax_apply_fn, _sample_inputs))
    return variables["params"], {"batch_stats": variables["batch_stats"]}, stats_fn


def test_recalibrated_statistics_follow_the_flax_momentum_rule_on_the_drawn_batches(bn_model):
    params, model_state, stats_fn = bn_model
    key, passes, m = jax.random.key(7), 12, 0.8
    new = training.recalibrate_batch_stats(key, stats_fn, params, model_state, num_passes=passes)
    w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
    start = model_state["batch_stats"]["BatchNorm_0"]
    mean, var = (np.asarray(start[k], np.float64) for k in ("mean", "var"))
    for i in range(passes):  # float64 reference of flax's rule on the batches drawn from fold_in(key, i)
        (x,) = _sample_inputs(jax.random.fold_in(key, i))
        h = np.asarray(x, np.float64) @ w + b
        mean, var = m * mean + (1 - m) * h.mean(0), m * var + (1 - m) * h.var(0)
    got = new["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], mean, rtol=RTOL_F32, atol=ATOL_F32)
    np.testing.assert_allclose(got["var"], var, rtol=RTOL_F32, atol=ATOL_F32)
    # towards the statistics of the data under these weights: mean W^T mu + b, variance 9 diag(W^T W)
    target_mean, target_var = np.asarray(_DATA_MEAN, np.float64) @ w + b, 9 * np.sum(w * w, axis=0)
    assert np.all(np.abs(got["mean"] - target_mean) < np.abs(np.asarray(start["mean"]) - target_mean))
    assert np.all(np.abs(got["var"] - target_var) < np.abs(np.asarray(start["var"]) - target_var))
    # the statistics belong to the weights they were gathered with
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, params)
    other = training.recalibrate_batch_stats(key, stats_fn, doubled, model_state, num_passes=passes)
    assert not np.allclose(other["batch_stats"]["BatchNorm_0"]["mean"], got["mean"])


def test_recalibration_equals_a_manual_loop_of_the_jitted_pass_bit_for_bit(bn_model):
    params, model_state, stats_fn = bn_model
    key = jax.random.key(3)
    before = jax.tree_util.tree_map(np.array, params)
    new = training.recalibrate_batch_stats(key, stats_fn, params, model_state, num_passes=5)
    manual = model_state
    for i in range(5):  # the experiments' loop: one jitted pass per fold_in(key, i)
        manual = stats_fn(jax.random.fold_in(key, i), params, manual)
    _leaves_equal(new, manual)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(model_state)
    _leaves_equal(params, before)  # the weights are untouched
    # a pass that closes over the weights (as experiments/_diffusion.py's one_pass) gives the same bits
    closed = jax.jit(lambda stats, k: _flax_apply_fn(params, stats, *_sample_inputs(k), train=True)[1])
    manual = model_state
    for i in range(5):
        manual = closed(manual, jax.random.fold_in(key, i))
    _leaves_equal(new, manual)
    # under an outer jit the loop unrolls into one program: same numbers up to fusion
    jitted = jax.jit(training.recalibrate_batch_stats, static_argnums=1, static_argnames="num_passes")
    outer = jitted(key, stats_fn, params, model_state, num_passes=5)
    for a, b in zip(jax.tree_util.tree_leaves(outer), jax.tree_util.tree_leaves(new), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_zero_passes_return_the_statistics_and_bad_counts_raise(bn_model):
    params, model_state, stats_fn = bn_model
    key = jax.random.key(1)
    assert training.recalibrate_batch_stats(key, stats_fn, params, model_state, num_passes=0) is model_state
    for bad in (-1, 2.5, True, "3", None):
        match = r"num_passes must be a non-negative integer.*pass e\.g\. num_passes="
        with pytest.raises(ValueError, match=match):
            training.recalibrate_batch_stats(key, stats_fn, params, model_state, num_passes=bad)


def test_a_sigint_during_a_checkpoint_save_is_raised_once_the_checkpoint_is_complete(
    problem, key, tmp_path, monkeypatch
):
    """A real Ctrl-C (SIGINT) that lands while orbax writes used to be swallowed by orbax's event loop
    and the run went on; it is now held until the checkpoint is complete and then raised."""
    import os
    import signal

    from dlx_jax.training import _checkpoints

    data, state, _, epoch = problem
    ckpt, partial = tmp_path / "ckpt", tmp_path / "ckpt.partial"
    to_tree = _checkpoints._to_tree
    saves = []

    def sigint_in_save(s):
        saves.append(1)
        if len(saves) == 2:  # inside epoch 2's save
            os.kill(os.getpid(), signal.SIGINT)
        return to_tree(s)

    monkeypatch.setattr(_checkpoints, "_to_tree", sigint_in_save)
    # Python's own handler, whatever an earlier test in this process (or an import) installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert len(saves) == 2 and training.latest_checkpoint(partial) == 2  # epoch 2 was written in full
    resumed, _ = training.fit(key, state, data, epoch_fn=epoch, epochs=3, checkpoint_dir=ckpt, resume=True,
                              progress=False)  # fmt: skip
    _leaves_equal(resumed, training.fit(key, state, data, epoch_fn=epoch, epochs=3, progress=False)[0])
