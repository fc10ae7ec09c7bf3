"""Step 7 — variational autoencoder on MNIST (book chapter 7).

Trains the book's VAE (784 → 200 → 20, Adam 3e-4, batch 32, 30 epochs, the book's summed-squared-error
+ 2·KL loss) with one jit-compiled ``lax.scan`` per epoch, then reports the book loss on the test
split, the per-example negative ELBO and the IWAE bound in nats (Bernoulli likelihood on statically
binarized test images, pixel > 0.5, decoder sigmoid outputs as probabilities), and draws the loss
curve, an 8×8 grid of samples from the prior, reconstructions beside their inputs, and for
``--latent-dim 2`` the latent space coloured by digit and the decoded 2-D manifold. With PyTorch
installed the book's PyTorch model is trained on the same data, batches and initial weights for the
same epochs and both loss curves are compared (``--compare-torch``). ``--resume`` continues from the
checkpoints in ``OUT/checkpoints`` and reproduces the uninterrupted run.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import training, vae
from dlx_jax.data import batch_indices, load_dataset, to_float_images
from experiments._common import StepOutput, cli, plt

QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS, QUICK_IWAE_K = 1000, 200, 3, 16
# Run-once functions (init, pictures) compile ~3x faster at LLVM -O1; their run time is negligible.
FAST_COMPILE = {"xla_backend_optimization_level": 1}
IWAE_CHUNK = 10  # test examples per lax.map iteration of the IWAE bound (memory: chunk·k·d floats)
LIKELIHOOD_NOTE = "bernoulli on binarized test images (pixel > 0.5); decoder sigmoid = pixel probabilities"


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step07_vae"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    latent_dim: int = 20
    hidden_dim: int = 200
    iwae_k: int = 500
    resume: bool = False
    compare_torch: str = "auto"

    SUMMARY = ("test_loss", "test_neg_elbo_nats", "test_iwae_nats", "final_loss_relative_gap")
    HELP = {
        "dataset": "mnist-5k (embedded), mnist or fashion-mnist (from --data-dir)",
        "data_dir": "folder with the four IDX .gz files (for mnist / fashion-mnist)",
        "epochs": "training epochs (book: 30); --quick caps it at 3",
        "batch_size": "examples per Adam step (book: 32)",
        "lr": "Adam learning rate (book: 3e-4)",
        "latent_dim": "latent units (book: 20; 2 adds the latent scatter and manifold figures)",
        "hidden_dim": "hidden units of encoder and decoder (book: 200)",
        "iwae_k": "importance samples per test image for the IWAE bound (--quick caps it at 16)",
        "resume": "continue from OUT/checkpoints (same settings) instead of starting over",
        "compare_torch": "train the book's PyTorch model alongside: auto = when torch is installed "
        "and not --quick",
    }
    CHOICES = {"compare_torch": ("auto", "on", "off")}


# --- shared by steps 7 and 8 ----------------------------------------------------------------------


def validate_config(config: Any) -> None:
    """Raise ``ValueError`` for settings that cannot work (before any output is written)."""
    for name in ("epochs", "batch_size", "latent_dim", "hidden_dim", "iwae_k"):
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}; pass a positive integer")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(
            f"--lr must be a positive number, got {config.lr}; the book uses 3e-4 (VAE), 1e-3 (HVAE)"
        )


def load_images(config: Any) -> dict[str, Any]:
    """Train/test images as validated float32 ``(n, 784)`` in ``[0, 1]`` plus labels (quick: subsets)."""
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    x_train = vae.validate_images(to_float_images(ds.x_train), name=f"{config.dataset} training images")
    x_test = vae.validate_images(to_float_images(ds.x_test), name=f"{config.dataset} test images")
    y_train, y_test = np.asarray(ds.y_train), np.asarray(ds.y_test)
    if config.quick:  # evenly spaced subsets: the splits are grouped by digit, so every digit stays in
        tr = np.linspace(0, len(x_train) - 1, min(QUICK_TRAIN, len(x_train))).astype(int)
        te = np.linspace(0, len(x_test) - 1, min(QUICK_TEST, len(x_test))).astype(int)
        x_train, y_train, x_test, y_test = x_train[tr], y_train[tr], x_test[te], y_test[te]
    if config.batch_size > len(x_train):
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the training set ({len(x_train)} images); "
            f"pass --batch-size <= {len(x_train)}"
        )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def settings(config: Any) -> tuple[int, int]:
    """(epochs, iwae_k) after the --quick caps."""
    if config.quick:
        return min(config.epochs, QUICK_EPOCHS), min(config.iwae_k, QUICK_IWAE_K)
    return config.epochs, config.iwae_k


@functools.lru_cache(maxsize=8)
def compiled_epoch(model: ModuleType, lr: float, batch_size: int) -> tuple[optax.GradientTransformation, Any]:
    """``(optimizer, jit(epoch))`` for the book's loss; cached so repeated runs reuse the compilation."""
    optimizer = optax.adam(lr)
    step = training.make_train_step(model.book_loss, optimizer)
    return optimizer, jax.jit(training.make_epoch_fn(step, batch_size=batch_size))


def train_model(
    config: Any, model: ModuleType, params: Any, x_train: np.ndarray, key: jax.Array
) -> tuple[Any, list[float], float]:
    """Train with the book's loss and Adam; returns (params, loss_history, seconds).

    Checkpoints go to ``OUT/checkpoints`` with a fingerprint of every setting that changes the
    numbers, so ``--resume`` refuses a checkpoint written under other settings.
    """
    epochs, _ = settings(config)
    fingerprint = {
        "model": model.__name__.rsplit(".", 1)[-1],
        "dataset": config.dataset,
        "n_train": len(x_train),
        "batch_size": config.batch_size,
        "lr": config.lr,
        "latent_dim": config.latent_dim,
        "hidden_dim": config.hidden_dim,
        "seed": config.seed,
    }
    optimizer, epoch_fn = compiled_epoch(model, config.lr, config.batch_size)
    state = training.TrainState(params, optimizer.init(params))
    start = time.perf_counter()
    state, history = training.fit(
        key,
        state,
        jnp.asarray(x_train),
        epoch_fn=epoch_fn,
        epochs=epochs,
        checkpoint_dir=Path(config.out) / "checkpoints",
        resume=config.resume,
        fingerprint=fingerprint,
        desc=Path(config.out).name,
    )
    return state.params, history, time.perf_counter() - start


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


def _grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    imgs = np.asarray(images).reshape(rows, cols, 28, 28)
    return imgs.transpose(0, 2, 1, 3).reshape(rows * 28, cols * 28)


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
    ax.imshow(_grid(pics["samples"], 8, 8), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{title}: 64 samples from the prior")
    ax.axis("off")
    out.figure(fig, "samples")

    x = data["x_test"][SHOWN]
    fig, ax = plt.subplots(figsize=(9, 2))
    ax.imshow(_grid(np.concatenate([x, pics["recon"]]), 2, len(x)), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([14, 42], ["input", "reconstruction"])
    ax.set_xticks([])
    ax.set_title(f"{title}: test images (top) and reconstructions from the posterior mean (bottom)")
    out.figure(fig, "reconstructions")

    if latent_2d:
        mu = pics["mu"]
        fig, ax = plt.subplots(figsize=(6, 5))
        sc = ax.scatter(mu[:, 0], mu[:, 1], c=data["y_test"], cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
        fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
        ax.set_xlabel("z₁ (posterior mean)")
        ax.set_ylabel("z₂ (posterior mean)")
        ax.set_title(f"{title}: test images in the 2-D latent space")
        out.figure(fig, "latent_scatter")

        fig, ax = plt.subplots(figsize=(7, 7))
        ax.imshow(
            _grid(pics["manifold"], n, n),
            cmap="gray",
            vmin=0,
            vmax=1,
            extent=(float(q[0]), float(q[-1]), float(q[0]), float(q[-1])),
        )
        ax.set_xlabel("z₁ (prior quantiles 5%…95%)")
        ax.set_ylabel("z₂")
        ax.set_title(f"{title}: decoded 2-D latent manifold")
        out.figure(fig, "manifold")


def init_jit(model: ModuleType, key: jax.Array, *, hidden_dim: int, latent_dim: int) -> Any:
    """``model.init_params`` as one compiled call (instead of one small compilation per layer)."""
    init = functools.partial(model.init_params, input_dim=784, hidden_dim=hidden_dim, latent_dim=latent_dim)
    return jax.jit(init, compiler_options=FAST_COMPILE)(key)


def params_latent_dim(params: Any) -> int:
    """Width of the first latent (``z`` of the VAE, ``z1`` of the HVAE)."""
    encoder = params.encoder if hasattr(params, "encoder") else params.encoder1
    return int(encoder.mu.w.shape[1])


# --- step 7 ------------------------------------------------------------------------------------------


def _torch_wanted(config: Config) -> bool:
    has_torch = importlib.util.find_spec("torch") is not None
    if config.compare_torch == "on" and not has_torch:
        raise ValueError("--compare-torch on needs PyTorch, which is not installed; pass --compare-torch off")
    if config.compare_torch == "off":
        return False
    return has_torch and (config.compare_torch == "on" or not config.quick)


def train_torch(
    config: Config, params0: vae.VAEParams, x_train: np.ndarray, key: jax.Array
) -> tuple[list[float], float]:
    """The book's PyTorch VAE from the same initial weights, on the same batches as the JAX run."""
    import torch

    from experiments import _torch_vae

    epochs, _ = settings(config)
    torch.manual_seed(config.seed)
    model = _torch_vae.from_jax_params(params0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    x = torch.from_numpy(np.ascontiguousarray(x_train))
    history = []
    start = time.perf_counter()
    for e in range(epochs):  # the epoch keys of dlx_jax.training.fit / make_epoch_fn
        key_perm, _ = jax.random.split(jax.random.fold_in(key, e))
        batches = np.asarray(batch_indices(key_perm, len(x_train), batch_size=config.batch_size))
        history.append(_torch_vae.train_epoch(model, optimizer, x, batches))
    return history, time.perf_counter() - start


def main(config: Config) -> dict:
    validate_config(config)
    data = load_images(config)
    with_torch = _torch_wanted(config)
    epochs, iwae_k = settings(config)

    key_init, key_train, key_eval, key_plot = jax.random.split(jax.random.key(config.seed), 4)
    params0 = init_jit(vae, key_init, hidden_dim=config.hidden_dim, latent_dim=config.latent_dim)
    params, history, train_s = train_model(config, vae, params0, data["x_train"], key_train)
    metrics: dict[str, Any] = {"loss_history": history, "final_loss": history[-1]}
    metrics.update(evaluate(vae, params, data["x_test"], key_eval, iwae_k))
    metrics.update(
        {
            "epochs": epochs,
            "num_train": len(data["x_train"]),
            "num_test": len(data["x_test"]),
            "train_s": train_s,
        }
    )
    curves = {"JAX (dlx_jax)": history}
    if with_torch:
        torch_history, torch_s = train_torch(config, params0, data["x_train"], key_train)
        metrics.update(
            {
                "torch_loss_history": torch_history,
                "torch_final_loss": torch_history[-1],
                "final_loss_relative_gap": abs(history[-1] - torch_history[-1]) / abs(torch_history[-1]),
                "torch_train_s": torch_s,
            }
        )
        curves["PyTorch (book's code)"] = torch_history

    with StepOutput(config) as out:
        if out.plots:
            figures(out, vae, params, data, key_plot, "VAE", curves, metrics["test_loss"])
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
