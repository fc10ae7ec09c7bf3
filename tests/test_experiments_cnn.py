"""experiments.cnn on a tiny config: metrics, figures, saved parameters; an interrupted run resumed
equals an uninterrupted one bit for bit; bad input fails before any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from test_experiments_vae import Interrupted, assert_bitwise_equal, interrupt_before_saving

from dlx_jax import cnn, training
from experiments.cnn import QUICK, Config, load_trained, main, trained_dataset
from tests.helpers import ATOL_ENSEMBLE_PARAMS, RTOL_MESH_F32


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_cnn_quick_run_writes_metrics_figures_and_params(tmp_path, backend):
    out = tmp_path / backend
    metrics = main(replace(Config(), out=str(out), quick=True, backend=backend))
    epochs = metrics["epochs"]
    assert epochs == QUICK["epochs"] and metrics["backend"] == backend and metrics["dataset"] == "mnist-5k"
    assert metrics["n_params"] == 34_826
    for key in ("train_loss_history", "test_accuracy_history", "epoch_seconds"):
        assert len(metrics[key]) == epochs
    assert metrics["train_loss_history"][-1] < np.log(10)  # below chance-level cross-entropy
    assert metrics["test_accuracy"] == metrics["test_accuracy_history"][-1]
    assert metrics["n_train"] == QUICK["n_train"]
    assert metrics["test_accuracy"] > 0.6  # 3 epochs on 2,000 digits: far above chance (0.1)
    assert np.sum(metrics["confusion_matrix"]) == metrics["n_test"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    for name in ("curves", "predictions", "confusion"):
        assert (out / f"{name}.png").stat().st_size > 1000
    params = load_trained(out)
    assert cnn.count_params(params) == 34_826
    assert trained_dataset(out) == "mnist-5k"
    assert (out / "checkpoints").is_dir() == (backend == "jax")
    # the checkpoint reproduces the reported accuracy on the same quick test subset
    from experiments.cnn import _validate

    _, _, x_test, y_test = _validate(replace(Config(), quick=True))
    from dlx_jax.data import to_float_images

    acc = float(jax.jit(cnn.evaluate)(params, to_float_images(x_test), y_test))
    assert abs(acc - metrics["test_accuracy"]) < 1e-6


def test_interrupted_then_resumed_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    cfg = replace(Config(), quick=True, plots=False, epochs=2)
    full = main(replace(cfg, out=str(tmp_path / "full")))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_before_saving(m, epoch=2)
        with pytest.raises(Interrupted):
            main(replace(cfg, out=str(cut)))
    assert not (cut / "params").exists() and training.latest_checkpoint(cut / "checkpoints.partial") == 1
    resumed = main(replace(cfg, out=str(cut), resume=True))
    for key in ("train_loss_history", "test_accuracy_history", "test_accuracy", "confusion_matrix"):
        assert resumed[key] == full[key], key
    like = training.init_state(cnn.init_params(jax.random.key(0)), optax.adam(cfg.lr))
    a = training.restore_checkpoint(tmp_path / "full" / "checkpoints", like)[0]
    b = training.restore_checkpoint(cut / "checkpoints", like)[0]
    assert int(a.step) == int(b.step) == 2 * (QUICK["n_train"] // cfg.batch_size)
    assert_bitwise_equal(a, b)  # step, params, Adam moments (the CNN has no model state or EMA)
    assert_bitwise_equal(load_trained(cut), a.params)
    with pytest.raises(ValueError, match="other settings"):
        main(replace(cfg, out=str(cut), resume=True, lr=1e-2))


def test_help_lists_resume():
    text = subprocess.run(
        [sys.executable, "-m", "experiments.cnn", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert "--resume" in text and "--backend" in text


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 10_000}, "batch-size"),
        ({"dataset": "cifar"}, "unknown dataset"),
        ({"backend": "tf"}, "backend"),
        ({"lr": 0.0}, "lr"),
        ({"resume": True, "backend": "numpy"}, "--resume needs --backend jax"),
        ({"ensemble": 0}, "--ensemble must be an integer >= 1"),
        ({"ensemble": 2, "backend": "numpy"}, "need --backend jax"),
        ({"ensemble": 2, "seed": 2**32 - 1}, "needs seeds up to"),
        ({"devices": 0}, "num_devices"),
        ({"devices": 64}, "more devices than JAX sees"),
    ],
)
def test_bad_config_raises_before_any_output(tmp_path, change, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(replace(Config(), out=str(out), quick=True, **change))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_idx_dir_raises_before_any_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises((FileNotFoundError, ValueError)):
        main(replace(Config(), out=str(out), dataset="fashion-mnist", data_dir=str(tmp_path / "nope")))
    assert not out.exists()


@pytest.mark.slow
def test_ensemble_trains_members_like_their_single_runs(tmp_path):
    """``--ensemble 2``: member m is the model ``--seed m`` trains alone (up to the rounding of a
    vmapped program), the ensemble averages their probabilities, and both times are reported."""
    cfg = replace(Config(), quick=True, plots=False, epochs=1)
    single = main(replace(cfg, out=str(tmp_path / "single")))
    ens = main(replace(cfg, out=str(tmp_path / "ens"), ensemble=2))
    assert ens["ensemble_size"] == 2 and ens["member_seeds"] == [0, 1]
    assert len(ens["member_test_accuracy"]) == 2
    assert ens["test_accuracy"] == ens["ensemble_test_accuracy"] == ens["test_accuracy_history"][-1]
    # one quick epoch: the vmapped member 0 and the single run may differ on at most one test image
    assert abs(ens["member_test_accuracy"][0] - single["test_accuracy"]) <= 1 / ens["n_test"] + 1e-12
    assert ens["ensemble_vs_sequential_max_param_diff"] < ATOL_ENSEMBLE_PARAMS
    assert ens["ensemble_train_seconds"] > 0 and ens["sequential_train_seconds"] > 0
    assert ens["ensemble_speedup"] == ens["sequential_train_seconds"] / ens["ensemble_train_seconds"]
    stacked = training.load_params(
        tmp_path / "ens" / "ensemble_params",
        like=jax.tree_util.tree_map(lambda a: np.stack([a, a]), cnn.init_params(jax.random.key(0))),
    )
    assert jax.tree_util.tree_leaves(stacked)[0].shape[0] == 2 and ens["n_params"] == 34_826


@pytest.mark.slow
def test_two_simulated_devices_give_the_one_device_accuracy(tmp_path):
    """``JAX_NUM_CPU_DEVICES=2 ... --devices 2`` against ``--devices 1``: the same test accuracy (the
    only difference is the order of float32 sums in the gradient's all-reduce), and an ensemble
    spread over the two devices."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "TQDM_DISABLE": "1"}
    results = {}
    for name, flags in (
        ("one", ["--devices", "1"]),
        ("two", ["--devices", "2"]),
        ("ens", ["--devices", "2", "--ensemble", "2", "--epochs", "1"]),
    ):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "experiments.cnn", "--quick", "--no-plots", "--out", str(out), *flags]
        subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, timeout=600)
        results[name] = json.loads((out / "metrics.json").read_text())
    assert results["two"]["test_accuracy"] == results["one"]["test_accuracy"]
    np.testing.assert_allclose(
        results["two"]["train_loss_history"], results["one"]["train_loss_history"], rtol=RTOL_MESH_F32
    )
    assert json.loads((tmp_path / "two" / "config.json").read_text())["devices"] == 2
    assert (
        len(results["ens"]["member_test_accuracy"]) == 2 and "2 device(s)" in results["ens"]["ensemble_note"]
    )
