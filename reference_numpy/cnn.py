"""The seed CNN, assembled from :mod:`reference_numpy.layers`.

Architecture (34,826 parameters)::

    x (N, 28, 28, 1)
    -> conv1 3x3, 1->32, valid, +bias -> ReLU    (N, 26, 26, 32)
    -> max-pool 2x2 stride 2                     (N, 13, 13, 32)
    -> conv2 3x3, 32->64, valid, +bias -> ReLU   (N, 11, 11, 64)
    -> max-pool 2x2 stride 2 (floor)             (N, 5, 5, 64)
    -> flatten (C order: h, w, c)                (N, 1600)
    -> dropout 0.5 (training only, inverted)
    -> dense 1600->10                            (N, 10) logits
    -> softmax cross-entropy (mean over the batch)

Parameters are a nested dict ``{"conv1": {"w", "b"}, "conv2": {"w", "b"}, "dense": {"w", "b"}}`` with
conv kernels in HWIO layout and the dense weight as ``(1600, 10)`` -- the same layout as
``dlx_jax.cnn``, so the two can be compared parameter for parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference_numpy import layers

__all__ = [
    "LAYER_SHAPES",
    "backward",
    "count_params",
    "forward",
    "glorot_uniform",
    "init_params",
    "loss_and_grads",
    "predict",
]

Params = dict[str, dict[str, np.ndarray]]

#: Weight shapes of the seed CNN (HWIO kernels, dense (D, K)).
LAYER_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1": (3, 3, 1, 32),
    "conv2": (3, 3, 32, 64),
    "dense": (1600, 10),
}


def glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Glorot (Xavier) uniform: ``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``.

    For a conv kernel ``(KH, KW, Cin, Cout)``: ``fan_in = KH*KW*Cin`` and ``fan_out = KH*KW*Cout``
    (Keras' convention); for a dense ``(D, K)``: ``fan_in = D``, ``fan_out = K``.
    """
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def init_params(rng: np.random.Generator, *, dtype=np.float32) -> Params:
    """Glorot-uniform weights, zero biases, drawn from ``rng`` in the order conv1, conv2, dense."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError("init_params needs an explicit np.random.Generator, e.g. np.random.default_rng(0)")
    return {
        name: {"w": glorot_uniform(rng, shape, dtype), "b": np.zeros(shape[-1], dtype=dtype)}
        for name, shape in LAYER_SHAPES.items()
    }


def count_params(params: Params) -> int:
    """Total number of scalars in a (nested dict) parameter tree."""
    if isinstance(params, dict):
        return sum(count_params(v) for v in params.values())
    return int(np.asarray(params).size)


def _check_input(params: Params, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != params["conv1"]["w"].shape[2]:
        raise ValueError(
            f"x must be NHWC images of shape (N, 28, 28, {params['conv1']['w'].shape[2]}), got {x.shape}; "
            "add the channel axis with x[..., None] and scale uint8 pixels to [0, 1]"
        )
    if x.dtype.kind != "f":
        raise ValueError(
            f"x must be floating point in [0, 1], got dtype {x.dtype}; use x.astype(np.float32) / 255"
        )
    return x


def forward(
    params: Params,
    x: np.ndarray,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    dropout_mask: np.ndarray | None = None,
    rate: float = 0.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits of the CNN and the cache for :func:`backward`.

    Args:
        params: see module docstring.
        x: ``(N, 28, 28, 1)`` float images in [0, 1].
        train: apply dropout (needs ``rng`` or ``dropout_mask``); ``False`` skips it.
        rng: generator for the dropout mask (training only).
        dropout_mask: explicit keep-mask ``(N, 1600)`` of 0s and 1s (overrides ``rng``).
        rate: dropout rate.

    Returns:
        ``(logits (N, 10), cache)``.
    """
    x = _check_input(params, x)
    cache: dict[str, Any] = {"train": train}
    h, cache["conv1"] = layers.conv2d_forward(x, params["conv1"]["w"], params["conv1"]["b"])
    h, cache["relu1"] = layers.relu_forward(h)
    h, cache["pool1"] = layers.maxpool2d_forward(h, size=2, stride=2)
    h, cache["conv2"] = layers.conv2d_forward(h, params["conv2"]["w"], params["conv2"]["b"])
    h, cache["relu2"] = layers.relu_forward(h)
    h, cache["pool2"] = layers.maxpool2d_forward(h, size=2, stride=2)
    h, cache["flatten"] = layers.flatten_forward(h)
    if h.shape[1] != params["dense"]["w"].shape[0]:
        raise ValueError(
            f"flattened features {h.shape[1]} != dense input size {params['dense']['w'].shape[0]}; "
            "the seed CNN expects 28x28 images"
        )
    if train:
        if rng is None and dropout_mask is None:
            raise ValueError("forward(train=True) needs rng=np.random.default_rng(seed) or dropout_mask=")
        h, cache["dropout"] = layers.dropout_forward(h, rate=rate, rng=rng, mask=dropout_mask)
    logits, cache["dense"] = layers.dense_forward(h, params["dense"]["w"], params["dense"]["b"])
    return logits, cache


def backward(dlogits: np.ndarray, cache: dict[str, Any]) -> Params:
    """Backpropagate ``dL/dlogits`` through the cached forward pass; returns grads shaped like params."""
    grads: Params = {}
    dh, dw, db = layers.dense_backward(dlogits, cache["dense"])
    grads["dense"] = {"w": dw, "b": db}
    if cache["train"]:
        dh = layers.dropout_backward(dh, cache["dropout"])
    dh = layers.flatten_backward(dh, cache["flatten"])
    dh = layers.maxpool2d_backward(dh, cache["pool2"])
    dh = layers.relu_backward(dh, cache["relu2"])
    dh, dw, db = layers.conv2d_backward(dh, cache["conv2"])
    grads["conv2"] = {"w": dw, "b": db}
    dh = layers.maxpool2d_backward(dh, cache["pool1"])
    dh = layers.relu_backward(dh, cache["relu1"])
    _, dw, db = layers.conv2d_backward(dh, cache["conv1"], compute_dx=False)  # dL/dx is not needed
    grads["conv1"] = {"w": dw, "b": db}
    return {k: grads[k] for k in ("conv1", "conv2", "dense")}


def loss_and_grads(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    dropout_mask: np.ndarray | None = None,
    rate: float = 0.5,
) -> tuple[np.ndarray, Params, np.ndarray]:
    """Training-mode forward + backward: ``(mean cross-entropy, grads, logits)``.

    Dropout is active: pass ``rng`` (random mask) or ``dropout_mask`` (fixed keep-mask ``(N, 1600)``).
    Use ``rate=0.0`` with any ``rng`` to switch dropout off (e.g. for finite-difference checks).
    """
    logits, cache = forward(params, x, train=True, rng=rng, dropout_mask=dropout_mask, rate=rate)
    loss, dlogits = layers.softmax_cross_entropy(logits, y)
    return loss, backward(dlogits, cache), logits


def predict(params: Params, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Predicted class labels ``(N,)`` (evaluation mode, no dropout), computed in batches."""
    x = _check_input(params, x)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = [
        forward(params, x[i : i + batch_size], train=False)[0].argmax(axis=-1)
        for i in range(0, x.shape[0], batch_size)
    ]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
