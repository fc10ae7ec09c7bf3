"""Step 1 — the normal distribution. Its density, how μ shifts and σ widens it, and the central limit
theorem: the mean and the sum of N uniform draws approach a normal as N grows (book step 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import distributions as D
from experiments._common import StepOutput, check_config, cli, plt

CLT_NS = (1, 2, 4, 10)


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


def _ks_distance(cdf_fn, samples: np.ndarray, mu: float, sigma: float) -> float:
    """Kolmogorov–Smirnov distance sup |F_empirical - Φ| between samples and N(mu, sigma²)."""
    x = np.sort(samples)
    cdf = np.asarray(cdf_fn(x, mu, sigma), np.float64)
    n = x.size
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def main(config: Config) -> dict:
    check_config(config)
    if config.trials < 10:
        raise ValueError(f"--trials must be >= 10 to draw a histogram, got {config.trials}")
    if config.bins < 2:
        raise ValueError(f"--bins must be >= 2, got {config.bins}")
    trials = min(config.trials, 2000) if config.quick else config.trials

    xs = jnp.linspace(-5.0, 5.0, 201)
    pdf = jax.jit(D.normal_pdf)
    cdf = jax.jit(D.normal_cdf)
    standard = pdf(xs, 0.0, 1.0)
    mu_sweep = (-3.0, 0.0, 5.0)
    sigma_sweep = (0.5, 1.0, 2.0)
    xs_mu = jnp.linspace(-10.0, 10.0, 401)

    # one draw for all N (independent rows per N; row i uses its first N columns)
    # (drawn flat: XLA:CPU compiles a flat threefry draw several times faster than a multi-axis one)
    shape = (len(CLT_NS), trials, max(CLT_NS))
    uniforms = np.asarray(jax.random.uniform(jax.random.key(config.seed), (math.prod(shape),)), np.float64)
    uniforms = uniforms.reshape(shape)
    results = {"mean": {}, "sum": {}}
    for i, n in enumerate(CLT_NS):
        u = uniforms[i, :, :n]
        results["mean"][n] = (u.mean(axis=1), 0.5, float(np.sqrt(1.0 / (12 * n))))
        results["sum"][n] = (u.sum(axis=1), n / 2, float(np.sqrt(n / 12)))

    metrics: dict = {
        "pdf_at_0": float(standard[100]),
        "pdf_at_0_exact": 1 / np.sqrt(2 * np.pi),
        "trials": trials,
        "clt_n": list(CLT_NS),
    }
    for kind in ("mean", "sum"):
        rows = [results[kind][n] for n in CLT_NS]
        metrics[f"clt_{kind}_sample_means"] = [float(s.mean()) for s, _, _ in rows]
        metrics[f"clt_{kind}_theory_means"] = [float(m) for _, m, _ in rows]
        metrics[f"clt_{kind}_sample_stds"] = [float(s.std()) for s, _, _ in rows]
        metrics[f"clt_{kind}_theory_stds"] = [sd for _, _, sd in rows]
        metrics[f"clt_{kind}_ks"] = [_ks_distance(cdf, s, m, sd) for s, m, sd in rows]

    with StepOutput(config) as out:
        if out.plots:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(xs, standard)
            ax.set(title="Normal distribution N(0, 1)", xlabel="x", ylabel="p(x)")
            out.figure(fig, "normal_pdf")

            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for mu in mu_sweep:
                axes[0].plot(xs_mu, pdf(xs_mu, mu, 1.0), label=f"μ={mu:g}")
            axes[0].set(title="Changing the mean μ (σ=1)", xlabel="x", ylabel="p(x)")
            for sigma in sigma_sweep:
                axes[1].plot(xs_mu, pdf(xs_mu, 0.0, sigma), label=f"σ={sigma:g}")
            axes[1].set(title="Changing the standard deviation σ (μ=0)", xlabel="x", ylabel="p(x)")
            for ax in axes:
                ax.legend()
            out.figure(fig, "mu_sigma_sweep")

            for kind, label in (("mean", "mean"), ("sum", "sum")):
                fig, axes = plt.subplots(1, len(CLT_NS), figsize=(4 * len(CLT_NS), 3.6))
                for ax, n in zip(axes, CLT_NS, strict=True):
                    samples, mu, sd = results[kind][n]
                    ax.hist(samples, bins=config.bins, density=True, alpha=0.6, label="samples")
                    grid = np.linspace(samples.min(), samples.max(), 200)
                    ax.plot(grid, pdf(grid, mu, sd), "r", label=f"N({mu:g}, {sd**2:.3g})")
                    ax.set(title=f"N={n}", xlabel=f"{label} of N uniforms", ylabel="density")
                    ax.legend(fontsize=8)
                fig.suptitle(f"Central limit theorem: the {label} of N U(0, 1) draws ({trials} trials each)")
                fig.tight_layout()
                out.figure(fig, f"clt_{kind}")
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
