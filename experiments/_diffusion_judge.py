"""The judge of steps 9 and 10: the project's CNN (reused from an ``experiments.cnn`` run on the same
dataset, or trained here first), its penultimate features, the Fréchet distances and a sample's
sheet of numbers.

A ``--judge DIR`` folder (or the ``OUT/../cnn`` folder that ``--judge auto`` would reuse) is checked
completely by :func:`reusable_judge` before anything trains: its ``config.json`` (a JSON object
naming the dataset) and its parameters (loaded once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx_jax import cnn, metrics, training

NUM_CLASSES = 10  # the judge's classes (and the labels steps 9-10 condition on)
BORDER = 4  # background_level: the frame of this many pixels, where real MNIST digits are blank


# --- which judge ------------------------------------------------------------------------------------


def _redo(folder: Path, dataset: str) -> str:
    return (
        f"re-run `python -m experiments.cnn --dataset {dataset} --out {folder}` "
        "or pass --judge auto (trains a judge here first)"
    )


def _judge_dataset(folder: Path, dataset: str) -> str | None:
    """The dataset recorded in ``folder/config.json``; ``None`` when there is no such file.

    Raises ``ValueError`` naming the file for an unreadable, truncated or non-object config."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"--judge: {path} is not readable JSON ({err}); it is truncated or was edited: "
            + _redo(folder, dataset)
        ) from None
    if not isinstance(saved, dict):
        raise ValueError(
            f"--judge: {path} holds a JSON {type(saved).__name__}, not the object of settings that "
            "experiments.cnn writes: " + _redo(folder, dataset)
        )
    return saved.get("dataset")


def _check_params(folder: Path, dataset: str) -> Any:
    """The CNN parameters in ``folder/params``; one ``ValueError`` naming the folder if unreadable."""
    try:
        return training.load_params(folder / "params", cnn.init_params(jax.random.key(0)))
    except Exception as err:  # orbax and tensorstore raise many kinds for a damaged folder
        raise ValueError(
            f"--judge: {folder / 'params'} cannot be read as the CNN's parameters "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]}): " + _redo(folder, dataset)
        ) from None


def check_judge_folder(folder: Path, dataset: str) -> str:
    """Raise ``ValueError`` unless ``folder`` holds a readable CNN run on ``dataset``; return it."""
    if not (folder / "params").exists():
        raise ValueError(
            f"--judge {folder} holds no trained CNN (no params folder); run "
            f"`python -m experiments.cnn --dataset {dataset} --out {folder}` or pass --judge auto"
        )
    saved = _judge_dataset(folder, dataset)
    if saved is None and not (folder / "config.json").is_file():
        raise ValueError(
            f"--judge: {folder / 'config.json'} is missing: it names the dataset the CNN was trained on; "
            + _redo(folder, dataset)
        )
    if saved != dataset:
        raise ValueError(
            f"--judge {folder} was trained on {saved!r}, not on {dataset!r}; judge with a CNN trained on "
            f"the same data (`python -m experiments.cnn --dataset {dataset}`) or pass --judge auto"
        )
    _check_params(folder, dataset)
    return saved


def reusable_judge(config: Any) -> Path | None:
    """The folder whose CNN judges this run, fully checked, or ``None`` (train one here first).

    ``--judge DIR`` must hold a readable CNN run on the same dataset; ``--judge auto`` reuses
    ``OUT/../cnn`` when it was trained on the same dataset (its files must then be readable)."""
    if config.judge != "auto":
        folder = Path(config.judge)
        check_judge_folder(folder, config.dataset)
        return folder
    sibling = Path(config.out).parent / "cnn"
    if (sibling / "params").exists() and _judge_dataset(sibling, config.dataset) == config.dataset:
        _check_params(sibling, config.dataset)
        return sibling
    return None


def judge(config: Any, data: dict[str, np.ndarray], key: jax.Array, *, epochs: int) -> tuple[Any, dict]:
    """The CNN that judges samples: reused (:func:`reusable_judge`) or trained here for ``epochs``.
    Returns ``(params, {"judge_source": ...})``."""
    folder = reusable_judge(config)
    if folder is None:
        return train_judge(config, data, key, epochs=epochs)
    params = training.load_params(folder / "params", cnn.init_params(jax.random.key(0)))
    return params, {"judge_source": f"reused {folder} ({config.dataset})"}


def train_judge(
    config: Any, data: dict[str, np.ndarray], key: jax.Array, *, epochs: int
) -> tuple[Any, dict[str, Any]]:
    """Train the project's CNN (Adam 1e-3, batch 128) on the training images through ``training.fit``."""
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


# --- what the judge says ---------------------------------------------------------------------------


def background_level(x: np.ndarray, border: int = BORDER) -> float:
    r"""Mean pixel value on the ``border``-pixel frame of each image, the images read in [0, 1] as
    they are shown and judged (values clipped to [0, 1]; the samples themselves are not changed).

    .. math::  b = \frac{1}{n |F|} \sum_i \sum_{(r, c) \in F} \operatorname{clip}(x_{i r c}, 0, 1),

    with ``F`` the pixels within ``border`` of an edge (336 of 784 for 28×28 and ``border = 4``).
    Real MNIST digits are centred in a 20×20 box, so their frame is nearly blank: salt noise in
    generated images shows up as a ``b`` far above the real images' (``background_level_real``).

    Args:
        x: ``(n, h, w)`` or ``(n, h, w, 1)`` images in [0, 1] (or samples near that range).
        border: frame width in pixels.
    """
    x = np.asarray(x, np.float64)
    x = x[..., 0] if x.ndim == 4 else x
    frame = np.ones(x.shape[1:], bool)
    frame[border:-border, border:-border] = False
    return float(np.mean(np.clip(x[:, frame], 0.0, 1.0)))


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
        "background_level_real": background_level(data["x_test"]),
        "fid_real_floor": fid(train_feats, test_feats[sub]),
        "fid_num_images": m,
    }
    return info, test_feats[sub]


def sample_sheet(
    judge_params: Any,
    samples: np.ndarray,
    test_feats: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    n_fid: int | None = None,
) -> dict[str, Any]:
    """FID of the first ``n_fid`` samples (default: all) against the test features, the samples'
    :func:`background_level`, the judge's label histogram, and (with labels) the fraction judged as
    their conditioning label, overall and per class (every class must then be among the labels: the
    caller checks that up front)."""
    feats, preds = judge_outputs(judge_params, samples)
    out: dict[str, Any] = {
        "fid": fid(feats[: n_fid or len(feats)], test_feats),
        "background_level": background_level(samples),
        "class_fractions": np.bincount(preds, minlength=NUM_CLASSES) / len(preds),
    }
    if labels is not None:
        labels = labels[: len(preds)]
        missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(labels).tolist()))
        if missing:
            raise ValueError(
                f"no samples of class(es) {missing} to judge per class; generate at least "
                f"{NUM_CLASSES} samples (labels i % {NUM_CLASSES})"
            )
        hit = preds == labels
        out["accuracy"] = float(np.mean(hit))
        out["accuracy_per_class"] = [float(np.mean(hit[labels == c])) for c in range(NUM_CLASSES)]
    return out
