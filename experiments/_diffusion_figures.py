"""Figures that steps 9 and 10 share: an image grid, the training-loss curve, a denoising trajectory."""

from __future__ import annotations

import numpy as np

from experiments import _generative
from experiments._outputs import StepOutput
from experiments._plots import plt


def show_grid(out: StepOutput, images: np.ndarray, rows: int, cols: int, title: str, name: str, **kw) -> None:
    fig, ax = plt.subplots(figsize=(cols * 0.7 + 0.4, rows * 0.7 + 0.6))
    ax.imshow(np.clip(_generative.grid(images, rows, cols), 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(kw.get("yticks", []), kw.get("yticklabels", []))
    out.figure(fig, name)


def loss_figure(out: StepOutput, history: dict[str, list], title: str, book_final: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    loss = history["loss"]
    ax.plot(np.arange(1, len(loss) + 1), loss, marker="o", ms=2)
    ax.axhline(book_final, color="gray", ls="--", lw=1, label=f"book's final loss {book_final}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("noise-prediction MSE (mean over the epoch)")
    ax.set_title(title)
    ax.legend()
    out.figure(fig, "loss_curve")


def trajectory_figure(out: StepOutput, traj: np.ndarray, ts: np.ndarray, title: str) -> None:
    """Rows = images, columns = x_t at the trajectory's timesteps (t = T ... 0)."""
    n_img = min(traj.shape[1], 4)
    fig, axes = plt.subplots(n_img, len(ts), figsize=(len(ts) * 0.8, n_img * 0.85 + 0.4), squeeze=False)
    for r in range(n_img):
        for c, t in enumerate(ts):
            ax = axes[r, c]
            ax.imshow(np.clip(traj[c, r, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={int(t)}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    out.figure(fig, "denoising_trajectory")
