"""CNN — the seed convolutional network on MNIST-style digits, in JAX or in the numpy reference.

Conv 32 3x3 + ReLU -> max-pool 2x2 -> conv 64 3x3 + ReLU -> max-pool 2x2 -> dropout 0.5 -> dense 10
(34,826 parameters), trained with Adam (lr 1e-3, batch 128) on softmax cross-entropy. The JAX backend
trains through ``dlx_jax.training.fit`` — each epoch one compiled ``lax.scan`` over the batches, the
test accuracy after every epoch, checkpoints in ``OUT/checkpoints`` (``--resume`` continues an
interrupted run with the numbers of an uninterrupted one); the numpy backend trains the
from-scratch im2col reference (``reference_numpy.train.fit``). The trained parameters are saved with
orbax (``dlx_jax.training.save_params``) into ``OUT/params``, beside ``config.json`` which names the
dataset, so later steps can use the network as a judge of generated digits (:func:`load_trained`,
:func:`trained_dataset`, ``dlx_jax.cnn.features``). This is the book's neural-network groundwork
(step 6) made concrete.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments import _cnn_figures, _ensembles, _fitting, _quick
from experiments._cli import check_config, cli
from experiments._outputs import StepOutput

QUICK = _quick.QUICK["cnn"]


@dataclass(frozen=True)
class Config:
    out: str = "outputs/cnn"
    seed: int = 0
    quick: bool = False
    plots: bool = True
    backend: str = "jax"
    dataset: str = "mnist-5k"
    data_dir: str | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    resume: bool = False
    allow_lr_change: bool = False
    ensemble: int = 1
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    SUMMARY = ("test_accuracy", "backend", "dataset", "epoch_seconds")
    HELP = {
        "backend": "jax (compiled lax.scan epochs) or numpy (the from-scratch reference_numpy CNN)",
        "dataset": "mnist-5k (embedded, 4,000/1,000), mnist or fashion-mnist (60,000/10,000)",
        "data_dir": "folder with the four IDX files (e.g. /usr/share/datasets/fashion-mnist)",
        "epochs": "passes over the training set",
        "batch_size": "examples per Adam step",
        "lr": "Adam learning rate",
        "resume": "continue from OUT/checkpoints (same settings) instead of starting over (jax backend)",
        "allow_lr_change": _fitting.ALLOW_LR_CHANGE_HELP,
        "ensemble": _ensembles.HELP + " (jax backend)",
        **_fitting.MESH_HELP,
    }
    CHOICES = {"backend": ["jax", "numpy"], "dataset": ["mnist-5k", "mnist", "fashion-mnist"]}


def load_trained(out: str | Path = "outputs/cnn"):
    """Parameters saved by this step (``OUT/params``), for ``dlx_jax.cnn.apply`` / ``cnn.features``.

    Raises:
        FileNotFoundError: no trained CNN in ``out`` (with the command that makes one).
    """
    from dlx_jax import cnn

    return cnn.load_params(Path(out) / "params")


def trained_dataset(out: str | Path = "outputs/cnn") -> str:
    """The dataset the CNN in ``out`` was trained on (``config.json`` beside ``OUT/params``).

    Raises:
        FileNotFoundError: ``out`` holds no finished run.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no finished CNN run in {out} (no config.json); run `python -m experiments.cnn`"
        )
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["dataset"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path} is not a CNN run's config (unreadable JSON or no 'dataset'); run "
            "`python -m experiments.cnn` into that folder again"
        ) from None


def _validate(config: Config):
    """Check the config and load the data; raises ValueError/FileNotFoundError before any output."""
    from dlx_jax.data import load_dataset

    if config.backend not in Config.CHOICES["backend"]:
        raise ValueError(f"--backend must be one of {Config.CHOICES['backend']}, got {config.backend!r}")
    if config.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {config.batch_size}")
    if not config.lr > 0:
        raise ValueError(f"--lr must be > 0, got {config.lr}")
    if config.resume and config.backend != "jax":
        raise ValueError("--resume needs --backend jax (the numpy reference keeps no checkpoints)")
    if config.backend != "jax" and (
        config.devices not in (None, 1) or config.coordinator is not None or config.ensemble != 1
    ):
        raise ValueError(
            "--devices, --ensemble and the multi-process flags need --backend jax (numpy trains one model)"
        )
    if config.backend == "jax":
        _fitting.check_checkpoints(config)
    ds = load_dataset(config.dataset, data_dir=config.data_dir)
    x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if config.quick:
        rng = np.random.default_rng(config.seed)
        tr = np.sort(rng.permutation(len(x_train))[: QUICK["n_train"]])
        te = np.sort(rng.permutation(len(x_test))[: QUICK["n_test"]])
        x_train, y_train, x_test, y_test = x_train[tr], y_train[tr], x_test[te], y_test[te]
    if x_train.shape[1:] != (28, 28) or x_test.shape[1:] != (28, 28):
        raise ValueError(f"the CNN needs 28x28 images, got {x_train.shape[1:]} / {x_test.shape[1:]}")
    if config.batch_size > len(x_train):
        raise ValueError(
            f"--batch-size {config.batch_size} exceeds the {len(x_train)} training images; "
            f"use at most {len(x_train)}"
        )
    return x_train, y_train, x_test, y_test


def _train_jax(config: Config, epochs: int, x_train, y_train, x_test, y_test, progress, *, mesh):
    """Train through ``dlx_jax.training.fit`` (:func:`experiments._fitting.train`) on ``mesh``
    (data parallel: state replicated, batches sharded); the epoch is compiled ahead (``compile_s``
    apart)."""
    import jax
    import jax.numpy as jnp
    import optax

    from dlx_jax import cnn, training
    from dlx_jax.data import to_float_images

    key_init, key_train = jax.random.split(jax.random.key(config.seed))
    optimizer = optax.adam(config.lr)
    state = training.init_state(cnn.init_params(key_init), optimizer)
    data = (to_float_images(x_train), np.asarray(y_train, np.int32))
    state, data, key_train = training.replicate((state, data, key_train), mesh)
    xt = jnp.asarray(to_float_images(x_test))
    step = training.make_train_step(cnn.train_loss, optimizer)
    epoch_fn = training.make_epoch_fn(step, batch_size=config.batch_size, mesh=mesh)
    epoch_jit = jax.jit(epoch_fn, donate_argnums=1)
    predict = jax.jit(lambda p, x: cnn.predict(p, x, batch_size=500))
    start = time.perf_counter()
    epoch_fn = epoch_jit.lower(key_train, state, data).compile()
    compile_s = time.perf_counter() - start

    def test_accuracy(epoch: int, state: training.TrainState) -> dict:
        acc = float(np.mean(np.asarray(predict(state.params, xt)) == y_test))
        progress.advance(epoch, test_acc=acc)
        return {"test_accuracy": acc}

    fingerprint = _fingerprint(config, len(y_train), **_fitting.mesh_fingerprint(mesh))
    state, history, _ = _fitting.train(
        config,
        key_train,
        state,
        data,
        epoch_fn=epoch_fn,
        epochs=epochs,
        fingerprint=fingerprint,
        evaluate=test_accuracy,
        progress=False,  # the step's own bar (see _progress_bar)
    )
    curves = {
        "train_loss": history["loss"],
        "test_accuracy": [row["test_accuracy"] for row in history["eval"]],
        "epoch_seconds": history["epoch_seconds"],
    }
    preds = np.asarray(predict(state.params, xt))
    return state.params, curves, preds, compile_s


def _train_ensemble(config: Config, epochs: int, x_train, y_train, x_test, y_test, progress, *, mesh):
    """``--ensemble M``: the members trained in one vmapped call (:mod:`experiments._ensembles`), then
    one after another for the time ratio. Returns ``(stacked params, curves, ensemble predictions,
    compile seconds, ensemble metrics)``; the ensemble predicts by its members' mean probabilities."""
    import jax
    import jax.numpy as jnp
    import optax

    from dlx_jax import cnn, training
    from dlx_jax.data import to_float_images

    size = config.ensemble
    optimizer = optax.adam(config.lr)
    keys_init, keys_train = _ensembles.member_keys(config.seed, size)
    init = jax.vmap(lambda k: training.init_state(cnn.init_params(k), optimizer))
    data = (to_float_images(x_train), np.asarray(y_train, np.int32))
    epoch = training.make_epoch_fn(
        training.make_train_step(cnn.train_loss, optimizer), batch_size=config.batch_size
    )
    states, keys = _ensembles.layout((init(keys_init), keys_train), mesh)
    shared = training.replicate(data, mesh)
    start = time.perf_counter()
    epoch_fn = _ensembles.vmapped_epoch(epoch).lower(keys, states, shared).compile()
    compile_s = time.perf_counter() - start
    xt = jnp.asarray(to_float_images(x_test))
    probs_fn = jax.jit(jax.vmap(lambda p: jax.nn.softmax(cnn.apply(p, xt), axis=-1)))

    def accuracies(epoch: int, state: training.TrainState) -> dict:
        probs = np.asarray(training.gather(probs_fn(state.params)))  # (M, n, 10)
        members = np.mean(np.argmax(probs, -1) == y_test, axis=1)
        ensemble = float(np.mean(np.argmax(probs.mean(0), -1) == y_test))
        progress.advance(epoch, test_acc=ensemble)
        return {"member_test_accuracy": members, "test_accuracy": ensemble}

    fingerprint = _fingerprint(config, len(y_train), ensemble=size)
    states, history, _ = _fitting.train(
        config,
        keys,
        states,
        shared,
        epoch_fn=epoch_fn,
        epochs=epochs,
        fingerprint=fingerprint,
        evaluate=accuracies,
        progress=False,
    )
    seq_states, seq_s, _ = _ensembles.sequential(
        epoch, keys_train, init(keys_init), jax.tree_util.tree_map(jnp.asarray, data), epochs=epochs
    )
    params = training.gather(states.params)
    probs = np.asarray(training.gather(probs_fn(states.params)))
    extra = _ensemble_metrics(config, history, params, seq_states.params, seq_s, mesh)
    curves = {
        "train_loss": history["loss"],
        "test_accuracy": [row["test_accuracy"] for row in history["eval"]],
        "epoch_seconds": history["epoch_seconds"],
    }
    return params, curves, np.argmax(probs.mean(0), -1), compile_s, extra


def _fingerprint(config: Config, n_train: int, **extra) -> dict:
    """The settings a ``--resume`` checkpoint must share (plus ``extra``: the mesh, the ensemble)."""
    names = ("dataset", "quick", "batch_size", "lr", "seed")
    return {"model": "cnn", "n_train": n_train, **{n: getattr(config, n) for n in names}, **extra}


def _ensemble_metrics(config: Config, history: dict, params, sequential_params, seq_s: float, mesh) -> dict:
    """The ensemble's metrics: members' and ensemble accuracies, both training times and their ratio,
    and how far the vmapped members are from the same members trained one after another."""
    import jax

    size, last = config.ensemble, history["eval"][-1]
    vmapped_s = float(np.sum(history["epoch_seconds"]))
    pairs = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(sequential_params), strict=True)
    return {
        "ensemble_size": size,
        "member_seeds": list(range(config.seed, config.seed + size)),
        "member_test_accuracy": last["member_test_accuracy"],
        "member_mean_test_accuracy": float(np.mean(last["member_test_accuracy"])),
        "ensemble_test_accuracy": last["test_accuracy"],
        "ensemble_train_seconds": vmapped_s,
        "sequential_train_seconds": seq_s,
        "ensemble_speedup": seq_s / vmapped_s,
        "ensemble_vs_sequential_max_param_diff": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs
        ),
        "ensemble_note": f"{size} CNNs, member m trained with seed {config.seed}+m; ensemble = argmax of "
        "the members' mean softmax probabilities; *_train_seconds exclude compilation (vmapped: one call "
        "per epoch for all members; sequential: the single-model epoch, member after member); "
        f"{mesh.devices.size} device(s)",
    }


def _train_numpy(config: Config, epochs: int, x_train, y_train, x_test, y_test, progress, *, mesh=None):
    from dlx_jax.data import to_float_images
    from reference_numpy import cnn as ref_cnn
    from reference_numpy import train as ref_train
    from reference_numpy.adam import Adam

    rng = np.random.default_rng(config.seed)
    params = ref_cnn.init_params(rng)
    optimizer = Adam(lr=config.lr)
    opt_state = optimizer.init(params)
    x, xt = to_float_images(x_train), to_float_images(x_test)
    history = {"train_loss": [], "test_accuracy": [], "epoch_seconds": []}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        params, opt_state, loss = ref_train.train_epoch(
            params, opt_state, x, y_train, batch_size=config.batch_size, rng=rng, optimizer=optimizer
        )
        history["epoch_seconds"].append(time.perf_counter() - start)
        history["train_loss"].append(float(loss))
        history["test_accuracy"].append(ref_train.evaluate(params, xt, y_test))
        progress.advance(epoch, test_acc=history["test_accuracy"][-1])
    preds = ref_cnn.predict(params, xt)
    return params, history, preds, 0.0


@contextlib.contextmanager
def _progress_bar(config: Config, epochs: int) -> Iterator:
    """A tqdm bar over the epochs, with ``advance(epoch, **postfix)`` (a resumed run starts part-way)."""
    from tqdm.auto import tqdm

    with tqdm(total=epochs, desc=f"cnn {config.backend} {config.dataset}", unit="epoch", leave=False) as bar:

        class _Progress:
            def advance(self, epoch: int, **postfix: float) -> None:
                bar.update(epoch - bar.n)
                bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()})

        yield _Progress()


def _metrics(config: Config, epochs: int, data: tuple, params: dict, history: dict, preds, compile_s) -> dict:
    from dlx_jax import cnn

    x_train, _, x_test, y_test = data
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (y_test, preds), 1)
    return {
        "test_accuracy": float(np.mean(preds == y_test)),
        "train_loss_history": history["train_loss"],
        "test_accuracy_history": history["test_accuracy"],
        "epoch_seconds": history["epoch_seconds"],
        "compile_seconds": compile_s,
        "backend": config.backend,
        "dataset": config.dataset,
        "n_params": cnn.count_params(params),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "epochs": epochs,
        "confusion_matrix": confusion.tolist(),
        "params_path": "params",
    }


def main(config: Config) -> dict:
    check_config(config)
    x_train, y_train, x_test, y_test = _validate(config)
    epochs = _quick.cap(config, config.epochs, QUICK["epochs"])
    mesh = None
    if config.backend == "jax":
        from dlx_jax import training

        mesh = _fitting.data_mesh(config)
        _ensembles.check(config, mesh)
        if config.ensemble == 1:
            training.check_divides(config.batch_size, mesh)
    extra: dict = {}
    with _progress_bar(config, epochs) as progress:
        if config.ensemble > 1:
            params, history, preds, compile_s, extra = _train_ensemble(
                config, epochs, x_train, y_train, x_test, y_test, progress, mesh=mesh
            )
        else:
            train = _train_jax if config.backend == "jax" else _train_numpy
            params, history, preds, compile_s = train(
                config, epochs, x_train, y_train, x_test, y_test, progress, mesh=mesh
            )

    import jax.numpy as jnp

    from dlx_jax import training

    params = {k: {n: jnp.asarray(v, jnp.float32) for n, v in layer.items()} for k, layer in params.items()}
    y_test = np.asarray(y_test)
    data = (x_train, y_train, x_test, y_test)
    metrics = _metrics(config, epochs, data, params, history, preds, compile_s) | extra
    if extra:  # the members' parameters stacked on a leading axis; n_params counts one member
        metrics["n_params"] //= config.ensemble
        metrics["params_path"] = "ensemble_params"
    with StepOutput(config, checkpoints=config.backend == "jax") as out:
        training.save_params(out.path(metrics["params_path"]), params)
        if out.plots:
            _cnn_figures.curves(out, config, history)
            _cnn_figures.digits(out, config, x_test, y_test, preds)
            _cnn_figures.confusion(
                out, config, np.asarray(metrics["confusion_matrix"]), metrics["test_accuracy"]
            )
        return out.finish(metrics)


if __name__ == "__main__":
    raise SystemExit(cli(Config, main, description=__doc__))
