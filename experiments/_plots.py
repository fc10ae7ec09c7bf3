"""Figures: matplotlib set to its file-only backend (Agg) for every step, and the GMM steps' helpers.

Figure code imports ``plt`` from here, so the backend is chosen before pyplot is first used (no
window, no display needed). :func:`gmm_density_grid` and :func:`data_vs_samples` are shared by
steps 4 and 5.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dlx_jax import mixture  # noqa: E402

__all__ = ["OLD_FAITHFUL_AXES", "data_vs_samples", "gmm_density_grid", "plt"]

OLD_FAITHFUL_AXES = ("eruptions (min)", "waiting (min)")


def gmm_density_grid(
    points: np.ndarray, params: mixture.GMMParams, *, size: int, pad: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xx, yy, density)`` of a 2-D GMM on a ``size × size`` grid spanning ``points`` (+ ``pad``·range)."""
    lo, hi = points.min(0), points.max(0)
    margin = pad * (hi - lo)
    xx, yy = np.meshgrid(
        np.linspace(lo[0] - margin[0], hi[0] + margin[0], size),
        np.linspace(lo[1] - margin[1], hi[1] + margin[1], size),
    )
    density = np.exp(np.asarray(mixture.gmm_logpdf(jnp.stack([xx, yy], axis=-1), params)))
    return xx, yy, density


def data_vs_samples(data: np.ndarray, samples: np.ndarray, labels: np.ndarray, *, title: str):
    """Side-by-side scatter: the data in grey, GMM samples coloured by their component."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
    axes[0].scatter(data[:, 0], data[:, 1], s=8, color="tab:gray")
    axes[0].set_title(f"data ({len(data)} points)")
    for j in np.unique(labels):
        sel = labels == j
        axes[1].scatter(samples[sel, 0], samples[sel, 1], s=8, color=f"C{j}", label=f"component {j + 1}")
    axes[1].set_title(title)
    axes[1].legend()
    for a in axes:
        a.set_xlabel(OLD_FAITHFUL_AXES[0])
        a.set_ylabel(OLD_FAITHFUL_AXES[1])
    return fig
