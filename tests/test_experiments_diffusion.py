"""Steps 9–10 on tiny settings: they run end to end, write their metrics and figures, resume a run
bit for bit, reuse or refuse a judge, and reject bad settings with one clear error before any work."""

from __future__ import annotations

import json
from dataclasses import replace

import jax
import numpy as np
import pytest

from experiments import _diffusion, _diffusion_book, _diffusion_judge, step09_diffusion, step10_guidance

# tiny but complete: width 8 (quick), T = 20, DDIM 5 steps, 20 judged samples, 1 epoch
TINY = {"quick": True, "num_timesteps": 20, "ddim_steps": 5, "epochs": 1, "weights": "train"}


def test_step09_runs_and_writes_its_contract(tmp_path):
    config = replace(step09_diffusion.Config(), out=str(tmp_path / "s9"), **TINY)
    m = step09_diffusion.main(config)
    contract = {"loss_history", "final_loss", "judge_test_accuracy", "fid_real_floor", "sample_fid_ddpm"}
    contract |= {"sample_fid_ddim", "sample_fid_ddim_no_ema", "ddpm_sample_seconds", "ddim_sample_seconds"}
    assert contract <= set(m), contract - set(m)
    assert m["train_steps"] == 1000 // 128 and m["features"] == 8
    assert np.isfinite(m["sample_fid_ddim"]) and m["fid_real_floor"] >= 0
    assert "trained here first" in m["judge_source"]
    names = {p.name for p in (tmp_path / "s9").iterdir()}
    assert {"metrics.json", "config.json", "forward_noising.png", "samples.png", "samples_ema_vs_raw.png",
            "denoising_trajectory.png", "loss_curve.png", "checkpoints"} <= names  # fmt: skip
    assert json.loads((tmp_path / "s9" / "metrics.json").read_text())["final_loss"] == m["final_loss"]


def test_step10_runs_and_reuses_a_judge_of_the_same_dataset(tmp_path):
    judge_dir = tmp_path / "cnn"
    (judge_dir).mkdir()
    data = _diffusion.load_images(replace(step10_guidance.Config(), quick=True))
    params, _ = _diffusion_judge.train_judge(
        replace(step10_guidance.Config(), quick=True), data, jax.random.key(1), epochs=3
    )
    from dlx_jax import training

    training.save_params(judge_dir / "params", params)
    (judge_dir / "config.json").write_text(json.dumps({"dataset": "mnist-5k"}))
    config = replace(step10_guidance.Config(), out=str(tmp_path / "s10"), plots=False, gammas="0,3", **TINY)
    m = step10_guidance.main(replace(config, guidance_interval="2,10"))
    assert m["judge_source"].startswith("reused") and m["cfg_gammas"] == [0.0, 3.0]
    assert m["guidance_interval"] == "t in 2..10"
    assert len(m["cfg_accuracy"]) == 2 and all(0 <= a <= 1 for a in m["cfg_accuracy"])
    assert len(m["cfg_accuracy_per_class_g3"]) == 10
    assert {"sample_fid_ddim", "sample_fid_ddpm", "ddim_over_ddpm_fid", "fid_real_floor"} <= set(m)
    assert not any(p.suffix == ".png" for p in (tmp_path / "s10").iterdir())
    # a judge trained on another dataset is refused, naming the fix
    (judge_dir / "config.json").write_text(json.dumps({"dataset": "fashion-mnist"}))
    with pytest.raises(ValueError, match="trained on 'fashion-mnist', not on 'mnist-5k'.*--judge auto"):
        step10_guidance.main(replace(config, judge=str(judge_dir)))


def test_step10_book_preset_draws_the_books_figure(tmp_path):
    config = replace(step10_guidance.Config(), out=str(tmp_path / "b10"), preset="book", gammas="3", **TINY)
    m = step10_guidance.main(config)
    assert m["preset"] == "book" and m["guidance_interval"] == "every t"
    assert json.loads((tmp_path / "b10" / "config.json").read_text())["ema_decay"] == 0.0
    labels, judged = np.asarray(m["book_grid_labels"]), np.asarray(m["book_grid_judged"])
    assert labels.shape == judged.shape == (20,) and set(labels) <= set(range(10)) and len(set(labels)) > 1
    assert m["book_grid_accuracy"] == np.mean(labels == judged) and m["book_grid_background_level"] >= 0
    assert (tmp_path / "b10" / "book_samples.png").is_file()


def test_diffusion_training_resumes_bit_for_bit(tmp_path):
    config = replace(step09_diffusion.Config(), out=str(tmp_path / "a"), **TINY)
    data = _diffusion.load_images(config)
    model = _diffusion.build_model(config, conditional=False)
    key = jax.random.key(3)
    full, history, _ = _diffusion.train(
        replace(config, epochs=2), model, data, key, loss_options={}, fingerprint={}
    )
    interrupted = replace(config, out=str(tmp_path / "b"), epochs=1)
    _diffusion.train(interrupted, model, data, key, loss_options={}, fingerprint={})
    resumed, history2, _ = _diffusion.train(
        replace(interrupted, epochs=2, resume=True), model, data, key, loss_options={}, fingerprint={}
    )
    assert history2["loss"] == history["loss"]
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # params, Adam, batch stats, EMA


def test_diffusion_training_continues_at_a_new_lr_only_when_asked(tmp_path):
    config = replace(step09_diffusion.Config(), out=str(tmp_path / "a"), **TINY)
    data = _diffusion.load_images(config)
    model = _diffusion.build_model(config, conditional=False)
    key = jax.random.key(3)
    _diffusion.train(config, model, data, key, loss_options={}, fingerprint={})
    lower = replace(config, epochs=2, resume=True, lr=config.lr / 10)
    with pytest.raises(ValueError, match=r"'lr': \(0.001, 0.0001\).*--allow-lr-change"):
        _diffusion.train(lower, model, data, key, loss_options={}, fingerprint={})
    _, history, _ = _diffusion.train(
        replace(lower, allow_lr_change=True), model, data, key, loss_options={}, fingerprint={}
    )
    assert len(history["loss"]) == 2 and history["changes"] == [{"epoch": 1, "lr": [0.001, 0.0001]}]
    assert _diffusion.training_metrics(history, {}, 0.0)["training_changes"] == history["changes"]


def test_step10_guidance_interval_parses_against_the_schedule():
    parse = step10_guidance.parse_interval
    assert parse("1,400", 1000) == (1, 400) and parse(" 5,5", 1000) == (5, 5)
    assert parse("all", 1000) is None and parse("ALL", 20) is None
    assert parse("1,1000", 1000) is None  # covering 1..T is the plain rule
    assert parse("1,400", 20) is None and parse("3,400", 20) == (3, 20)  # HI beyond T: up to T
    assert step10_guidance.Config().guidance_interval == "1,400"
    assert _diffusion_book.apply(replace(step10_guidance.Config(), preset="book")).guidance_interval == "all"


@pytest.mark.parametrize(
    ("module", "overrides", "message"),
    [
        (step10_guidance, {"gamma": -1.0}, "--gamma must be >= 0"),
        (step10_guidance, {"gammas": "0,-3"}, "--gammas must be numbers >= 0"),
        (step10_guidance, {"gammas": "a,b"}, "comma-separated numbers"),
        (step10_guidance, {"label_drop": 1.5}, "--label-drop must be a probability"),
        (step09_diffusion, {"allow_lr_change": True}, "--allow-lr-change only acts with --resume"),
        (step10_guidance, {"guidance_interval": "400"}, "--guidance-interval must be LO,HI"),
        (step10_guidance, {"guidance_interval": "500,100"}, r"1 <= LO <= HI and LO <= T = 20"),
        (step10_guidance, {"guidance_interval": "21,400"}, r"1 <= LO <= HI and LO <= T = 20"),
        (step09_diffusion, {"num_timesteps": 1}, "--num-timesteps must be >= 2"),
        (step09_diffusion, {"beta_end": 1.5}, "β|beta"),
        (step09_diffusion, {"beta_start": 0.03, "beta_end": 0.02}, "decreas|increas"),
        (step09_diffusion, {"ddim_steps": 2000}, "--ddim-steps 2000 exceeds"),
        (step09_diffusion, {"lr": 0.0}, "--lr must be a positive number"),
        (step09_diffusion, {"ema_decay": 1.0}, "--ema-decay must be in"),
        (step09_diffusion, {"bn_recalibration": -1}, "--bn-recalibration must be >= 0"),
        (step09_diffusion, {"batch_size": 100000}, "larger than the training set"),
        (step09_diffusion, {"judge": "/nonexistent/judge"}, "holds no trained CNN"),
        (step09_diffusion, {"preset": "book", "features": 32}, r"--features 32; drop those flags"),
        (
            step10_guidance,
            {"preset": "book", "guidance_interval": "1,500", "gamma": 2.0},
            r"guidance_interval = all, but the flags ask for --gamma 2.0, --guidance-interval 1,500",
        ),
    ],
)
def test_bad_settings_fail_before_any_output(tmp_path, module, overrides, message):
    config = replace(module.Config(), out=str(tmp_path / "out"), **{**TINY, **overrides})
    with pytest.raises(ValueError, match=message):
        module.main(config)
    assert not (tmp_path / "out").exists()


def test_batchnorm_statistics_are_recalibrated_for_the_ema_weights():
    config = replace(step10_guidance.Config(), quick=True, bn_recalibration=3, weights="train")
    data = _diffusion.load_images(config)
    model = _diffusion.build_model(config, conditional=True)
    from dlx_jax import unet

    params, stats = unet.init(jax.random.key(0), model)
    new = _diffusion.recalibrate_batch_stats(config, model, params, stats, data, jax.random.key(1))
    old_leaves, new_leaves = jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(new)
    assert all(np.isfinite(np.asarray(v)).all() for v in new_leaves)
    assert any(not np.array_equal(a, b) for a, b in zip(old_leaves, new_leaves, strict=True))
    same = _diffusion.recalibrate_batch_stats(
        replace(config, bn_recalibration=0), model, params, stats, data, jax.random.key(1)
    )
    assert same is stats
