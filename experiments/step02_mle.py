"""Step 2 — maximum likelihood estimation. Fit a normal to real heights, generate new data from the
fit, and read probabilities off its CDF (book step 2).

Default data: the book's own ``height.txt`` (25,000 heights, vendored), so ``p_le_a`` and ``p_gt_b``
are the book's printed P(x ≤ 160) = 0.004271406830855 and P(x > 180) = 0.06541774339950823.
``--data galton`` selects Galton's 481 sons; any other value is a one-column file of numbers."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from dlx_jax import distributions
from dlx_jax.data import check_sample, load_book_heights, load_galton_heights
from experiments import _book, _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import plt

QUICK = _quick.QUICK["step02_mle"]
DATASETS = {
    "book": (load_book_heights, "the book's height.txt (cm)"),
    "galton": (load_galton_heights, "Galton's sons (cm)"),
}


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step02_mle"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    data: str = "book"
    a: float = 160.0
    b: float = 180.0
    n_generated: int = 10_000
    bins: int = 30

    SUMMARY = ("n", "mu", "sigma", "p_le_a", "p_gt_b")
    HELP = {
        "data": "book (the book's height.txt, 25,000 heights), galton (Galton's 481 sons, cm) or a "
        "one-column file of numbers",
        "a": "report P(x <= a) under the fitted normal",
        "b": "report P(x > b) under the fitted normal",
        "n_generated": "samples drawn from the fitted normal for the generated-vs-original figure",
        "bins": "histogram bins",
    }
    LIMITS = {
        "n_generated": (10_000_000, "the float64 draws are held in memory and histogrammed with the data"),
        "bins": (100_000, "a histogram bar per bin"),
    }


def load_data(config: Config) -> tuple[np.ndarray, str]:
    """The 1-D sample (float64) and a label for it; raises ValueError for a bad --data file."""
    if config.data in DATASETS:
        loader, label = DATASETS[config.data]
        return loader(), label
    x = _book.load_file(config.data, ncols=1, names=DATASETS)
    if x.size < 2:
        raise ValueError(f"{config.data} holds {x.size} value; fitting a normal needs at least 2")
    check_sample(x, source=f"--data {config.data}")  # float64 fit: magnitude, and a positive variance
    return x, str(config.data)


def _check(config: Config) -> None:
    check_config(config)
    if config.n_generated < 1:
        raise ValueError(f"--n-generated must be >= 1, got {config.n_generated}")
    if config.bins < 2:
        raise ValueError(f"--bins must be >= 2, got {config.bins}")
    if not np.isfinite([config.a, config.b]).all():
        raise ValueError(f"--a and --b must be finite numbers, got {config.a}, {config.b}")


def _compute(config: Config, x: np.ndarray, n_generated: int) -> dict:
    """The MLE fit, its tail probabilities, draws from it and its pdf/CDF on a grid (float64)."""
    # float64 throughout so the fit equals numpy's mean/std on the same file to ~1e-15
    with jax.enable_x64(True):
        mu, sigma = (float(v) for v in jax.jit(distributions.normal_mle)(x))
        _, sigma_unbiased = jax.jit(lambda v: distributions.normal_mle(v, ddof=1))(x)
        p_le_a = float(distributions.normal_cdf(config.a, mu, sigma))
        p_gt_b = float(distributions.normal_cdf(-config.b, -mu, sigma))  # = 1 - Φ((b-μ)/σ), no cancellation
        generated = np.asarray(
            jax.jit(distributions.sample_normal, static_argnames="shape")(
                jax.random.key(config.seed), mu, sigma, shape=(n_generated,)
            )
        )
        grid = np.linspace(min(x.min(), config.a) - 2 * sigma, max(x.max(), config.b) + 2 * sigma, 400)
        return {
            "mu": mu,
            "sigma": sigma,
            "sigma_unbiased": float(sigma_unbiased),
            "p_le_a": p_le_a,
            "p_gt_b": p_gt_b,
            "generated": generated,
            "grid": grid,
            "fitted_pdf": np.asarray(distributions.normal_pdf(grid, mu, sigma)),
            "fitted_cdf": np.asarray(distributions.normal_cdf(grid, mu, sigma)),
            "mean_log_likelihood": float(distributions.normal_logpdf(x, mu, sigma).mean()),
        }


def _metrics(config: Config, x: np.ndarray, label: str, fit: dict) -> dict:
    return {
        "data": label,
        "n": int(x.size),
        "mu": fit["mu"],
        "sigma": fit["sigma"],
        "sigma_unbiased": fit["sigma_unbiased"],
        "mean_log_likelihood": fit["mean_log_likelihood"],
        "a": config.a,
        "b": config.b,
        "p_le_a": fit["p_le_a"],
        "p_gt_b": fit["p_gt_b"],
        "n_generated": len(fit["generated"]),
        "generated_mean": float(fit["generated"].mean()),
        "generated_std": float(fit["generated"].std()),
    }


def _fit_figures(out: StepOutput, config: Config, x: np.ndarray, label: str, fit: dict) -> None:
    """The fit over the data's histogram, and data generated from it beside the original."""
    grid, generated = fit["grid"], fit["generated"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(x, bins=config.bins, density=True, alpha=0.6, label=f"data (n={x.size})")
    ax.plot(grid, fit["fitted_pdf"], "r", label=f"MLE fit N({fit['mu']:.2f}, {fit['sigma']:.2f}²)")
    ax.set(
        title="Maximum likelihood normal over the data",
        xlabel=f"height — {label}",
        ylabel="probability density",
    )
    ax.legend()
    out.figure(fig, "mle_fit")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    edges = np.histogram_bin_edges(np.concatenate([x, generated]), bins=config.bins)
    ax.hist(x, bins=edges, density=True, alpha=0.6, label="original")
    ax.hist(generated, bins=edges, density=True, alpha=0.6, label=f"generated ({len(generated)})")
    ax.set(
        title="Data generated from the fitted normal vs the original",
        xlabel="height",
        ylabel="probability density",
    )
    ax.legend()
    out.figure(fig, "generated_vs_original")


def _probability_figure(out: StepOutput, config: Config, fit: dict) -> None:
    """P(x ≤ a) and P(x > b) as areas under the pdf and as values of the CDF."""
    grid, fitted_pdf, p_le_a, p_gt_b = fit["grid"], fit["fitted_pdf"], fit["p_le_a"], fit["p_gt_b"]
    a, b = config.a, config.b
    fig, (ax_pdf, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4))
    ax_pdf.plot(grid, fitted_pdf, "k")
    ax_pdf.fill_between(
        grid, 0, fitted_pdf, where=grid <= a, color="C0", alpha=0.5, label=f"P(x ≤ {a:g}) = {p_le_a:.4f}"
    )
    ax_pdf.fill_between(
        grid, 0, fitted_pdf, where=grid > b, color="C3", alpha=0.5, label=f"P(x > {b:g}) = {p_gt_b:.4f}"
    )
    ax_pdf.set(title="Tail probabilities are areas under the fitted pdf", xlabel="height", ylabel="p(x)")
    ax_pdf.legend()
    ax_cdf.plot(grid, fit["fitted_cdf"], "k", label="CDF F(x) of the fit")
    f_b = 1.0 - p_gt_b
    ax_cdf.plot([a, a, grid[0]], [0, p_le_a, p_le_a], "C0--", label=f"F({a:g}) = P(x ≤ {a:g}) = {p_le_a:.4f}")
    ax_cdf.plot([b, b, grid[0]], [0, f_b, f_b], "C3--", label=f"1 − F({b:g}) = P(x > {b:g}) = {p_gt_b:.4f}")
    ax_cdf.set(
        title="The same probabilities read off the CDF",
        xlabel="height",
        ylabel="F(x) = P(X ≤ x)",
        ylim=(0, 1.02),
    )
    ax_cdf.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.figure(fig, "cdf_probabilities")


def main(config: Config) -> dict:
    _check(config)
    x, label = load_data(config)
    n_generated = _quick.cap(config, config.n_generated, QUICK["n_generated"])
    fit = _compute(config, x, n_generated)
    metrics = _metrics(config, x, label, fit)
    with StepOutput(config) as out:
        if out.plots:
            _fit_figures(out, config, x, label, fit)
            _probability_figure(out, config, fit)
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
