"""What steps 9 and 10 share: the config and its checks, the sizes a run uses (``--quick``: their row of
:mod:`experiments._quick`), the data, and the UNet trained through ``dlx_jax.training`` (with the
BatchNorm re-estimation its averaged weights need, ``training.recalibrate_batch_stats``).
Sampling lives in :mod:`experiments._diffusion_sampling`, the judge and the Fréchet
distances in :mod:`experiments._diffusion_judge`, shared figures in
:mod:`experiments._diffusion_figures`.

Timesteps follow the book: ``t`` is 1-based (``t ∈ {1..T}``), the book's array index ``t − 1``;
``dlx_jax.diffusion`` keeps its schedule arrays with a leading entry for ``t = 0`` (no noise) so the
1-based ``t`` indexes them directly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import diffusion, training, unet
from experiments import _diffusion_book, _diffusion_judge, _diffusion_pretrained, _fitting, _generative
from experiments._quick import QUICK as QUICK_BY_STEP

BOOK_TRAIN_STEPS = 4690  # the book: 10 epochs of 60,000 digits at batch 128 (469 steps each)
JUDGE_EPOCHS = 15
NUM_CLASSES = _diffusion_judge.NUM_CLASSES

#: Every ``--quick`` override of steps 9 and 10 (their entry in the one table, :mod:`experiments._quick`).
QUICK = QUICK_BY_STEP["step09_diffusion"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings shared by steps 9 and 10 (the book's values by default)."""

    out: str = "outputs/diffusion"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    epochs: int | None = None
    train_steps: int = BOOK_TRAIN_STEPS
    batch_size: int = 128
    lr: float = 1e-3
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    features: int = 64
    ema_decay: float = 0.995
    ema_warmup: int = 100
    num_samples: int = 1000
    fid_samples: int = 1000
    sample_batch: int = 250
    ddim_steps: int = 50
    ddim_eta: float = 0.0
    ddpm_fid: bool = True
    bn_recalibration: int = 50
    judge: str = "auto"
    epoch_mode: str = "stepped"
    resume: bool = False
    allow_lr_change: bool = False
    weights: str = "auto"
    preset: str = "project"
    clip_x0: bool = False
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    # size options: at most what a run can hold in memory (checked by experiments._cli.check_config)
    LIMITS = {
        "num_samples": (200_000, "the samples and their 1,600 judge features per image are kept in memory"),
        "fid_samples": (200_000, "the samples and their 1,600 judge features per image are kept in memory"),
        "sample_batch": (10_000, "one compiled sampling call holds the UNet's activations for the batch"),
        "features": (512, "the UNet has about 530 × FEATURES² parameters, three copies with Adam and EMA"),
    }


COMMON_HELP = {
    "dataset": "mnist-5k (embedded, 4,000/1,000), mnist or fashion-mnist (60,000/10,000, --data-dir)",
    "data_dir": "folder with the four IDX files (for mnist / fashion-mnist)",
    "epochs": "training epochs; default: enough epochs for --train-steps optimizer steps",
    "train_steps": "optimizer steps to train when --epochs is not given (book: 4,690 = 10 epochs of 60k)",
    "batch_size": "examples per Adam step (book: 128)",
    "lr": "Adam learning rate (book: 1e-3)",
    "num_timesteps": "diffusion steps T (book: 1000)",
    "beta_start": "β_1 of the linear schedule (book: 1e-4)",
    "beta_end": "β_T of the linear schedule (book: 0.02)",
    "features": "UNet width of the first level (levels f, 2f, 4f; book: 64; --quick uses 8)",
    "ema_decay": "decay of the weights' moving average used for sampling",
    "ema_warmup": "optimizer steps during which the moving average copies the weights",
    "num_samples": "generated images per guidance scale for cfg_accuracy (step 10)",
    "fid_samples": "generated images per sampler for the Fréchet distances (and as many real ones)",
    "sample_batch": "images per compiled sampling call (memory knob; chunk i draws from fold_in(key, i))",
    "ddim_steps": "DDIM steps (static)",
    "ddim_eta": "DDIM η (0 = deterministic)",
    "ddpm_fid": "also judge 1,000-step DDPM samples (slow: T network calls per image)",
    "bn_recalibration": "train-mode passes (batch --batch-size, noisy training images) that re-estimate "
    "BatchNorm's running statistics for the EMA weights before sampling (0: keep the raw weights' stats)",
    "judge": "folder of a trained `experiments.cnn` run for judging samples; auto = reuse OUT/../cnn "
    "when it was trained on the same dataset, else train one here",
    "epoch_mode": "stepped (one compiled step per batch from Python; faster for convolutions on "
    "XLA:CPU) or scan (one compiled lax.scan per epoch); identical numbers",
    "resume": "continue from OUT/checkpoints (same settings) instead of starting over",
    "allow_lr_change": _fitting.ALLOW_LR_CHANGE_HELP,
    **_fitting.MESH_HELP,
    "weights": "auto: under --quick sample the project's shipped trained weights (mnist-5k; labelled "
    "pretrained) instead of training, else train; pretrained: always sample them (no training; full sample "
    "counts without --quick); train: train from scratch (under --quick the width-8 smoke model)",
}
COMMON_HELP["preset"] = _diffusion_book.PRESET_HELP
COMMON_HELP["clip_x0"] = (
    "clip the predicted clean image x̂0 to the data range [0, 1] at every sampling step (the samplers' "
    "documented clip_x0, as in Ho et al. 2020; the book does not clip)"
)
COMMON_CHOICES = {
    "dataset": ("mnist-5k", "mnist", "fashion-mnist"),
    "epoch_mode": ("stepped", "scan"),
    "weights": ("auto", "pretrained", "train"),
    "preset": _diffusion_book.PRESETS,
}


# --- settings and data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSizes:
    """The sizes a run uses after ``--quick`` (:data:`QUICK`; stated in the metrics)."""

    features: int
    num_samples: int
    fid_samples: int
    judge_epochs: int
    bn_recalibration: int


def run_sizes(config: DiffusionConfig) -> RunSizes:
    """The config's sizes, capped by :data:`QUICK` under ``--quick``. Sampling the shipped weights
    (:func:`_diffusion_pretrained.use_pretrained`) keeps their stored BatchNorm statistics (no
    re-estimation) and, under ``--quick``, judges ``pretrained_samples`` samples."""
    pretrained = _diffusion_pretrained.use_pretrained(config)
    if not config.quick:
        passes = 0 if pretrained else config.bn_recalibration
        return RunSizes(config.features, config.num_samples, config.fid_samples, JUDGE_EPOCHS, passes)
    if pretrained:
        cap = QUICK["pretrained_samples"]
        return RunSizes(config.features, min(config.num_samples, cap), min(config.fid_samples, cap), 0, 0)
    return RunSizes(
        features=min(config.features, QUICK["features"]),
        num_samples=min(config.num_samples, QUICK["num_samples"]),
        fid_samples=min(config.fid_samples, QUICK["fid_samples"]),
        judge_epochs=QUICK["judge_epochs"],
        bn_recalibration=min(config.bn_recalibration, QUICK["bn_recalibration"]),
    )


def ddpm_fid(config: DiffusionConfig) -> bool:
    """``--ddpm-fid``, except under ``--quick`` with the shipped weights (1,000 network calls per
    image at width 32 would take most of the main job's minutes)."""
    return config.ddpm_fid and not (config.quick and _diffusion_pretrained.use_pretrained(config))


def quick_note(config: DiffusionConfig, samples: str) -> str:
    """The metrics' ``quick_note``: what ``--quick`` changed (empty for a full run)."""
    if not config.quick:
        return ""
    if _diffusion_pretrained.use_pretrained(config):
        return (
            "quick mode: sampled the shipped pretrained weights (no training), "
            + samples.format(n=QUICK["pretrained_samples"])
            + "; --weights train trains the width-8 smoke model instead"
        )
    return (
        f"quick mode: width {QUICK['features']}, {QUICK['epochs']} epochs on {QUICK['n_train']:,} digits, "
        + samples.format(n=QUICK["num_samples"])
    )


def validate(config: DiffusionConfig) -> None:
    """Raise ``ValueError`` for settings that cannot work (before anything is computed or written),
    including a ``--judge`` folder the run could not use (:func:`_diffusion_judge.reusable_judge`).

    The steps call :func:`experiments._fitting.check_checkpoints` after their own checks."""
    _generative.validate_config(
        config,
        positive=("train_steps", "batch_size", "features", "num_samples", "sample_batch", "ddim_steps"),
    )
    if config.fid_samples < 2:
        raise ValueError(
            f"--fid-samples must be >= 2 (a covariance needs 2 samples), got {config.fid_samples}"
        )
    if config.epochs is not None and config.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {config.epochs}; leave it out to train --train-steps")
    if config.num_timesteps < 2:
        raise ValueError(f"--num-timesteps must be >= 2, got {config.num_timesteps}; the book uses 1000")
    if config.ddim_steps > config.num_timesteps:
        raise ValueError(f"--ddim-steps {config.ddim_steps} exceeds --num-timesteps {config.num_timesteps}")
    if not 0 <= config.ddim_eta <= 1:
        raise ValueError(
            f"--ddim-eta must be in [0, 1], got {config.ddim_eta}: 0 = deterministic DDIM, 1 = DDPM-like "
            "noise (η > 1 leaves the schedule's variance)"
        )
    if config.epoch_mode not in COMMON_CHOICES["epoch_mode"]:
        raise ValueError(f"--epoch-mode must be stepped or scan, got {config.epoch_mode!r}")
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {config.ema_decay}; e.g. 0.995")
    if config.bn_recalibration < 0:
        raise ValueError(f"--bn-recalibration must be >= 0, got {config.bn_recalibration}")
    if config.ema_warmup < 0:
        raise ValueError(f"--ema-warmup must be >= 0, got {config.ema_warmup}")
    schedule(config)  # β range / order errors from dlx_jax.diffusion
    # the mesh (and a multi-process run's join) before any other JAX work; the batch must divide
    mesh = _fitting.data_mesh(config)
    training.check_divides(config.batch_size, mesh)
    if config.preset == "book" and mesh.devices.size > 1:
        raise ValueError(
            "--preset book keeps each epoch's partial last batch, which does not split evenly over "
            f"{mesh.devices.size} devices; pass --devices 1"
        )
    if _diffusion_pretrained.use_pretrained(config):
        _diffusion_pretrained.check(config, config.STEP)
    else:
        _diffusion_judge.reusable_judge(config)


def schedule(config: DiffusionConfig) -> diffusion.Schedule:
    return diffusion.linear_schedule(config.num_timesteps, config.beta_start, config.beta_end)


def load_images(config: DiffusionConfig) -> dict[str, np.ndarray]:
    """Float32 ``(n, 28, 28, 1)`` images in [0, 1] and int32 labels, through the generative steps'
    shared loader (quick: :data:`QUICK` evenly spaced images, every class kept)."""
    quick = {"quick_train": QUICK["n_train"], "quick_test": QUICK["n_test"]}
    data = _generative.load_images(config, flat=False, **quick)
    data["y_train"] = np.asarray(data["y_train"], np.int32)
    data["y_test"] = np.asarray(data["y_test"], np.int32)
    return data


def epochs_for(config: DiffusionConfig, n_train: int) -> int:
    """``--epochs``, or the epochs that make ``--train-steps`` optimizer steps (quick: at most
    :data:`QUICK`'s)."""
    if config.quick:
        return min(config.epochs or QUICK["epochs"], QUICK["epochs"])
    if config.epochs is not None:
        return config.epochs
    if config.preset == "book":
        return _diffusion_book.epochs_for(config.train_steps, n_train, config.batch_size)
    return math.ceil(config.train_steps / (n_train // config.batch_size))


# --- training ----------------------------------------------------------------------------------------


def build_model(config: DiffusionConfig, *, conditional: bool) -> unet.UNet:
    return unet.UNet(features=run_sizes(config).features, num_labels=NUM_CLASSES if conditional else None)


def train(
    config: DiffusionConfig,
    model: unet.UNet,
    data: dict[str, np.ndarray],
    key: jax.Array,
    *,
    loss_options: dict[str, Any],
    fingerprint: dict[str, Any],
) -> tuple[training.TrainState, dict[str, list], dict[str, Any]]:
    """Train ``model`` on the noise-prediction loss through ``training.fit`` (Adam, EMA, resume).

    Returns ``(state, history, info)`` with ``info`` = epochs, steps, seconds.
    """
    key_init, key_fit = jax.random.split(key)
    # one compiled init instead of one small compilation per layer (LLVM -O1: it runs once)
    init = jax.jit(functools.partial(unet.init, model=model), compiler_options=_generative.FAST_COMPILE)
    params, batch_stats = init(key_init)
    optimizer = optax.adam(config.lr)
    state = training.init_state(params, optimizer, model_state=batch_stats, ema=True)
    loss_fn = diffusion.make_loss(unet.make_apply_fn(model), schedule(config), **loss_options)
    step = training.make_train_step(
        loss_fn, optimizer, stateful=True, ema_decay=config.ema_decay, ema_warmup=config.ema_warmup
    )
    mesh = _fitting.data_mesh(config)  # data parallel: state replicated, every batch sharded
    if config.preset == "book":  # the book keeps each epoch's last partial batch (one device)
        epoch_fn = _diffusion_book.make_epoch_fn(step, batch_size=config.batch_size)
    elif config.epoch_mode == "scan":
        epoch_fn = jax.jit(training.make_epoch_fn(step, batch_size=config.batch_size, mesh=mesh))
    else:
        epoch_fn = training.make_stepped_epoch_fn(step, batch_size=config.batch_size, mesh=mesh)
    train_set = (np.asarray(data["x_train"]), np.asarray(data["y_train"]))
    state, train_set, key_fit = training.replicate((state, train_set, key_fit), mesh)
    epochs = epochs_for(config, len(data["x_train"]))
    full_fingerprint = _generative.fingerprint(
        config,
        model=f"unet-{model.features}-labels{model.num_labels or 0}",
        n_train=len(data["x_train"]),
        fields=("num_timesteps", "beta_start", "beta_end", "ema_decay", "ema_warmup", "preset"),
        **fingerprint,
        **_fitting.mesh_fingerprint(mesh),
    )
    state, history, seconds = _fitting.train(
        config, key_fit, state, train_set, epoch_fn=epoch_fn, epochs=epochs, fingerprint=full_fingerprint
    )
    info = {
        "epochs": epochs,
        "train_steps": int(state.step),
        "train_s": seconds,
        "num_params": unet.count_params(params),
        "features": model.features,
    }
    return state, history, info


def trained_model(
    config: DiffusionConfig,
    data: dict[str, np.ndarray],
    keys: tuple[jax.Array, jax.Array],
    *,
    conditional: bool,
    loss_options: dict[str, Any],
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """The model to sample and its judge: trained here (:func:`train`, then the judge of
    :func:`_diffusion_judge.judge`), or the shipped pretrained weights and judge
    (:func:`_diffusion_pretrained.use_pretrained`; no training, the shipped run's loss curve).

    Args:
        keys: ``(key_train, key_judge)``.

    Returns:
        ``model``, ``state`` (a ``TrainState``), ``history``, ``info``, ``judge_params``,
        ``judge_info`` and ``metrics`` (what the metrics say about the weights' origin).
    """
    key_train, key_judge = keys
    if _diffusion_pretrained.use_pretrained(config):
        model, params, stats, prov = _diffusion_pretrained.load_unet(config.STEP)
        history, info = _diffusion_pretrained.training_record(prov)
        judge_params, judge_info = _diffusion_pretrained.load_judge()
        return {
            "model": model,
            "state": _diffusion_pretrained.pretrained_state(params, stats, prov),
            "history": history,
            "info": info,
            "judge_params": judge_params,
            "judge_info": judge_info,
            "metrics": _diffusion_pretrained.metrics(prov),
        }
    model = build_model(config, conditional=conditional)
    state, history, info = train(config, model, data, key_train, loss_options=loss_options,
                                 fingerprint=fingerprint)  # fmt: skip
    epochs = run_sizes(config).judge_epochs
    judge_params, judge_info = _diffusion_judge.judge(config, data, key_judge, epochs=epochs)
    return {
        "model": model,
        "state": state,
        "history": history,
        "info": info,
        "judge_params": judge_params,
        "judge_info": judge_info,
        "metrics": {"weights": "trained here"},
    }


def recalibrate_batch_stats(
    config: DiffusionConfig,
    model: unet.UNet,
    params: Any,
    batch_stats: Any,
    data: dict[str, np.ndarray],
    key: jax.Array,
) -> Any:
    """BatchNorm running statistics re-estimated for ``params`` (e.g. the EMA weights).

    The running statistics that training leaves behind were gathered under the raw weights; with the
    EMA weights they mismatch (measured: γ = 3 accuracy 0.70 → 0.86 after recalibration on one run).
    ``--bn-recalibration`` train-mode forward passes on noisy training batches (random t, labels
    kept) update the statistics with PyTorch's momentum 0.1; the weights are not touched.
    """
    passes = run_sizes(config).bn_recalibration
    if passes == 0:
        return batch_stats
    apply_fn = unet.make_apply_fn(model)
    sched = schedule(config)
    x_all, y_all = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    n = min(config.batch_size, len(x_all))

    def noisy_batch(k: jax.Array) -> tuple[jax.Array, ...]:
        k_idx, k_t, k_eps = jax.random.split(k, 3)
        idx = jax.random.choice(k_idx, len(x_all), (n,), replace=False)
        t = diffusion.sample_timesteps(k_t, sched, n=n)
        xt, _ = diffusion.q_sample(k_eps, sched, x_all[idx], t)
        labels = y_all[idx] if model.num_labels else None
        mask = jnp.ones((n,), jnp.float32) if model.num_labels else None
        return xt, t, labels, mask

    stats_fn = jax.jit(training.make_stats_fn(apply_fn, noisy_batch))
    return training.recalibrate_batch_stats(key, stats_fn, params, batch_stats, num_passes=passes)


def training_metrics(
    history: dict[str, list], info: dict[str, Any], book_final_loss: float
) -> dict[str, Any]:
    """The metrics every diffusion step reports about its training run."""
    return {
        "loss_history": history["loss"],
        "final_loss": history["loss"][-1],
        "book_final_loss": book_final_loss,
        "epoch_seconds": history["epoch_seconds"],
        **({"training_changes": history["changes"]} if history.get("changes") else {}),
        **info,
    }
