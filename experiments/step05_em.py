"""Step 5 — the EM algorithm. Fit a 2-component GMM to Old Faithful from the book's initial
parameters (k = 2, φ = (0.5, 0.5), μ = ((0, 50), (0, 100)), Σ = (I, I), stop when the mean
log-likelihood changes by less than 1e-4, at most 100 updates), in float64 inside one compiled
``lax.while_loop``; or from ``--restarts N`` random initialisations fitted in one vmapped call
(book chapter 5). Also notebook 05's KL cell (``book_kl``)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import mixture
from dlx_jax.data import check_sample, load_old_faithful, load_table
from experiments import _book, _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput
from experiments._plots import OLD_FAITHFUL_AXES, data_vs_samples, gmm_density_grid, plt

BOOK_WEIGHTS = (0.5, 0.5)
BOOK_MEANS = ((0.0, 50.0), (0.0, 100.0))
QUICK = _quick.QUICK["step05_em"]
TRACE_MAX = 100_000_000  # restarts × (max_iter + 1) log-likelihood values kept (two traces of float64)


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
    LIMITS = {
        "max_iter": (1_000_000, "the log-likelihood traces keep MAX_ITER + 1 values"),
        "restarts": (10_000, "the restarts are fitted side by side in one vmapped call"),
        "n_samples": (1_000_000, "every sample is a point of a scatter plot"),
    }


def _load(config: Config) -> np.ndarray:
    """Check the settings, then the data to fit; ValueError before any output."""
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
    if config.restarts * (config.max_iter + 1) > TRACE_MAX:
        raise ValueError(
            f"--restarts {config.restarts} with --max-iter {config.max_iter} keeps "
            f"{config.restarts * (config.max_iter + 1):,} log-likelihood values per trace in memory, more "
            f"than {TRACE_MAX:,}; pass fewer --restarts or a smaller --max-iter"
        )
    data = load_old_faithful() if config.data is None else load_table(config.data, ncols=2)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"--data needs at least 2 rows of 2 columns for k = 2, got shape {data.shape}")
    check_sample(data, source=f"--data {config.data}")  # float64 EM: magnitude, each column varies
    return data


def _fit(config: Config, x: jax.Array) -> tuple[mixture.GMMParams, object, dict]:
    """EM from the book's initialisation or the best of ``--restarts`` random ones: (params, info, extra)."""
    if config.restarts == 0:
        init = mixture.gmm_params_from_covariances(
            jnp.asarray(BOOK_WEIGHTS), jnp.asarray(BOOK_MEANS), jnp.stack([jnp.eye(2)] * 2)
        )
        fit = jax.jit(mixture.fit, static_argnames=("max_iter", "floor"))
        params, info = fit(
            x, init, tol=config.tol, max_iter=config.max_iter, reg_covar=config.reg_covar, floor=config.floor
        )
        return params, info, {"init": "book"}
    fit_r = jax.jit(mixture.fit_restarts, static_argnames=("k", "n_init", "max_iter", "floor", "method"))
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
    return params, info, extra


def _compute(config: Config, data: np.ndarray) -> dict:
    """The fit (float64, one compiled loop), its traces, samples from it and its density on a grid."""
    with jax.enable_x64(True):
        params, info, extra = _fit(config, jnp.asarray(data))
        n_iter = int(info.n_iter)
        trace = np.asarray(info.log_likelihood_trace[: n_iter + 1])
        exact = np.asarray(info.exact_log_likelihood_trace[: n_iter + 1])
        if not np.all(np.isfinite(trace)) or not np.all(np.isfinite(np.asarray(params.means))):
            raise ValueError("EM produced NaN (a component collapsed); pass --reg-covar 1e-6 or --restarts N")
        samples, labels = jax.jit(mixture.sample_gmm, static_argnames="n")(
            jax.random.key(config.seed + 1), params, n=config.n_samples
        )
        size = QUICK["density_grid"] if config.quick else 120
        xx, yy, density = gmm_density_grid(data, params, size=size, pad=0.1)
        weights, means, covs = (np.asarray(a) for a in (params.weights, params.means, params.covariances))
        return {
            "n_iter": n_iter,
            "converged": bool(info.converged),
            "trace": trace,
            "exact": exact,
            "weights": weights,
            "means": means,
            "covariances": covs,
            "samples": np.asarray(samples),
            "labels": np.asarray(labels),
            "grid": (xx, yy, density),
            "extra": extra,
        }


def _metrics(data: np.ndarray, result: dict) -> dict:
    trace, exact = result["trace"], result["exact"]
    return {
        "n": int(data.shape[0]),
        "k": 2,
        "log_likelihood_trace": trace,
        "exact_log_likelihood_trace": exact,
        "n_iter": result["n_iter"],
        "converged": result["converged"],
        "final_log_likelihood": float(trace[-1]),
        "final_exact_log_likelihood": float(exact[-1]),
        "weights": result["weights"],
        "means": result["means"],
        "covariances": result["covariances"],
        "book_kl": _book.kl_values(),  # notebook 05's KL cell: KL((0.7, 0.3) ‖ q) for three q
        **result["extra"],
    }


def _figures(out: StepOutput, config: Config, data: np.ndarray, result: dict) -> None:
    n_iter, trace, exact, means = result["n_iter"], result["trace"], result["exact"], result["means"]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(data[:, 0], data[:, 1], s=8, color="tab:gray", label="data")
    cs = ax.contour(*result["grid"], levels=10, cmap="viridis")
    ax.clabel(cs, fontsize=7, fmt="%.3f")
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=80, color="tab:red", label="fitted means")
    ax.set_xlabel(OLD_FAITHFUL_AXES[0])
    ax.set_ylabel(OLD_FAITHFUL_AXES[1])
    ax.set_title(f"EM fit after {n_iter} updates")
    ax.legend()
    out.figure(fig, "em_contour")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(n_iter + 1), trace, marker="o", label=f"mean log(p(x) + {config.floor:g})")
    if config.floor > 0:
        ax.plot(range(n_iter + 1), exact, marker=".", ls="--", label="exact mean log-likelihood")
        ax.set_ylim(min(trace.min(), exact[1:].min() if n_iter else trace.min()) - 1, trace.max() + 0.5)
    ax.set_xlabel("EM update")
    ax.set_ylabel("mean log-likelihood")
    ax.set_title("log-likelihood per EM update")
    ax.legend()
    out.figure(fig, "log_likelihood")

    title = f"{config.n_samples} samples from the fitted GMM"
    out.figure(data_vs_samples(data, result["samples"], result["labels"], title=title), "em_samples")


def main(config: Config) -> dict:
    data = _load(config)
    result = _compute(config, data)
    metrics = _metrics(data, result)
    with StepOutput(config) as out:
        if out.plots:
            _figures(out, config, data, result)
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
