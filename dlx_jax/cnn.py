"""The seed CNN for MNIST-sized images, built from :mod:`dlx_jax.nn`.

Architecture (34,826 parameters)::

    (n, 28, 28, 1) -> conv 32 3x3 valid + bias -> ReLU -> max-pool 2x2 (26 -> 13)
                   -> conv 64 3x3 valid + bias -> ReLU -> max-pool 2x2 (11 -> 5, floor)
                   -> flatten (n, 1600) in (h, w, c) order -> dropout 0.5 (train only)
                   -> dense 10 -> softmax cross-entropy (mean over the batch)

Parameters are the nested dict ``{"conv1": {"w", "b"}, "conv2": {"w", "b"}, "dense": {"w", "b"}}``
with HWIO conv kernels and a ``(1600, 10)`` dense matrix — exactly the layout of
``reference_numpy.cnn``, so no converter is needed.

Training goes through :mod:`dlx_jax.training` (the one training loop) with :func:`train_loss`, the
loss in the loop's ``loss_fn(key, params, batch)`` shape (dropout from ``key``, ``batch = (x, y)``):

.. code-block:: python

    optimizer = optax.adam(1e-3)
    step = training.make_train_step(cnn.train_loss, optimizer)
    epoch = jax.jit(training.make_epoch_fn(step, batch_size=128), donate_argnums=1)
    state, history = training.fit(key, training.init_state(params, optimizer), (x, y),
                                  epoch_fn=epoch, epochs=15)

Parameters are saved and read with :func:`dlx_jax.params_io.save_params` /
:func:`load_params` (which also checks the seed-CNN layout). :func:`features` gives the 1,600
penultimate activations (eval mode), e.g. for a Fréchet distance between sets of images.

Everything here is pure and undecorated; jit at the call site.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from dlx_jax import nn, params_io
from dlx_jax._checks import check_class_labels, check_nonempty, check_sizes, check_unit_interval

__all__ = [
    "FEATURE_DIM",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "accuracy",
    "apply",
    "count_params",
    "evaluate",
    "features",
    "init_params",
    "load_params",
    "loss",
    "predict",
    "train_loss",
]

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
FEATURE_DIM = 1600  # 5 x 5 x 64 penultimate activations
_LAYERS = {"conv1": ((3, 3, 1, 32), (32,)), "conv2": ((3, 3, 32, 64), (64,)), "dense": ((1600, 10), (10,))}

Params = dict[str, dict[str, Array]]


def init_params(key: PRNGKeyArray, *, dtype: Any = jnp.float32) -> Params:
    r"""Glorot-uniform weights, zero biases.

    Weights are drawn from :math:`U(-a, a)`,
    :math:`a = \sqrt{6 / (\text{fan}_\text{in} + \text{fan}_\text{out})}` with conv
    ``fan_in = kh*kw*c_in``, ``fan_out = kh*kw*c_out`` and dense ``fan_in = 1600``, ``fan_out = 10``.

    Args:
        key: PRNG key (split once per layer).
        dtype: (static) parameter dtype.

    Returns:
        The parameter dict (34,826 numbers).
    """
    keys = jax.random.split(key, len(_LAYERS))
    params: Params = {}
    for k, (name, (wshape, bshape)) in zip(keys, _LAYERS.items(), strict=True):
        if len(wshape) == 4:
            rf = wshape[0] * wshape[1]
            fan_in, fan_out = rf * wshape[2], rf * wshape[3]
        else:
            fan_in, fan_out = wshape
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        params[name] = {
            "w": jax.random.uniform(k, wshape, dtype, -limit, limit),
            "b": jnp.zeros(bshape, dtype),
        }
    return params


def count_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree (34,826 for the seed CNN)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def _check_params(params: Params) -> None:
    for name, (wshape, bshape) in _LAYERS.items():
        if name not in params or set(params[name]) != {"w", "b"}:
            raise ValueError(
                f"params must be {{'conv1','conv2','dense'}} each with 'w' and 'b'; got keys "
                f"{sorted(params)}; build them with dlx_jax.cnn.init_params"
            )
        if params[name]["w"].shape != wshape or params[name]["b"].shape != bshape:
            raise ValueError(
                f"params[{name!r}] must have w {wshape}, b {bshape}; got "
                f"{params[name]['w'].shape}, {params[name]['b'].shape}"
            )


def _check_images(x: Array) -> Array:
    """Shape and dtype (static), and pixels in ``[0, 1]`` (concrete, or ``dlx_jax.checked`` mode)."""
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if jnp.ndim(x) == 3:
        x = x[..., None]
    if jnp.ndim(x) != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"images must have shape (n, 28, 28, 1), got {jnp.shape(x)}; resize to 28x28 and add the "
            "batch/channel axes (x[None, ..., None])"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"images must be float in [0, 1], got dtype {x.dtype}; use dlx_jax.data.to_float_images"
        )
    check_unit_interval("images", x)
    return x


def _check_labels(x: Array, y: Array) -> None:
    """``y``: one integer label in ``0..9`` per image of ``x`` (counts and dtype static), and at
    least one image (the loss and the accuracy are means over the batch)."""
    n = jnp.shape(x)[0]
    check_class_labels(y, n=n, num_classes=NUM_CLASSES, name="labels y", per="image", n_symbol="n")
    check_nonempty("images x", n, what="images", fix="pass at least one image and its label")


def features(
    params: Params,
    x: Float[Array, "n h w c"],
    *,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
) -> Float[Array, "n 1600"]:
    """The flattened penultimate activations (after the second pooling, before dropout and dense).

    Eval mode (no dropout): ``apply(params, x) == nn.dense(features(params, x), w, b)`` with the
    dense layer's weights. Use them to compare sets of images, e.g. by a Fréchet distance.

    Args:
        params: from :func:`init_params` (or a trained CNN, :func:`load_params`).
        x: images ``(n, 28, 28, 1)`` (or ``(n, 28, 28)``) in ``[0, 1]``.
        conv_impl: (static) see :func:`dlx_jax.nn.conv2d`.
        pool_impl: (static) see :func:`dlx_jax.nn.max_pool2d`.

    Returns:
        ``(n, 1600)`` features in ``(h, w, c)`` order, in the input's float dtype.

    Raises:
        ValueError: wrong image shape or dtype, malformed params.
    """
    x = _check_images(x)
    _check_params(params)
    h = nn.relu(nn.conv2d(x, params["conv1"]["w"], params["conv1"]["b"], impl=conv_impl))
    h = nn.max_pool2d(h, size=2, impl=pool_impl)
    h = nn.relu(nn.conv2d(h, params["conv2"]["w"], params["conv2"]["b"], impl=conv_impl))
    h = nn.max_pool2d(h, size=2, impl=pool_impl)
    return nn.flatten(h)


def apply(
    params: Params,
    x: Float[Array, "n h w c"],
    *,
    train: bool = False,
    key: PRNGKeyArray | None = None,
    dropout_mask: Array | None = None,
    rate: float = 0.5,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
) -> Float[Array, "n 10"]:
    """Logits of the seed CNN.

    Args:
        params: from :func:`init_params`.
        x: images ``(n, 28, 28, 1)`` in ``[0, 1]`` (``(n, 28, 28)`` is accepted too).
        train: (static) apply dropout (needs ``key`` or ``dropout_mask``).
        key: PRNG key for the dropout mask in train mode.
        dropout_mask: optional ``(n, 1600)`` keep-mask with values {0, 1} (then no randomness).
        rate: (static) dropout rate.
        conv_impl: (static) see :func:`dlx_jax.nn.conv2d`.
        pool_impl: (static) see :func:`dlx_jax.nn.max_pool2d`.

    Returns:
        ``(n, 10)`` logits in the input's float dtype.

    Raises:
        ValueError: wrong image shape or dtype, malformed params, train mode without key/mask.
    """
    h = features(params, x, conv_impl=conv_impl, pool_impl=pool_impl)
    if train:
        h = nn.dropout(key, h, rate=rate, mask=dropout_mask)
    return nn.dense(h, params["dense"]["w"], params["dense"]["b"])


def loss(
    params: Params,
    x: Float[Array, "n h w c"],
    y: Int[Array, " n"],
    *,
    key: PRNGKeyArray | None = None,
    dropout_mask: Array | None = None,
    rate: float = 0.5,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
) -> Float[Array, ""]:
    """Mean softmax cross-entropy of the CNN in train mode (dropout from ``key`` or ``dropout_mask``).

    Labels ``y`` must be ``(n,)`` integers in ``0..9``. Count and dtype are checked always; values
    when concrete. Under ``jit`` an out-of-range label cannot be checked: it gives a NaN loss
    (``>= 10``) or a wrong finite one (negative labels wrap around); wrap the loss with
    ``dlx_jax.checked`` to get the ``ValueError`` inside compiled code. The same holds for images
    outside ``[0, 1]``.

    Raises:
        ValueError: as :func:`apply`, plus labels of the wrong shape, dtype or (concrete) range,
            or an empty batch (the mean over no images is undefined).
    """
    _check_labels(_check_images(x), y)
    logits = apply(
        params,
        x,
        train=True,
        key=key,
        dropout_mask=dropout_mask,
        rate=rate,
        conv_impl=conv_impl,
        pool_impl=pool_impl,
    )
    return nn.softmax_cross_entropy(logits, y)


def train_loss(
    key: PRNGKeyArray,
    params: Params,
    batch: tuple[Float[Array, "n h w c"], Int[Array, " n"]],
    *,
    rate: float = 0.5,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
) -> Float[Array, ""]:
    """:func:`loss` in the training loop's shape ``loss_fn(key, params, batch)``, ``batch = (x, y)``.

    The dropout mask is drawn from ``key``; pass it to
    :func:`dlx_jax.training.make_train_step` (with ``functools.partial`` for the static options).
    """
    x, y = batch
    return loss(params, x, y, key=key, rate=rate, conv_impl=conv_impl, pool_impl=pool_impl)


def accuracy(
    params: Params, x: Float[Array, "n h w c"], y: Int[Array, " n"], **kwargs: Any
) -> Float[Array, ""]:
    """Fraction of correctly classified images (eval mode, no dropout).

    Raises:
        ValueError: as :func:`apply`, plus labels that are not one integer in ``0..9`` per image
            (count and dtype checked also under ``jit``, values when concrete), or no images.
    """
    _check_labels(_check_images(x), y)
    return jnp.mean(jnp.argmax(apply(params, x, **kwargs), axis=-1) == y)


def predict(
    params: Params, x: Float[Array, "n h w c"], *, batch_size: int = 500, **kwargs: Any
) -> Int[Array, " n"]:
    """Predicted labels, computed in ``lax.map`` batches of ``batch_size`` (static) to bound memory.

    Raises:
        ValueError: as :func:`apply`, or ``batch_size`` is not an int >= 1.
    """
    check_sizes(batch_size=batch_size)
    x = _check_images(x)
    n = x.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.int32)
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xb = xp.reshape(nb, batch_size, *x.shape[1:])
    labels = lax.map(lambda xi: jnp.argmax(apply(params, xi, **kwargs), axis=-1).astype(jnp.int32), xb)
    return labels.reshape(-1)[:n]


def evaluate(
    params: Params, x: Float[Array, "n h w c"], y: Int[Array, " n"], *, batch_size: int = 500, **kwargs: Any
) -> Float[Array, ""]:
    """Accuracy over a whole set, evaluated in batches (see :func:`predict`).

    Raises:
        ValueError: as :func:`predict`, plus labels that are not one integer in ``0..9`` per image,
            or no images.
    """
    _check_labels(_check_images(x), y)
    return jnp.mean(predict(params, x, batch_size=batch_size, **kwargs) == y)


def load_params(path: str | Path) -> Params:
    """Read seed-CNN parameters written by :func:`dlx_jax.params_io.save_params` (float32).

    A thin wrapper over :func:`dlx_jax.params_io.load_params` with the seed CNN's layout as the
    template.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the folder does not hold seed-CNN parameters.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no CNN parameters at {path.absolute()}; train them with `python -m experiments.cnn`"
        )
    like = jax.eval_shape(init_params, jax.random.key(0))
    params = params_io.load_params(path, like)
    _check_params(params)
    return params
