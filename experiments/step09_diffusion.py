"""Step 9 — DDPM diffusion on MNIST digits (book chapter 9).

Shows the forward process on a real photo (``--photo``: the book's ``flower.png``, or ``grace-hopper``)
and on a digit every 100 steps, and the book's step-by-step noising of the photo beside the closed form
(``book_noising.png``, :mod:`experiments._book_noising`); trains the book's UNet (2,167,784 parameters
at width 64) to predict the noise (linear β 1e-4 → 0.02, T = 1000, Adam 1e-3, batch 128, the book's
4,690 optimizer steps whatever the
dataset; ``--epochs`` overrides) through ``dlx_jax.training`` with an exponential moving average of
the weights, and samples with the ancestral DDPM sampler (1,000 steps) and DDIM (50 steps), each one
compiled loop. Samples are judged by numbers: the Fréchet distance of the project's CNN's penultimate
features (``sample_fid_*``) against the test images, beside ``fid_real_floor`` (training vs test
images, same count), with and without the EMA weights. Figures: forward noising, a 2×10 sample grid,
a denoising trajectory, EMA vs raw weights, the loss curve. ``--quick``: samples the project's own
trained weights shipped in the package (labelled pretrained; 200 judged samples, no training) when
they are there, ``--quick --weights train``: width 8, 2 epochs on 1,000 digits, 20 judged samples — a
smoke run, not a model. ``background_level_*``: the mean pixel value on the 4-pixel frame, beside the
real test images' ``background_level_real``. ``--preset book``: the book's own settings
(:mod:`experiments._diffusion_book`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import diffusion
from experiments import (
    _book_noising,
    _diffusion,
    _diffusion_book,
    _diffusion_figures,
    _diffusion_judge,
    _diffusion_sampling,
)
from experiments._cli import cli
from experiments._fitting import check_checkpoints
from experiments._outputs import StepOutput
from experiments._plots import plt

BOOK_FINAL_LOSS = 0.0181


@dataclass(frozen=True)
class Config(_diffusion.DiffusionConfig):
    out: str = "outputs/step09_diffusion"
    photo: str = "flower"
    STEP = "step09_diffusion"  # the name of its shipped weights (experiments._diffusion_pretrained)

    SUMMARY = (
        "weights",
        "final_loss",
        "sample_fid_ddpm",
        "sample_fid_ddim",
        "fid_real_floor",
        "background_level_ddim",
        "background_level_real",
        "train_steps",
    )
    HELP = {
        **_diffusion.COMMON_HELP,
        "photo": "photo noised in the forward figures: flower (the book's) or grace-hopper",
    }
    CHOICES = {**_diffusion.COMMON_CHOICES, "photo": tuple(_book_noising.PHOTOS)}


def figure_timesteps(config: Config) -> list[int]:
    """t = 0, T/10, ..., T (every 100 steps for the book's T = 1000)."""
    return [round(i * config.num_timesteps / 10) for i in range(11)]


def forward_rows(config: Config, digit: np.ndarray, key: jax.Array) -> dict[str, list[np.ndarray]]:
    """x_t of the photo and of a digit at t = 0, 100, ..., 1000 with one ε each (closed form)."""
    sched = _diffusion.schedule(config)
    ts = figure_timesteps(config)
    key_photo, key_digit = jax.random.split(key)
    rows = {}
    for name, x0, k in (
        ("photo", _book_noising.load_photo(config.photo), key_photo),
        ("digit", digit, key_digit),
    ):
        eps = jax.random.normal(k, x0.shape, jnp.float32)
        rows[name] = [
            np.asarray(
                diffusion.q_sample_from_noise(sched, jnp.asarray(x0)[None], jnp.array([t]), eps[None])[0]
            )
            if t > 0
            else x0
            for t in ts
        ]
    return rows


def forward_figure(out: StepOutput, config: Config, rows: dict[str, list[np.ndarray]]) -> None:
    ts = figure_timesteps(config)
    fig, axes = plt.subplots(2, len(ts), figsize=(len(ts) * 0.95, 2.4))
    for r, name in enumerate(("photo", "digit")):
        for c, t in enumerate(ts):
            img = np.clip(rows[name][c], 0, 1)
            axes[r, c].imshow(img if img.shape[-1] == 3 else img[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"t={t}", fontsize=8)
    fig.suptitle("Forward process q(x_t | x_0): √ᾱ_t x_0 + √(1−ᾱ_t) ε (shown clipped to [0, 1])", fontsize=9)
    out.figure(fig, "forward_noising")


def main(config: Config) -> dict:
    config = _diffusion_book.apply(config)  # --preset book: the book's settings
    _diffusion.validate(config)
    check_checkpoints(config)
    data = _diffusion.load_images(config)
    sizes = _diffusion.run_sizes(config)
    key_fwd, key_train, key_judge, key_s = jax.random.split(jax.random.key(config.seed), 4)
    run = _diffusion.trained_model(config, data, (key_train, key_judge), conditional=False,
                                   loss_options={}, fingerprint={"step": 9})  # fmt: skip
    model, state, history, info = run["model"], run["state"], run["history"], run["info"]
    judge_params = run["judge_params"]
    rows = forward_rows(config, data["x_test"][0], key_fwd)
    book_noising = _book_noising.run(
        jax.random.fold_in(key_fwd, 9), _diffusion.schedule(config), config.photo
    )
    base, test_feats = _diffusion_judge.judge_baselines(judge_params, data, sizes.fid_samples)
    pretrained = run["metrics"]["weights"] == "pretrained"
    # one set of sampling weights (shipped, or the book's: EMA decay 0 = the trained weights): no EMA/raw pair
    raw = not pretrained and config.preset != "book"
    samples = draw_samples(config, model, state, data, key_s, n_fid=base["fid_num_images"], raw=raw)

    m: dict[str, Any] = {
        **_diffusion.training_metrics(history, info, BOOK_FINAL_LOSS),
        **run["metrics"],
        **run["judge_info"],
        **base,
        "photo_mean_at_T": float(np.mean(rows["photo"][-1])),
        "photo_std_at_T": float(np.std(rows["photo"][-1])),
        **book_noising.metrics,
        "ddpm_sample_seconds": samples["grid"].seconds,
        "ddim_sample_seconds": samples["ddim_grid"].seconds,
        "sampling_note": f"seconds for 20 images: {config.num_timesteps}-step DDPM, "
        f"{config.ddim_steps}-step DDIM",
    }
    for name in ("ddpm", "ddim", "ddim_no_ema"):
        if name in samples:
            sheet = _diffusion_judge.sample_sheet(judge_params, samples[name].x0, test_feats)
            m[f"sample_fid_{name}"] = sheet["fid"]
            m[f"background_level_{name}"] = sheet["background_level"]
            m[f"sample_class_fractions_{name}"] = sheet["class_fractions"]
    n = base["fid_num_images"]
    m["fid_note"] = (
        f"Fréchet distance of the judge CNN's 1600-d penultimate features, {n} samples vs "
        f"{n} test images; floor = {n} training vs test images"
    )
    m["quick_note"] = _diffusion.quick_note(config, "{n} judged samples")
    m["preset"] = config.preset
    n_train = len(data["x_train"])
    if config.preset == "book":
        m |= _diffusion_book.loss_metrics(Config.STEP, history, n_train, config.batch_size)

    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            figures(out, config, rows, samples, history, pretrained=pretrained)
            _book_noising.figure(out, book_noising)
            if config.preset == "book":
                _diffusion_book.loss_figure(out, Config.STEP, history, n_train, config.batch_size)
        return out.finish(m)


def draw_samples(
    config: Config, model: Any, state: Any, data: dict, key: jax.Array, *, n_fid: int, raw: bool = True
) -> dict[str, _diffusion_sampling.Samples]:
    """The grids (20 images: DDPM with its trajectory, DDIM with EMA and with raw weights, same noise)
    and the judged samples (``n_fid`` each: DDPM if ``--ddpm-fid``, DDIM, DDIM without EMA). The EMA
    weights are sampled with BatchNorm statistics re-estimated for them. ``raw=False`` (one set of
    weights: the shipped ones, or ``--preset book``'s trained ones): no second, raw-weight set."""
    ema, raw_params, raw_stats = state.ema_params, state.params, state.model_state
    k_grid, k_ddpm, k_ddim, k_bn = jax.random.split(key, 4)
    stats = _diffusion.recalibrate_batch_stats(config, model, ema, raw_stats, data, k_bn)
    sample = functools.partial(_diffusion_sampling.sample, config, model)
    samples = {
        "grid": sample(ema, stats, k_grid, n=20, kind="ddpm"),
        "ddim_grid": sample(ema, stats, k_grid, n=20, kind="ddim"),
    }
    if raw:
        samples["raw_grid"] = sample(raw_params, raw_stats, k_grid, n=20, kind="ddim")
    if _diffusion.ddpm_fid(config):
        samples["ddpm"] = sample(ema, stats, k_ddpm, n=n_fid, kind="ddpm")
    samples["ddim"] = sample(ema, stats, k_ddim, n=n_fid, kind="ddim")
    if raw:
        samples["ddim_no_ema"] = sample(raw_params, raw_stats, k_ddim, n=n_fid, kind="ddim")
    return samples


def figures(
    out: StepOutput, config: Config, rows: dict, samples: dict, history: dict, pretrained: bool
) -> None:
    weights = "EMA weights"
    if pretrained or config.preset == "book":
        weights = "pretrained weights, shipped" if pretrained else "trained weights, no EMA (the book's)"
    forward_figure(out, config, rows)
    _diffusion_figures.show_grid(
        out,
        samples["grid"].x0,
        2,
        10,
        f"DDPM ({config.num_timesteps} steps, {weights}): 20 samples",
        "samples",
    )
    if "raw_grid" in samples:
        _diffusion_figures.show_grid(
            out,
            np.concatenate([samples["ddim_grid"].x0[:10], samples["raw_grid"].x0[:10]]),
            2,
            10,
            f"DDIM {config.ddim_steps} steps, same noise: EMA weights (top) vs raw weights (bottom)",
            "samples_ema_vs_raw",
            yticks=[14, 42],
            yticklabels=["EMA", "raw"],
        )
    else:
        _diffusion_figures.show_grid(
            out, samples["ddim_grid"].x0, 2, 10, f"DDIM {config.ddim_steps} steps ({weights})", "samples_ddim"
        )
    trajectory = samples["grid"].trajectory
    _diffusion_figures.trajectory_figure(
        out, trajectory.xs, trajectory.ts, f"Denoising: x_T → x_0 (DDPM, {weights})"
    )
    loss_title = "Step 9 — DDPM training loss" + (" (the shipped pretrained run's)" if pretrained else "")
    _diffusion_figures.loss_figure(out, history, loss_title, BOOK_FINAL_LOSS)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
