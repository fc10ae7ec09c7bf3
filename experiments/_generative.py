"""Helpers shared by the generative-model steps (7 VAE, 8 hierarchical VAE, and 9-10 diffusion).

Generic pieces, for every generative step:

* :func:`validate_config` — settings that cannot work fail before any output is written;
* :func:`load_images` — train/test images (validated, float32 in ``[0, 1]``, flat ``(n, 784)`` or
  ``(n, 28, 28, 1)``) and their labels, with evenly spaced ``--quick`` subsets;
* :func:`fingerprint` — the settings that change a run's numbers, checked by ``--resume``;
* :func:`grid` — a ``rows × cols`` mosaic of images for a figure.

Training itself goes through :func:`experiments._fitting.train` (``training.fit`` with
``--resume``). The VAE family (steps 7 and 8, models with ``book_loss``, ``elbo``, ``iwae_bound``,
``sample``, ``reconstruct``, ``encode``, ``decode``): :func:`sizes`, :func:`init_jit`,
:func:`train_model`, :func:`evaluate` (test book loss, −ELBO and −IWAE in nats) and :func:`figures`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import training, vae
from dlx_jax.data import load_dataset, to_float_images
from experiments import _cli, _fitting, _quick
from experiments._outputs import StepOutput
from experiments._plots import plt

__all__ = [
    "FAST_COMPILE",
    "evaluate",
    "figures",
    "fingerprint",
    "grid",
    "init_jit",
    "load_images",
    "VAE_LIMITS",
    "params_latent_dim",
    "sizes",
    "train_model",
    "validate_config",
]

QUICK = _quick.QUICK["step07_vae"]  # the VAE family's quick mode (step 8 shares it)
# Run-once functions (init, pictures) compile ~3x faster at LLVM -O1; their run time is negligible.
FAST_COMPILE = {"xla_backend_optimization_level": 1}
IWAE_CHUNK = 10  # test examples per lax.map iteration of the IWAE bound (memory: chunk·k·d floats)
LIKELIHOOD_NOTE = "bernoulli on binarized test images (pixel > 0.5); decoder sigmoid = pixel probabilities"
VAE_SIZES = ("epochs", "batch_size", "latent_dim", "hidden_dim", "iwae_k")
VAE_LIMITS = {  # the VAE family's size options: at most what its arrays can hold (``Config.LIMITS``)
    "hidden_dim": (10_000, "784 × HIDDEN_DIM weights per layer, three copies with Adam"),
    "latent_dim": (10_000, "HIDDEN_DIM × LATENT_DIM weights per layer"),
    "iwae_k": (10_000, f"{IWAE_CHUNK} test images × IWAE_K decoded samples of 784 pixels at a time"),
}


# --- every generative step ---------------------------------------------------------------------


def validate_config(config: Any, positive: Iterable[str] = VAE_SIZES) -> None:
    """Raise ``ValueError`` for settings that cannot work (before any output is written).

    Also the checks every step shares (:func:`experiments._cli.check_config`: seed, finite
    numbers, size limits, ``--out``); :func:`experiments._fitting.check_checkpoints` comes after a
    step's own checks (it notes a ``--resume`` with nothing to resume).

    Args:
        config: the step's config (needs ``lr`` and the fields named in ``positive``).
        positive: integer fields that must be >= 1.
    """
    _cli.check_config(config)
    for name in positive:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}; pass a positive integer")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(
            f"--lr must be a positive number, got {config.lr}; "
            "the book uses 3e-4 (VAE), 1e-3 (HVAE, diffusion)"
        )


def load_images(
    config: Any, *, flat: bool = True, quick_train: int = QUICK["n_train"], quick_test: int = QUICK["n_test"]
) -> dict[str, np.ndarray]:
    """Validated train/test images and labels of ``config.dataset`` (from ``config.data_dir``).

    Args:
        config: needs ``dataset``, ``data_dir``, ``quick`` and ``batch_size``.
        flat: images as ``(n, 784)`` (default) or as ``(n, 28, 28, 1)``.
        quick_train: training images kept under ``--quick`` (evenly spaced, so every digit stays).
        quick_test: test images kept under ``--quick``.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}``: float32 images in ``[0, 1]``, int labels.

    Raises:
        ValueError: images that are not 28×28 pixels in ``[0, 1]``, or a batch larger than the
            training set. FileNotFoundError: a missing dataset (with how to get it).
    """
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    check = functools.partial(vae.validate_images, flatten=flat)
    x_train = check(to_float_images(ds.x_train), name=f"{config.dataset} training images")
    x_test = check(to_float_images(ds.x_test), name=f"{config.dataset} test images")
    y_train, y_test = np.asarray(ds.y_train), np.asarray(ds.y_test)
    if config.quick:  # evenly spaced subsets: the splits are grouped by digit, so every digit stays in
        tr = np.linspace(0, len(x_train) - 1, min(quick_train, len(x_train))).astype(int)
        te = np.linspace(0, len(x_test) - 1, min(quick_test, len(x_test))).astype(int)
        x_train, y_train, x_test, y_test = x_train[tr], y_train[tr], x_test[te], y_test[te]
    if config.batch_size > len(x_train):
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the training set ({len(x_train)} images); "
            f"pass --batch-size <= {len(x_train)}"
        )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def fingerprint(
    config: Any, *, model: str, n_train: int, fields: Iterable[str] = (), **extra: Any
) -> dict[str, Any]:
    """The settings that change a run's numbers, for ``--resume`` to compare with its checkpoint.

    Always ``model``, ``n_train`` and the config's ``dataset``, ``batch_size``, ``lr``, ``seed``;
    plus the config ``fields`` named and any ``extra`` values (e.g. ``timesteps=1000``).
    """
    names = ("dataset", "batch_size", "lr", "seed", *fields)
    return {"model": model, "n_train": int(n_train), **{n: getattr(config, n) for n in names}, **extra}


def grid(images: Any, rows: int, cols: int) -> np.ndarray:
    """A ``(rows·h, cols·w)`` mosaic of up to ``rows·cols`` one-channel images, row by row.

    ``images`` may be ``(n, h·w)`` (square images), ``(n, h, w)`` or ``(n, h, w, 1)``; missing
    cells stay 0 (black).
    """
    imgs = np.asarray(images)
    if imgs.ndim == 4 and imgs.shape[-1] == 1:
        imgs = imgs[..., 0]
    if imgs.ndim == 2:
        side = math.isqrt(imgs.shape[1])
        if side * side != imgs.shape[1]:
            raise ValueError(f"flat images of {imgs.shape[1]} pixels are not square; pass (n, h, w)")
        imgs = imgs.reshape(len(imgs), side, side)
    if imgs.ndim != 3 or len(imgs) > rows * cols:
        raise ValueError(f"grid needs at most {rows * cols} images (n, h, w), got shape {np.shape(images)}")
    h, w = imgs.shape[1:]
    cells = np.zeros((rows * cols, h, w), imgs.dtype)
    cells[: len(imgs)] = imgs
    return cells.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


# --- the VAE family (steps 7 and 8) --------------------------------------------------------------


def sizes(config: Any) -> tuple[int, int]:
    """``(epochs, iwae_k)`` of a VAE-family run, after the ``--quick`` caps."""
    epochs = _quick.cap(config, config.epochs, QUICK["epochs"])
    return epochs, _quick.cap(config, config.iwae_k, QUICK["iwae_k"])


def init_jit(model: ModuleType, key: jax.Array, *, hidden_dim: int, latent_dim: int) -> Any:
    """``model.init_params`` as one compiled call (instead of one small compilation per layer)."""
    init = functools.partial(model.init_params, input_dim=784, hidden_dim=hidden_dim, latent_dim=latent_dim)
    return jax.jit(init, compiler_options=FAST_COMPILE)(key)


def params_latent_dim(params: Any) -> int:
    """Width of the first latent (``z`` of the VAE, ``z1`` of the HVAE)."""
    encoder = params.encoder if hasattr(params, "encoder") else params.encoder1
    return int(encoder.mu.w.shape[1])


@functools.lru_cache(maxsize=8)
def compiled_epoch(
    model: ModuleType, lr: float, batch_size: int, mesh: Any = None
) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, jit(epoch))`` for the book's loss on ``mesh`` (data parallel; ``None``: no mesh);
    cached so repeated runs reuse the compilation."""
    optimizer = optax.adam(lr)
    step = training.make_train_step(model.book_loss, optimizer)
    return optimizer, jax.jit(training.make_epoch_fn(step, batch_size=batch_size, mesh=mesh))


def train_model(
    config: Any, model: ModuleType, params: Any, x_train: np.ndarray, key: jax.Array, *, mesh: Any
) -> tuple[Any, dict[str, list], float]:
    """Train with the book's loss and Adam on ``mesh`` (state and data replicated, every batch
    sharded over the devices); ``(params, history, seconds)`` (see :func:`_fitting.train`)."""
    epochs, _ = sizes(config)
    optimizer, epoch_fn = compiled_epoch(model, config.lr, config.batch_size, mesh)
    state, data, key = training.replicate(
        (training.init_state(params, optimizer), np.asarray(x_train), key), mesh
    )
    state, history, seconds = _fitting.train(
        config,
        key,
        state,
        data,
        epoch_fn=epoch_fn,
        epochs=epochs,
        fingerprint=fingerprint(
            config,
            model=model.__name__.rsplit(".", 1)[-1],
            n_train=len(x_train),
            fields=("latent_dim", "hidden_dim"),
            **_fitting.mesh_fingerprint(mesh),
        ),
    )
    return state.params, history, seconds


@functools.lru_cache(maxsize=8)
def compiled_scores(model: ModuleType, iwae_k: int) -> Any:
    """``jit(scores)(params, x, key) -> (book loss, −ELBO, −IWAE_k)`` on a test set, one compilation."""

    @jax.jit
    def scores(params, x, key):
        key_loss, key_elbo, key_iwae = jax.random.split(key, 3)
        xb = vae.binarize(x)
        keys = jax.random.split(key_iwae, xb.shape[0])
        one = lambda kx: model.iwae_bound(kx[0], params, kx[1], num_samples=iwae_k)  # noqa: E731
        bound = jax.lax.map(one, (keys, xb), batch_size=IWAE_CHUNK)
        return (
            model.book_loss(key_loss, params, x),
            -jnp.mean(model.elbo(key_elbo, params, xb)),
            -jnp.mean(bound),
        )

    return scores


def evaluate(
    model: ModuleType, params: Any, x_test: np.ndarray, key: jax.Array, iwae_k: int
) -> dict[str, Any]:
    """Book loss on the test split, −ELBO and −IWAE_k in nats (Bernoulli on binarized test images)."""
    test_loss, neg_elbo, neg_iwae = compiled_scores(model, iwae_k)(params, jnp.asarray(x_test), key)
    return {
        "test_loss": float(test_loss),
        "test_neg_elbo_nats": float(neg_elbo),
        "test_iwae_nats": float(neg_iwae),
        "iwae_k": iwae_k,
        "likelihood": LIKELIHOOD_NOTE,
    }


def figures(
    out: StepOutput,
    model: ModuleType,
    params: Any,
    data: dict,
    key: jax.Array,
    title: str,
    curves: dict[str, list[float]],
    test_loss: float,
) -> None:
    """Loss curve, prior samples, reconstructions, and (2-D latent) scatter + manifold."""
    latent_2d = params_latent_dim(params) == 2
    SHOWN = np.linspace(0, len(data["x_test"]) - 1, 12).astype(int)  # noqa: N806 (test images shown: all digits)
    n = 15  # manifold grid
    q = jax.scipy.special.ndtri(jnp.linspace(0.05, 0.95, n))  # evenly spaced prior quantiles
    grid_z = jnp.stack(jnp.meshgrid(q, q[::-1]), axis=-1).reshape(-1, 2)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # one quick compilation for every picture
    def pictures(params, x_test, key):
        out = {
            "samples": model.sample(key, params, num_samples=64),
            "recon": model.reconstruct(params, x_test[SHOWN]),
        }
        if latent_2d:
            out["mu"] = model.encode(params, x_test)[0]
            out["manifold"] = model.decode(params, grid_z)
        return out

    pics = jax.tree_util.tree_map(np.asarray, pictures(params, jnp.asarray(data["x_test"]), key))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=label)
    ax.axhline(test_loss, color="gray", ls="--", lw=1, label=f"test split (final) = {test_loss:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("book loss per image (SSE + 2·KL)")
    ax.set_title(f"{title}: training loss")
    ax.legend()
    out.figure(fig, "loss_curve")

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(grid(pics["samples"], 8, 8), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{title}: 64 samples from the prior")
    ax.axis("off")
    out.figure(fig, "samples")

    x = data["x_test"][SHOWN]
    fig, ax = plt.subplots(figsize=(9, 2))
    ax.imshow(grid(np.concatenate([x, pics["recon"]]), 2, len(x)), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([14, 42], ["input", "reconstruction"])
    ax.set_xticks([])
    ax.set_title(f"{title}: test images (top) and reconstructions from the posterior mean (bottom)")
    out.figure(fig, "reconstructions")

    if latent_2d:
        _latent_figures(out, pics, data["y_test"], q, title)


def _latent_figures(out: StepOutput, pics: dict, labels: np.ndarray, q: jax.Array, title: str) -> None:
    """A 2-D latent space: test images' posterior means by digit, and the decoded manifold on the
    prior quantiles ``q`` (``len(q)²`` images)."""
    n = len(q)
    mu = pics["mu"]
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z₁ (posterior mean)")
    ax.set_ylabel("z₂ (posterior mean)")
    ax.set_title(f"{title}: test images in the 2-D latent space")
    out.figure(fig, "latent_scatter")

    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(
        grid(pics["manifold"], n, n),
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(float(q[0]), float(q[-1]), float(q[0]), float(q[-1])),
    )
    ax.set_xlabel("z₁ (prior quantiles 5%…95%)")
    ax.set_ylabel("z₂")
    ax.set_title(f"{title}: decoded 2-D latent manifold")
    out.figure(fig, "manifold")
