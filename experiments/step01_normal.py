"""Step 1 — the normal distribution. Its density, how μ shifts and σ widens it, and the central limit
theorem: the mean and the sum of N uniform draws approach a normal as N grows (book step 1).

The book's ``sample_sum.py`` (the sum of N = 5 uniforms against N(N/2, N/12), 10,000 trials) is its
own figure ``clt_sum_n5.png`` and metrics ``clt_sum5_*``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import distributions
from experiments import _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import plt

CLT_NS = (1, 2, 4, 10)
BOOK_SUM_N = 5  # step01/sample_sum.py
QUICK = _quick.QUICK["step01_normal"]


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step01_normal"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    trials: int = 10_000
    bins: int = 50

    SUMMARY = ("pdf_at_0", "clt_sum_ks")
    HELP = {
        "trials": "central-limit draws per N (each averages/sums N uniforms); quick mode caps it at 2000",
        "bins": "histogram bins of the central-limit figures",
    }
    LIMITS = {
        "trials": (1_000_000, "4 × TRIALS × 10 uniform draws are held in memory at once"),
        "bins": (100_000, "a histogram bar per bin"),
    }


def _ks_distance(cdf_fn, samples: np.ndarray, mu: float, sigma: float) -> float:
    """Kolmogorov–Smirnov distance sup |F_empirical - Φ| between samples and N(mu, sigma²)."""
    x = np.sort(samples)
    cdf = np.asarray(cdf_fn(x, mu, sigma), np.float64)
    n = x.size
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def _check(config: Config) -> None:
    check_config(config)
    if config.trials < 10:
        raise ValueError(f"--trials must be >= 10 to draw a histogram, got {config.trials}")
    if config.bins < 2:
        raise ValueError(f"--bins must be >= 2, got {config.bins}")


def _compute(config: Config, trials: int) -> dict:
    """The standard normal's density and the central-limit samples (mean and sum of N uniforms)."""
    xs = jnp.linspace(-5.0, 5.0, 201)
    # one draw for all N (independent rows per N; row i uses its first N columns)
    # (drawn flat: XLA:CPU compiles a flat threefry draw several times faster than a multi-axis one)
    shape = (len(CLT_NS), trials, max(CLT_NS))
    uniforms = np.asarray(jax.random.uniform(jax.random.key(config.seed), (math.prod(shape),)), np.float64)
    uniforms = uniforms.reshape(shape)
    clt = {"mean": {}, "sum": {}}
    for i, n in enumerate(CLT_NS):
        u = uniforms[i, :, :n]
        clt["mean"][n] = (u.mean(axis=1), 0.5, float(np.sqrt(1.0 / (12 * n))))
        clt["sum"][n] = (u.sum(axis=1), n / 2, float(np.sqrt(n / 12)))
    book_key = jax.random.fold_in(jax.random.key(config.seed), BOOK_SUM_N)
    sums = np.asarray(jax.random.uniform(book_key, (trials * BOOK_SUM_N,)), np.float64)
    sum5 = (sums.reshape(trials, BOOK_SUM_N).sum(axis=1), BOOK_SUM_N / 2, float(np.sqrt(BOOK_SUM_N / 12)))
    standard = jax.jit(distributions.normal_pdf)(xs, 0.0, 1.0)
    return {"xs": xs, "standard": standard, "clt": clt, "sum5": sum5}


def _metrics(result: dict, trials: int) -> dict:
    cdf = jax.jit(distributions.normal_cdf)
    metrics: dict = {
        "pdf_at_0": float(result["standard"][100]),
        "pdf_at_0_exact": 1 / np.sqrt(2 * np.pi),
        "trials": trials,
        "clt_n": list(CLT_NS),
    }
    for kind in ("mean", "sum"):
        rows = [result["clt"][kind][n] for n in CLT_NS]
        metrics[f"clt_{kind}_sample_means"] = [float(s.mean()) for s, _, _ in rows]
        metrics[f"clt_{kind}_theory_means"] = [float(m) for _, m, _ in rows]
        metrics[f"clt_{kind}_sample_stds"] = [float(s.std()) for s, _, _ in rows]
        metrics[f"clt_{kind}_theory_stds"] = [sd for _, _, sd in rows]
        metrics[f"clt_{kind}_ks"] = [_ks_distance(cdf, s, m, sd) for s, m, sd in rows]
    sums, mu, sd = result["sum5"]
    metrics.update(
        clt_sum5_mean=float(sums.mean()),
        clt_sum5_theory_mean=mu,
        clt_sum5_std=float(sums.std()),
        clt_sum5_theory_std=sd,
        clt_sum5_ks=_ks_distance(cdf, sums, mu, sd),
    )
    return metrics


def _figures(out: StepOutput, config: Config, result: dict, trials: int) -> None:
    pdf = jax.jit(distributions.normal_pdf)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["xs"], result["standard"])
    ax.set(title="Normal distribution N(0, 1)", xlabel="x", ylabel="p(x)")
    out.figure(fig, "normal_pdf")

    xs_mu = jnp.linspace(-10.0, 10.0, 401)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mu in (-3.0, 0.0, 5.0):
        axes[0].plot(xs_mu, pdf(xs_mu, mu, 1.0), label=f"μ={mu:g}")
    axes[0].set(title="Changing the mean μ (σ=1)", xlabel="x", ylabel="p(x)")
    for sigma in (0.5, 1.0, 2.0):
        axes[1].plot(xs_mu, pdf(xs_mu, 0.0, sigma), label=f"σ={sigma:g}")
    axes[1].set(title="Changing the standard deviation σ (μ=0)", xlabel="x", ylabel="p(x)")
    for ax in axes:
        ax.legend()
    out.figure(fig, "mu_sigma_sweep")

    for kind in ("mean", "sum"):
        fig, axes = plt.subplots(1, len(CLT_NS), figsize=(4 * len(CLT_NS), 3.6))
        for ax, n in zip(axes, CLT_NS, strict=True):
            samples, mu, sd = result["clt"][kind][n]
            ax.hist(samples, bins=config.bins, density=True, alpha=0.6, label="samples")
            grid = np.linspace(samples.min(), samples.max(), 200)
            ax.plot(grid, pdf(grid, mu, sd), "r", label=f"N({mu:g}, {sd**2:.3g})")
            ax.set(title=f"N={n}", xlabel=f"{kind} of N uniforms", ylabel="density")
            ax.legend(fontsize=8)
        fig.suptitle(f"Central limit theorem: the {kind} of N U(0, 1) draws ({trials} trials each)")
        fig.tight_layout()
        out.figure(fig, f"clt_{kind}")
    _sum5_figure(out, result, trials)


def _sum5_figure(out: StepOutput, result: dict, trials: int) -> None:
    """``step01/sample_sum.py``: the sum of 5 uniforms (histogram, bins='auto') and N(5/2, 5/12)."""
    sums, mu, sd = result["sum5"]
    grid = np.linspace(-1.0, 6.0, 1000)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(sums, bins="auto", density=True, alpha=0.7, label=f"sum of {BOOK_SUM_N} uniforms ({trials})")
    ax.plot(grid, jax.jit(distributions.normal_pdf)(grid, mu, sd), "r", label=f"N({mu:g}, {sd**2:.4g})")
    ax.set(title=f"N={BOOK_SUM_N}", xlabel="x", ylabel="probability density", xlim=(-1, 6))
    ax.legend()
    out.figure(fig, "clt_sum_n5")


def main(config: Config) -> dict:
    _check(config)
    trials = _quick.cap(config, config.trials, QUICK["trials"])
    result = _compute(config, trials)
    metrics = _metrics(result, trials)
    with StepOutput(config) as out:
        if out.plots:
            _figures(out, config, result, trials)
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
