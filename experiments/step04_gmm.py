"""Step 4 — Gaussian mixture model. The book's 2-component GMM of Old Faithful: its density as a
surface and contour, and 500 ancestral samples (component first, then the point) beside the data
(book chapter 4)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import mixture
from dlx_jax.data import check_sample, load_old_faithful, load_table
from experiments import _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import OLD_FAITHFUL_AXES, data_vs_samples, gmm_density_grid, plt

# The book's parameters (chapter 4), fitted to Old Faithful (eruption minutes, waiting minutes).
BOOK_WEIGHTS = (0.35, 0.65)
BOOK_MEANS = ((2.0, 54.50), (4.3, 80.0))
BOOK_COVS = (((0.07, 0.44), (0.44, 33.7)), ((0.17, 0.94), (0.94, 36.0)))
QUICK = _quick.QUICK["step04_gmm"]


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step04_gmm"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    data: str | None = None
    n_samples: int = 500
    grid: int = 100

    SUMMARY = ("mean_log_likelihood_data", "sample_mean_abs_error")
    HELP = {
        "data": "2-column file of points shown beside the samples (default: vendored Old Faithful)",
        "n_samples": "number of ancestral samples",
        "grid": "grid points per axis of the density surface",
    }
    LIMITS = {
        "n_samples": (1_000_000, "every sample is a point of a scatter plot"),
        "grid": (2000, "the density is evaluated on GRID² points"),
    }


def _load(config: Config) -> np.ndarray:
    """Check the settings, then the data shown beside the samples; ValueError before any output."""
    check_config(config)
    if config.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {config.n_samples}")
    if config.grid < 2:
        raise ValueError(f"--grid must be >= 2, got {config.grid}")
    data = load_old_faithful() if config.data is None else load_table(config.data, ncols=2)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"--data needs at least one row of 2 columns, got shape {data.shape}")
    # shown beside the book's GMM: its log-density and the figure grid need values far from overflow
    check_sample(data, source=f"--data {config.data}", dtype=np.float32, spread=False)
    return data


def _compute(config: Config, data: np.ndarray, grid: int) -> dict:
    """Ancestral samples of the book's GMM, its density on a grid and its log-likelihood of the data."""
    with jax.enable_x64(True):
        params = mixture.gmm_params_from_covariances(
            jnp.asarray(BOOK_WEIGHTS), jnp.asarray(BOOK_MEANS), jnp.asarray(BOOK_COVS)
        )
        sample = jax.jit(mixture.sample_gmm, static_argnames="n")
        samples, labels = sample(jax.random.key(config.seed), params, n=config.n_samples)
        logpdf = jax.jit(mixture.gmm_logpdf)
        xx, yy, density = gmm_density_grid(
            np.concatenate([data, np.asarray(samples)]), params, size=grid, pad=0.05
        )
        ll_data = float(jnp.mean(logpdf(jnp.asarray(data), params)))
        samples, labels = np.asarray(samples), np.asarray(labels)
    return {"samples": samples, "labels": labels, "xx": xx, "yy": yy, "density": density, "ll_data": ll_data}


def _metrics(config: Config, result: dict) -> dict:
    samples, labels = result["samples"], result["labels"]
    expected_mean = np.asarray(BOOK_WEIGHTS) @ np.asarray(BOOK_MEANS)
    return {
        "n_samples": config.n_samples,
        "sample_fraction_component_1": float(np.mean(labels == 1)),
        "sample_mean": samples.mean(0),
        "mixture_mean": expected_mean,
        "sample_mean_abs_error": float(np.max(np.abs(samples.mean(0) - expected_mean))),
        "mean_log_likelihood_data": result["ll_data"],
        "weights": np.asarray(BOOK_WEIGHTS),
        "means": np.asarray(BOOK_MEANS),
        "covariances": np.asarray(BOOK_COVS),
    }


def _figures(out: StepOutput, config: Config, data: np.ndarray, result: dict) -> None:
    xx, yy, density = result["xx"], result["yy"], result["density"]
    fig = plt.figure(figsize=(12, 5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    ax.plot_surface(xx, yy, density, cmap="viridis", linewidth=0)
    ax.set_xlabel(OLD_FAITHFUL_AXES[0])
    ax.set_ylabel(OLD_FAITHFUL_AXES[1])
    ax.set_zlabel("p(x)")
    ax.set_title("GMM density (book's parameters)")
    ax2 = fig.add_subplot(1, 2, 2)
    cs = ax2.contour(xx, yy, density, levels=10, cmap="viridis")
    ax2.clabel(cs, fontsize=7, fmt="%.3f")
    ax2.set_xlabel(OLD_FAITHFUL_AXES[0])
    ax2.set_ylabel(OLD_FAITHFUL_AXES[1])
    ax2.set_title("GMM density contour")
    out.figure(fig, "gmm_density")

    title = f"{config.n_samples} ancestral samples from the GMM"
    out.figure(data_vs_samples(data, result["samples"], result["labels"], title=title), "gmm_samples")


def main(config: Config) -> dict:
    data = _load(config)
    result = _compute(config, data, QUICK["grid"] if config.quick else config.grid)
    metrics = _metrics(config, result)
    with StepOutput(config) as out:
        if out.plots:
            _figures(out, config, data, result)
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
