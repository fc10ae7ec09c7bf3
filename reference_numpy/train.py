"""Mini-batch training loop and evaluation for the numpy CNN.

One epoch: shuffle the training set with ``rng``, cut it into batches of ``batch_size`` (the last,
smaller batch is kept), and for each batch run forward + backward (dropout drawn from the same
``rng``) and one Adam step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from reference_numpy import cnn
from reference_numpy.adam import Adam, AdamState

__all__ = ["evaluate", "fit", "train_epoch"]


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC float images (N, 28, 28, 1), got shape {x.shape}; use x[..., None]")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},), got {y.shape}")
    return x, y


def train_epoch(
    params: cnn.Params,
    opt_state: AdamState,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    optimizer: Adam,
    progress: Any = None,
    rate: float = 0.5,
) -> tuple[cnn.Params, AdamState, float]:
    """One pass over ``(x, y)`` in shuffled mini-batches.

    Args:
        params: CNN params.
        opt_state: ``optimizer.init(params)`` or the state from the previous epoch.
        x: ``(N, 28, 28, 1)`` float images; ``y``: ``(N,)`` integer labels.
        batch_size: examples per step; the last partial batch is kept.
        rng: shuffles the data and draws the dropout masks.
        optimizer: an :class:`~reference_numpy.adam.Adam`.
        progress: optional tqdm-like bar; ``update(1)`` and ``set_postfix(loss=...)`` per batch.
        rate: dropout rate.

    Returns:
        ``(params, opt_state, mean_loss)`` where ``mean_loss`` averages the per-example training loss
        over the epoch (batch losses weighted by batch size).
    """
    x, y = _check_xy(x, y)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    order = rng.permutation(n)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        loss, grads, _ = cnn.loss_and_grads(params, x[idx], y[idx], rng=rng, rate=rate)
        params, opt_state = optimizer.update(grads, opt_state, params)
        total += float(loss) * len(idx)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    return params, opt_state, total / max(n, 1)


def evaluate(params: cnn.Params, x: np.ndarray, y: np.ndarray) -> float:
    """Classification accuracy in [0, 1] (evaluation mode, no dropout)."""
    x, y = _check_xy(x, y)
    return float(np.mean(cnn.predict(params, x) == y))


def fit(
    params: cnn.Params,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    progress: bool = True,
    optimizer: Adam | None = None,
) -> tuple[cnn.Params, dict[str, list[float]]]:
    """Train for ``epochs`` epochs with Adam (default ``Adam(1e-3)``), evaluating after each epoch.

    Returns:
        ``(params, history)`` with lists ``train_loss``, ``test_accuracy`` (empty without test data) and
        ``epoch_seconds`` (training time per epoch, excluding evaluation).
    """
    from tqdm.auto import tqdm

    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    optimizer = optimizer or Adam()
    opt_state = optimizer.init(params)
    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": [], "epoch_seconds": []}
    steps = -(-len(x_train) // batch_size)
    for epoch in range(epochs):
        with tqdm(
            total=steps, desc=f"numpy epoch {epoch + 1}/{epochs}", disable=not progress, leave=False
        ) as bar:
            t0 = time.perf_counter()
            params, opt_state, loss = train_epoch(
                params,
                opt_state,
                x_train,
                y_train,
                batch_size=batch_size,
                rng=rng,
                optimizer=optimizer,
                progress=bar,
            )
            history["epoch_seconds"].append(time.perf_counter() - t0)
        history["train_loss"].append(loss)
        if x_test is not None and y_test is not None:
            history["test_accuracy"].append(evaluate(params, x_test, y_test))
    return params, history
