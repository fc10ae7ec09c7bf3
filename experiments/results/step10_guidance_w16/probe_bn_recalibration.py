"""Probe behind the README: γ = 3 accuracy of 200 DDIM-50 samples from the final checkpoint of
the width-16 run, with EMA weights + the raw weights' BatchNorm statistics, raw weights, and EMA
weights + re-estimated statistics. Usage: uv run python THIS_FILE OUT (the --out folder of the run)."""

import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import diffusion, training, unet
from experiments import _diffusion, _diffusion_judge, _diffusion_sampling
from experiments.step10_guidance import Config

cfg = replace(Config(), features=16, out=sys.argv[1], fid_samples=100, judge="auto")
model = _diffusion.build_model(cfg, conditional=True)
params, bs = unet.init(jax.random.key(0), model)
like = training.init_state(params, optax.adam(1e-3), model_state=bs, ema=True)
state, meta = training.restore_checkpoint(sys.argv[1] + "/checkpoints", like)
print("restored epoch", meta["epoch"], int(state.step))
data = _diffusion.load_images(cfg)
judge, info = _diffusion_judge.train_judge(cfg, data, jax.random.key(5), epochs=15)
print(info)
apply_fn = unet.make_apply_fn(model)


# recompute running stats for the EMA weights: train-mode passes over noisy training batches (momentum 0.1)
@jax.jit
def bn_pass(stats, key, x0, y):
    kt, ke = jax.random.split(key)
    sched = _diffusion.schedule(cfg)
    t = diffusion.sample_timesteps(kt, sched, n=x0.shape[0])
    xt, _ = diffusion.q_sample(ke, sched, x0, t)
    _, new = apply_fn(state.ema_params, stats, xt, t, y, jnp.ones(x0.shape[0]), train=True)
    return new


stats2 = state.model_state
x = jnp.asarray(data["x_train"])
y = jnp.asarray(data["y_train"])
for i in range(60):
    idx = jax.random.permutation(jax.random.key(100 + i), len(x))[:128]
    stats2 = bn_pass(stats2, jax.random.key(i), x[idx], y[idx])
n = 200
labels = np.arange(n, dtype=np.int32) % 10
for name, p, s in (
    ("ema+running", state.ema_params, state.model_state),
    ("raw+running", state.params, state.model_state),
    ("ema+recomputed", state.ema_params, stats2),
):
    xs, _, sec = _diffusion_sampling.sample(
        replace(cfg, sample_batch=200),
        model,
        p,
        s,
        jax.random.key(7),
        n=n,
        kind="ddim",
        condition="guided",
        labels=labels,
        gamma=3.0,
    )
    feats, preds = _diffusion_judge.judge_outputs(judge, xs)
    print(
        name,
        "acc",
        np.mean(preds == labels),
        "speckle (frac pixels in (0.2,0.8))",
        np.mean((xs > 0.2) & (xs < 0.8)),
        f"{sec:.0f}s",
        flush=True,
    )
