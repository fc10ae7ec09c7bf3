"""Step 3 — the multivariate normal. The 2-D density as a surface and contours, then the maximum
likelihood fit to real 2-D data and samples drawn from it (book step 3).

Default data: the book's own ``height_weight.txt`` (25,000 × (height cm, weight kg), vendored);
``--data galton`` selects Galton's (father, son) heights; any other value is a two-column file.
Also the book's small scripts: ``numpy_basis.py`` / ``numpy_matrix.py``'s printed values
(``book_dot``, ``book_matmul``, ``book_det``, ``book_inverse``, ``book_mvn_pdf``), ``plot_3d.py``
(``book_plot_3d.png``) and ``mle.py``'s fit as the book draws it: ``np.cov`` (ddof 1) as a 3-D surface
beside its contours over the first 500 points (``mle_surface_book.png``)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import distributions
from dlx_jax.data import check_sample, load_book_height_weight, load_galton_father_son
from experiments import _book, _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import plt

BOOK_MU = (0.5, -0.2)
BOOK_COV = ((2.0, 0.3), (0.3, 0.5))
QUICK = _quick.QUICK["step03_mvn"]
DATASETS = {
    "book": (load_book_height_weight, "the book's height_weight.txt", ("height (cm)", "weight (kg)")),
    "galton": (
        load_galton_father_son,
        "Galton's fathers and sons",
        ("father height (cm)", "son height (cm)"),
    ),
}


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step03_mvn"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    data: str = "book"
    grid_size: int = 100
    n_generated: int = 0

    SUMMARY = ("n", "mean", "correlation")
    HELP = {
        "data": "book (the book's height_weight.txt: 25,000 × (cm, kg)), galton (Galton's (father, son) "
        "heights, cm) or a two-column file of numbers",
        "grid_size": "points per axis of the density surfaces and contours (quick mode: 40)",
        "n_generated": "samples drawn from the fit for the generated-vs-original figure (0: as many as data)",
    }
    LIMITS = {
        "grid_size": (2000, "the density is evaluated on GRID_SIZE² points for each figure"),
        "n_generated": (1_000_000, "every draw is a point of a scatter plot"),
    }


def load_data(config: Config) -> tuple[np.ndarray, str, tuple[str, str]]:
    """The (n, 2) float64 sample, a label and axis names; raises ValueError for a bad --data file."""
    if config.data in DATASETS:
        loader, label, axis_names = DATASETS[config.data]
        return loader(), label, axis_names
    x = _book.load_file(config.data, ncols=2, names=DATASETS)
    if x.shape[0] < 3:
        raise ValueError(f"{config.data} holds {x.shape[0]} rows; a 2-D covariance fit needs at least 3")
    check_sample(x, source=f"--data {config.data}")  # float64 fit: magnitude, each column varies
    corr = np.corrcoef(x, rowvar=False)[0, 1]
    if not 1.0 - corr**2 > 1e-12:
        raise ValueError(
            f"--data {config.data}: the two columns are collinear (correlation {corr:+.12g}), so their "
            "covariance is singular (not positive definite) and no 2-D normal fits them; pass data whose "
            "columns are not linear functions of each other"
        )
    return x, str(config.data), ("x₁", "x₂")


def _grid(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size))
    return xs, ys, np.stack([xs, ys], axis=-1)


def _check(config: Config) -> None:
    check_config(config)
    if config.grid_size < 5:
        raise ValueError(f"--grid-size must be >= 5, got {config.grid_size}")
    if config.n_generated < 0:
        raise ValueError(f"--n-generated must be >= 0, got {config.n_generated}")


def _book_density(size: int) -> dict:
    """The book's example density on its (-5, 5)² grid."""
    logpdf = jax.jit(distributions.mvn_logpdf)
    book_mu, book_cov = np.array(BOOK_MU), np.array(BOOK_COV)
    distributions.scale_tril_from_cov(book_cov)  # eager: a concrete check that the example covariance is SPD
    bx, by, bgrid = _grid(np.array([-5.0, -5.0]), np.array([5.0, 5.0]), size)
    book_density = np.exp(np.asarray(logpdf(jnp.asarray(bgrid, jnp.float32), book_mu, book_cov)))
    pdf_at_mean = float(np.exp(logpdf(book_mu, book_mu, book_cov)))
    return {"bx": bx, "by": by, "density": book_density, "pdf_at_mean": pdf_at_mean}


def _fit(config: Config, x: np.ndarray, size: int, n_generated: int) -> dict:
    """The MLE fit (float64, so it equals numpy's mean / np.cov on the same file to ~1e-15)."""
    with jax.enable_x64(True):
        mean, cov = (np.asarray(v) for v in jax.jit(distributions.mvn_mle)(x))
        cov_unbiased = np.asarray(jax.jit(lambda v: distributions.mvn_mle(v, ddof=1))(x)[1])
        scale_tril = np.asarray(distributions.scale_tril_from_cov(cov))  # eager: raises if degenerate
        mean_log_likelihood = float(jnp.mean(distributions.mvn_logpdf(x, mean, scale_tril=scale_tril)))
        generated = np.asarray(
            jax.jit(distributions.sample_mvn, static_argnames="shape")(
                jax.random.key(config.seed), mean, scale_tril=scale_tril, shape=(n_generated,)
            )
        )
        pad = 0.1 * (x.max(0) - x.min(0)) + 1e-9
        fx, fy, fgrid = _grid(x.min(0) - pad, x.max(0) + pad, size)
        fit_density = np.exp(np.asarray(distributions.mvn_logpdf(fgrid, mean, scale_tril=scale_tril)))
        gen_mean, gen_cov = (np.asarray(v) for v in distributions.mvn_mle(generated))
    return {
        "mean": mean,
        "cov": cov,
        "cov_unbiased": cov_unbiased,
        "mean_log_likelihood": mean_log_likelihood,
        "generated": generated,
        "fx": fx,
        "fy": fy,
        "density": fit_density,
        "generated_mean": gen_mean,
        "generated_cov": gen_cov,
    }


def _metrics(x: np.ndarray, label: str, book: dict, fit: dict) -> dict:
    cov = fit["cov"]
    return {
        "data": label,
        "n": int(x.shape[0]),
        "mean": fit["mean"],
        "cov": cov,
        "cov_unbiased": fit["cov_unbiased"],
        "correlation": float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])),
        "mean_log_likelihood": fit["mean_log_likelihood"],
        "book_pdf_at_mean": book["pdf_at_mean"],
        **_book.numpy_matrix_values(),
        "n_generated": len(fit["generated"]),
        "generated_mean": fit["generated_mean"],
        "generated_cov": fit["generated_cov"],
    }


def _figures(out: StepOutput, x: np.ndarray, label: str, axis_names: tuple[str, str], book: dict, fit: dict):
    bx, by, book_density = book["bx"], book["by"], book["density"]
    fig = plt.figure(figsize=(11, 4.5))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax3.plot_surface(bx, by, book_density, cmap="viridis")
    ax3.set(title="2-D normal density", xlabel="x₁", ylabel="x₂", zlabel="p(x)")
    ax = fig.add_subplot(1, 2, 2)
    cs = ax.contour(bx, by, book_density, levels=10)
    ax.clabel(cs, fontsize=7)
    ax.set(title="Contours: μ=(0.5, −0.2), Σ=((2, 0.3), (0.3, 0.5))", xlabel="x₁", ylabel="x₂")
    ax.set_aspect("equal")
    out.figure(fig, "mvn_surface_contour")

    fx, fy, fit_density, generated = fit["fx"], fit["fy"], fit["density"], fit["generated"]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(x[:, 0], x[:, 1], s=8, alpha=0.5, label=f"data (n={x.shape[0]})")
    ax.contour(fx, fy, fit_density, levels=8, cmap="plasma")
    ax.plot(*fit["mean"], "r+", ms=12, label="MLE mean")
    ax.set(title=f"MLE normal over the data — {label}", xlabel=axis_names[0], ylabel=axis_names[1])
    ax.legend()
    out.figure(fig, "mle_contour")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
    axes[0].scatter(x[:, 0], x[:, 1], s=8, alpha=0.5)
    axes[0].set(title="Original data", xlabel=axis_names[0], ylabel=axis_names[1])
    axes[1].scatter(generated[:, 0], generated[:, 1], s=8, alpha=0.5, color="C1")
    axes[1].set(title=f"Generated from the fit ({len(generated)} samples)", xlabel=axis_names[0])
    for ax in axes:
        ax.contour(fx, fy, fit_density, levels=8, cmap="plasma", alpha=0.5)
    out.figure(fig, "generated_vs_original")
    _book.plot_3d_figure(out)
    _book_mle_figure(out, x, axis_names, fit)


def _book_mle_figure(out: StepOutput, x: np.ndarray, axis_names: tuple[str, str], fit: dict) -> None:
    """``step03/mle.py``'s figure: the fit with ``np.cov``'s ddof-1 covariance as a 3-D surface, and
    its contours over the first 500 points."""
    fx, fy = fit["fx"], fit["fy"]
    with jax.enable_x64(True):
        grid = np.stack([fx, fy], axis=-1)
        density = np.asarray(distributions.mvn_pdf(grid, fit["mean"], fit["cov_unbiased"]))
    fig = plt.figure(figsize=(11, 4.5))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax3.plot_surface(fx, fy, density, cmap="viridis")
    ax3.set(title="MLE fit, covariance with ddof 1 (np.cov)", xlabel=axis_names[0], ylabel=axis_names[1])
    ax = fig.add_subplot(1, 2, 2)
    small = x[:500]
    ax.scatter(small[:, 0], small[:, 1], s=8, alpha=0.6)
    ax.contour(fx, fy, density)
    ax.set(title=f"the first {len(small)} points and the fit's contours", xlabel=axis_names[0])
    ax.set_ylabel(axis_names[1])
    out.figure(fig, "mle_surface_book")


def main(config: Config) -> dict:
    _check(config)
    x, label, axis_names = load_data(config)
    size = _quick.cap(config, config.grid_size, QUICK["grid_size"])
    book = _book_density(size)
    fit = _fit(config, x, size, config.n_generated or x.shape[0])
    metrics = _metrics(x, label, book, fit)
    with StepOutput(config) as out:
        if out.plots:
            _figures(out, x, label, axis_names, book, fit)
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
