"""Step 10 — conditional diffusion with classifier-free guidance on MNIST digits (book chapter 10).

Trains the book's conditional UNet (the UNet of step 9 plus a 10 × 100 label embedding added to the
time vector; 2,168,784 parameters at width 64) with classifier-free guidance: the whole batch's
labels are dropped with probability 0.1 (book; ``--drop-mode example`` drops per example;
``--label-drop 0`` is the book's plain conditional model). Sampling mixes the two predictions as
ε = ε_u + γ(ε_c − ε_u) from one forward pass on a doubled batch (γ = 0: unconditional, γ = 1:
conditional, book γ = 3). By default the guidance acts only for t ≤ 400 and the conditional model
samples the noisier steps (``--guidance-interval 1,400``; guidance in a limited interval, Kynkäänniemi
et al., 2024): guiding the high-noise steps is what narrows the samples to a few typical digits per
label (see ``experiments/results/issue16_background``); ``--guidance-interval all`` (and
``--preset book``) guides at every t as the book does.

Judged by numbers with the project's CNN (trained on the same dataset): ``cfg_accuracy`` — the
fraction of generated images the judge labels as their conditioning label — for every γ of
``--gammas`` (and per class), ``judge_test_accuracy`` (the judge on real test images, the ceiling),
``sample_fid_ddim``/``sample_fid_ddpm`` at γ (Fréchet distance of judge features vs the test images)
beside ``fid_real_floor``, sampling seconds. Figures: samples per label, the guidance sweep, accuracy
against γ, the loss curve. ``--quick``: samples the project's own trained weights shipped in the
package (labelled pretrained; 200 samples at ``--gamma``, 20 at the other γ, no training) when they are
there; ``--quick --weights train``: width 8, 2 epochs on 1,000 digits, 20 samples per γ.
``background_level_*``: the mean pixel value on the 4-pixel frame, beside the real test images'
``background_level_real``. ``--preset book``: the book's own settings (:mod:`experiments._diffusion_book`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from experiments import _diffusion, _diffusion_book, _diffusion_figures, _diffusion_judge, _diffusion_sampling
from experiments._cli import cli
from experiments._fitting import check_checkpoints
from experiments._outputs import StepOutput
from experiments._plots import plt

NUM_CLASSES = _diffusion.NUM_CLASSES
# Notebook 10's last-epoch losses: conditional.py 0.01775; the guidance cell 0.01748, which as saved trains
# without dropping labels (a second conditional run). The book prints no loss of a label-dropping run.
BOOK_FINAL_LOSS = 0.01748


@dataclass(frozen=True)
class Config(_diffusion.DiffusionConfig):
    out: str = "outputs/step10_guidance"
    STEP = "step10_guidance"  # the name of its shipped weights (experiments._diffusion_pretrained)
    label_drop: float = 0.1
    drop_mode: str = "batch"
    gamma: float = 3.0
    gammas: str = "0,1,3,5"
    guidance_interval: str = "1,400"
    sweep_sampler: str = "ddim"

    SUMMARY = (
        "weights",
        "final_loss",
        "cfg_accuracy",
        "sample_fid_ddim",
        "sample_fid_ddpm",
        "fid_real_floor",
        "background_level_ddim",
        "background_level_real",
    )
    HELP = {
        **_diffusion.COMMON_HELP,
        "label_drop": "probability of dropping labels in training (book: 0.1; 0 = plain conditional model)",
        "drop_mode": "batch: drop the whole batch's labels (book); example: drop each example's label",
        "gamma": "guidance scale γ for the sample grid and the FID samples (book: 3)",
        "gammas": "comma-separated guidance scales of the sweep (γ = 0 unconditional, 1 conditional)",
        "guidance_interval": "LO,HI: guide only for LO <= t <= HI, the conditional model elsewhere (guidance "
        "in a limited interval); all: guide at every t (the book)",
        "sweep_sampler": "sampler for the guidance sweep: ddim (--ddim-steps) or ddpm (T steps)",
    }
    CHOICES = {
        **_diffusion.COMMON_CHOICES,
        "drop_mode": ("batch", "example"),
        "sweep_sampler": ("ddim", "ddpm"),
    }


def parse_gammas(text: str) -> list[float]:
    """``"0,1,3,5"`` → ``[0.0, 1.0, 3.0, 5.0]``; each must be a finite number >= 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--gammas must be comma-separated numbers like 0,1,3,5, got {text!r}") from None
    if not values or any(not (math.isfinite(g) and g >= 0) for g in values):
        raise ValueError(f"--gammas must be numbers >= 0 (γ = 0 is the unconditional model), got {text!r}")
    return values


def parse_interval(text: str, num_timesteps: int) -> tuple[int, int] | None:
    """``--guidance-interval``: ``"all"`` (or an interval covering ``1..T``) is ``None``, guidance at every
    ``t``; ``"LO,HI"`` is ``(LO, min(HI, T))`` with ``1 <= LO <= HI`` and ``LO <= T`` (a shorter schedule,
    e.g. ``--num-timesteps 20``, is guided up to its own ``T``)."""
    fix = f"pass e.g. --guidance-interval 1,400 (guide for t <= 400) or all (every t of 1..{num_timesteps})"
    if text.strip().lower() == "all":
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        message = f"--guidance-interval must be LO,HI (two integers) or all, got {text!r}; {fix}"
        raise ValueError(message) from None
    if not (1 <= lo <= hi and lo <= num_timesteps):
        raise ValueError(
            f"--guidance-interval must satisfy 1 <= LO <= HI and LO <= T = {num_timesteps}, got {text!r}; "
            + fix
        )
    hi = min(hi, num_timesteps)
    return None if (lo, hi) == (1, num_timesteps) else (lo, hi)


def interval_of(config: Config) -> tuple[int, int] | None:
    """The run's guidance interval (:func:`parse_interval` of ``--guidance-interval`` against its ``T``)."""
    return parse_interval(config.guidance_interval, config.num_timesteps)


def interval_label(config: Config) -> str:
    """How figures and metrics name the run's guidance interval."""
    interval = interval_of(config)
    return "every t" if interval is None else f"t in {interval[0]}..{interval[1]}"


def validate(config: Config) -> list[float]:
    """Check the settings (all before training); return the guidance scales to sweep."""
    _diffusion.validate(config)
    if not 0 <= config.label_drop <= 1:
        raise ValueError(f"--label-drop must be a probability in [0, 1], got {config.label_drop}")
    if not (math.isfinite(config.gamma) and config.gamma >= 0):
        raise ValueError(f"--gamma must be >= 0 (0 = unconditional, 1 = conditional), got {config.gamma}")
    if config.num_samples < NUM_CLASSES:
        raise ValueError(
            f"--num-samples must be >= {NUM_CLASSES} for step 10, got {config.num_samples}: the samples are "
            f"conditioned on labels i % {NUM_CLASSES} and cfg_accuracy_per_class needs every class; pass "
            f"--num-samples {NUM_CLASSES} or more"
        )
    interval_of(config)
    gammas = parse_gammas(config.gammas)
    if config.gamma not in gammas:
        gammas.append(config.gamma)
    check_checkpoints(config)  # last: it notes a --resume with nothing to resume
    return gammas


def condition_for(gamma: float) -> str:
    """The ε-function transform for guidance ``γ``: γ = 0 is the unconditional model and γ = 1 the
    conditional one (one forward pass each); any other γ guides with the doubled batch."""
    if gamma == 0:
        return "unconditional"
    return "conditional" if gamma == 1 else "guided"


def _tag(gamma: float) -> str:
    return f"g{gamma:g}".replace(".", "p")


def main(config: Config) -> dict:
    config = _diffusion_book.apply(config)  # --preset book: the book's settings
    gammas = validate(config)
    data = _diffusion.load_images(config)
    sizes = _diffusion.run_sizes(config)
    key_train, key_judge, key_s = jax.random.split(jax.random.key(config.seed), 3)
    loss_options = {
        "conditional": True,
        "label_drop": config.label_drop,
        "drop_mode": config.drop_mode,
        "num_classes": NUM_CLASSES,
    }
    fingerprint = {"step": 10, "label_drop": config.label_drop, "drop_mode": config.drop_mode}
    run = _diffusion.trained_model(config, data, (key_train, key_judge), conditional=True,
                                   loss_options=loss_options, fingerprint=fingerprint)  # fmt: skip
    model, state, history, info = run["model"], run["state"], run["history"], run["info"]
    base, test_feats = _diffusion_judge.judge_baselines(run["judge_params"], data, sizes.fid_samples)
    judged = functools.partial(_diffusion_judge.sample_sheet, run["judge_params"], test_feats=test_feats)
    n_other = sizes.num_samples
    if config.quick and run["metrics"]["weights"] == "pretrained":
        n_other = min(n_other, _diffusion.QUICK["num_samples"])  # the other γ: a figure row, a rough number
    sweep = guidance_sweep(config, model, state, data, key_s, gammas, judged, n=sizes.num_samples,
                           n_fid=base["fid_num_images"], n_other=n_other)  # fmt: skip

    n, n_fid, other = sizes.num_samples, base["fid_num_images"], sweep["other"]
    m: dict[str, Any] = {
        **_diffusion.training_metrics(history, info, BOOK_FINAL_LOSS),
        "book_final_loss_note": "notebook 10's guidance cell, which trains without dropping labels "
        "(conditional.py: 0.01775); the book prints no loss of a run that drops labels",
        **run["metrics"],
        **run["judge_info"],
        **base,
        "cfg_gammas": gammas,
        "guidance_interval": interval_label(config),
        "sweep_sampler": config.sweep_sampler,
        **sweep["metrics"],
    }
    if "sample_fid_ddpm" in m:
        m["ddim_over_ddpm_fid"] = m["sample_fid_ddim"] / m["sample_fid_ddpm"]
    m["sampling_note"] = (
        f"*_sample_seconds at γ={config.gamma:g}: {n} images ({config.sweep_sampler})"
        + (f", {n_fid} images ({other})" if f"{other}_sample_seconds" in m else f", no {other} samples")
        + f"; DDPM {config.num_timesteps} steps, DDIM {config.ddim_steps} steps"
    )
    m["fid_note"] = (
        f"judge-CNN penultimate features, first {n_fid} samples (labels i % 10) at γ={config.gamma:g} "
        f"({m['guidance_interval']}) vs "
        f"{n_fid} test images; floor = training vs test images, same count"
    )
    m["quick_note"] = _diffusion.quick_note(config, "{n} samples per γ (see cfg_num_samples)")
    m["preset"] = config.preset
    book, n_train = None, len(data["x_train"])
    if config.preset == "book":
        book = book_grid(config, model, state, jax.random.fold_in(key_s, 16), run["judge_params"])
        m |= book["metrics"] | _diffusion_book.loss_metrics(Config.STEP, history, n_train, config.batch_size)

    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            pretrained = run["metrics"]["weights"] == "pretrained"
            figures(out, config, history, sweep, gammas, base["judge_test_accuracy"], pretrained=pretrained)
            if book is not None:
                _diffusion_book.loss_figure(out, Config.STEP, history, n_train, config.batch_size)
                _diffusion_book.labelled_grid(out, book["x0"], book["labels"], book["title"], "book_samples")
        return out.finish(m)


def book_grid(config: Config, model: Any, state: Any, key: jax.Array, judge_params: Any) -> dict[str, Any]:
    """``--preset book``: the book's figure, 20 DDPM-1000 samples at γ for 20 uniformly random labels
    (its ``torch.randint(0, 10, (20,))``), judged; the sampled weights are the trained ones (no EMA)."""
    key_labels, key_x = jax.random.split(key)
    labels = _diffusion_book.random_labels(key_labels)
    condition = dict(condition=condition_for(config.gamma), labels=labels, gamma=config.gamma,
                     interval=interval_of(config))  # fmt: skip
    samples = _diffusion_sampling.sample(config, model, state.ema_params, state.model_state, key_x,
                                         n=len(labels), kind="ddpm", **condition)  # fmt: skip
    _, preds = _diffusion_judge.judge_outputs(judge_params, samples.x0)
    metrics = {
        "book_grid_labels": labels.tolist(),
        "book_grid_judged": preds.tolist(),
        "book_grid_accuracy": float(np.mean(preds == labels)),
        "book_grid_background_level": _diffusion_judge.background_level(samples.x0),
    }
    title = f"The book's figure: DDPM {config.num_timesteps} steps, γ = {config.gamma:g}, 20 random labels"
    return {"metrics": metrics, "x0": samples.x0, "labels": labels, "title": title}


def guidance_sweep(
    config, model, state, data, key, gammas, judged, *, n: int, n_fid: int, n_other: int | None = None
) -> dict[str, Any]:
    """Sample ``n`` images at ``--gamma`` and ``n_other`` (default ``n``) at every other γ with the
    sweep sampler (the same key for every γ: the same starting noise, only the guidance differs),
    judge them and measure their ``background_level``; then ``n_fid`` images at ``--gamma`` with the
    other sampler for its FID. The EMA weights are sampled with BatchNorm statistics re-estimated
    for them. Returns ``metrics``, ``accuracy`` (per γ), ``per_class``, ``shown`` (samples per γ)
    and ``other`` (the other sampler's name)."""
    key, k_bn = jax.random.split(key)
    ema = state.ema_params
    stats = _diffusion.recalibrate_batch_stats(config, model, ema, state.model_state, data, k_bn)
    interval = interval_of(config)

    def draw(k, *, n, gamma, kind):
        labels = np.arange(n, dtype=np.int32) % NUM_CLASSES
        condition = dict(condition=condition_for(gamma), labels=labels, gamma=gamma, interval=interval)
        samples = _diffusion_sampling.sample(config, model, ema, stats, k, n=n, kind=kind, **condition)
        return samples, labels

    metrics: dict[str, Any] = {}
    accuracy, per_class, shown = [], {}, {}
    k_sweep, k_ddpm = jax.random.split(key)
    counts = []
    for gamma in gammas:
        count = n if gamma == config.gamma or n_other is None else max(n_other, NUM_CLASSES)
        samples, labels = draw(k_sweep, n=count, gamma=gamma, kind=config.sweep_sampler)
        sheet = judged(samples.x0, labels=labels, n_fid=n_fid)
        accuracy.append(sheet["accuracy"])
        counts.append(count)
        per_class[gamma] = sheet["accuracy_per_class"]
        metrics[f"cfg_accuracy_{_tag(gamma)}"] = sheet["accuracy"]
        metrics[f"cfg_accuracy_per_class_{_tag(gamma)}"] = sheet["accuracy_per_class"]
        shown[gamma] = samples.x0
        if gamma == config.gamma:
            metrics[f"sample_fid_{config.sweep_sampler}"] = sheet["fid"]
            metrics[f"background_level_{config.sweep_sampler}"] = sheet["background_level"]
            metrics[f"{config.sweep_sampler}_sample_seconds"] = samples.seconds
    metrics["cfg_accuracy"] = accuracy
    metrics["cfg_num_samples"] = counts
    other = "ddpm" if config.sweep_sampler == "ddim" else "ddim"
    if other == "ddim" or _diffusion.ddpm_fid(config):
        samples, _ = draw(k_ddpm, n=n_fid, gamma=config.gamma, kind=other)
        sheet = judged(samples.x0, n_fid=n_fid)
        metrics[f"sample_fid_{other}"] = sheet["fid"]
        metrics[f"background_level_{other}"] = sheet["background_level"]
        metrics[f"{other}_sample_seconds"] = samples.seconds
    return {"metrics": metrics, "accuracy": accuracy, "per_class": per_class, "shown": shown, "other": other}


def figures(out, config, history, sweep, gammas, ceiling, *, pretrained: bool = False) -> None:
    origin = ", pretrained weights (shipped)" if pretrained else ""
    where = interval_label(config)
    shown, accuracy, per_class = sweep["shown"], sweep["accuracy"], sweep["per_class"]
    per_label = min(10, len(shown[config.gamma]) // NUM_CLASSES)
    if per_label >= 1:
        x = shown[config.gamma][: per_label * NUM_CLASSES].reshape(per_label, NUM_CLASSES, 28, 28, 1)
        _diffusion_figures.show_grid(
            out,
            x.transpose(1, 0, 2, 3, 4).reshape(-1, 28, 28, 1),
            NUM_CLASSES,
            per_label,
            f"γ = {config.gamma:g} at {where} ({config.sweep_sampler}{origin}): row = conditioning label 0–9",
            "samples_per_label",
            yticks=[14 + 28 * i for i in range(10)],
            yticklabels=[str(i) for i in range(10)],
        )
    rows = np.concatenate([shown[g][:NUM_CLASSES] for g in gammas])
    _diffusion_figures.show_grid(
        out,
        rows,
        len(gammas),
        NUM_CLASSES,
        f"Guidance sweep (γ at {where}){origin}, same starting noise: columns = labels 0–9 (γ = 0 ignores "
        "the label)",
        "guidance_sweep",
        yticks=[14 + 28 * i for i in range(len(gammas))],
        yticklabels=[f"γ={g:g}" for g in gammas],
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(gammas, accuracy, marker="o")
    ax1.axhline(ceiling, color="gray", ls="--", lw=1, label=f"judge on real test digits = {ceiling:.3f}")
    ax1.axhline(0.1, color="gray", ls=":", lw=1, label="chance (0.1)")
    ax1.set_xlabel("guidance scale γ")
    ax1.set_ylabel("cfg_accuracy (judge agrees with the label)")
    ax1.set_ylim(0, 1.02)
    ax1.legend(loc="lower right")
    ax1.set_title("Accuracy against guidance" + (" (pretrained)" if pretrained else ""))
    width = 0.8 / len(gammas)
    for i, g in enumerate(gammas):
        ax2.bar(np.arange(10) + i * width - 0.4 + width / 2, per_class[g], width, label=f"γ={g:g}")
    ax2.set_xticks(range(10))
    ax2.set_xlabel("conditioning label")
    ax2.set_ylabel("accuracy per class")
    ax2.legend(fontsize=7, ncol=len(gammas))
    ax2.set_title("Per class")
    out.figure(fig, "guidance_accuracy")
    _diffusion_figures.loss_figure(
        out,
        history,
        "Step 10 — classifier-free guidance training loss"
        + (" (the shipped pretrained run's)" if pretrained else ""),
        BOOK_FINAL_LOSS,
    )


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
