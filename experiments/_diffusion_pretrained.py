"""The project's own trained weights for steps 9 and 10 and their judge, shipped in the package.

``dlx_jax/_datasets/weights/<name>/`` holds ``params/`` (one orbax folder written by
:func:`dlx_jax.params_io.save_params`: float32 arrays, no pickle) and ``provenance.json`` (the
exact command, the commit, the data, the run's metrics and loss curve). ``<name>`` is
``step09_diffusion`` (the unconditional UNet), ``step10_guidance`` (the classifier-free-guidance
UNet) or ``cnn_judge`` (the CNN that judges samples). The UNets are stored as sampling weights,
``{"params": ..., "batch_stats": ...}``: ``--kind ema`` the EMA weights with BatchNorm statistics
re-estimated for them (what the run itself sampled from, and what ships: after 4,650 steps they
sample cleaner than the trained weights, see ``experiments/results/issue16_background/README.md``),
``--kind raw`` the trained weights with their own running statistics.

``--weights`` of steps 9-10 chooses: ``auto`` samples these weights under ``--quick`` (the first
run shows real digits in seconds) and trains otherwise; ``pretrained`` always samples them (full
sample counts without ``--quick``); ``train`` trains from scratch (under ``--quick`` the width-8
smoke model of before).

Export a finished run (its ``checkpoints`` folder) with::

    python -m experiments._diffusion_pretrained --run OUT --name step10_guidance \\
        --command "python -m experiments.step10_guidance ..." --commit <sha>
"""

from __future__ import annotations

import argparse
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from dlx_jax import cnn, params_io, training, unet

WEIGHTS_DIR = Path(str(resources.files("dlx_jax") / "_datasets" / "weights"))
UNET_NAMES = ("step09_diffusion", "step10_guidance")
JUDGE_NAME = "cnn_judge"
DATASET = "mnist-5k"  # the data every shipped model was trained on
WEIGHT_CHOICES = ("auto", "pretrained", "train")


#: Options that ask for a model of one's own: changed from their defaults, ``--weights auto`` trains.
TRAINING_OPTIONS = (
    "dataset", "epochs", "train_steps", "batch_size", "lr", "num_timesteps", "beta_start", "beta_end",
    "features", "ema_decay", "ema_warmup", "judge", "resume", "preset", "label_drop", "drop_mode",
)  # fmt: skip


def use_pretrained(config: Any) -> bool:
    """Whether a step samples the shipped weights: ``--weights pretrained``, or ``auto`` under
    ``--quick`` when the weights are there and no option of :data:`TRAINING_OPTIONS` (data, schedule,
    model, optimizer, judge, ``--resume``, ``--preset``) differs from its default (else it trains, as
    before)."""
    if config.weights == "pretrained":
        return True
    if not (config.weights == "auto" and config.quick and _present(config.STEP)):
        return False
    defaults = type(config)()
    return all(getattr(config, k) == getattr(defaults, k) for k in TRAINING_OPTIONS if hasattr(defaults, k))


def _present(name: str) -> bool:
    return all((WEIGHTS_DIR / n / "provenance.json").is_file() for n in (name, JUDGE_NAME))


def _schedule(config: Any) -> tuple[int, float, float]:
    return (int(config.num_timesteps), float(config.beta_start), float(config.beta_end))


@functools.cache
def _shipped_schedule(name: str) -> tuple[int, float, float]:
    saved = provenance(name)["config"]
    return (int(saved["num_timesteps"]), float(saved["beta_start"]), float(saved["beta_end"]))


def check(config: Any, name: str) -> None:
    """Raise ``ValueError`` (before any work) when ``--weights pretrained`` cannot be honoured."""
    if config.weights not in WEIGHT_CHOICES:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {config.weights!r}")
    if config.weights != "pretrained":
        return
    if config.preset != "project":
        raise ValueError(
            f"--weights pretrained: the shipped weights come from the project's pipeline, not --preset "
            f"{config.preset}; train it (--weights train) or leave --preset at project"
        )
    if config.dataset != DATASET:
        raise ValueError(
            f"--weights pretrained: the shipped weights were trained on {DATASET}, not {config.dataset!r}; "
            f"pass --dataset {DATASET} or --weights train"
        )
    for folder in (WEIGHTS_DIR / name, WEIGHTS_DIR / JUDGE_NAME):
        if not (folder / "params").is_dir() or not (folder / "provenance.json").is_file():
            raise ValueError(
                f"--weights pretrained: no shipped weights in {folder} (params/ and provenance.json); "
                "reinstall the package or pass --weights train"
            )
    if _schedule(config) != _shipped_schedule(name):
        raise ValueError(
            f"--weights pretrained: the shipped {name} model was trained with T, β_1, β_T = "
            f"{_shipped_schedule(name)}, not {_schedule(config)}; leave --num-timesteps, --beta-start and "
            "--beta-end at their defaults or pass --weights train"
        )


def provenance(name: str) -> dict[str, Any]:
    """The ``provenance.json`` of shipped model ``name``."""
    return json.loads((WEIGHTS_DIR / name / "provenance.json").read_text(encoding="utf-8"))


def _unet_like(model: unet.UNet) -> dict[str, Any]:
    params, stats = jax.eval_shape(lambda k: unet.init(k, model), jax.random.key(0))
    return {"params": params, "batch_stats": stats}


def load_unet(name: str, folder: Path | None = None) -> tuple[unet.UNet, Any, Any, dict[str, Any]]:
    """``(model, params, batch_stats, provenance)`` of a shipped UNet (``folder`` overrides where)."""
    folder = WEIGHTS_DIR / name if folder is None else Path(folder)
    prov = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    model = unet.UNet(features=int(prov["features"]), num_labels=prov["num_labels"])
    tree = params_io.load_params(folder / "params", _unet_like(model))
    return model, tree["params"], tree["batch_stats"], prov


def load_judge() -> tuple[Any, dict[str, Any]]:
    """``(params, info)`` of the shipped judge CNN; ``info["judge_source"]`` says where it came from."""
    prov = provenance(JUDGE_NAME)
    params = cnn.load_params(WEIGHTS_DIR / JUDGE_NAME / "params")
    note = (
        f"pretrained (shipped): {prov['command']} at {prov['commit'][:10]}, "
        f"test accuracy {prov['test_accuracy']}"
    )
    return params, {"judge_source": note}


def pretrained_state(params: Any, batch_stats: Any, prov: dict[str, Any]) -> training.TrainState:
    """A :class:`training.TrainState` whose raw and EMA weights are both the shipped sampling weights."""
    return training.TrainState(np.int32(prov["train_steps"]), params, None, batch_stats, params)


def training_record(prov: dict[str, Any]) -> tuple[dict[str, list], dict[str, Any]]:
    """``(history, info)`` of the shipped run, shaped like :func:`experiments._diffusion.train`'s."""
    history = {"loss": list(prov["loss_history"]), "epoch_seconds": list(prov.get("epoch_seconds", []))}
    info = {k: prov[k] for k in ("epochs", "train_steps", "train_s", "num_params", "features")}
    return history, info


def metrics(prov: dict[str, Any]) -> dict[str, Any]:
    """What the metrics say about the shipped weights (labelled ``pretrained``)."""
    return {
        "weights": "pretrained",
        "pretrained_command": prov["command"],
        "pretrained_commit": prov["commit"],
        "pretrained_note": f"sampled from the shipped weights (dlx_jax/_datasets/weights/{prov['name']}): "
        f"width {prov['features']}, {prov['train_steps']} steps on {prov['dataset']}; no training here",
    }


# --- export (run once per shipped model) -------------------------------------------------------------


def _run_config(run: Path, module: Any, config_file: Path | None) -> tuple[Any, dict[str, Any]]:
    """The run's config (``run/config.json``, or ``config_file`` while the run is still judging)."""
    saved = json.loads((config_file or run / "config.json").read_text(encoding="utf-8"))
    fields = set(module.Config.__dataclass_fields__)
    return module.Config(**{**{k: v for k, v in saved.items() if k in fields}, "weights": "train"}), saved


def _run_record(run: Path, state: Any, meta: dict[str, Any], params: Any) -> dict[str, Any]:
    """The run's metrics (``run/metrics.json``; before the run has written it, what the checkpoint
    knows: the loss history, epochs, steps and training seconds)."""
    history = meta["history"]
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    else:
        metrics = {
            "final_loss": history["loss"][-1],
            "epochs": int(meta["epoch"]),
            "train_steps": int(state.step),
            "train_s": float(sum(history["epoch_seconds"])),
            "num_params": unet.count_params(params),
            "epoch_seconds": history["epoch_seconds"],
            "export_note": "exported from the final training checkpoint while the run was still judging",
        }
    return {
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, list | dict)},
        "loss_history": history["loss"],
        "epoch_seconds": metrics.get("epoch_seconds", []),
        **{k: metrics[k] for k in ("epochs", "train_steps", "train_s", "num_params")},
    }


def export_unet(
    run: Path,
    name: str,
    dest: Path,
    *,
    command: str,
    commit: str,
    config_file: Path | None = None,
    kind: str = "ema",
    note: str = "",
) -> dict[str, Any]:
    """Write ``dest/params`` (``kind`` ema: the EMA weights with BatchNorm statistics re-estimated,
    as the run sampled them; raw: the trained weights with their own statistics) and
    ``dest/provenance.json`` from a step-9/10 run folder ``run``: its ``checkpoints`` (or,
    while the run still judges its samples, ``checkpoints.partial`` with ``config_file``)."""
    # export only: the steps (and _diffusion) import this module
    from experiments import _diffusion, step09_diffusion, step10_guidance

    module = step09_diffusion if name == "step09_diffusion" else step10_guidance
    config, saved = _run_config(run, module, config_file)
    model = _diffusion.build_model(config, conditional=name == "step10_guidance")
    data = _diffusion.load_images(config)
    params, stats = unet.init(jax.random.key(0), model)
    like = training.init_state(params, optax.adam(config.lr), model_state=stats, ema=True)
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run / "checkpoints.partial"
    state, meta = training.restore_checkpoint(folder, like)
    # the key the step re-estimated BatchNorm with (its sampling key's last split)
    key_s = jax.random.split(jax.random.key(config.seed), 4 if name == "step09_diffusion" else 3)[-1]
    k_bn = jax.random.split(key_s, 4)[3] if name == "step09_diffusion" else jax.random.split(key_s)[1]
    if kind == "raw":  # the trained weights and the running statistics gathered under them
        weights, stats = state.params, state.model_state
        stored = "the trained (raw) weights and their own BatchNorm running statistics"
    else:
        weights = state.ema_params
        stats = _diffusion.recalibrate_batch_stats(config, model, weights, state.model_state, data, k_bn)
        stored = (
            f"EMA weights (decay {config.ema_decay}) + BatchNorm statistics re-estimated for them "
            f"({config.bn_recalibration} passes)"
        )
    tree = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float32), {"params": weights, "batch_stats": stats}
    )
    prov = {
        "name": name,
        "command": command,
        "commit": commit,
        "dataset": config.dataset,
        "data": f"{config.dataset}: the embedded 5,000 MNIST digits, 4,000 train (first 400 per class)",
        "features": model.features,
        "num_labels": model.num_labels,
        "stored": stored,
        **({"note": note} if note else {}),
        "config": saved,
        **_run_record(run, state, meta, weights),
    }
    _write(dest, tree, prov)
    return prov


def export_judge(run: Path, dest: Path, *, command: str, commit: str) -> dict[str, Any]:
    """Copy a finished ``experiments.cnn`` run's parameters (float32) with their provenance."""
    params = cnn.load_params(run / "params")
    run_metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    prov = {
        "name": JUDGE_NAME,
        "command": command,
        "commit": commit,
        "dataset": saved["dataset"],
        "data": f"{saved['dataset']}: 4,000 train digits; test accuracy on its 1,000 test digits",
        "config": saved,
        "test_accuracy": run_metrics["test_accuracy"],
        "metrics": {k: v for k, v in run_metrics.items() if not isinstance(v, list | dict)},
    }
    _write(dest, params, prov)
    return prov


def _write(dest: Path, tree: Any, prov: dict[str, Any]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    params_io.save_params(dest / "params", tree, overwrite=True)
    (dest / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n", encoding="utf-8")


def _main() -> None:
    parser = argparse.ArgumentParser(description="Export a finished run's weights into the package.")
    parser.add_argument("--run", required=True, help="the run's --out folder (with checkpoints/ or params/)")
    parser.add_argument("--name", required=True, choices=(*UNET_NAMES, JUDGE_NAME))
    parser.add_argument("--command", required=True, help="the exact command that trained the run")
    parser.add_argument("--commit", required=True, help="the commit the run's code came from")
    parser.add_argument("--dest", default=None, help="default: dlx_jax/_datasets/weights/NAME")
    parser.add_argument(
        "--config", default=None, help="the run's settings while it has not written config.json"
    )
    parser.add_argument("--kind", default="ema", choices=("ema", "raw"), help="which weights to store")
    parser.add_argument("--note", default="", help="how the run was made, when one command does not say it")
    args = parser.parse_args()
    dest = Path(args.dest) if args.dest else WEIGHTS_DIR / args.name
    if args.name == JUDGE_NAME:
        export_judge(Path(args.run), dest, command=args.command, commit=args.commit)
    else:
        config_file = Path(args.config) if args.config else None
        options = {
            "command": args.command,
            "commit": args.commit,
            "config_file": config_file,
            "kind": args.kind,
            "note": args.note,
        }
        export_unet(Path(args.run), args.name, dest, **options)
    print(f"wrote {dest}")


if __name__ == "__main__":
    _main()
