"""What steps 9 and 10 share: the config, data, the UNet trained through ``dlx_jax.training``,
compiled samplers, the CNN judge and the Fréchet distance, and the figures.

Timesteps follow the book: ``t`` is 1-based (``t ∈ {1..T}``), the book's array index ``t − 1``;
``dlx_jax.diffusion`` keeps its schedule arrays with a leading entry for ``t = 0`` (no noise) so the
1-based ``t`` indexes them directly.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import cnn, diffusion, metrics, training, unet
from experiments import _generative as G
from experiments._common import StepOutput, plt

BOOK_TRAIN_STEPS = 4690  # the book: 10 epochs of 60,000 digits at batch 128 (469 steps each)
QUICK = {"n_train": 1000, "n_test": 200, "epochs": 2, "features": 8, "num_samples": 20, "judge_epochs": 3}
JUDGE_EPOCHS = 15
NUM_CLASSES = 10


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
}
COMMON_CHOICES = {"dataset": ("mnist-5k", "mnist", "fashion-mnist"), "epoch_mode": ("stepped", "scan")}


# --- settings and data -----------------------------------------------------------------------------


def validate(config: DiffusionConfig) -> None:
    """Raise ``ValueError`` for settings that cannot work (before anything is computed or written).

    The steps call :func:`experiments._common.check_checkpoints` after their own checks."""
    G.validate_config(
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
    if not config.ddim_eta >= 0:
        raise ValueError(f"--ddim-eta must be >= 0, got {config.ddim_eta}")
    if config.epoch_mode not in COMMON_CHOICES["epoch_mode"]:
        raise ValueError(f"--epoch-mode must be stepped or scan, got {config.epoch_mode!r}")
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {config.ema_decay}; e.g. 0.995")
    if config.bn_recalibration < 0:
        raise ValueError(f"--bn-recalibration must be >= 0, got {config.bn_recalibration}")
    if config.ema_warmup < 0:
        raise ValueError(f"--ema-warmup must be >= 0, got {config.ema_warmup}")
    schedule(config)  # β range / order errors from dlx_jax.diffusion
    if config.judge != "auto":
        check_judge_folder(Path(config.judge), config.dataset)


def settings(config: DiffusionConfig) -> dict[str, Any]:
    """The sizes a run uses after ``--quick`` (stated in the metrics)."""
    if config.quick:
        return {
            "features": min(config.features, QUICK["features"]),
            "num_samples": min(config.num_samples, QUICK["num_samples"]),
            "fid_samples": min(config.fid_samples, QUICK["num_samples"]),
            "judge_epochs": QUICK["judge_epochs"],
        }
    return {
        "features": config.features,
        "num_samples": config.num_samples,
        "fid_samples": config.fid_samples,
        "judge_epochs": JUDGE_EPOCHS,
    }


def schedule(config: DiffusionConfig) -> diffusion.Schedule:
    return diffusion.linear_schedule(config.num_timesteps, config.beta_start, config.beta_end)


def load_images(config: DiffusionConfig) -> dict[str, np.ndarray]:
    """Float32 ``(n, 28, 28, 1)`` images in [0, 1] and int32 labels, through the generative steps'
    shared loader (quick: 1,000 / 200 evenly spaced images, every class kept)."""
    data = G.load_images(config, flat=False, quick_train=QUICK["n_train"], quick_test=QUICK["n_test"])
    data["y_train"] = np.asarray(data["y_train"], np.int32)
    data["y_test"] = np.asarray(data["y_test"], np.int32)
    return data


def epochs_for(config: DiffusionConfig, n_train: int) -> int:
    """``--epochs``, or the epochs that make ``--train-steps`` optimizer steps (quick: 2)."""
    if config.quick:
        return min(config.epochs or QUICK["epochs"], QUICK["epochs"])
    if config.epochs is not None:
        return config.epochs
    return math.ceil(config.train_steps / (n_train // config.batch_size))


# --- training ----------------------------------------------------------------------------------------


def build_model(config: DiffusionConfig, *, conditional: bool) -> unet.UNet:
    return unet.UNet(features=settings(config)["features"], num_labels=NUM_CLASSES if conditional else None)


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
    init = jax.jit(functools.partial(unet.init, model=model), compiler_options=G.FAST_COMPILE)
    params, batch_stats = init(key_init)
    optimizer = optax.adam(config.lr)
    state = training.init_state(params, optimizer, model_state=batch_stats, ema=True)
    loss_fn = diffusion.make_loss(unet.make_apply_fn(model), schedule(config), **loss_options)
    step = training.make_train_step(
        loss_fn, optimizer, stateful=True, ema_decay=config.ema_decay, ema_warmup=config.ema_warmup
    )
    if config.epoch_mode == "scan":
        epoch_fn = jax.jit(training.make_epoch_fn(step, batch_size=config.batch_size))
    else:
        epoch_fn = training.make_stepped_epoch_fn(step, batch_size=config.batch_size)
    train_set = (jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"]))
    epochs = epochs_for(config, len(data["x_train"]))
    full_fingerprint = G.fingerprint(
        config,
        model=f"unet-{model.features}-labels{model.num_labels or 0}",
        n_train=len(data["x_train"]),
        fields=("num_timesteps", "beta_start", "beta_end", "ema_decay", "ema_warmup"),
        **fingerprint,
    )
    state, history, seconds = G.train(
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
    if config.bn_recalibration == 0:
        return batch_stats
    apply_fn = unet.make_apply_fn(model)
    sched = schedule(config)
    x_all, y_all = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    n = min(config.batch_size, len(x_all))

    @jax.jit
    def one_pass(stats, k):
        k_idx, k_t, k_eps = jax.random.split(k, 3)
        idx = jax.random.choice(k_idx, len(x_all), (n,), replace=False)
        t = diffusion.sample_timesteps(k_t, sched, n=n)
        xt, _ = diffusion.q_sample(k_eps, sched, x_all[idx], t)
        labels = y_all[idx] if model.num_labels else None
        mask = jnp.ones((n,), jnp.float32) if model.num_labels else None
        return apply_fn(params, stats, xt, t, labels, mask, train=True)[1]

    passes = min(config.bn_recalibration, 5) if config.quick else config.bn_recalibration
    for i in range(passes):
        batch_stats = one_pass(batch_stats, jax.random.fold_in(key, i))
    return batch_stats


def training_metrics(
    history: dict[str, list], info: dict[str, Any], book_final_loss: float
) -> dict[str, Any]:
    """The metrics every diffusion step reports about its training run."""
    return {
        "loss_history": history["loss"],
        "final_loss": history["loss"][-1],
        "book_final_loss": book_final_loss,
        "epoch_seconds": history["epoch_seconds"],
        **info,
    }


# --- sampling ----------------------------------------------------------------------------------------


_EXECUTABLES: dict[tuple, Any] = {}


def _sampler_executable(spec: tuple, args: tuple) -> Any:
    """The sampler ``run(key, params, stats, labels, gamma)`` for ``spec = (features, num_labels,
    schedule settings, kind, n, ddim_steps, eta, trajectory_every, has_labels, has_gamma)``,
    compiled ahead of time once per process (so sampling seconds exclude compilation)."""
    if spec in _EXECUTABLES:
        return _EXECUTABLES[spec]
    (features, num_labels), sched_key, kind, n, ddim_steps, eta, every = spec[:7]
    sched = diffusion.linear_schedule(*sched_key)
    apply_fn = unet.make_apply_fn(unet.UNet(features=features, num_labels=num_labels))

    def run(key, params, batch_stats, labels, gamma):
        eps_fn = diffusion.make_eps_fn(apply_fn, params, batch_stats)
        options = {"shape": (n, 28, 28, 1), "labels": labels, "gamma": gamma, "trajectory_every": every}
        if kind == "ddpm":
            return diffusion.ddpm_sample(key, eps_fn, sched, **options)
        return diffusion.ddim_sample(key, eps_fn, sched, num_steps=ddim_steps, eta=eta, **options)

    _EXECUTABLES[spec] = jax.jit(run).lower(*args).compile()
    return _EXECUTABLES[spec]


def sample(
    config: DiffusionConfig,
    model: unet.UNet,
    params: Any,
    batch_stats: Any,
    key: jax.Array,
    *,
    n: int,
    kind: str,
    labels: np.ndarray | None = None,
    gamma: float | None = None,
    trajectory: bool = False,
) -> tuple[Any, float]:
    """``n`` samples in chunks of ``--sample-batch`` (chunk ``i`` uses ``fold_in(key, i)``), and the
    sampling seconds (compilation excluded).

    With ``trajectory`` also the first chunk's denoising trajectory (every tenth step):
    ``((x0, trajectory, trajectory_t), seconds)``.
    """
    sched_key = (config.num_timesteps, config.beta_start, config.beta_end)
    model_key = (model.features, model.num_labels)
    # one executable per sampler and batch size: every call records the trajectory (11 snapshots,
    # cheap) so the figures' calls and the judged calls share one compilation
    every = max(1, (config.num_timesteps if kind == "ddpm" else config.ddim_steps) // 10)
    chunk = min(config.sample_batch, n)
    g = None if gamma is None else jnp.float32(gamma)
    outs, seconds = [], 0.0
    for i in range(math.ceil(n / chunk)):
        lab = None
        if labels is not None:
            lab = jnp.asarray(np.resize(np.asarray(labels[i * chunk : (i + 1) * chunk], np.int32), chunk))
        k = jax.random.fold_in(key, i)
        spec = (
            model_key,
            sched_key,
            kind,
            chunk,
            config.ddim_steps,
            config.ddim_eta,
            every,
            lab is None,
            g is None,
        )
        exe = _sampler_executable(spec, (k, params, batch_stats, lab, g))
        start = time.perf_counter()
        x = jax.block_until_ready(exe(k, params, batch_stats, lab, g))
        seconds += time.perf_counter() - start
        outs.append(jax.tree_util.tree_map(np.asarray, x))
    x0 = np.concatenate([o[0] for o in outs])[:n]
    if trajectory:
        return (x0, outs[0][1], outs[0][2]), seconds
    return x0, seconds


# --- the judge ------------------------------------------------------------------------------------------


def _judge_dataset(folder: Path) -> str | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("dataset")


def check_judge_folder(folder: Path, dataset: str) -> str:
    """Raise ``ValueError`` unless ``folder`` holds a CNN run on ``dataset``; return the dataset."""
    if not (folder / "params").exists():
        raise ValueError(
            f"--judge {folder} holds no trained CNN (no params folder); run "
            f"`python -m experiments.cnn --dataset {dataset} --out {folder}` or pass --judge auto"
        )
    saved = _judge_dataset(folder)
    if saved != dataset:
        raise ValueError(
            f"--judge {folder} was trained on {saved!r}, not on {dataset!r}; judge with a CNN trained on "
            f"the same data (`python -m experiments.cnn --dataset {dataset}`) or pass --judge auto"
        )
    return saved


def judge(config: DiffusionConfig, data: dict[str, np.ndarray], key: jax.Array) -> tuple[Any, dict[str, Any]]:
    """The CNN that judges samples: reused from an ``experiments.cnn`` run on the same dataset, or
    trained here first (and saved as ``OUT/judge``). Returns ``(params, info)``."""
    if config.judge != "auto":
        folder = Path(config.judge)
        saved = check_judge_folder(folder, config.dataset)
        params = training.load_params(folder / "params", cnn.init_params(jax.random.key(0)))
        return params, {"judge_source": f"reused {folder} ({saved})"}
    sibling = Path(config.out).parent / "cnn"
    if (sibling / "params").exists() and _judge_dataset(sibling) == config.dataset:
        params = training.load_params(sibling / "params", cnn.init_params(jax.random.key(0)))
        return params, {"judge_source": f"reused {sibling} ({config.dataset})"}
    return train_judge(config, data, key)


def train_judge(
    config: DiffusionConfig, data: dict[str, np.ndarray], key: jax.Array
) -> tuple[Any, dict[str, Any]]:
    """Train the project's CNN (Adam 1e-3, batch 128) on the training images through ``training.fit``."""
    epochs = settings(config)["judge_epochs"]
    key_init, key_fit = jax.random.split(key)
    optimizer = optax.adam(1e-3)
    params = cnn.init_params(key_init)

    step = training.make_train_step(cnn.train_loss, optimizer)
    epoch_fn = jax.jit(training.make_epoch_fn(step, batch_size=min(128, len(data["x_train"]))))
    state, _ = training.fit(
        key_fit,
        training.init_state(params, optimizer),
        (jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])),
        epoch_fn=epoch_fn,
        epochs=epochs,
        desc="judge cnn",
    )
    note = f"trained here first: {epochs} epochs on {len(data['x_train'])} {config.dataset} images"
    return state.params, {"judge_source": note}


@jax.jit
def _judge_outputs(params, x):
    return cnn.features(params, x), jnp.argmax(cnn.apply(params, x), axis=-1)


def judge_outputs(params: Any, x: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (float64) and predicted labels of the judge for images in [0, 1]."""
    feats, preds = [], []
    for i in range(0, len(x), chunk):
        xb = np.clip(x[i : i + chunk], 0.0, 1.0).astype(np.float32)
        f, p = _judge_outputs(params, jnp.asarray(xb))
        feats.append(np.asarray(f, np.float64))
        preds.append(np.asarray(p))
    return np.concatenate(feats), np.concatenate(preds)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets, in float64."""
    with jax.enable_x64(True):
        return float(metrics.frechet_distance(jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)))


def judge_baselines(params: Any, data: dict[str, np.ndarray], n: int) -> tuple[dict[str, Any], np.ndarray]:
    """``judge_test_accuracy`` (the ceiling), ``fid_real_floor`` (``n`` train vs ``n`` test images) and
    the test features every sample FID is measured against."""
    test_feats, test_preds = judge_outputs(params, data["x_test"])
    m = min(n, len(data["x_test"]), len(data["x_train"]))
    pick = np.linspace(0, len(data["x_train"]) - 1, m).astype(int)
    train_feats, _ = judge_outputs(params, data["x_train"][pick])
    sub = np.linspace(0, len(data["x_test"]) - 1, m).astype(int)
    info = {
        "judge_test_accuracy": float(np.mean(test_preds == data["y_test"])),
        "fid_real_floor": fid(train_feats, test_feats[sub]),
        "fid_num_images": m,
    }
    return info, test_feats[sub]


# --- figures -------------------------------------------------------------------------------------------


def show_grid(out: StepOutput, images: np.ndarray, rows: int, cols: int, title: str, name: str, **kw) -> None:
    fig, ax = plt.subplots(figsize=(cols * 0.7 + 0.4, rows * 0.7 + 0.6))
    ax.imshow(np.clip(G.grid(images, rows, cols), 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(kw.get("yticks", []), kw.get("yticklabels", []))
    out.figure(fig, name)


def loss_figure(out: StepOutput, history: dict[str, list], title: str, book_final: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    loss = history["loss"]
    ax.plot(np.arange(1, len(loss) + 1), loss, marker="o", ms=2)
    ax.axhline(book_final, color="gray", ls="--", lw=1, label=f"book's final loss {book_final}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("noise-prediction MSE (mean over the epoch)")
    ax.set_title(title)
    ax.legend()
    out.figure(fig, "loss_curve")


def trajectory_figure(out: StepOutput, traj: np.ndarray, ts: np.ndarray, title: str) -> None:
    """Rows = images, columns = x_t at the trajectory's timesteps (t = T ... 0)."""
    n_img = min(traj.shape[1], 4)
    fig, axes = plt.subplots(n_img, len(ts), figsize=(len(ts) * 0.8, n_img * 0.85 + 0.4), squeeze=False)
    for r in range(n_img):
        for c, t in enumerate(ts):
            ax = axes[r, c]
            ax.imshow(np.clip(traj[c, r, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={int(t)}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    out.figure(fig, "denoising_trajectory")


def sample_sheet(
    judge_params: Any,
    samples: np.ndarray,
    test_feats: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    n_fid: int | None = None,
) -> dict[str, Any]:
    """FID of the first ``n_fid`` samples (default: all) against the test features, the judge's label
    histogram, and (with labels) the fraction judged as their conditioning label, overall and per class."""
    feats, preds = judge_outputs(judge_params, samples)
    out: dict[str, Any] = {
        "fid": fid(feats[: n_fid or len(feats)], test_feats),
        "class_fractions": np.bincount(preds, minlength=NUM_CLASSES) / len(preds),
    }
    if labels is not None:
        hit = preds == labels[: len(preds)]
        out["accuracy"] = float(np.mean(hit))
        out["accuracy_per_class"] = [float(np.mean(hit[labels == c])) for c in range(NUM_CLASSES)]
    return out
