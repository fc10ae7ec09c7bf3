# ruff: noqa: E402, E501, B023  (a probe script: imports after the x64 switch, closures used in their own loop turn)
"""mvn_logpdf (float64, N = 1,000,000, d = 8): StableHLO hash and median time; run in two trees to compare.
Usage: uv run python experiments/results/redesign_probes/mvn_probe.py"""

import hashlib
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
from dlx_jax import distributions

rng = np.random.default_rng(0)
d = 8
x = jnp.asarray(rng.normal(size=(1_000_000, d)))
mean = jnp.zeros(d)
a = rng.normal(size=(d, d))
cov = jnp.asarray(a @ a.T + d * np.eye(d))
f = jax.jit(distributions.mvn_logpdf)
print(hashlib.sha256(f.lower(x, mean, cov).as_text(debug_info=False).encode()).hexdigest()[:16])
jax.block_until_ready(f(x, mean, cov))
ts = []
for _ in range(20):
    t = time.perf_counter()
    jax.block_until_ready(f(x, mean, cov))
    ts.append(time.perf_counter() - t)
print("median ms %.2f" % (1000 * np.median(ts)))
