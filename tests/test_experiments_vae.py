"""Steps 7-8 run end to end on tiny settings: metrics, figures, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest

from experiments import step07_vae, step08_hvae

FAST = {"quick": True, "epochs": 2, "iwae_k": 4, "compare_torch": "off"}


def test_step07_quick_latent_2d(tmp_path):
    m = step07_vae.main(replace(step07_vae.Config(), out=str(tmp_path), latent_dim=2, **FAST))
    assert len(m["loss_history"]) == 2 and m["loss_history"][1] < m["loss_history"][0]
    assert m["iwae_k"] == 4 and "bernoulli" in m["likelihood"]
    # nats on 784 binarized pixels: positive, below the 784·log 2 of a coin-flip model, IWAE tighter
    assert 0 < m["test_iwae_nats"] <= m["test_neg_elbo_nats"] + 1.0 < 784 * np.log(2)
    assert 0 < m["test_loss"] < 100
    for name in ("loss_curve", "samples", "reconstructions", "latent_scatter", "manifold"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["loss_history"] == m["loss_history"]
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 2


def test_step07_resume_continues_to_the_same_numbers(tmp_path):
    cfg = replace(step07_vae.Config(), plots=False, **FAST)
    full = step07_vae.main(replace(cfg, out=str(tmp_path / "full")))
    step07_vae.main(replace(cfg, out=str(tmp_path / "cut"), epochs=1))
    resumed = step07_vae.main(replace(cfg, out=str(tmp_path / "cut"), resume=True))
    assert resumed["loss_history"] == full["loss_history"]
    assert resumed["test_loss"] == full["test_loss"]
    with pytest.raises(ValueError, match="other settings"):
        step07_vae.main(replace(cfg, out=str(tmp_path / "cut"), resume=True, lr=1e-3))


def test_step08_quick(tmp_path):
    fast = {k: v for k, v in FAST.items() if k != "compare_torch"}
    m = step08_hvae.main(replace(step08_hvae.Config(), out=str(tmp_path), **fast))
    assert len(m["loss_history"]) == 2 and m["loss_history"][1] < m["loss_history"][0]
    assert 0 < m["test_iwae_nats"] < 784 * np.log(2) and m["iwae_k"] == 4
    for name in ("loss_curve", "samples", "reconstructions"):
        assert (tmp_path / f"{name}.png").exists()
    assert not (tmp_path / "manifold.png").exists()  # only for --latent-dim 2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"latent_dim": 0}, "--latent-dim must be >= 1"),
        ({"batch_size": 5000}, "larger than the training set"),
        ({"lr": -1.0}, "--lr must be a positive"),
        ({"epochs": 0}, "--epochs must be >= 1"),
    ],
)
def test_bad_settings_fail_before_any_output(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        step07_vae.main(replace(step07_vae.Config(), out=str(tmp_path / "o"), **{**FAST, **change}))
    assert not (tmp_path / "o").exists()


def test_bad_images_fail_before_any_output(tmp_path, monkeypatch):
    real = step07_vae.load_dataset

    def scaled(name, data_dir=None):  # images in 0..255 floats instead of [0, 1]
        ds = real(name, data_dir=data_dir)
        return ds._replace(x_train=ds.x_train.astype(np.float32) * 255)

    monkeypatch.setattr(step07_vae, "to_float_images", lambda x: x)
    monkeypatch.setattr(step07_vae, "load_dataset", scaled)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        step07_vae.main(replace(step07_vae.Config(), out=str(tmp_path / "o"), **FAST))
    monkeypatch.setattr(step07_vae, "load_dataset", lambda name, data_dir=None: real(name)._replace(
        x_train=np.zeros((10, 32, 32), np.float32)))  # fmt: skip
    with pytest.raises(ValueError, match=r"expected \(n, 784\)"):
        step07_vae.main(replace(step07_vae.Config(), out=str(tmp_path / "o"), **FAST))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (optional peer) not installed")
def test_step07_torch_dynamics_match(tmp_path):
    cfg = replace(
        step07_vae.Config(), out=str(tmp_path), plots=False, quick=True, epochs=3, compare_torch="on"
    )
    m = step07_vae.main(cfg)
    assert len(m["torch_loss_history"]) == 3
    assert m["final_loss_relative_gap"] < 0.05


@pytest.mark.slow
def test_benchmark_section_quick():
    from experiments import benchmarks
    from experiments.benchmarks import vae as section

    m = section.run(replace(benchmarks.Config(), quick=True))
    assert m["vae_epoch_steps"] == section.QUICK_BATCHES and m["vae_epoch_jax_median_s"] > 0
    assert "vae_torch_skipped" in m or m["ratio_vae_epoch_torch_over_jax"] > 0
