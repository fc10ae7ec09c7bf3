"""FID, cfg_accuracy and background_level of the shipped step-10 UNet under guidance variants (the library's
``diffusion.guided(..., interval=)``): γ applied
only for ``t_lo <= t <= t_hi`` and the conditional model elsewhere (guidance in a limited interval).

    python experiments/results/issue16_background/interval_probe.py N "G,LO,HI;G,LO,HI;..."

Each variant samples ``N`` DDIM-50 images (labels ``i % 10``, chunks of 250, the same starting noises
for every variant) and judges them with the shipped CNN against ``N`` test images, the real-data floor
(``N`` training vs ``N`` test images) and the real background beside them. ``1,1,1000`` is the
conditional model, ``3,1,1000`` the book's rule (γ = 3 at every t). One JSON line per variant.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import diffusion, unet
from experiments import _diffusion, _diffusion_judge, _diffusion_pretrained, step10_guidance


def main() -> None:
    n, variants = int(sys.argv[1]), sys.argv[2].split(";")
    data = _diffusion.load_images(step10_guidance.Config(weights="pretrained"))
    model, params, stats, _ = _diffusion_pretrained.load_unet("step10_guidance")
    judge, _ = _diffusion_pretrained.load_judge()
    base, test_feats = _diffusion_judge.judge_baselines(judge, data, n)
    print("floor", base["fid_real_floor"], "bg_real", base["background_level_real"], flush=True)
    sched = diffusion.linear_schedule(1000, 1e-4, 0.02)
    raw = diffusion.make_eps_fn(unet.make_apply_fn(model), params, stats)
    labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
    for v in variants:
        g, lo, hi = (float(s) for s in v.split(","))
        outs, t0 = [], time.time()
        for i in range(0, n, 250):
            m = min(250, n - i)
            interval = step10_guidance.parse_interval(f"{int(lo)},{int(hi)}", 1000)  # 1..1000: None, every t
            eps_fn = diffusion.guided(raw, labels[i : i + m], g, interval=interval)

            def draw(k, e=eps_fn, m=m):
                return diffusion.ddim_sample(k, e, sched, shape=(m, 28, 28, 1), num_steps=50)

            f = jax.jit(draw)
            outs.append(np.asarray(f(jax.random.fold_in(jax.random.key(11), i))))
        x = np.concatenate(outs)
        s = _diffusion_judge.sample_sheet(judge, x, test_feats, np.asarray(labels))
        r = {"variant": v, "fid": s["fid"], "ratio": s["fid"] / base["fid_real_floor"], "acc": s["accuracy"],
             "bg": s["background_level"], "bg_ratio": s["background_level"] / base["background_level_real"],
             "seconds": time.time() - t0}  # fmt: skip
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
