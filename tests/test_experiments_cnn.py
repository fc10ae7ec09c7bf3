"""experiments.cnn on a tiny config: metrics, figures, checkpoint; bad input fails before any output."""

from __future__ import annotations

import json
from dataclasses import replace

import jax
import numpy as np
import pytest

from dlx_jax import cnn
from experiments.cnn import QUICK_EPOCHS, QUICK_TRAIN, Config, load_trained, main


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_cnn_quick_run_writes_metrics_figures_and_params(tmp_path, backend):
    out = tmp_path / backend
    metrics = main(replace(Config(), out=str(out), quick=True, backend=backend))
    epochs = metrics["epochs"]
    assert epochs == QUICK_EPOCHS and metrics["backend"] == backend and metrics["dataset"] == "mnist-5k"
    assert metrics["n_params"] == 34_826
    for key in ("train_loss_history", "test_accuracy_history", "epoch_seconds"):
        assert len(metrics[key]) == epochs
    assert metrics["train_loss_history"][-1] < np.log(10)  # below chance-level cross-entropy
    assert metrics["test_accuracy"] == metrics["test_accuracy_history"][-1]
    assert metrics["n_train"] == QUICK_TRAIN
    assert metrics["test_accuracy"] > 0.6  # 3 epochs on 2,000 digits: far above chance (0.1)
    assert np.sum(metrics["confusion_matrix"]) == metrics["n_test"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    for name in ("curves", "predictions", "confusion"):
        assert (out / f"{name}.png").stat().st_size > 1000
    params = load_trained(out)
    assert cnn.count_params(params) == 34_826
    # the checkpoint reproduces the reported accuracy on the same quick test subset
    from experiments.cnn import _validate

    _, _, x_test, y_test = _validate(replace(Config(), quick=True))
    from dlx_jax.data import to_float_images

    acc = float(jax.jit(cnn.evaluate)(params, to_float_images(x_test), y_test))
    assert abs(acc - metrics["test_accuracy"]) < 1e-6


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 10_000}, "batch-size"),
        ({"dataset": "cifar"}, "unknown dataset"),
        ({"backend": "tf"}, "backend"),
        ({"lr": 0.0}, "lr"),
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
