"""Figure helpers shared by the GMM steps (4 and 5)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dlx_jax import mixture
from experiments._common import plt

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
