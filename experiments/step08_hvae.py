"""Step 8 — hierarchical VAE with two latent levels on MNIST (book chapter 8).

Trains the book's two-level VAE (q(z1|x), q(z2|z1), p(z1|z2) = N(ẑ, I), p(x|z1) sigmoid decoder;
hidden 100, latents 20 and 20; Adam 1e-3, batch 32, 30 epochs) on the book's loss through
``dlx_jax.training.fit`` (one jit-compiled ``lax.scan`` per epoch; ``--resume`` continues from
``OUT/checkpoints``). Reports the book loss on the test split, −ELBO and the IWAE bound
in nats (full Monte Carlo weights over z1 and z2, Bernoulli likelihood on binarized test images), and
draws the loss curve, an 8×8 grid of ancestral samples (z2 → ẑ → z1 ~ N(ẑ, I) → x), reconstructions
beside their inputs, and for ``--latent-dim 2`` the z1 latent space and the decoded z1 manifold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from dlx_jax import hvae, training
from experiments import _fitting, _generative
from experiments._cli import cli
from experiments._outputs import StepOutput


@dataclass(frozen=True)
class Config:
    out: str = "outputs/step08_hvae"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    latent_dim: int = 20
    hidden_dim: int = 100
    iwae_k: int = 500
    resume: bool = False
    allow_lr_change: bool = False
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    SUMMARY = ("test_loss", "test_neg_elbo_nats", "test_iwae_nats")
    HELP = {
        "dataset": "mnist-5k (embedded), mnist or fashion-mnist (from --data-dir)",
        "data_dir": "folder with the four IDX .gz files (for mnist / fashion-mnist)",
        "epochs": "training epochs (book: 30); --quick caps it at 3",
        "batch_size": "examples per Adam step (book: 32)",
        "lr": "Adam learning rate (book: 1e-3)",
        "latent_dim": "width of both latents z1 and z2 (book: 20; 2 adds latent scatter and manifold)",
        "hidden_dim": "hidden units of every MLP (book: 100)",
        "iwae_k": "importance samples per test image for the IWAE bound (--quick caps it at 16)",
        "resume": "continue from OUT/checkpoints (same settings) instead of starting over",
        "allow_lr_change": _fitting.ALLOW_LR_CHANGE_HELP,
        **_fitting.MESH_HELP,
    }
    LIMITS = _generative.VAE_LIMITS


def _metrics(config: Config, data: dict, params: Any, history: dict, train_s: float, key) -> dict:
    """Training curve, test scores (book loss, −ELBO, IWAE over both latents) and the run's sizes."""
    epochs, iwae_k = _generative.sizes(config)
    losses = history["loss"]
    metrics: dict[str, Any] = {"loss_history": losses, "final_loss": losses[-1]}
    metrics.update(_generative.evaluate(hvae, params, data["x_test"], key, iwae_k))
    metrics["likelihood"] += "; weights over both latents z1, z2"
    metrics.update(
        {
            "epochs": epochs,
            "num_train": len(data["x_train"]),
            "num_test": len(data["x_test"]),
            "train_s": train_s,
        }
    )
    return metrics


def main(config: Config) -> dict:
    _generative.validate_config(config)
    _fitting.check_checkpoints(config)
    mesh = _fitting.data_mesh(config)  # before any other JAX work (a process joins a run only then)
    training.check_divides(config.batch_size, mesh)
    data = _generative.load_images(config)

    key_init, key_train, key_eval, key_plot = jax.random.split(jax.random.key(config.seed), 4)
    params0 = _generative.init_jit(hvae, key_init, hidden_dim=config.hidden_dim, latent_dim=config.latent_dim)
    params, history, train_s = _generative.train_model(
        config, hvae, params0, data["x_train"], key_train, mesh=mesh
    )
    metrics = _metrics(config, data, params, history, train_s, key_eval)

    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            curves = {"JAX (dlx_jax)": history["loss"]}
            title = "Hierarchical VAE"
            _generative.figures(out, hvae, params, data, key_plot, title, curves, metrics["test_loss"])
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
