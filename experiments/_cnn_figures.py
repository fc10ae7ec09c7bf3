"""The seed CNN step's figures: training curves, test digits with their predicted labels, the
confusion matrix (:mod:`experiments.cnn`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = ["confusion", "curves", "digits"]


def curves(out: StepOutput, config: Any, history) -> None:
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, history["train_loss"], "o-")
    ax1.set(xlabel="epoch", ylabel="mean training cross-entropy", title="Training loss")
    ax2.plot(epochs, 100 * np.asarray(history["test_accuracy"]), "o-", color="tab:green")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(
        f"Seed CNN on {config.dataset} ({config.backend} backend, Adam lr {config.lr:g}, "
        f"batch {config.batch_size})"
    )
    out.figure(fig, "curves")


def digits(out: StepOutput, config: Any, x_test, y_test, preds, rows: int = 6, cols: int = 10) -> None:
    rng = np.random.default_rng(config.seed)
    wrong = np.flatnonzero(preds != y_test)
    n_wrong = min(len(wrong), rows * cols // 4)
    chosen = list(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else []
    right = np.flatnonzero(preds == y_test)
    chosen += list(rng.choice(right, min(len(right), rows * cols - n_wrong), replace=False))
    chosen = np.sort(np.asarray(chosen, int))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), chosen, strict=False):
        ok = preds[i] == y_test[i]
        ax.imshow(x_test[i], cmap="gray_r")
        ax.set_title(
            f"{preds[i]}" if ok else f"{preds[i]} (true {y_test[i]})",
            fontsize=8,
            color="black" if ok else "red",
        )
        if not ok:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("red")
                spine.set_linewidth(2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"Test digits with predicted labels (red: wrong; {int(np.sum(preds != y_test))} of "
        f"{len(y_test)} wrong overall, up to {rows * cols // 4} shown)"
    )
    out.figure(fig, "predictions")


def confusion(out: StepOutput, config: Any, confusion, accuracy: float) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(confusion, cmap="Blues")
    thresh = confusion.max() / 2
    for i in range(10):
        for j in range(10):
            if confusion[i, j]:
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if confusion[i, j] > thresh else "black",
                )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted label",
        ylabel="true label",
        title=f"Confusion matrix, {config.dataset} test set (accuracy {100 * accuracy:.2f}%)",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="count")
    out.figure(fig, "confusion")
