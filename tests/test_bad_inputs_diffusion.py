"""What a hostile but realistic user still broke in steps 9-10 and the samplers: each is one
clear error naming the problem and the fix, found before anything trains, leaving nothing behind.

Library cases call ``dlx_jax.diffusion`` directly; CLI cases run a step's ``cli`` in-process and check
exit code 2, exactly one ``error:`` line and no traceback, and a byte-for-byte unchanged ``tmp_path``
(no ``--out`` folder, no ``checkpoints.partial``). Training is replaced by a function that fails the
test, so every CLI error is shown to come before any training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx_jax import diffusion
from experiments import _diffusion, step09_diffusion, step10_guidance
from experiments._cli import cli

KEY = jax.random.key(0)
SHAPE = (2, 4, 4, 1)


def _schedule() -> diffusion.Schedule:
    return diffusion.linear_schedule(10)


def _labelled(x, t, labels, label_mask):
    """A model that needs its conditioning inputs (no defaults): it cannot be sampled as it is."""
    return jnp.zeros_like(x)


def _model(x, t, labels=None, label_mask=None):
    return 0.1 * x


# --- the samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: diffusion.ddim_sample(KEY, _model, _schedule(), shape=SHAPE, num_steps=5, eta=5.0),
        lambda: diffusion.ddim_trajectory(
            KEY, _model, _schedule(), shape=SHAPE, num_steps=5, eta=1.5, every=1
        ),
        lambda: diffusion.ddim_step(
            KEY, _schedule(), np.zeros(SHAPE, np.float32), 5, 4, np.zeros(SHAPE), eta=5.0
        ),
    ],
    ids=["ddim_sample", "ddim_trajectory", "ddim_step"],
)
def test_eta_above_one_is_rejected(call):
    with pytest.raises(
        ValueError, match=r"eta must be <= 1.*leaves the schedule's variance.*pass eta in \[0, 1\]"
    ):
        call()


def test_eta_of_one_is_still_accepted():
    x = diffusion.ddim_sample(KEY, _model, _schedule(), shape=SHAPE, num_steps=5, eta=1.0)
    assert x.shape == SHAPE and np.isfinite(np.asarray(x)).all()


@pytest.mark.parametrize("sampler", [diffusion.ddpm_sample, diffusion.ddim_sample])
@pytest.mark.parametrize(
    ("keyword", "value", "names"),
    [
        ("labels", np.array([0, 1]), r"labels= moved out of the sampler: pass eps_fn=diffusion\.conditional"),
        (
            "gamma",
            3.0,
            r"gamma= moved out of the sampler: pass eps_fn=diffusion\.guided\(eps_fn, labels, gamma\)",
        ),
        ("num_classes", 10, r"num_classes= moved out of the sampler: pass it to diffusion\.conditional"),
        (
            "trajectory_every",
            2,
            r"trajectory_every= moved out of the sampler.*diffusion\.dd[pi]m_trajectory\(",
        ),
    ],
)
def test_old_sampler_keywords_name_the_new_call(sampler, keyword, value, names):
    with pytest.raises(TypeError, match=names):
        sampler(KEY, _model, _schedule(), shape=SHAPE, **{keyword: value})


def test_an_unknown_sampler_keyword_lists_the_options():
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'steps'.*shape, num_steps, eta, clip_x0"
    ):
        diffusion.ddim_sample(KEY, _model, _schedule(), shape=SHAPE, steps=5)


def test_a_model_with_open_conditioning_is_refused_naming_the_transforms():
    with pytest.raises(
        TypeError, match=r"eps_fn must take \(x, t\).*diffusion\.conditional\(eps_fn, labels\)"
    ):
        diffusion.ddpm_sample(KEY, _labelled, _schedule(), shape=SHAPE)
    # closed over its labels it samples
    x = diffusion.ddpm_sample(
        KEY, diffusion.guided(_labelled, np.array([0, 1]), 3.0), _schedule(), shape=SHAPE
    )
    assert x.shape == SHAPE


def test_conditioning_labels_must_match_the_sample_count():
    eps_fn = diffusion.conditional(_model, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\) = \(2,\)"):
        diffusion.ddpm_sample(KEY, eps_fn, _schedule(), shape=SHAPE)
    with pytest.raises(ValueError, match=r"labels must have shape \(n,\)"):
        diffusion.conditional(_model, np.zeros((2, 2), np.int32))


# --- steps 9 and 10 from the command line ------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def no_training(monkeypatch):
    """Training (and training a judge) fails the test: the errors must come before it."""

    def trained(*args, **kwargs):
        raise AssertionError("the run started training before finding the bad input")

    monkeypatch.setattr(_diffusion, "train", trained)


def _error_line(module, argv: list[str], tmp_path: Path, capsys) -> str:
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = cli(module.Config, module.main, [*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before  # nothing written: no --out folder, no checkpoints.partial
    return errors[0]


def _judge_dir(tmp: Path, *, config: str | None, params: bool = True, name: str = "judge") -> Path:
    folder = tmp / name
    folder.mkdir()
    if params:
        (folder / "params").mkdir()
        (folder / "params" / "arrays.bin").write_bytes(b"\x00junk" * 8)
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


def test_step10_with_fewer_samples_than_classes_is_refused_up_front(tmp_path, capsys, no_training):
    line = _error_line(step10_guidance, ["--quick", "--num-samples", "5"], tmp_path, capsys)
    assert re.search(r"--num-samples must be >= 10 for step 10, got 5", line), line
    assert re.search(r"needs every class; pass --num-samples 10 or more", line), line
    assert "diverged" not in line and "nan" not in line


@pytest.mark.parametrize(
    ("flag", "maximum"),
    [("--num-samples", "200,000"), ("--fid-samples", "200,000"), ("--sample-batch", "10,000"),
     ("--features", "512")],
)  # fmt: skip
@pytest.mark.parametrize("module", [step09_diffusion, step10_guidance])
def test_a_size_beyond_memory_is_one_error_before_training(
    module, flag, maximum, tmp_path, capsys, no_training
):
    line = _error_line(module, ["--quick", flag, "2147483647"], tmp_path, capsys)
    assert re.search(rf"{flag} 2147483647 is too large for this step .*; pass {flag} {maximum} or less", line)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ('{"dataset": "mnist-5k"}', r"params cannot be read as the CNN's parameters"),
        ("[1, 2, 3]", r"config\.json holds a JSON list, not the object of settings"),
        ('"mnist-5k"', r"config\.json holds a JSON str, not the object of settings"),
        ('{"dataset": "mnist-', r"config\.json is not readable JSON .*truncated"),
        ("\xff\xfe", r"config\.json is not readable JSON"),
    ],
    ids=["junk-params", "json-list", "json-string", "truncated", "not-json-text"],
)
@pytest.mark.parametrize("module", [step09_diffusion, step10_guidance])
def test_a_bad_judge_folder_is_one_error_before_training(
    module, config, problem, tmp_path, capsys, no_training
):
    folder = _judge_dir(tmp_path, config=config)
    line = _error_line(module, ["--quick", "--judge", str(folder)], tmp_path, capsys)
    assert re.search(problem, line), line
    assert str(folder) in line
    assert re.search(
        r"re-run `python -m experiments\.cnn --dataset mnist-5k --out .*` or pass --judge auto", line
    )


def test_a_broken_cnn_run_beside_the_output_is_named_under_judge_auto(tmp_path, capsys, no_training):
    _judge_dir(tmp_path, config='{"dataset": "mnist-5k"}', name="cnn")  # OUT/../cnn, what auto reuses
    # --weights train: the shipped judge of the pretrained path never looks at OUT/../cnn
    line = _error_line(step10_guidance, ["--quick", "--weights", "train"], tmp_path, capsys)
    assert re.search(r"cnn/params cannot be read as the CNN's parameters", line), line


def test_a_judge_folder_without_config_names_the_dataset_problem(tmp_path, capsys, no_training):
    folder = _judge_dir(tmp_path, config=None)
    line = _error_line(step09_diffusion, ["--quick", "--judge", str(folder)], tmp_path, capsys)
    assert re.search(r"judge/config\.json is missing: it names the dataset", line), line
    assert re.search(r"re-run `python -m experiments\.cnn --dataset mnist-5k", line), line


def test_ddim_eta_above_one_on_the_command_line(tmp_path, capsys, no_training):
    line = _error_line(step09_diffusion, ["--quick", "--ddim-eta", "5"], tmp_path, capsys)
    assert re.search(r"--ddim-eta must be in \[0, 1\], got 5\.0.*leaves the schedule's variance", line), line


def test_a_valid_judge_folder_passes_the_up_front_check(tmp_path):
    """The check loads a real judge's parameters (so it is the same check the run relies on)."""
    from dlx_jax import cnn, training

    folder = tmp_path / "cnn"
    training.save_params(folder / "params", cnn.init_params(jax.random.key(0)))
    (folder / "config.json").write_text(json.dumps({"dataset": "mnist-5k"}))
    config = step10_guidance.Config(quick=True, judge=str(folder), out=str(tmp_path / "out"))
    _diffusion.validate(config)  # no error
    assert not (tmp_path / "out").exists()
