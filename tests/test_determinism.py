"""Every experiment, run twice in ``--quick`` mode with the same seed, writes the same ``metrics.json``.

Only timings may differ, and they are recognisable by name: keys ending in ``_seconds`` or ``_s``
(and, in the benchmarks, the ``ratio_*`` keys, which are ratios of such timings, and the
``*_loadavg_*`` keys, the machine's load recorded beside them). Every random
draw derives from ``--seed`` through explicit JAX keys or a seeded ``numpy.random.Generator``;
there is no global RNG to leak state from the first run into the second.

The default run repeats steps 1–8 and the CNN in quick mode, and steps 9–10 on their tiny settings
(quick, T = 20, DDIM 5 steps, 1 epoch: the same code path — training, BatchNorm re-estimation, the
judge, DDPM and DDIM sampling, FIDs — at a third of the time); the benchmarks' repeat lives in
``tests/test_benchmarks.py`` beside their contract check. ``-m slow`` repeats every step, benchmarks
included, at exactly the ``--quick`` settings that ``python -m experiments`` uses.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from experiments import __main__ as runner
from experiments._outputs import without_timings

STEPS = runner.available_steps()
DIFFUSION_STEPS = ("step09_diffusion", "step10_guidance")
TINY_DIFFUSION = {"num_timesteps": 20, "ddim_steps": 5, "epochs": 1}
DEFAULT_STEPS = [s for s in STEPS if s not in (*DIFFUSION_STEPS, "benchmarks")]


def _assert_same_apart_from_timings(step: str, runs: list[dict]) -> None:
    first, second = (without_timings(step, m) for m in runs)
    assert first == second
    timings = set(runs[0]) - set(first)
    assert all(k.endswith(("_seconds", "_s")) or k.startswith("ratio_") or "_loadavg_" in k for k in timings)
    assert len(first) >= 3, f"{step} records too few non-timing metrics to compare: {sorted(first)}"


def _runner_twice(step: str, tmp_path) -> list[dict]:
    runs = []
    for name in ("first", "second"):
        result = runner.run_step(step, tmp_path / name, seed=3, quick=True, plots=False)
        assert result.ok, result.detail
        runs.append(json.loads((tmp_path / name / step / "metrics.json").read_text()))
    return runs


@pytest.mark.parametrize("step", DEFAULT_STEPS)
def test_a_quick_run_repeated_with_the_same_seed_gives_the_same_metrics(step, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _assert_same_apart_from_timings(step, _runner_twice(step, tmp_path))


# step 9's tiny run (about a minute: two UNet compilations) is in the slow suite; step 10's covers the
# same training loop (experiments._diffusion.train) and the guided sampler in the default suite
@pytest.mark.parametrize(
    "step", [pytest.param("step09_diffusion", marks=pytest.mark.slow), "step10_guidance"]
)
def test_a_tiny_diffusion_run_repeated_with_the_same_seed_gives_the_same_metrics(step, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    module = importlib.import_module(f"experiments.{step}")
    runs = []
    for name in ("first", "second"):
        out = str(tmp_path / name / step)
        settings = {"out": out, "seed": 3, "quick": True, "plots": False, **TINY_DIFFUSION}
        config = dataclasses.replace(module.Config(), **settings)
        runs.append(module.main(config))
        assert json.loads((tmp_path / name / step / "metrics.json").read_text()) == runs[-1]
    _assert_same_apart_from_timings(step, runs)


@pytest.mark.slow
@pytest.mark.parametrize("step", [*DIFFUSION_STEPS, "benchmarks"])
def test_a_quick_run_of_the_long_steps_repeated_gives_the_same_metrics(step, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    _assert_same_apart_from_timings(step, _runner_twice(step, tmp_path))
