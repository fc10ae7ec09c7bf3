"""Step 7 — variational autoencoder on MNIST (book chapter 7).

Trains the book's VAE (784 → 200 → 20, Adam 3e-4, batch 32, 30 epochs, the book's summed-squared-error
+ 2·KL loss) through ``dlx_jax.training.fit`` (one jit-compiled ``lax.scan`` per epoch), then reports
the book loss on the test split, the per-example negative ELBO and the IWAE bound in nats (Bernoulli
likelihood on statically binarized test images, pixel > 0.5, decoder sigmoid outputs as
probabilities), and draws the loss curve, an 8×8 grid of samples from the prior, reconstructions
beside their inputs, and for ``--latent-dim 2`` the latent space coloured by digit and the decoded
2-D manifold. With PyTorch installed the book's PyTorch model is trained on the same data, batches
and initial weights for the same epochs and both loss curves are compared (``--compare-torch``).
``--resume`` continues from the checkpoints in ``OUT/checkpoints`` and reproduces the uninterrupted
run; a diverged run (``--lr`` too large) stops with an error and leaves an earlier run's outputs
and checkpoints untouched.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlx_jax import training, vae
from dlx_jax.data import batch_indices
from experiments import _ensembles, _fitting, _generative
from experiments._cli import cli
from experiments._outputs import StepOutput


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
    allow_lr_change: bool = False
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    compare_torch: str = "auto"
    ensemble: int = 1

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
        "allow_lr_change": _fitting.ALLOW_LR_CHANGE_HELP,
        **_fitting.MESH_HELP,
        "compare_torch": "train the book's PyTorch model alongside: auto = when torch is installed "
        "and not --quick",
        "ensemble": _ensembles.HELP + "; the ensemble's test likelihood is the mixture of the members",
    }
    CHOICES = {"compare_torch": ("auto", "on", "off")}
    LIMITS = _generative.VAE_LIMITS


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

    epochs, _ = _generative.sizes(config)
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


def _metrics(config: Config, data: dict, params: vae.VAEParams, history: dict, train_s: float, key) -> dict:
    """Training curve, test scores (book loss, −ELBO, IWAE) and the run's sizes."""
    epochs, iwae_k = _generative.sizes(config)
    losses = history["loss"]
    metrics: dict[str, Any] = {"loss_history": losses, "final_loss": losses[-1]}
    metrics.update(_generative.evaluate(vae, params, data["x_test"], key, iwae_k))
    metrics.update(
        {
            "epochs": epochs,
            "num_train": len(data["x_train"]),
            "num_test": len(data["x_test"]),
            "train_s": train_s,
        }
    )
    return metrics


def _torch_metrics(losses: list[float], torch_history: list[float], torch_s: float) -> dict[str, Any]:
    """The PyTorch run's curve beside the JAX one (same data, batches and initial weights)."""
    return {
        "torch_loss_history": torch_history,
        "torch_final_loss": torch_history[-1],
        "final_loss_relative_gap": abs(losses[-1] - torch_history[-1]) / abs(torch_history[-1]),
        "torch_train_s": torch_s,
    }


def main(config: Config) -> dict:
    _generative.validate_config(config)
    with_torch = _torch_wanted(config)
    _fitting.check_checkpoints(config)
    mesh = _fitting.data_mesh(config)  # before any other JAX work (a process joins a run only then)
    _ensembles.check(config, mesh)
    if config.ensemble > 1:
        if with_torch and config.compare_torch == "on":
            raise ValueError("--compare-torch on trains one model; pass --compare-torch off with --ensemble")
        return _ensemble_main(config, _generative.load_images(config), mesh)
    training.check_divides(config.batch_size, mesh)
    data = _generative.load_images(config)

    key_init, key_train, key_eval, key_plot = jax.random.split(jax.random.key(config.seed), 4)
    params0 = _generative.init_jit(vae, key_init, hidden_dim=config.hidden_dim, latent_dim=config.latent_dim)
    params, history, train_s = _generative.train_model(
        config, vae, params0, data["x_train"], key_train, mesh=mesh
    )
    metrics = _metrics(config, data, params, history, train_s, key_eval)
    curves = {"JAX (dlx_jax)": history["loss"]}
    if with_torch:
        torch_history, torch_s = train_torch(config, params0, data["x_train"], key_train)
        metrics.update(_torch_metrics(history["loss"], torch_history, torch_s))
        curves["PyTorch (book's code)"] = torch_history

    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            _generative.figures(out, vae, params, data, key_plot, "VAE", curves, metrics["test_loss"])
        return out.finish(metrics)


# --- --ensemble M -------------------------------------------------------------------------------------


def _member_bounds(iwae_k: int):
    """``jit(bounds)(params, x, key) -> (n,)`` IWAE bounds per test image (binarized), one member."""

    @jax.jit
    def bounds(params, x, key):
        xb = vae.binarize(x)
        keys = jax.random.split(key, xb.shape[0])
        one = lambda kx: vae.iwae_bound(kx[0], params, kx[1], num_samples=iwae_k)  # noqa: E731
        return jax.lax.map(one, (keys, xb), batch_size=_generative.IWAE_CHUNK)

    return bounds


def _ensemble_scores(config: Config, params, x_test: np.ndarray, keys_eval) -> dict[str, Any]:
    r"""Each member's scores, and the mixture of the members as the ensemble's test likelihood:
    :math:`\log p_{ens}(x) = \log \frac1M \sum_m p_m(x)`, each :math:`p_m(x)` estimated by member m's
    IWAE average (unbiased), so the estimate is again a lower bound in expectation (Jensen)."""
    _, iwae_k = _generative.sizes(config)
    x = jnp.asarray(x_test)
    scores = jax.vmap(_generative.compiled_scores(vae, iwae_k), in_axes=(0, None, 0))(params, x, keys_eval)
    bounds = jax.vmap(_member_bounds(iwae_k), in_axes=(0, None, 0))(params, x, keys_eval)  # (M, n)
    mixture = jax.scipy.special.logsumexp(bounds, axis=0) - np.log(config.ensemble)
    loss, neg_elbo, neg_iwae = (np.asarray(training.gather(v)) for v in scores)
    return {
        "test_loss": float(loss.mean()),
        "test_neg_elbo_nats": float(neg_elbo.mean()),
        "test_iwae_nats": float(neg_iwae.mean()),
        "iwae_k": iwae_k,
        "likelihood": _generative.LIKELIHOOD_NOTE,
        "member_test_loss": loss.tolist(),
        "member_test_iwae_nats": neg_iwae.tolist(),
        "ensemble_test_iwae_nats": -float(jnp.mean(mixture)),
    }


def _ensemble_main(config: Config, data: dict, mesh) -> dict:
    """``--ensemble M``: M VAEs (member m = seed S+m) in one vmapped call, then one after another."""
    import optax

    size, (epochs, _) = config.ensemble, _generative.sizes(config)
    keys = [jax.random.split(jax.random.key(config.seed + m), 4) for m in range(size)]
    key_init, key_train, key_eval, key_plot = (jnp.stack([k[i] for k in keys]) for i in range(4))
    init = functools.partial(
        vae.init_params, input_dim=784, hidden_dim=config.hidden_dim, latent_dim=config.latent_dim
    )
    optimizer = optax.adam(config.lr)
    make_states = jax.jit(jax.vmap(lambda k: training.init_state(init(k), optimizer)))
    epoch = training.make_epoch_fn(
        training.make_train_step(vae.book_loss, optimizer), batch_size=config.batch_size
    )
    states, keys_run = _ensembles.layout((make_states(key_init), key_train), mesh)
    shared = training.replicate(np.asarray(data["x_train"]), mesh)
    epoch_fn = _ensembles.vmapped_epoch(epoch).lower(keys_run, states, shared).compile()
    fingerprint = _generative.fingerprint(
        config, model="vae", n_train=len(data["x_train"]), fields=("latent_dim", "hidden_dim"), ensemble=size
    )
    states, history, _ = _fitting.train(
        config, keys_run, states, shared, epoch_fn=epoch_fn, epochs=epochs, fingerprint=fingerprint
    )
    _, seq_s, _ = _ensembles.sequential(
        epoch, key_train, make_states(key_init), jnp.asarray(data["x_train"]), epochs=epochs
    )
    params = jax.tree_util.tree_map(jnp.asarray, training.gather(states.params))
    vmapped_s = float(np.sum(history["epoch_seconds"]))
    metrics: dict[str, Any] = {"loss_history": history["loss"], "final_loss": history["loss"][-1]}
    metrics.update(_ensemble_scores(config, params, data["x_test"], key_eval))
    metrics.update(
        {
            "epochs": epochs,
            "num_train": len(data["x_train"]),
            "num_test": len(data["x_test"]),
            "ensemble_size": size,
            "member_seeds": list(range(config.seed, config.seed + size)),
            "ensemble_train_seconds": vmapped_s,
            "sequential_train_seconds": seq_s,
            "ensemble_speedup": seq_s / vmapped_s,
            "ensemble_note": f"{size} VAEs, member m trained with seed {config.seed}+m; test_* are the "
            "members' means; ensemble_test_iwae_nats is the mixture (1/M) sum_m p_m(x), each p_m by member "
            "m's IWAE average (a lower bound in expectation); figures show member 0 (= the --seed run); "
            "*_train_seconds exclude compilation",
        }
    )
    with StepOutput(config, checkpoints=True) as out:
        if out.plots:
            member0 = jax.tree_util.tree_map(lambda a: a[0], params)
            curves = {f"mean over {size} members": history["loss"]}
            _generative.figures(
                out, vae, member0, data, key_plot[0], "VAE member 0", curves, metrics["test_loss"]
            )
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
