"""Where the salt-noise background comes from: ``background_level`` of one trained step-10 run's
samples under each suspect, one at a time (issue 16).

    python experiments/results/issue16_background/probe.py RUN_DIR [N]

``RUN_DIR`` is a finished (or killed after training) step-10 run folder: its ``config.json`` and
``checkpoints`` (or ``checkpoints.partial``). Every variant samples the same ``N`` (default 200)
starting noises at γ = 3 with labels ``i % 10`` and reports ``background_level`` (the 4-pixel frame,
values in [0, 1]), its fraction of frame pixels above 0.1, and cfg_accuracy with the shipped judge.

Suspects: the weights (EMA with re-estimated BatchNorm statistics = what the step samples; EMA with
the raw weights' statistics; the raw weights), the sampler (DDIM-50, DDIM-250, DDPM-1000 on fewer
images), clipping x̂0 to [0, 1] at every step (the samplers' documented ``clip_x0``), and the
x̂0 prediction along the DDIM trajectory (where in t the frame noise appears).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import diffusion, training, unet
from experiments import _diffusion, _diffusion_judge, _diffusion_pretrained, step10_guidance


def _state(run: Path, config, model):
    params, stats = unet.init(jax.random.key(0), model)
    like = training.init_state(params, optax.adam(config.lr), model_state=stats, ema=True)
    folder = run / "checkpoints"
    if not folder.is_dir():
        folder = run / "checkpoints.partial"
    state, meta = training.restore_checkpoint(folder, like)
    return state, meta


def main() -> None:
    run = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    saved = json.loads((run / "config.json").read_text())
    fields = set(step10_guidance.Config.__dataclass_fields__)
    config = step10_guidance.Config(**{**{k: v for k, v in saved.items() if k in fields}, "weights": "train"})
    model = _diffusion.build_model(config, conditional=True)
    data = _diffusion.load_images(config)
    state, meta = _state(run, config, model)
    key_s = jax.random.split(jax.random.key(config.seed), 3)[-1]
    k_bn = jax.random.split(key_s)[1]
    recal = _diffusion.recalibrate_batch_stats(config, model, state.ema_params, state.model_state, data, k_bn)
    judge, _ = _diffusion_pretrained.load_judge()
    sched = _diffusion.schedule(config)
    apply_fn = unet.make_apply_fn(model)
    labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
    key = jax.random.key(7)
    print(f"run {run}: epoch {meta['epoch']}, step {int(state.step)}; n = {n}")
    print(f"real test images: background_level {_diffusion_judge.background_level(data['x_test']):.4f}")

    def report(name, x, seconds):
        x = np.asarray(x)
        frame = np.ones((28, 28), bool)
        frame[4:-4, 4:-4] = False
        hot = float(np.mean(np.clip(x[..., 0][:, frame], 0, 1) > 0.1))
        _, preds = _diffusion_judge.judge_outputs(judge, x)
        acc = float(np.mean(preds == np.asarray(labels[: len(x)])))
        bg = _diffusion_judge.background_level(x)
        line = f"{name:44s} background_level {bg:.4f}  frame>0.1 {hot:.4f}  cfg_acc {acc:.3f}"
        print(line, f"({seconds:.0f} s)", flush=True)

    def sample(params, stats, *, kind="ddim", steps=50, clip=None, count=n, eta=0.0):
        eps_fn = diffusion.guided(diffusion.make_eps_fn(apply_fn, params, stats), labels[:count], 3.0)
        shape = (count, 28, 28, 1)
        if kind == "ddim":
            fn = jax.jit(lambda k: diffusion.ddim_sample(k, eps_fn, sched, shape=shape, num_steps=steps,
                                                         clip_x0=clip, eta=eta))  # fmt: skip
        else:
            fn = jax.jit(lambda k: diffusion.ddpm_sample(k, eps_fn, sched, shape=shape, clip_x0=clip))
        start = time.perf_counter()
        x = jax.block_until_ready(fn(key))
        return x, time.perf_counter() - start

    ema, raw, raw_stats = state.ema_params, state.params, state.model_state
    variants = [
        ("DDIM-50, EMA + re-estimated BN (the step's)", dict(params=ema, stats=recal)),
        ("DDIM-50, EMA + raw weights' BN stats", dict(params=ema, stats=raw_stats)),
        ("DDIM-50, raw weights + their BN stats", dict(params=raw, stats=raw_stats)),
        ("DDIM-50, EMA + re-est. BN, clip x0 to [0,1]", dict(params=ema, stats=recal, clip=(0.0, 1.0))),
        ("DDIM-250, EMA + re-estimated BN", dict(params=ema, stats=recal, steps=250)),
        (f"DDPM-1000 ({n // 4} images), EMA + re-est. BN", dict(params=ema, stats=recal, kind="ddpm",
                                                              count=n // 4)),
        (f"DDPM-1000 ({n // 4} images), clip x0 to [0,1]", dict(params=ema, stats=recal, kind="ddpm",
                                                              count=n // 4, clip=(0.0, 1.0))),
        ("DDIM-50 η = 1, EMA + re-estimated BN", dict(params=ema, stats=recal, eta=1.0)),
        ("DDIM-100, EMA + re-estimated BN", dict(params=ema, stats=recal, steps=100)),
        ("DDIM-50 η = 1, raw weights + their BN stats", dict(params=raw, stats=raw_stats, eta=1.0)),
    ]  # fmt: skip
    only = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    for i, (name, options) in enumerate(variants):
        if only is None or str(i) in only:
            report(name, *sample(options.pop("params"), options.pop("stats"), **options))


if __name__ == "__main__":
    main()
