"""Benchmark section "probability": densities and EM (book steps 3-5) against scipy and scikit-learn.

Rows (all timed in this process, one after the other; medians of steady-state calls):

* ``mvn_logpdf``: multivariate-normal log-pdf, N = 1,000,000 points, d = 8, same mean and
  covariance, against ``scipy.stats.multivariate_normal.logpdf`` (float64). JAX is timed in
  float64 (``ratio_mvn_logpdf_scipy_over_jax``, like for like) and float32 (``..._jax_f32``).
  The JAX function is ``dlx_jax.distributions.mvn_logpdf``; ``dlx_jax.mixture`` with k = 1
  is timed too (``mvn_logpdf_gmm1``).
* ``em``: full-covariance EM, N = 200,000, d = 8, k = 8, 50 updates from the same initial
  parameters, ``dlx_jax.mixture.fit(tol=0, max_iter=50)`` against
  ``sklearn.mixture.GaussianMixture(tol=0, max_iter=50)`` given ``weights_init``/``means_init``/
  ``precisions_init``; float64 on both sides (``ratio_em_sklearn_over_jax``) and JAX float32
  (``ratio_em_sklearn_over_jax_f32``). ``em_max_abs_mean_diff`` checks both fitted the same model.
* ``restarts``: Old Faithful, k = 2, ``fit_restarts(n_init=32)`` in one compiled call against
  ``n_init=1`` (``ratio_restarts_n_over_1``, goal <= 3) and against
  ``GaussianMixture(n_init=32, init_params="random_from_data")`` (``ratio_restarts_sklearn_over_jax``,
  goal >= 20); float64, tol 1e-3, max 100 updates, reg_covar 1e-6 on both sides.

``--quick`` shrinks N, the number of updates and restarts (4) and times only float64, so the
section runs in seconds.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import mixture
from dlx_jax.data import load_old_faithful
from experiments.benchmarks._timing import ratio, time_call

NAME = "probability"


def _peer(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _mvn_rows(config: Any, rng: np.random.Generator, repeats: int) -> dict:
    n, d = (20_000, 8) if config.quick else (1_000_000, 8)
    x = rng.normal(size=(n, d))
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + np.eye(d)
    mean = rng.normal(size=d)
    out: dict[str, Any] = {"mvn_logpdf_n": n, "mvn_logpdf_d": d}
    stats = _peer("scipy.stats")
    ref = None
    if stats is None:
        out["mvn_logpdf_scipy_skipped"] = "scipy is not installed"
    else:
        out["scipy_version"] = importlib.import_module("scipy").__version__
        t_scipy = time_call(stats.multivariate_normal.logpdf, x, mean, cov, repeats=max(1, repeats // 2))
        out["mvn_logpdf_scipy_median_s"] = t_scipy.median_s
        ref = t_scipy.result
    try:
        from dlx_jax.distributions import mvn_logpdf
    except ImportError:
        mvn_logpdf = None
        out["mvn_logpdf_distributions_skipped"] = "dlx_jax.distributions.mvn_logpdf is missing"

    def gmm1(x, mean, cov):
        params = mixture.GMMParams(jnp.zeros(1, x.dtype), mean[None], jnp.linalg.cholesky(cov)[None])
        return mixture.component_log_densities(x, params)[:, 0]

    fns = {"gmm1": gmm1} if mvn_logpdf is None else {"": mvn_logpdf, "gmm1": gmm1}
    if config.quick:  # smoke run: one function, one dtype (compilation dominates at tiny sizes)
        fns = dict(list(fns.items())[:1])
    for x64, suffix in ((True, "_f64"), (False, "_f32"))[: 1 if config.quick else 2]:
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            args = [jnp.asarray(a, dtype) for a in (x, mean, cov)]
            for tag, fn in fns.items():
                key = f"mvn_logpdf{'_' + tag if tag else ''}_jax{suffix}"
                t = time_call(jax.jit(fn), *args, repeats=repeats, min_total_s=0 if config.quick else 0.5)
                out.update(t.metrics(key))
                if ref is not None:
                    out[f"{key}_max_abs_err"] = float(np.max(np.abs(np.asarray(t.result, np.float64) - ref)))
                    out[f"ratio_{key.replace('_jax', '_scipy_over_jax')}"] = ratio(
                        out["mvn_logpdf_scipy_median_s"], t
                    )
    if "ratio_mvn_logpdf_scipy_over_jax_f64" in out:
        out["ratio_mvn_logpdf_scipy_over_jax"] = out["ratio_mvn_logpdf_scipy_over_jax_f64"]
    return out


def _em_rows(config: Any, rng: np.random.Generator, repeats: int) -> dict:
    n, d, k, iters = (2_000, 8, 8, 5) if config.quick else (200_000, 8, 8, 50)
    centers = rng.normal(scale=3.0, size=(k, d))
    x = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    weights0 = np.full(k, 1.0 / k)
    means0 = x[rng.choice(n, k, replace=False)]
    cov0 = np.broadcast_to(np.cov(x.T, bias=True) + 1e-6 * np.eye(d), (k, d, d)).copy()
    out: dict[str, Any] = {"em_n": n, "em_d": d, "em_k": k, "em_updates": iters}
    fit = jax.jit(mixture.fit, static_argnames=("max_iter", "floor"))
    results = {}
    for x64, suffix in ((True, ""), (False, "_f32"))[: 1 if config.quick else 2]:
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            params0 = mixture.gmm_params_from_covariances(
                *(jnp.asarray(a, dtype) for a in (weights0, means0, cov0))
            )
            t = time_call(
                fit, jnp.asarray(x, dtype), params0, tol=0.0, max_iter=iters, reg_covar=1e-6, repeats=repeats
            )
            params, info = t.result
            if int(info.n_iter) != iters:
                raise RuntimeError(f"JAX EM did {int(info.n_iter)} updates, expected {iters}")
            out.update(t.metrics(f"em_jax{suffix}"))
            results[suffix] = (t, np.asarray(params.means, np.float64))
    sk = _peer("sklearn.mixture")
    if sk is None:
        out["em_sklearn_skipped"] = "scikit-learn is not installed"
        return out
    out["sklearn_version"] = importlib.import_module("sklearn").__version__

    def sklearn_em():
        gm = sk.GaussianMixture(
            k,
            covariance_type="full",
            tol=0.0,
            max_iter=iters,
            reg_covar=1e-6,
            weights_init=weights0,
            means_init=means0,
            precisions_init=np.linalg.inv(cov0),
            init_params="random_from_data",
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never "converges"
            return gm.fit(x)

    t_sk = time_call(sklearn_em, repeats=1)
    out["em_sklearn_median_s"] = t_sk.median_s
    out["ratio_em_sklearn_over_jax"] = ratio(t_sk, results[""][0])
    out["em_max_abs_mean_diff"] = float(np.max(np.abs(t_sk.result.means_ - results[""][1])))
    if "_f32" in results:
        out["ratio_em_sklearn_over_jax_f32"] = ratio(t_sk, results["_f32"][0])
        out["em_max_abs_mean_diff_f32"] = float(np.max(np.abs(t_sk.result.means_ - results["_f32"][1])))
    return out


def _restart_rows(config: Any, repeats: int) -> dict:
    n_init, k, tol, max_iter, reg = (4 if config.quick else 32), 2, 1e-3, 100, 1e-6
    x_np = load_old_faithful()
    out: dict[str, Any] = {"restarts_n_init": n_init}
    with jax.enable_x64(True):
        x = jnp.asarray(x_np)
        key = jax.random.key(config.seed)
        fit_r = jax.jit(mixture.fit_restarts, static_argnames=("k", "n_init", "max_iter", "floor", "method"))
        timings = {}
        for count, tag in ((1, "1"), (n_init, "n")):
            t = time_call(
                fit_r,
                key,
                x,
                k=k,
                n_init=count,
                tol=tol,
                max_iter=max_iter,
                reg_covar=reg,
                repeats=repeats,
                min_total_s=0.2 if not config.quick else 0.0,
            )
            timings[count] = t
            out.update(t.metrics(f"restarts_jax_{tag}"))
        best, rec = timings[n_init].result
        out["restarts_jax_best_log_likelihood"] = float(rec.final_log_likelihood[rec.best])
        out["restarts_jax_max_n_iter"] = int(jnp.max(rec.info.n_iter))
        out["ratio_restarts_n_over_1"] = ratio(timings[n_init], timings[1])
    sk = _peer("sklearn.mixture")
    if sk is None:
        out["restarts_sklearn_skipped"] = "scikit-learn is not installed"
        return out

    def sklearn_restarts():
        gm = sk.GaussianMixture(
            k,
            covariance_type="full",
            tol=tol,
            max_iter=max_iter,
            reg_covar=reg,
            n_init=n_init,
            init_params="random_from_data",
            random_state=config.seed,
        )
        return gm.fit(x_np)

    t_sk = time_call(sklearn_restarts, repeats=max(1, repeats // 2))
    out["restarts_sklearn_median_s"] = t_sk.median_s
    out["restarts_sklearn_best_log_likelihood"] = float(t_sk.result.score(x_np))
    out["ratio_restarts_sklearn_over_jax"] = ratio(t_sk, timings[n_init])
    return out


def run(config: Any) -> dict:
    """Time the probability rows; return flat metrics (``*_median_s``, ``*_compile_s``, ``ratio_*``)."""
    repeats = 2 if config.quick else max(1, config.repeats)
    rng = np.random.default_rng(config.seed)
    out: dict[str, Any] = {}
    out.update(_mvn_rows(config, rng, repeats))
    out.update(_em_rows(config, rng, min(repeats, 3)))
    out.update(_restart_rows(config, repeats))
    return out
