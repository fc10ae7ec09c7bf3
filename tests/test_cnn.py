"""dlx_jax.cnn: the seed CNN vs reference_numpy (logits, loss, grads, 20 Adam steps), autodiff vs
finite differences in float64, jit == eager, vmap == loop, the training-loop epoch == a loop of
steps, penultimate features, parameters through params_io.save_params / cnn.load_params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx_jax import cnn, nn, params_io, training
from dlx_jax.data import batch_indices
from reference_numpy import adam as ref_adam
from reference_numpy import cnn as ref_cnn
from reference_numpy import layers as ref_layers
from tests.helpers import (
    ATOL_ADAM_TRAJ_F32,
    ATOL_CNN_REF_F32,
    ATOL_FD_CNN,
    ATOL_JIT_F32,
    ATOL_SCAN_VS_LOOP_F32,
    RTOL_CNN_REF_F32,
    RTOL_FD,
    RTOL_INIT_STD,
    RTOL_JIT_F32,
    RTOL_SCAN_VS_LOOP_F32,
)


def _batch(seed: int, n: int):
    """Digit-like images: sparse strokes in [0, 1] (many exact zeros, like MNIST), labels 0-9."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1)).astype(np.float32)
    x[x < 0.6] = 0.0
    y = rng.integers(0, 10, n).astype(np.int32)
    mask = (rng.random((n, 1600)) >= 0.5).astype(np.float32)
    return x, y, mask


def _params_np(seed: int = 0):
    params = ref_cnn.init_params(np.random.default_rng(seed))
    # non-zero biases so that the bias paths are exercised too
    rng = np.random.default_rng(seed + 100)
    for layer in params.values():
        layer["b"] = (0.05 * rng.normal(size=layer["b"].shape)).astype(np.float32)
    return params


def _to_jax(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


def _assert_tree_close(actual, expected, rtol, atol):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------ init / structure


def test_init_params_layout_and_glorot(key):
    params = cnn.init_params(key)
    assert cnn.count_params(params) == 34_826
    ref = ref_cnn.init_params(np.random.default_rng(0))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    for name in params:
        assert params[name]["w"].shape == ref[name]["w"].shape and params[name]["w"].dtype == jnp.float32
        np.testing.assert_array_equal(params[name]["b"], 0.0)
    for name, (fi, fo) in {"conv1": (9, 288), "conv2": (288, 576), "dense": (1600, 10)}.items():
        w = np.asarray(params[name]["w"])
        limit = np.sqrt(6 / (fi + fo))
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.9 * limit  # uniform on the whole interval
        np.testing.assert_allclose(w.std(), limit / np.sqrt(3), rtol=RTOL_INIT_STD)  # U(-a, a): sd a/sqrt(3)


# ------------------------------------------------------------------------------ vs reference_numpy


@pytest.mark.parametrize("conv_impl", ["auto", "im2col", "lax"])
def test_logits_loss_grads_match_reference_numpy(conv_impl):
    params = _params_np()
    x, y, mask = _batch(1, 32)
    loss_ref, grads_ref, logits_ref = ref_cnn.loss_and_grads(params, x, y, dropout_mask=mask)
    p = _to_jax(params)
    apply = jax.jit(cnn.apply, static_argnames=("train", "conv_impl"))
    logits = apply(p, x, train=True, dropout_mask=mask, conv_impl=conv_impl)
    np.testing.assert_allclose(logits, logits_ref, rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32)
    value, grads = jax.jit(jax.value_and_grad(cnn.loss), static_argnames="conv_impl")(
        p, x, y, dropout_mask=mask, conv_impl=conv_impl
    )
    np.testing.assert_allclose(value, loss_ref, rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32)
    _assert_tree_close(grads, grads_ref, RTOL_CNN_REF_F32, ATOL_CNN_REF_F32)
    eval_logits, _ = ref_cnn.forward(params, x, train=False)
    np.testing.assert_allclose(
        apply(p, x, conv_impl=conv_impl), eval_logits, rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32
    )


def test_twenty_adam_steps_match_reference_numpy():
    params = _params_np(seed=3)
    optimizer = optax.adam(1e-3)
    step = jax.jit(lambda p, s, x, y, m: _adam_step(p, s, x, y, m, optimizer))
    p, s = _to_jax(params), optimizer.init(_to_jax(params))
    opt_ref = ref_adam.Adam(lr=1e-3)
    state_ref = opt_ref.init(params)
    for i in range(20):
        x, y, mask = _batch(10 + i, 16)
        _, grads_ref, _ = ref_cnn.loss_and_grads(params, x, y, dropout_mask=mask)
        params, state_ref = opt_ref.update(grads_ref, state_ref, params)
        p, s = step(p, s, x, y, mask)
    _assert_tree_close(p, params, 0.0, ATOL_ADAM_TRAJ_F32)
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(_params_np(seed=3)), strict=True
        )
    )
    assert moved > 100 * ATOL_ADAM_TRAJ_F32  # the parameters did move: the comparison is not vacuous


def _adam_step(p, s, x, y, mask, optimizer):
    grads = jax.grad(cnn.loss)(p, x, y, dropout_mask=mask)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s


def test_layers_match_reference_on_ties_and_odd_shapes():
    # small integers give many tied maxima; the gradient must go to the first one, as in the reference
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, (3, 7, 9, 2)).astype(np.float32)
    dy = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    y_ref, cache = ref_layers.maxpool2d_forward(x, size=2, stride=2)
    y, vjp = jax.vjp(lambda v: nn.max_pool2d(v, size=2), jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(jnp.asarray(dy))[0], ref_layers.maxpool2d_backward(dy, cache))
    # conv: forward and all three gradients vs the im2col/col2im reference
    x = rng.normal(size=(2, 8, 5, 3)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    y_ref, cache = ref_layers.conv2d_forward(x, w, b)
    dy = rng.normal(size=y_ref.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda x, w, b: nn.conv2d(x, w, b), jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(y, y_ref, rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32)
    for a, r in zip(vjp(jnp.asarray(dy)), ref_layers.conv2d_backward(dy, cache), strict=True):
        np.testing.assert_allclose(a, r, rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32)


# ------------------------------------------------------------------------------ autodiff, jit, vmap


def test_loss_gradient_matches_finite_differences_float64(x64):
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), _params_np(seed=5))
    x, y, mask = _batch(6, 3)
    x = jnp.asarray(x, jnp.float64)

    @jax.jit
    def f(p):
        return cnn.loss(p, x, y, dropout_mask=mask)

    grads = jax.grad(f)(params)
    assert grads["conv1"]["w"].dtype == jnp.float64
    rng = np.random.default_rng(7)
    h = 1e-5  # directional derivatives along random unit directions over all 34,826 parameters
    for _ in range(3):
        d = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
        norm = np.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree_util.tree_leaves(d)))
        d = jax.tree_util.tree_map(lambda v, norm=norm: v / norm, d)
        plus = f(jax.tree_util.tree_map(lambda a, v: a + h * v, params, d))
        minus = f(jax.tree_util.tree_map(lambda a, v: a - h * v, params, d))
        fd = (float(plus) - float(minus)) / (2 * h)
        ad = sum(
            float(jnp.sum(g * v))
            for g, v in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(d), strict=True)
        )
        np.testing.assert_allclose(ad, fd, rtol=RTOL_FD, atol=ATOL_FD_CNN)


def test_float64_params_and_images_give_float64_logits(x64):
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), cnn.init_params(jax.random.key(1)))
    x, _, _ = _batch(8, 2)
    apply = jax.jit(cnn.apply)
    assert apply(params, jnp.asarray(x, jnp.float64)).dtype == jnp.float64
    assert apply(cnn.init_params(jax.random.key(1)), jnp.asarray(x)).dtype == jnp.float32


def test_jit_equals_eager_and_vmap_over_params_equals_loop(key):
    x, y, mask = _batch(9, 2)
    params = cnn.init_params(key)
    eager = cnn.loss(params, x, y, dropout_mask=mask)
    jitted = jax.jit(lambda p: cnn.loss(p, x, y, dropout_mask=mask))(params)
    np.testing.assert_allclose(jitted, eager, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    members = [cnn.init_params(k) for k in jax.random.split(key, 3)]
    ensemble = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)
    logits = jax.jit(jax.vmap(cnn.apply, in_axes=(0, None)))(ensemble, x)
    apply = jax.jit(cnn.apply)
    for i in range(3):
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], ensemble)
        np.testing.assert_allclose(logits[i], apply(one, x), rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


def test_dropout_from_key_is_deterministic_and_active(key):
    x, _, _ = _batch(10, 4)
    params = cnn.init_params(key)
    apply = jax.jit(cnn.apply, static_argnames="train")
    a = apply(params, x, train=True, key=jax.random.key(3))
    np.testing.assert_array_equal(a, apply(params, x, train=True, key=jax.random.key(3)))
    assert not np.allclose(a, apply(params, x, train=True, key=jax.random.key(4)))
    assert not np.allclose(a, apply(params, x))


# ------------------------------------------------------------------------------ training helpers


def test_training_epoch_equals_a_loop_of_steps_and_learns(key):
    """The epoch experiments.cnn trains with (training.make_epoch_fn on cnn.train_loss) == the same
    Adam steps called one by one on the same batches with the same dropout keys."""
    x, y, _ = _batch(11, 64)
    y = (x.reshape(64, -1).mean(axis=1) > np.median(x.reshape(64, -1).mean(axis=1))).astype(np.int32)
    data = (jnp.asarray(x), jnp.asarray(y))
    optimizer = optax.adam(1e-3)
    step = training.make_train_step(cnn.train_loss, optimizer)
    epoch = jax.jit(training.make_epoch_fn(step, batch_size=16))
    state0 = training.init_state(cnn.init_params(key), optimizer)
    state1, metrics = epoch(jax.random.key(5), state0, data)
    losses = metrics["loss"]
    assert losses.shape == (4,) and int(state1.step) == 4
    key_perm, key_steps = jax.random.split(jax.random.key(5))
    batches = np.asarray(batch_indices(key_perm, 64, batch_size=16))
    one = jax.jit(jax.value_and_grad(lambda p, k, xb, yb: cnn.loss(p, xb, yb, key=k)))
    p2, s2 = cnn.init_params(key), optimizer.init(cnn.init_params(key))
    for i in range(4):
        idx = batches[i]
        value, grads = one(p2, jax.random.fold_in(key_steps, i), x[idx], y[idx])
        updates, s2 = optimizer.update(grads, s2, p2)
        p2 = optax.apply_updates(p2, updates)
        np.testing.assert_allclose(losses[i], value, rtol=RTOL_SCAN_VS_LOOP_F32, atol=ATOL_SCAN_VS_LOOP_F32)
    _assert_tree_close(
        state1.params, jax.tree_util.tree_map(np.asarray, p2), RTOL_SCAN_VS_LOOP_F32, ATOL_SCAN_VS_LOOP_F32
    )
    for e in range(15):
        state1, more = epoch(jax.random.key(6 + e), state1, data)
    assert float(more["loss"].mean()) < 0.8 * float(losses.mean())


def test_features_are_the_inputs_of_the_dense_layer(key):
    x, _, _ = _batch(13, 5)
    params = cnn.init_params(key)
    feats = jax.jit(cnn.features)(params, x)
    assert feats.shape == (5, cnn.FEATURE_DIM) and feats.dtype == jnp.float32
    assert float(feats.min()) >= 0.0  # after ReLU and max pooling
    np.testing.assert_allclose(
        nn.dense(feats, params["dense"]["w"], params["dense"]["b"]),
        jax.jit(cnn.apply)(params, x),
        rtol=RTOL_JIT_F32,
        atol=ATOL_JIT_F32,
    )
    _, cache = ref_cnn.forward(jax.tree_util.tree_map(np.asarray, params), x, train=False)
    np.testing.assert_allclose(feats, cache["dense"]["x"], rtol=RTOL_CNN_REF_F32, atol=ATOL_CNN_REF_F32)
    with pytest.raises(ValueError, match=r"\(n, 28, 28, 1\)"):
        cnn.features(params, jnp.zeros((2, 27, 27, 1)))


def test_predict_and_evaluate_in_uneven_batches(key):
    x, y, _ = _batch(12, 23)
    params = cnn.init_params(key)
    expected = np.argmax(jax.jit(cnn.apply)(params, x), axis=-1)
    predict = jax.jit(cnn.predict, static_argnames="batch_size")
    np.testing.assert_array_equal(predict(params, jnp.asarray(x), batch_size=10), expected)
    evaluate = jax.jit(cnn.evaluate, static_argnames="batch_size")
    np.testing.assert_allclose(evaluate(params, x, y, batch_size=7), np.mean(expected == y))
    np.testing.assert_allclose(jax.jit(cnn.accuracy)(params, x, y), np.mean(expected == y))


def test_save_and_load_params_roundtrip(tmp_path, key):
    params = cnn.init_params(key)
    params_io.save_params(tmp_path / "params", params)
    loaded = cnn.load_params(tmp_path / "params")
    _assert_tree_close(loaded, jax.tree_util.tree_map(np.asarray, params), 0.0, 0.0)
    with pytest.raises(FileNotFoundError, match="experiments.cnn"):
        cnn.load_params(tmp_path / "missing")
    other = {**params, "dense": {"w": jnp.zeros((1600, 5)), "b": jnp.zeros(5)}}
    params_io.save_params(tmp_path / "other", other)
    with pytest.raises(ValueError, match="another model|do not match"):
        cnn.load_params(tmp_path / "other")


def test_bad_inputs_raise(key):
    params = cnn.init_params(key)
    with pytest.raises(ValueError, match=r"\(n, 28, 28, 1\)"):
        cnn.apply(params, jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="to_float_images"):
        cnn.apply(params, jnp.zeros((2, 28, 28, 1), jnp.uint8))
    with pytest.raises(ValueError, match="init_params"):
        cnn.apply({"conv1": params["conv1"]}, jnp.zeros((2, 28, 28, 1)))
    bad = {**params, "dense": {"w": jnp.zeros((1600, 5)), "b": jnp.zeros(5)}}
    with pytest.raises(ValueError, match="dense"):
        cnn.apply(bad, jnp.zeros((2, 28, 28, 1)))
    with pytest.raises(ValueError, match="PRNG key"):
        cnn.apply(params, jnp.zeros((2, 28, 28, 1)), train=True)
