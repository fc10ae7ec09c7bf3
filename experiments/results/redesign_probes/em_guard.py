# ruff: noqa: E402, E501, B023  (a probe script: imports after the x64 switch, closures used in their own loop turn)
"""Does the M-step collapse guard (lax.cond) cost time when it does not fire? Alternate guarded /
unguarded EM (f64, N=200k, d=8, k=8, 50 updates) and sklearn in one process."""

import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import sklearn.mixture as skm
from jax import lax

from dlx_jax import mixture
from dlx_jax.mixture import _em

rng = np.random.default_rng(0)
n, d, k, iters = 200_000, 8, 8, 50
centers = rng.normal(scale=3.0, size=(k, d))
x = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
w0 = np.full(k, 1.0 / k)
m0 = x[rng.choice(n, k, replace=False)]
c0 = np.broadcast_to(np.cov(x.T, bias=True) + 1e-6 * np.eye(d), (k, d, d)).copy()
p0 = mixture.gmm_params_from_covariances(jnp.asarray(w0), jnp.asarray(m0), jnp.asarray(c0))
xj = jnp.asarray(x)

orig_cond = lax.cond


def run(guard):
    if not guard:
        _em.lax.cond = lambda pred, a, b: b()  # never fires on this data: skip the branch
    try:
        f = jax.jit(lambda x, p: _em.fit_unchecked(x, p, tol=0.0, max_iter=iters, reg_covar=1e-6, floor=0.0))
        out = f(xj, p0)
        jax.block_until_ready(out)
    finally:
        _em.lax.cond = orig_cond
    return f


fg, fu = run(True), run(False)


def sk():
    gm = skm.GaussianMixture(
        k,
        covariance_type="full",
        tol=0.0,
        max_iter=iters,
        reg_covar=1e-6,
        weights_init=w0,
        means_init=m0,
        precisions_init=np.linalg.inv(c0),
        init_params="random_from_data",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x)


ts = {"guard": [], "noguard": [], "sk": []}
for _r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for name, fn in (
        ("guard", lambda: jax.block_until_ready(fg(xj, p0))),
        ("noguard", lambda: jax.block_until_ready(fu(xj, p0))),
        ("sk", sk),
    ):
        t = time.perf_counter()
        fn()
        ts[name].append(time.perf_counter() - t)
for kk, v in ts.items():
    print(kk, f"median {np.median(v):.3f} s", [f"{a:.2f}" for a in v])
print(
    "sk/guard {:.1f}  sk/noguard {:.1f}".format(np.median(ts["sk"]) / np.median(ts["guard"]), np.median(ts["sk"]) / np.median(ts["noguard"]))
)
