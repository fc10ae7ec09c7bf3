# ruff: noqa: E402, E501, B023  (a probe script: imports after the x64 switch, closures used in their own loop turn)
"""Hash of the lowered (StableHLO, no debug info) programs the benchmarks time, built through the public
API of whichever tree runs this script: identical hashes before/after a refactor mean identical compiled
programs, so identical speed. Usage: uv run python hlo_probe.py (from the tree's root)."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import cnn, diffusion, mixture, training, unet, vae


def h(lowered):
    text = lowered.as_text(debug_info=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(text)


out = {}
# EM (float64, benchmark sizes but small N)
with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    n, d, k = 2000, 8, 8
    x = jnp.asarray(rng.normal(size=(n, d)))
    p0 = mixture.gmm_params_from_covariances(
        jnp.full(k, 1 / k), x[:k], jnp.broadcast_to(jnp.eye(d), (k, d, d))
    )
    out["em_fit_f64"] = h(
        jax.jit(mixture.fit, static_argnames=("max_iter", "floor")).lower(
            x, p0, tol=0.0, max_iter=50, reg_covar=1e-6
        )
    )
    out["em_restarts"] = h(
        jax.jit(mixture.fit_restarts, static_argnames=("k", "n_init")).lower(
            jax.random.key(0), x[:, :2], k=2, n_init=32
        )
    )
# CNN epoch as experiments.cnn builds it
opt = optax.adam(1e-3)
params = cnn.init_params(jax.random.key(0))
state = training.init_state(params, opt)
step = training.make_train_step(cnn.train_loss, opt)
xs = jnp.zeros((256, 28, 28, 1))
ys = jnp.zeros((256,), jnp.int32)
out["cnn_epoch"] = h(
    jax.jit(training.make_epoch_fn(step, batch_size=128)).lower(jax.random.key(1), state, (xs, ys))
)
# VAE epoch
vparams = vae.init_params(jax.random.key(0), hidden_dim=200, latent_dim=20)
vopt = optax.adam(3e-4)
vstate = training.init_state(vparams, vopt)
vstep = training.make_train_step(vae.book_loss, vopt)
out["vae_epoch"] = h(
    jax.jit(training.make_epoch_fn(vstep, batch_size=32)).lower(
        jax.random.key(1), vstate, jnp.zeros((64, 784))
    )
)
# UNet train step (conditional, EMA) and a guided DDIM sampler
model = unet.UNet(features=8, num_labels=10)
uparams, stats = unet.init(jax.random.key(0), model)
apply_fn = unet.make_apply_fn(model)
sched = diffusion.linear_schedule(1000, 1e-4, 0.02)
uopt = optax.adam(1e-3)
ustate = training.init_state(uparams, uopt, model_state=stats, ema=True)
loss = diffusion.make_loss(apply_fn, sched, conditional=True, label_drop=0.1)
ustep = training.make_train_step(loss, uopt, stateful=True, ema_decay=0.995, ema_warmup=0)
out["unet_train_step"] = h(
    jax.jit(ustep).lower(jax.random.key(1), ustate, (jnp.zeros((16, 28, 28, 1)), jnp.zeros((16,), jnp.int32)))
)
eps_fn = diffusion.make_eps_fn(apply_fn, uparams, stats)
labels = jnp.arange(10, dtype=jnp.int32)
new_api = hasattr(diffusion, "guided")
for name, kw in (("ddim_guided", {"num_steps": 50}), ("ddpm_guided", {})):
    sampler = diffusion.ddim_sample if name.startswith("ddim") else diffusion.ddpm_sample
    if new_api:
        def f(key):
            return sampler(
                    key, diffusion.guided(eps_fn, labels, 3.0), sched, shape=(10, 28, 28, 1), **kw
                )
    else:
        def f(key):
            return sampler(key, eps_fn, sched, shape=(10, 28, 28, 1), labels=labels, gamma=3.0, **kw)
    out[name] = h(jax.jit(f).lower(jax.random.key(2)))
    if new_api:
        def f(key):
            return sampler(
                    key, diffusion.conditional(eps_fn, labels), sched, shape=(10, 28, 28, 1), **kw
                )
    else:
        def f(key):
            return sampler(key, eps_fn, sched, shape=(10, 28, 28, 1), labels=labels, **kw)
    out[name.replace("guided", "conditional")] = h(jax.jit(f).lower(jax.random.key(2)))
    if new_api:
        def f(key):
            return sampler(key, eps_fn, sched, shape=(10, 28, 28, 1), **kw)
    else:
        def f(key):
            return sampler(key, eps_fn, sched, shape=(10, 28, 28, 1), **kw)
    out[name.replace("guided", "uncond")] = h(jax.jit(f).lower(jax.random.key(2)))
for k_, v in out.items():
    print(f"{k_:22s} {v[0]} ({v[1]} chars)")
