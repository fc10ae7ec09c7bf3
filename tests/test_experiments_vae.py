"""Steps 7-8 run end to end on tiny settings: metrics, figures, resume (bit for bit after an
interruption), a diverged run that leaves an earlier good run untouched, bad input."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from dlx_jax import training, vae
from experiments import _generative, step07_vae, step08_hvae
from experiments._cli import cli
from tests.helpers import RTOL_ENSEMBLE_SCORES

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


def test_step07_ensemble_members_and_their_mixture(tmp_path):
    """``--ensemble 2``: member 0 is the ``--seed 0`` run (its test loss and IWAE), the ensemble's test
    likelihood is the mixture of the members (never worse than the best member's bound by more
    than log M: log mean_m p_m >= max_m log p_m - log M), and both training times are reported."""
    cfg = replace(step07_vae.Config(), plots=False, **FAST)
    single = step07_vae.main(replace(cfg, out=str(tmp_path / "one")))
    ens = step07_vae.main(replace(cfg, out=str(tmp_path / "two"), ensemble=2))
    assert ens["member_seeds"] == [0, 1] and len(ens["member_test_iwae_nats"]) == 2
    np.testing.assert_allclose(ens["member_test_loss"][0], single["test_loss"], rtol=RTOL_ENSEMBLE_SCORES)
    np.testing.assert_allclose(
        ens["member_test_iwae_nats"][0], single["test_iwae_nats"], rtol=RTOL_ENSEMBLE_SCORES
    )
    assert ens["ensemble_test_iwae_nats"] <= min(ens["member_test_iwae_nats"]) + np.log(2) + 1e-4
    assert ens["test_loss"] == pytest.approx(np.mean(ens["member_test_loss"]))
    assert ens["ensemble_speedup"] > 0 and (tmp_path / "two" / "checkpoints").is_dir()


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C in the middle of a run."""


def interrupt_before_saving(monkeypatch, epoch: int) -> None:
    """Make training.fit stop when it is about to save checkpoint ``epoch`` (earlier ones are saved)."""
    real = training.save_checkpoint

    def save(directory, e, state, meta):
        if e == epoch:
            raise Interrupted(f"interrupted in epoch {e}")
        real(directory, e, state, meta)

    monkeypatch.setattr(training, "save_checkpoint", save)


def restored_state(out: Path, like: training.TrainState) -> training.TrainState:
    return training.restore_checkpoint(out / "checkpoints", like)[0]


def assert_bitwise_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_step07_interrupted_then_resumed_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    cfg = replace(step07_vae.Config(), plots=False, **FAST)
    full = step07_vae.main(replace(cfg, out=str(tmp_path / "full")))
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_before_saving(m, epoch=2)
        with pytest.raises(Interrupted):
            step07_vae.main(replace(cfg, out=str(cut)))
    assert not (cut / "metrics.json").exists() and not (cut / "checkpoints").exists()
    assert training.latest_checkpoint(cut / "checkpoints.partial") == 1
    resumed = step07_vae.main(replace(cfg, out=str(cut), resume=True))
    assert not (cut / "checkpoints.partial").exists()
    for key in ("loss_history", "test_loss", "test_neg_elbo_nats", "test_iwae_nats"):
        assert resumed[key] == full[key], key
    params = _generative.init_jit(
        vae, jax.random.key(0), hidden_dim=cfg.hidden_dim, latent_dim=cfg.latent_dim
    )
    like = training.init_state(params, optax.adam(cfg.lr))
    a, b = restored_state(tmp_path / "full", like), restored_state(cut, like)
    assert int(a.step) == int(b.step) == 2 * (_generative.QUICK["n_train"] // cfg.batch_size)
    assert_bitwise_equal(a, b)  # step, params, Adam moments (no model state or EMA in this model)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_diverged_run_leaves_an_earlier_good_run_untouched(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--quick", "--epochs", "2", "--iwae-k", "4", "--compare-torch", "off", "--out", str(out)]
    assert cli(step07_vae.Config, step07_vae.main, args) == 0
    before = snapshot(out)
    assert {"metrics.json", "config.json", "samples.png"} <= set(before)
    assert any(name.startswith("checkpoints/") for name in before)
    assert cli(step07_vae.Config, step07_vae.main, [*args, "--lr", "1e6"]) == 2
    assert "diverged" in capsys.readouterr().err
    assert snapshot(out) == before  # metrics, config, figures and checkpoints byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no partial or staging folder left


def test_a_run_killed_after_training_keeps_old_outputs_with_old_checkpoints(tmp_path, monkeypatch):
    """Checkpoints are committed only with the outputs; --resume then writes them without training."""
    out = tmp_path / "k"
    cfg = replace(step07_vae.Config(), plots=False, out=str(out), **FAST)
    step07_vae.main(cfg)
    before = snapshot(out)
    with monkeypatch.context() as m:  # fails after training, before any output is written
        m.setattr(_generative, "evaluate", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            step07_vae.main(replace(cfg, epochs=3))
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("checkpoints.partial/")} == before
    assert training.latest_checkpoint(out / "checkpoints.partial") == 3
    with monkeypatch.context() as m:

        def no_training(*args, **kwargs):
            raise AssertionError("a finished run must not train again")

        m.setattr(training, "make_epoch_fn", lambda *args, **kwargs: no_training)
        resumed = step07_vae.main(replace(cfg, epochs=3, resume=True))
    full = step07_vae.main(replace(cfg, epochs=3, out=str(tmp_path / "full")))
    assert resumed["loss_history"] == full["loss_history"] and resumed["test_loss"] == full["test_loss"]
    assert training.latest_checkpoint(out / "checkpoints") == 3 and not (out / "checkpoints.partial").exists()


def test_shared_helpers_for_the_generative_steps():
    cfg = replace(step07_vae.Config(), quick=True)
    flat, images = _generative.load_images(cfg), _generative.load_images(cfg, flat=False, quick_train=50)
    assert flat["x_train"].shape == (_generative.QUICK["n_train"], 784) and images["x_train"].shape == (
        50,
        28,
        28,
        1,
    )
    n_test = _generative.QUICK["n_test"]
    assert images["x_test"].shape == (n_test, 28, 28, 1) and set(images["y_train"]) == set(range(10))
    np.testing.assert_array_equal(images["x_test"].reshape(-1, 784), flat["x_test"])
    x = flat["x_test"][:5]
    mosaic = _generative.grid(x, 2, 3)  # row-major, the sixth cell left black
    assert mosaic.shape == (56, 84)
    np.testing.assert_array_equal(mosaic[28:, 28:56], x[4].reshape(28, 28))
    np.testing.assert_array_equal(mosaic[28:, 56:], 0.0)
    np.testing.assert_array_equal(_generative.grid(images["x_test"][:5], 2, 3), mosaic)
    with pytest.raises(ValueError, match="at most 4"):
        _generative.grid(x, 2, 2)
    fp = _generative.fingerprint(cfg, model="vae", n_train=10, fields=("latent_dim",), timesteps=7)
    assert fp == {"model": "vae", "n_train": 10, "dataset": "mnist-5k", "batch_size": 32, "lr": 3e-4,
                  "seed": 0, "latent_dim": 20, "timesteps": 7}  # fmt: skip


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
    real = _generative.load_dataset

    def scaled(name, data_dir=None):  # images in 0..255 floats instead of [0, 1]
        ds = real(name, data_dir=data_dir)
        return ds._replace(x_train=ds.x_train.astype(np.float32) * 255)

    monkeypatch.setattr(_generative, "to_float_images", lambda x: x)
    monkeypatch.setattr(_generative, "load_dataset", scaled)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        step07_vae.main(replace(step07_vae.Config(), out=str(tmp_path / "o"), **FAST))
    monkeypatch.setattr(_generative, "load_dataset", lambda name, data_dir=None: real(name)._replace(
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
