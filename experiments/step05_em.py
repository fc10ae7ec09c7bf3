"""Step 5 — the EM algorithm. Fit a 2-component GMM to Old Faithful from the book's initial
parameters (k = 2, φ = (0.5, 0.5), μ = ((0, 50), (0, 100)), Σ = (I, I), stop when the mean
log-likelihood changes by less than 1e-4, at most 100 updates), in float64 inside one compiled
``lax.while_loop``; or from ``--restarts N`` random initialisations fitted in one vmapped call
(book chapter 5)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import mixture
from dlx_jax.data import check_sample, load_old_faithful, load_table
from experiments._common import StepOutput, check_config, cli, plt
from experiments._plots import data_vs_samples, gmm_density_grid

BOOK_WEIGHTS = (0.5, 0.5)
BOOK_MEANS = ((0.0, 50.0), (0.0, 100.0))


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step05_em"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    data: str | None = None
    tol: float = 1e-4
    max_iter: int = 100
    floor: float = 1e-8
    reg_covar: float = 0.0
    restarts: int = 0
    n_samples: int = 500

    SUMMARY = ("n_iter", "final_log_likelihood", "weights")
    HELP = {
        "data": "2-column file to fit (default: vendored Old Faithful, the book's old_faithful.txt)",
        "tol": "stop when the objective changes by less than this",
        "max_iter": "maximum number of EM updates",
        "floor": "the book's objective is mean log(p(x) + floor); 0 = exact mean log-likelihood",
        "reg_covar": "ridge added to covariance diagonals (the book uses none)",
        "restarts": "0 = the book's fixed initialisation; N > 0 = N random initialisations fitted in one "
        "vmapped call, best kept",
        "n_samples": "samples drawn from the fitted model for the comparison figure",
    }


def main(config: Config) -> dict:
    check_config(config)
    if config.tol < 0 or config.floor < 0 or config.reg_covar < 0:
        raise ValueError(
            f"--tol, --floor and --reg-covar must be >= 0, got {config.tol}, {config.floor}, "
            f"{config.reg_covar}"
        )
    if config.max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1, got {config.max_iter}")
    if config.restarts < 0:
        raise ValueError(f"--restarts must be >= 0 (0 = the book's initialisation), got {config.restarts}")
    if config.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {config.n_samples}")
    data = load_old_faithful() if config.data is None else load_table(config.data, ncols=2)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"--data needs at least 2 rows of 2 columns for k = 2, got shape {data.shape}")
    check_sample(data, source=f"--data {config.data}")  # float64 EM: magnitude, each column varies

    with jax.enable_x64(True):
        x = jnp.asarray(data)
        if config.restarts == 0:
            init = mixture.gmm_params_from_covariances(
                jnp.asarray(BOOK_WEIGHTS), jnp.asarray(BOOK_MEANS), jnp.stack([jnp.eye(2)] * 2)
            )
            fit = jax.jit(mixture.fit, static_argnames=("max_iter", "floor"))
            params, info = fit(
                x,
                init,
                tol=config.tol,
                max_iter=config.max_iter,
                reg_covar=config.reg_covar,
                floor=config.floor,
            )
            extra: dict = {"init": "book"}
        else:
            fit_r = jax.jit(
                mixture.fit_restarts, static_argnames=("k", "n_init", "max_iter", "floor", "method")
            )
            params, rec = fit_r(
                jax.random.key(config.seed),
                x,
                k=2,
                n_init=config.restarts,
                tol=config.tol,
                max_iter=config.max_iter,
                reg_covar=max(config.reg_covar, 1e-6),
                floor=config.floor,
            )
            best = int(rec.best)
            info = jax.tree.map(lambda a: a[best], rec.info)
            extra = {
                "init": f"best of {config.restarts} random restarts",
                "best_restart": best,
                "restart_final_log_likelihoods": np.asarray(rec.final_log_likelihood),
                "restart_n_iters": np.asarray(rec.info.n_iter),
            }
        n_iter = int(info.n_iter)
        trace = np.asarray(info.log_likelihood_trace[: n_iter + 1])
        exact = np.asarray(info.exact_log_likelihood_trace[: n_iter + 1])
        if not np.all(np.isfinite(trace)) or not np.all(np.isfinite(np.asarray(params.means))):
            raise ValueError("EM produced NaN (a component collapsed); pass --reg-covar 1e-6 or --restarts N")
        samples, labels = jax.jit(mixture.sample_gmm, static_argnames="n")(
            jax.random.key(config.seed + 1), params, n=config.n_samples
        )
        xx, yy, density = gmm_density_grid(data, params, size=60 if config.quick else 120, pad=0.1)
        weights, means, covs = (np.asarray(a) for a in (params.weights, params.means, params.covariances))
        samples, labels = np.asarray(samples), np.asarray(labels)

    metrics = {
        "n": int(data.shape[0]),
        "k": 2,
        "log_likelihood_trace": trace,
        "exact_log_likelihood_trace": exact,
        "n_iter": n_iter,
        "converged": bool(info.converged),
        "final_log_likelihood": float(trace[-1]),
        "final_exact_log_likelihood": float(exact[-1]),
        "weights": weights,
        "means": means,
        "covariances": covs,
        **extra,
    }

    with StepOutput(config) as out:
        if out.plots:
            fig, ax = plt.subplots(figsize=(6, 5))
            ax.scatter(data[:, 0], data[:, 1], s=8, color="tab:gray", label="data")
            cs = ax.contour(xx, yy, density, levels=10, cmap="viridis")
            ax.clabel(cs, fontsize=7, fmt="%.3f")
            ax.scatter(means[:, 0], means[:, 1], marker="x", s=80, color="tab:red", label="fitted means")
            ax.set_xlabel("eruptions (min)")
            ax.set_ylabel("waiting (min)")
            ax.set_title(f"EM fit after {n_iter} updates")
            ax.legend()
            out.figure(fig, "em_contour")

            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(range(n_iter + 1), trace, marker="o", label=f"mean log(p(x) + {config.floor:g})")
            if config.floor > 0:
                ax.plot(range(n_iter + 1), exact, marker=".", ls="--", label="exact mean log-likelihood")
                ax.set_ylim(
                    min(trace.min(), exact[1:].min() if n_iter else trace.min()) - 1, trace.max() + 0.5
                )
            ax.set_xlabel("EM update")
            ax.set_ylabel("mean log-likelihood")
            ax.set_title("log-likelihood per EM update")
            ax.legend()
            out.figure(fig, "log_likelihood")

            fig = data_vs_samples(
                data, samples, labels, title=f"{config.n_samples} samples from the fitted GMM"
            )
            out.figure(fig, "em_samples")
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
