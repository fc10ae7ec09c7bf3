"""dlx_jax.unet: time vector and upsampling vs naive loops, parameter counts, conv formulations vs the
flax ``nn.Conv`` reference, BatchNorm running statistics vs PyTorch's rule, labels and masks, errors,
and (when torch is importable) the PyTorch peer of ``experiments/_torch_unet.py`` with the same weights.

Most checks use a narrow model (``features=8``: widths 8/16/32) so the file runs in well under a minute.
"""

from __future__ import annotations

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import unet
from tests.helpers import (
    ATOL_BN_STATS_F32,
    ATOL_F64,
    ATOL_JIT_F32,
    ATOL_TIME_EMB_F32,
    ATOL_UNET_F32,
    ATOL_UNET_GRAD_F32,
    ATOL_UNET_GRAD_F64,
    RTOL_BN_STATS_F32,
    RTOL_F64,
    RTOL_INIT_STD,
    RTOL_JIT_F32,
    RTOL_UNET_F32,
    RTOL_UNET_GRAD_F32,
    RTOL_UNET_GRAD_F64,
)

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (optional peer)")

F = 8  # narrow test width
T = np.array([1, 10, 500, 1000])
LABELS = np.array([0, 3, 9, 5])
MASK = np.array([1.0, 0.0, 1.0, 1.0], np.float32)


def _images(seed, n=4, h=28, w=28, c=1, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(dtype)


_PARAMS: dict = {}
_APPLY: dict = {}


def _small(impl="hybrid", num_labels=10):
    """(model, params, batch_stats, apply_fn, jitted apply_fn) of the narrow model.

    Parameters are shared by all formulations; the jitted functions are cached so that tests with
    the same shapes reuse one compilation.
    """
    if num_labels not in _PARAMS:
        _PARAMS[num_labels] = unet.init(jax.random.key(1), unet.UNet(features=F, num_labels=num_labels))
    params, stats = _PARAMS[num_labels]
    model = unet.UNet(features=F, num_labels=num_labels, conv_impl=impl)
    if (impl, num_labels) not in _APPLY:
        apply_fn = unet.make_apply_fn(model)
        _APPLY[impl, num_labels] = (apply_fn, jax.jit(apply_fn, static_argnames="train"))
    return (model, params, stats, *_APPLY[impl, num_labels])


# --- time vector and upsampling -------------------------------------------------------------------


def _time_embedding_loop(t, dim):
    v = np.zeros((len(t), dim))
    for n, tn in enumerate(t):
        for i in range(dim):
            arg = float(tn) / 10000.0 ** (i / dim)
            v[n, i] = math.sin(arg) if i % 2 == 0 else math.cos(arg)
    return v


def test_time_embedding_matches_loop():
    v = unet.time_embedding(jnp.asarray(T), 100)
    assert v.shape == (4, 100) and v.dtype == jnp.float32
    np.testing.assert_allclose(v, _time_embedding_loop(T, 100), rtol=0, atol=ATOL_TIME_EMB_F32)
    # a scalar step gives one row; odd dims work
    np.testing.assert_allclose(
        unet.time_embedding(7, 5), _time_embedding_loop([7], 5), rtol=0, atol=ATOL_TIME_EMB_F32
    )


def test_time_embedding_float64(x64):
    v = unet.time_embedding(jnp.asarray(T), 100, dtype=jnp.float64)
    assert v.dtype == jnp.float64
    np.testing.assert_allclose(v, _time_embedding_loop(T, 100), rtol=RTOL_F64, atol=ATOL_F64)


def test_time_embedding_bad_input_raises():
    with pytest.raises(ValueError, match="flatten"):
        unet.time_embedding(jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="dim must be"):
        unet.time_embedding(jnp.ones(2), 0)


def _upsample_torch_formula(x):
    """PyTorch's bilinear, align_corners=False: src = (o + 0.5) / 2 - 0.5 clamped at 0, per axis."""
    n, h, w, c = x.shape

    def taps(length, out):
        src = max((out + 0.5) / 2 - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, length - 1)
        lam = src - i0
        return i0, i1, lam

    y = np.zeros((n, 2 * h, 2 * w, c))
    for oi in range(2 * h):
        r0, r1, a = taps(h, oi)
        for oj in range(2 * w):
            c0, c1, b = taps(w, oj)
            y[:, oi, oj] = (1 - a) * ((1 - b) * x[:, r0, c0] + b * x[:, r0, c1]) + a * (
                (1 - b) * x[:, r1, c0] + b * x[:, r1, c1]
            )
    return y


@pytest.mark.parametrize("shape", [(2, 3, 5, 2), (1, 7, 7, 3), (1, 1, 4, 1), (2, 14, 14, 1)])
def test_upsample_matches_pytorch_formula(shape):
    x = _images(3, *shape)
    y = unet.upsample_bilinear2x(jnp.asarray(x))
    assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], shape[3]) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, _upsample_torch_formula(x.astype(np.float64)), rtol=1e-6, atol=1e-6)


def test_upsample_vmap_equals_loop_and_float64(x64):
    x = jnp.asarray(_images(4, 3, 5, 6, 2, dtype=np.float64)).reshape(3, 1, 5, 6, 2)
    y = jax.vmap(unet.upsample_bilinear2x)(x)
    assert y.dtype == jnp.float64
    for i in range(3):
        np.testing.assert_allclose(y[i], unet.upsample_bilinear2x(x[i]), rtol=RTOL_F64, atol=ATOL_F64)
    np.testing.assert_allclose(y[:, 0], _upsample_torch_formula(np.asarray(x[:, 0])), rtol=RTOL_F64)
    with pytest.raises(ValueError, match=r"\(n, h, w, c\)"):
        unet.upsample_bilinear2x(x[0, 0])


@needs_torch
def test_upsample_matches_torch_interpolate():
    import torch

    x = _images(5, 2, 7, 5, 3)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), scale_factor=2, mode="bilinear"
    )
    np.testing.assert_allclose(
        unet.upsample_bilinear2x(jnp.asarray(x)), ref.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6
    )


# --- parameters and initialisation -----------------------------------------------------------------


def test_book_parameter_counts_and_pytorch_init():
    abstract = jax.eval_shape(
        lambda k: unet.UNet().init(k, jnp.zeros((1, 28, 28, 1)), jnp.ones(1, jnp.int32), train=False),
        jax.random.key(0),
    )
    assert unet.count_params(abstract["params"]) == 2_167_784  # params only, not batch_stats
    params, stats = unet.init(jax.random.key(0), unet.UNet(num_labels=10))
    assert unet.count_params(params) == 2_168_784  # + 10 x 100 label embedding
    assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(abstract["batch_stats"])
    for block in ("down1", "down2", "bot1", "up2", "up1"):
        p = params[block]
        for layer in ("conv1", "conv2", "mlp1", "mlp2"):
            kernel, bias = np.asarray(p[layer]["kernel"]), np.asarray(p[layer]["bias"])
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))  # PyTorch: U(-1/sqrt(fan_in), ...)
            assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
            if kernel.size >= 288:
                np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=RTOL_INIT_STD)
        for bn in ("bn1", "bn2"):
            np.testing.assert_array_equal(p[bn]["scale"], 1.0)
            np.testing.assert_array_equal(p[bn]["bias"], 0.0)
            np.testing.assert_array_equal(stats[block][bn]["mean"], 0.0)
            np.testing.assert_array_equal(stats[block][bn]["var"], 1.0)
    assert params["down1"]["conv1"]["kernel"].shape == (3, 3, 1, 64)
    assert params["up2"]["conv1"]["kernel"].shape == (3, 3, 256 + 128, 128)
    assert params["out"]["kernel"].shape == (1, 1, 64, 1)
    np.testing.assert_allclose(np.std(params["label_emb"]), 1.0, rtol=RTOL_INIT_STD)  # N(0, 1)


# --- forward pass --------------------------------------------------------------------------------


def test_output_shape_and_dtype():
    _, params, stats, _, f = _small()
    x = jnp.asarray(_images(0))
    eps_hat, new_stats = f(params, stats, x, T, LABELS, MASK, train=False)
    assert eps_hat.shape == x.shape and eps_hat.dtype == jnp.float32
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_stats, stats)  # eval: state unchanged
    # other image sizes and channel counts (shapes only: nothing is compiled)
    model = unet.UNet(channels=3, features=4, time_dim=16)
    variables = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, 16, 12, 3)), jnp.ones(1, jnp.int32), train=False),
        jax.random.key(0),
    )
    out = jax.eval_shape(
        lambda v, x_: model.apply(v, x_, jnp.ones(2), train=True, mutable=["batch_stats"])[0],
        variables,
        jax.ShapeDtypeStruct((2, 16, 12, 3), jnp.float32),
    )
    assert out.shape == (2, 16, 12, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("impl", [i for i in unet.CONV_IMPLS if i != "lax"])
def test_formulations_match_nn_conv_forward(impl):
    *_, ref_f = _small("lax")
    _, params, stats, _, f = _small(impl)
    x = jnp.asarray(_images(1))
    # train and eval mode for the default; the others share its BatchNorm code, so train mode
    for train in (True, False) if impl == unet.DEFAULT_CONV_IMPL else (True,):
        ref, ref_stats = ref_f(params, stats, x, T, LABELS, MASK, train=train)
        out, out_stats = f(params, stats, x, T, LABELS, MASK, train=train)
        np.testing.assert_allclose(out, ref, rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)
        # the running statistics too (the fast formulations fold the conv bias into the mean)
        _assert_trees_close(out_stats, ref_stats, RTOL_BN_STATS_F32, ATOL_BN_STATS_F32)


def _loss_grad(apply_fn, stats, t, labels, mask, eps):
    def loss(params, x):
        eps_hat, _ = apply_fn(params, stats, x, t, labels, mask, train=True)
        return jnp.mean((eps_hat - eps) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [
        (np.float32, RTOL_UNET_GRAD_F32, ATOL_UNET_GRAD_F32),
        pytest.param(np.float64, RTOL_UNET_GRAD_F64, ATOL_UNET_GRAD_F64, marks=pytest.mark.slow),
    ],
)
def test_default_formulation_gradients_match_nn_conv(dtype, rtol, atol):
    """The custom kernel gradient of the default ("hybrid") vs autodiff of flax nn.Conv."""
    with jax.enable_x64(dtype == np.float64):
        _, params, stats, ref_apply, _ = _small("lax")
        _, _, _, apply_fn, _ = _small(unet.DEFAULT_CONV_IMPL)
        params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        # batch 5 (not a multiple of the 4-image chunk of the kernel gradient), non-square images
        x = jnp.asarray(_images(2, 5, 12, 8, dtype=dtype))
        eps = jnp.asarray(_images(3, 5, 12, 8, dtype=dtype))
        t, labels, mask = np.arange(1, 6), np.array([0, 3, 9, 5, 1]), np.array([1, 0, 1, 1, 0], dtype)
        ref = _loss_grad(ref_apply, stats, t, labels, mask, eps)(params, x)
        got = _loss_grad(apply_fn, stats, t, labels, mask, eps)(params, x)
        assert got[1].dtype == dtype
        _assert_trees_close(got, ref, rtol, atol)


def _assert_trees_close(got, want, rtol, atol):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)


def test_jit_equals_eager():
    _, params, stats, apply_fn, f = _small()
    x = jnp.asarray(_images(1))
    eager, eager_stats = apply_fn(params, stats, x, T, LABELS, MASK, train=True)
    jitted, jitted_stats = f(params, stats, x, T, LABELS, MASK, train=True)
    # train-mode BatchNorm divides by the batch std, amplifying the reordered sums of the fused
    # program: the tolerance of two formulations of the same model
    np.testing.assert_allclose(jitted, eager, rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)
    _assert_trees_close(jitted_stats, eager_stats, RTOL_BN_STATS_F32, ATOL_BN_STATS_F32)


# --- BatchNorm ------------------------------------------------------------------------------------


def test_batchnorm_running_stats_follow_pytorch():
    x = np.random.default_rng(7).normal(0.3, 1.0, size=(5, 4, 100, 3)).astype(np.float32)
    shift = np.array([0.5, -1.0, 0.0], np.float32)
    bn = unet.BatchNorm()
    variables = bn.init(jax.random.key(0), jnp.asarray(x), train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init does not update
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 0.1, -0.2])}
    y, upd = bn.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        jnp.asarray(x),
        train=True,
        shift=jnp.asarray(shift),
        mutable=["batch_stats"],
    )
    z = x.astype(np.float64).reshape(-1, 3) + shift
    m = z.shape[0]
    mean, var = z.mean(0), z.var(0)  # biased: used to normalise
    # PyTorch: running = 0.9 * running + 0.1 * batch, with the UNBIASED variance m / (m - 1) var
    np.testing.assert_allclose(
        upd["batch_stats"]["mean"], 0.1 * mean, rtol=RTOL_BN_STATS_F32, atol=ATOL_BN_STATS_F32
    )
    np.testing.assert_allclose(
        upd["batch_stats"]["var"],
        0.9 + 0.1 * var * m / (m - 1),
        rtol=RTOL_BN_STATS_F32,
        atol=ATOL_BN_STATS_F32,
    )
    expected = (z - mean) / np.sqrt(var + 1e-5) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(y.reshape(-1, 3), expected, rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)
    # eval mode normalises with the running statistics
    y_eval = bn.apply({"params": params, "batch_stats": upd["batch_stats"]}, jnp.asarray(x), train=False)
    ra_mean, ra_var = 0.1 * mean, 0.9 + 0.1 * var * m / (m - 1)
    expected = (x.reshape(-1, 3) - ra_mean) / np.sqrt(ra_var + 1e-5) * np.asarray(
        params["scale"]
    ) + np.asarray(params["bias"])
    np.testing.assert_allclose(y_eval.reshape(-1, 3), expected, rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)


def test_apply_fn_state_contract():
    _, params, stats, _, f = _small()
    x = jnp.asarray(_images(1))
    _, new_stats = f(params, stats, x, T, LABELS, MASK, train=True)
    moved = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), new_stats, stats)
    )
    assert all(moved)  # every running statistic moved
    assert jax.tree_util.tree_structure(new_stats) == jax.tree_util.tree_structure(stats)


# --- labels ----------------------------------------------------------------------------------------


def test_label_mask_selects_conditional_examples():
    _, params, stats, _, f = _small()
    x = jnp.asarray(_images(9))
    uncond, _ = f(params, stats, x, T, train=False)
    masked, _ = f(params, stats, x, T, LABELS, np.zeros(4, np.float32), train=False)
    np.testing.assert_allclose(masked, uncond, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)  # mask 0 == no labels
    cond, _ = f(params, stats, x, T, LABELS, train=False)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-3  # the labels do something
    mixed, _ = f(params, stats, x, T, LABELS, MASK, train=False)
    expected = np.where(MASK[:, None, None, None] > 0, cond, uncond)
    np.testing.assert_allclose(mixed, expected, rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)
    as_bool, _ = f(params, stats, x, T, LABELS, MASK > 0, train=False)
    np.testing.assert_allclose(as_bool, mixed, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)
    # a masked-out example may carry any placeholder label under jit (clipped, times 0)
    placeholder, _ = f(params, stats, x, T, np.array([0, 99, 9, 5]), MASK, train=False)
    np.testing.assert_allclose(placeholder, mixed, rtol=RTOL_JIT_F32, atol=ATOL_JIT_F32)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "kwargs", "match"),
    [
        ((28, 28, 1), {}, "add the batch/channel axes"),
        ((2, 28, 28, 3), {}, r"\(n, h, w, 1\)"),
        ((2, 30, 28, 1), {}, "divisible by 4"),
        ((2, 28, 28, 1), {"t": np.ones(3)}, r"t must have shape \(2,\)"),
        ((2, 28, 28, 1), {"labels": np.array([1, 10])}, "label_mask=0"),
        ((2, 28, 28, 1), {"labels": np.array([1.0, 2.0])}, "integers"),
        ((2, 28, 28, 1), {"labels": np.array([1, 2]), "label_mask": np.ones(3)}, "label_mask must"),
        ((2, 28, 28, 1), {"label_mask": np.ones(2)}, "pass labels too"),
    ],
)
def test_bad_inputs_raise(x_shape, kwargs, match):
    _, params, stats, apply_fn, _ = _small()
    t = kwargs.pop("t", np.ones(2, np.int32))
    with pytest.raises(ValueError, match=match):
        apply_fn(params, stats, jnp.zeros(x_shape), t, train=False, **kwargs)


def test_labels_without_embedding_and_int_images_raise():
    _, params, stats, apply_fn, _ = _small(num_labels=None)
    with pytest.raises(ValueError, match="num_labels=10"):
        apply_fn(params, stats, jnp.zeros((2, 28, 28, 1)), np.ones(2), np.array([1, 2]), train=False)
    with pytest.raises(ValueError, match="astype"):
        apply_fn(params, stats, jnp.zeros((2, 28, 28, 1), jnp.int32), np.ones(2), train=False)
    bad = unet.make_apply_fn(unet.UNet(features=F, conv_impl="winograd"))
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        bad(params, stats, jnp.zeros((2, 28, 28, 1)), np.ones(2), train=False)


# --- the PyTorch peer ----------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("num_labels", [None, 10])
def test_torch_peer_is_the_same_model(num_labels):
    import torch

    from experiments import _torch_unet

    _, params, stats, _, f = _small(num_labels=num_labels)
    peer = _torch_unet.from_jax_params(params, stats)
    assert sum(p.numel() for p in peer.parameters()) == unet.count_params(params)
    x = _images(1)
    labels, mask = (LABELS, MASK) if num_labels else (None, None)
    for train in (False, True):
        peer.train(train)
        ours, our_stats = f(params, stats, jnp.asarray(x), T, labels, mask, train=train)
        with torch.no_grad():
            theirs = peer(
                _torch_unet.to_nchw(x),
                torch.from_numpy(T),
                None if labels is None else torch.from_numpy(labels),
                None if mask is None else torch.from_numpy(mask),
            )
        np.testing.assert_allclose(ours, _torch_unet.to_nhwc(theirs), rtol=RTOL_UNET_F32, atol=ATOL_UNET_F32)
    # after one train-mode pass both hold the same running statistics (PyTorch's update rule)
    bn = peer.up1.convs[4]
    np.testing.assert_allclose(
        our_stats["up1"]["bn2"]["var"], bn.running_var.numpy(), rtol=RTOL_BN_STATS_F32, atol=ATOL_BN_STATS_F32
    )
    np.testing.assert_allclose(
        our_stats["up1"]["bn2"]["mean"],
        bn.running_mean.numpy(),
        rtol=RTOL_BN_STATS_F32,
        atol=ATOL_BN_STATS_F32,
    )
