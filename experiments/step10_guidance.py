"""Step 10 — conditional diffusion with classifier-free guidance on MNIST digits (book chapter 10).

Trains the book's conditional UNet (the UNet of step 9 plus a 10 × 100 label embedding added to the
time vector; 2,168,784 parameters at width 64) with classifier-free guidance: the whole batch's
labels are dropped with probability 0.1 (book; ``--drop-mode example`` drops per example;
``--label-drop 0`` is the book's plain conditional model). Sampling mixes the two predictions as
ε = ε_u + γ(ε_c − ε_u) from one forward pass on a doubled batch (γ = 0: unconditional, γ = 1:
conditional, book γ = 3).

Judged by numbers with the project's CNN (trained on the same dataset): ``cfg_accuracy`` — the
fraction of generated images the judge labels as their conditioning label — for every γ of
``--gammas`` (and per class), ``judge_test_accuracy`` (the judge on real test images, the ceiling),
``sample_fid_ddim``/``sample_fid_ddpm`` at γ (Fréchet distance of judge features vs the test images)
beside ``fid_real_floor``, sampling seconds. Figures: samples per label, the guidance sweep, accuracy
against γ, the loss curve. ``--quick``: width 8, 2 epochs on 1,000 digits, 20 samples per γ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from experiments import _diffusion as D
from experiments._common import StepOutput, check_checkpoints, cli, plt

BOOK_FINAL_LOSS = 0.0176  # the book's CFG model (conditional without dropping: 0.0178)


@dataclass(frozen=True)
class Config(D.DiffusionConfig):
    out: str = "outputs/step10_guidance"
    label_drop: float = 0.1
    drop_mode: str = "batch"
    gamma: float = 3.0
    gammas: str = "0,1,3,5"
    sweep_sampler: str = "ddim"

    SUMMARY = ("final_loss", "cfg_accuracy", "sample_fid_ddim", "sample_fid_ddpm", "fid_real_floor")
    HELP = {
        **D.COMMON_HELP,
        "label_drop": "probability of dropping labels in training (book: 0.1; 0 = plain conditional model)",
        "drop_mode": "batch: drop the whole batch's labels (book); example: drop each example's label",
        "gamma": "guidance scale γ for the sample grid and the FID samples (book: 3)",
        "gammas": "comma-separated guidance scales of the sweep (γ = 0 unconditional, 1 conditional)",
        "sweep_sampler": "sampler for the guidance sweep: ddim (--ddim-steps) or ddpm (T steps)",
    }
    CHOICES = {**D.COMMON_CHOICES, "drop_mode": ("batch", "example"), "sweep_sampler": ("ddim", "ddpm")}


def parse_gammas(text: str) -> list[float]:
    """``"0,1,3,5"`` → ``[0.0, 1.0, 3.0, 5.0]``; each must be a finite number >= 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--gammas must be comma-separated numbers like 0,1,3,5, got {text!r}") from None
    if not values or any(not (math.isfinite(g) and g >= 0) for g in values):
        raise ValueError(f"--gammas must be numbers >= 0 (γ = 0 is the unconditional model), got {text!r}")
    return values


def validate(config: Config) -> list[float]:
    D.validate(config)
    if not 0 <= config.label_drop <= 1:
        raise ValueError(f"--label-drop must be a probability in [0, 1], got {config.label_drop}")
    if not (math.isfinite(config.gamma) and config.gamma >= 0):
        raise ValueError(f"--gamma must be >= 0 (0 = unconditional, 1 = conditional), got {config.gamma}")
    gammas = parse_gammas(config.gammas)
    if config.gamma not in gammas:
        gammas.append(config.gamma)
    check_checkpoints(config)  # last: it notes a --resume with nothing to resume
    return gammas


def _guided(config: Config, model, params, stats, key, *, n: int, gamma: float, kind: str):
    """``n`` samples with labels ``i % 10`` at guidance ``γ``: γ = 0 runs the unconditional model and
    γ = 1 the conditional one (one forward pass each), other γ the doubled batch."""
    labels = np.arange(n, dtype=np.int32) % D.NUM_CLASSES
    if gamma == 0:
        x, s = D.sample(config, model, params, stats, key, n=n, kind=kind)
    elif gamma == 1:
        x, s = D.sample(config, model, params, stats, key, n=n, kind=kind, labels=labels)
    else:
        x, s = D.sample(config, model, params, stats, key, n=n, kind=kind, labels=labels, gamma=gamma)
    return x, labels, s


def _tag(gamma: float) -> str:
    return f"g{gamma:g}".replace(".", "p")


def main(config: Config) -> dict:
    gammas = validate(config)
    data = D.load_images(config)
    sizes = D.settings(config)
    n = sizes["num_samples"]
    key_train, key_judge, key_s = jax.random.split(jax.random.key(config.seed), 3)
    model = D.build_model(config, conditional=True)
    loss_options = {
        "conditional": True,
        "label_drop": config.label_drop,
        "drop_mode": config.drop_mode,
        "num_classes": D.NUM_CLASSES,
    }
    fingerprint = {"step": 10, "label_drop": config.label_drop, "drop_mode": config.drop_mode}
    state, history, info = D.train(config, model, data, key_train, loss_options=loss_options,
                                   fingerprint=fingerprint)  # fmt: skip
    judge_params, judge_info = D.judge(config, data, key_judge)
    base, test_feats = D.judge_baselines(judge_params, data, sizes["fid_samples"])
    n_fid = base["fid_num_images"]
    key_s, k_bn = jax.random.split(key_s)
    ema = state.ema_params
    stats = D.recalibrate_batch_stats(
        config, model, ema, state.model_state, data, k_bn
    )  # for the EMA weights

    m: dict[str, Any] = {
        **D.training_metrics(history, info, BOOK_FINAL_LOSS),
        **judge_info,
        **base,
        "cfg_gammas": gammas,
        "sweep_sampler": config.sweep_sampler,
    }
    accuracy, per_class, shown = [], {}, {}
    k_sweep, k_ddpm = jax.random.split(key_s)
    for gamma in gammas:  # the same key for every γ: the same starting noise, only the guidance differs
        x, labels, seconds = _guided(
            config, model, ema, stats, k_sweep, n=n, gamma=gamma, kind=config.sweep_sampler
        )
        sheet = D.sample_sheet(judge_params, x, test_feats, labels, n_fid=n_fid)
        accuracy.append(sheet["accuracy"])
        per_class[gamma] = sheet["accuracy_per_class"]
        m[f"cfg_accuracy_{_tag(gamma)}"] = sheet["accuracy"]
        m[f"cfg_accuracy_per_class_{_tag(gamma)}"] = sheet["accuracy_per_class"]
        shown[gamma] = x
        if gamma == config.gamma:
            m[f"sample_fid_{config.sweep_sampler}"] = sheet["fid"]
            m[f"{config.sweep_sampler}_sample_seconds"] = seconds
    m["cfg_accuracy"] = accuracy
    other = "ddpm" if config.sweep_sampler == "ddim" else "ddim"
    if other == "ddim" or config.ddpm_fid:
        x, labels, seconds = _guided(
            config, model, ema, stats, k_ddpm, n=n_fid, gamma=config.gamma, kind=other
        )
        m[f"sample_fid_{other}"] = D.sample_sheet(judge_params, x, test_feats, labels, n_fid=n_fid)["fid"]
        m[f"{other}_sample_seconds"] = seconds
    if "sample_fid_ddpm" in m:
        m["ddim_over_ddpm_fid"] = m["sample_fid_ddim"] / m["sample_fid_ddpm"]
    m["sampling_note"] = (
        f"*_sample_seconds at γ={config.gamma:g}: {n} images ({config.sweep_sampler}), {n_fid} images "
        f"({other}); DDPM {config.num_timesteps} steps, DDIM {config.ddim_steps} steps"
    )
    m["fid_note"] = (
        f"judge-CNN penultimate features, first {n_fid} samples (labels i % 10) at γ={config.gamma:g} vs "
        f"{base['fid_num_images']} test images; floor = training vs test images, same count"
    )
    m["quick_note"] = (
        "quick mode: width 8, 2 epochs on 1,000 digits, 20 samples per γ" if config.quick else ""
    )

    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            figures(out, config, history, shown, gammas, accuracy, per_class, base["judge_test_accuracy"])
        return out.finish(m)


def figures(out, config, history, shown, gammas, accuracy, per_class, ceiling) -> None:
    per_label = min(10, len(shown[config.gamma]) // D.NUM_CLASSES)
    if per_label >= 1:
        x = shown[config.gamma][: per_label * D.NUM_CLASSES].reshape(per_label, D.NUM_CLASSES, 28, 28, 1)
        D.show_grid(
            out,
            x.transpose(1, 0, 2, 3, 4).reshape(-1, 28, 28, 1),
            D.NUM_CLASSES,
            per_label,
            f"γ = {config.gamma:g} ({config.sweep_sampler}): row = conditioning label 0–9",
            "samples_per_label",
            yticks=[14 + 28 * i for i in range(10)],
            yticklabels=[str(i) for i in range(10)],
        )
    rows = np.concatenate([shown[g][: D.NUM_CLASSES] for g in gammas])
    D.show_grid(
        out,
        rows,
        len(gammas),
        D.NUM_CLASSES,
        "Guidance sweep, same starting noise: columns = labels 0–9 (γ = 0 ignores the label)",
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
    ax1.set_title("Accuracy against guidance")
    width = 0.8 / len(gammas)
    for i, g in enumerate(gammas):
        ax2.bar(np.arange(10) + i * width - 0.4 + width / 2, per_class[g], width, label=f"γ={g:g}")
    ax2.set_xticks(range(10))
    ax2.set_xlabel("conditioning label")
    ax2.set_ylabel("accuracy per class")
    ax2.legend(fontsize=7, ncol=len(gammas))
    ax2.set_title("Per class")
    out.figure(fig, "guidance_accuracy")
    D.loss_figure(out, history, "Step 10 — classifier-free guidance training loss", BOOK_FINAL_LOSS)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
